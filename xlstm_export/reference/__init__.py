"""PyTorch reference kernels and the model built from a Graph (cpu / cuda / mps)."""

from .kernels import (
    causal_conv,
    mlstm_chunkwise,
    mlstm_parallel,
    mlstm_sequence,
    mlstm_step,
    slstm_step,
    soft_cap,
)
from .model import ReferenceModel, build_model, resolve_device

__all__ = [
    "ReferenceModel", "build_model", "resolve_device", "causal_conv", "mlstm_chunkwise", "mlstm_parallel",
    "mlstm_sequence", "mlstm_step", "slstm_step", "soft_cap",
]
