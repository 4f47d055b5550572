"""The ops protocol: what a graph backend (MIL, ONNX) implements and every lowering is written against.

Values are opaque handles (a MIL ``Var``, an ONNX value name). Every op takes the hierarchical canonical
``name`` of what it computes (``blocks.0.mlstm.cell.f_act``) and each protocol op is exactly one node in
every backend, so the same computation has the same name in every target (Core ML sanitises ``.`` to
``_``: :func:`core_ml_name`). Ops that only move between dtypes or storage -- casts between the policy's
roles, state reads and writes, the high/low parts of split states -- are named with the :data:`MARK`
segment (``blocks.0.mlstm.q.io.cast``), so a comparison of node names can set them aside.

Shapes are static. Activations between blocks are rows ``(R, E)``: R = B for one decode step, R = B*T
for a prefill chunk of T tokens (row ``b*T + t``; ``ops.tokens`` is T, 1 when stepping).
"""

from __future__ import annotations

from typing import Any, List, Optional, Protocol, Sequence

from ..graphs import Graph, StateSpec
from .precision import PrecisionPolicy
from .weights import WeightSpec

V = Any  # a backend's value handle

MARK = "io"  # the name segment of precision / storage ops


def marked(place: str, what: str) -> str:
    """The name of a precision or storage op at ``place``: ``blocks.0.mlstm.c`` -> ``blocks.0.mlstm.c.io.read``."""
    return f"{place}.{MARK}.{what}"


def core_ml_name(canonical: str) -> str:
    """The documented mapping of names into Core ML (MIL names and feature names hold no ``.``):
    ``blocks.3.mlstm.c`` -> ``blocks_3_mlstm_c``."""
    return canonical.replace(".", "_")


def is_marked(name: str, sep: str = ".") -> bool:
    return f"{sep}{MARK}{sep}" in f"{sep}{name}{sep}"


class Ops(Protocol):
    graph: Graph
    policy: PrecisionPolicy
    batch: int
    tokens: int  # tokens per call: 1 for a decode step, T for a prefill chunk
    max_matmul_width: Optional[int]  # widest matmul output a backend's runtime takes (ONNX for the Core ML EP)

    def dtype(self, x: V) -> str: ...  # "fp16" | "fp32"
    def const(self, value: float, like: V) -> V: ...  # a scalar in x's dtype (not a node)
    def weight(self, spec: WeightSpec) -> V: ...  # through the per-weight hook, cached
    def constant(self, value: Any, role: str, name: str) -> V: ...  # a named tensor constant in role's dtype, cached by name

    # matmuls: linear takes rows x (R, in) -> (R, out); matmul is batched over leading axes
    def linear(self, x: V, w: WeightSpec, b: Optional[WeightSpec], name: str) -> V: ...
    def matmul(self, a: V, b: V, name: str) -> V: ...

    # elementwise (numpy broadcasting)
    def add(self, a: V, b: V, name: str) -> V: ...
    def sub(self, a: V, b: V, name: str) -> V: ...
    def mul(self, a: V, b: V, name: str) -> V: ...
    def div(self, a: V, b: V, name: str) -> V: ...
    def maximum(self, a: V, b: V, name: str) -> V: ...
    def exp(self, x: V, name: str) -> V: ...
    def sqrt(self, x: V, name: str) -> V: ...
    def tanh(self, x: V, name: str) -> V: ...
    def sigmoid(self, x: V, name: str) -> V: ...
    def softplus(self, x: V, name: str) -> V: ...
    def relu(self, x: V, name: str) -> V: ...
    def gelu(self, x: V, name: str) -> V: ...  # exact (erf) GELU, torch's default

    # reductions and norms over the last axis
    def reduce_mean(self, x: V, axis: int, keepdims: bool, name: str) -> V: ...
    def reduce_sum(self, x: V, axis: int, keepdims: bool, name: str) -> V: ...
    def reduce_max(self, x: V, axis: int, keepdims: bool, name: str) -> V: ...
    def layer_norm(self, x: V, dim: int, eps: float, gamma: Optional[V], beta: Optional[V], name: str) -> V: ...

    # shapes
    def reshape(self, x: V, shape: Sequence[int], name: str) -> V: ...
    def concat(self, xs: Sequence[V], axis: int, name: str) -> V: ...
    def split(self, x: V, sizes: Sequence[int], axis: int, name: str) -> List[V]: ...
    def slice(self, x: V, axis: int, start: int, stop: int, name: str) -> V: ...
    def transpose(self, x: V, perm: Sequence[int], name: str) -> V: ...
    def gather(self, table: V, ids: V, name: str) -> V: ...  # rows of table by ids

    # precision and states (marked names)
    def cast(self, x: V, role: str, place: str) -> V: ...  # to the policy's dtype of role; no op if equal
    def read_state(self, state: StateSpec, role: str) -> V: ...  # current value, in role's dtype
    def write_state(self, state: StateSpec, value: V) -> None: ...  # next value, stored per the policy
