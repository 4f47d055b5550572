"""The ExecuTorch target: ``.pte`` programs (XNNPACK on CPU, or the Core ML delegate), the reference
model exported with ``torch.export``. See ``emit.py``; ``runner.py`` executes them with ``executorch.runtime``."""

from .emit import BACKENDS, ExecuTorchOptions, contract_for, emit

__all__ = ["BACKENDS", "ExecuTorchOptions", "contract_for", "emit"]
