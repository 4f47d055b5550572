"""Runners over torch modules that have the reference model's interface: the reference itself, and (as a
subclass in ``xlstm_export.torchscript.runner``) a loaded TorchScript artifact.

Both expose ``parameters()`` (name -> float32 array) besides the :class:`Runner` protocol, so a failed
comparison can name the tensor that differs.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import numpy as np

from ..errors import UnsupportedError
from ..graphs import Graph
from .contract import check_run_args


class TorchModuleRunner:
    """A :class:`~xlstm_export.validation.runner.Runner` over a module with ``init_states(batch_size)``
    and ``forward_with_states(input_ids, states)`` (eager or scripted)."""

    kind = "torch"
    runtime_name = "PyTorch eager"
    precision = "fp32"
    max_tokens_per_call: Optional[int] = None

    def __init__(self, module, batch_size: int, device: str = "cpu"):
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise UnsupportedError(f"{self.kind} runner: batch size must be a positive integer, got {batch_size!r}")
        self.module = module
        self.batch_size = int(batch_size)
        self.device = device
        import torch

        self.runtime = f"{self.runtime_name} (torch {torch.__version__}, {device})"
        self._state_shapes: Optional[List[tuple]] = None
        v = getattr(module, "vocab_size", None)
        self.vocab_size: Optional[int] = v if isinstance(v, int) and v > 0 else None

    def init_states(self) -> List[np.ndarray]:
        import torch

        with torch.inference_mode():
            return [s.float().cpu().numpy() for s in self.module.init_states(self.batch_size)]

    def _check(self, input_ids, states) -> np.ndarray:
        """``input_ids`` as int64 (B, T), after the checks every runner makes (UnsupportedError); states
        in the order ``init_states`` gives them."""
        if self._state_shapes is None:
            self._state_shapes = [tuple(s.shape) for s in self.init_states()]
        return check_run_args(f"{self.kind} runner", self.batch_size, input_ids, states, self._state_shapes,
                              self.vocab_size)

    def run(self, input_ids: np.ndarray, states: List[np.ndarray]) -> Tuple[np.ndarray, List[np.ndarray]]:
        return self._forward(self._check(input_ids, states), states)

    def _forward(self, input_ids: np.ndarray, states: List[np.ndarray]) -> Tuple[np.ndarray, List[np.ndarray]]:
        """The module's ``forward_with_states`` on checked arguments (states in the module's order)."""
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
    runtime_name = "PyTorch reference"

    def __init__(self, graph: Graph, batch_size: int = 1, device: str = "cpu", kernel: str = "chunkwise"):
        from ..reference import build_model

        model = build_model(graph, device=device).set_kernel(kernel)
        super().__init__(model, batch_size, device)
        self.graph = graph
