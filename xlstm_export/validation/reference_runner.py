"""Runners over torch modules that have the reference model's interface: the reference itself, and (as a
subclass in ``xlstm_export.torchscript.runner``) a loaded TorchScript artifact.

Both expose ``parameters()`` (name -> float32 array) besides the :class:`Runner` protocol, so a failed
comparison can name the tensor that differs.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import numpy as np

from ..graphs import Graph


class TorchModuleRunner:
    """A :class:`~xlstm_export.validation.runner.Runner` over a module with ``init_states(batch_size)``
    and ``forward_with_states(input_ids, states)`` (eager or scripted)."""

    kind = "torch"
    precision = "fp32"
    max_tokens_per_call: Optional[int] = None

    def __init__(self, module, batch_size: int, device: str = "cpu"):
        self.module = module
        self.batch_size = int(batch_size)
        self.device = device

    def init_states(self) -> List[np.ndarray]:
        import torch

        with torch.inference_mode():
            return [s.float().cpu().numpy() for s in self.module.init_states(self.batch_size)]

    def run(self, input_ids: np.ndarray, states: List[np.ndarray]) -> Tuple[np.ndarray, List[np.ndarray]]:
        import torch

        ids = torch.from_numpy(np.ascontiguousarray(input_ids, dtype=np.int64)).to(self.device)
        st = [torch.from_numpy(np.ascontiguousarray(s, dtype=np.float32)).to(self.device) for s in states]
        with torch.inference_mode():
            logits, new = self.module.forward_with_states(ids, st)
        return logits.float().cpu().numpy(), [s.float().cpu().numpy() for s in new]

    def parameters(self) -> Dict[str, np.ndarray]:
        """Every weight, by the module's own attribute path (``blocks.1.w_in``), as float32."""
        return {k: v.detach().float().cpu().numpy() for k, v in self.module.state_dict().items()}


class ReferenceRunner(TorchModuleRunner):
    """The reference model of ``graph`` (fp32, chunkwise prefill unless ``kernel="sequence"``)."""

    kind = "reference"

    def __init__(self, graph: Graph, batch_size: int = 1, device: str = "cpu", kernel: str = "chunkwise"):
        from ..reference import build_model

        model = build_model(graph, device=device).set_kernel(kernel)
        super().__init__(model, batch_size, device)
        self.graph = graph
