"""The reference model as a runner (``runner.TorchModuleRunner``): what validation compares an artifact
with. It exposes ``parameters()`` (name -> float32 array) besides the :class:`~xlstm_export.runner.Runner`
protocol, so a failed comparison can name the tensor that differs.
"""

from __future__ import annotations

from ..graphs import Graph
from ..runner import TorchModuleRunner


class ReferenceRunner(TorchModuleRunner):
    """The reference model of ``graph`` (fp32, chunkwise prefill unless ``kernel="sequence"``)."""

    kind = "reference"
    runtime_name = "PyTorch reference"

    def __init__(self, graph: Graph, batch_size: int = 1, device: str = "cpu", kernel: str = "chunkwise"):
        from ..reference import build_model

        model = build_model(graph, device=device).set_kernel(kernel)
        super().__init__(model, batch_size, device)
        self.graph = graph


__all__ = ["ReferenceRunner"]
