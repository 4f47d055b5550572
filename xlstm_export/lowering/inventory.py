"""The constants a lowering makes, without making them: key -> (dtype, shape) for a graph and a policy.

    table = constants(graph, policy, batch_size=1, prefill_chunk=8)
    table["blocks.0.mlstm.q.weight"]      # ("fp16", (256, 128))

The lowerings run over :class:`Inventory`, an ops backend whose values are dtype names ("fp16",
"fp32"): ``weight`` and ``constant`` record what they are asked for and no weight is loaded. What a
graph backend stores under a key is ``prepare_weight(spec, policy.dtype(spec.role))`` (shape
``spec.shape``), so this table is what an artifact's constants are when it was written with that
policy; validation compares an artifact's actual tensors with it (``coreml/verify.py``) before
judging the artifact by the tolerance its declared precision names.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

from ..graphs import Graph
from .precision import PrecisionPolicy
from .weights import WeightSpec

Entry = Tuple[str, Tuple[int, ...]]  # (dtype name, shape)


class Inventory:
    """The ops protocol over dtype names. Every op returns the dtype of its (first) operand, casts and
    state reads the policy's dtype of their role."""

    max_matmul_width = None  # the widest the Core ML backend takes (no LM-head split)

    def __init__(self, graph: Graph, policy: PrecisionPolicy, batch_size: int, tokens: int = 1):
        self.graph, self.policy, self.batch, self.tokens = graph, policy, batch_size, tokens
        self.table: Dict[str, Entry] = {}
        self.specs: Dict[str, WeightSpec] = {}  # key -> the spec of each weight made (tied: the first key)
        self._idents: set = set()

    def _record(self, key: str, dtype: str, shape: Tuple[int, ...]) -> str:
        self.table.setdefault(key, (dtype, tuple(int(d) for d in shape)))
        return dtype

    def dtype(self, x: str) -> str:
        return x

    def const(self, value: float, like: str) -> str:
        return like

    def weight(self, spec: WeightSpec) -> str:
        dtype = self.policy.dtype(spec.role)
        ident = spec.identity(self.graph, dtype)  # as the backends cache: tied weights are one constant,
        if ident in self._idents:                 # named by the first key that asked for it
            return dtype
        self._idents.add(ident)
        self.specs.setdefault(spec.key, spec)
        return self._record(spec.key, dtype, spec.shape)

    def constant(self, value: Any, role: str, name: str) -> str:
        import numpy as np

        return self._record(name, self.policy.dtype(role), np.shape(value))

    def linear(self, x: str, w: WeightSpec, b: Optional[WeightSpec], name: str) -> str:
        self.weight(w)
        if b is not None:
            self.weight(b)
        return x

    def cast(self, x: str, role: str, place: str) -> str:
        return self.policy.dtype(role)

    def read_state(self, state, role: str) -> str:
        return self.policy.dtype(role)

    def write_state(self, state, value: str) -> None:
        return None

    def split(self, x: str, sizes, axis: int, name: str):
        return [x] * len(sizes)

    def concat(self, xs, axis: int, name: str) -> str:
        return xs[0]

    def gather(self, table: str, ids: Any, name: str) -> str:
        return table

    def __getattr__(self, op: str):  # every other op: elementwise, reductions, norms, shapes
        if op.startswith("_"):
            raise AttributeError(op)
        return lambda x, *args, **kwargs: x


def constants(graph: Graph, policy: PrecisionPolicy, batch_size: int = 1, prefill_chunk: Optional[int] = None,
              last_logits_only: bool = False) -> Dict[str, Entry]:
    """Every weight and named constant of the step (and, with ``prefill_chunk``, the prefill chunk)
    lowering of ``graph`` under ``policy``: canonical key -> (dtype name, shape)."""
    from .model import prefill, step

    inv = Inventory(graph, policy, batch_size)
    step(inv, "int32")
    table = dict(inv.table)
    if prefill_chunk is not None:  # its own function: its own constants (on disk, one blob per weight)
        inv = Inventory(graph, policy, batch_size, tokens=prefill_chunk)
        prefill(inv, "int32", last_logits_only)
        for k, v in inv.table.items():
            table.setdefault(k, v)
    return table


def weight_specs(graph: Graph, policy: PrecisionPolicy, batch_size: int = 1, max_matmul_width=None
                 ) -> List[WeightSpec]:
    """The spec of every weight the step lowering makes (what compression decides over), in order.
    ``max_matmul_width``: the backend's (the ONNX backend splits a wide LM head into row blocks)."""
    from .model import step

    inv = Inventory(graph, policy, batch_size)
    inv.max_matmul_width = max_matmul_width
    step(inv, "int32")
    return list(inv.specs.values())


__all__ = ["Inventory", "constants", "weight_specs"]
