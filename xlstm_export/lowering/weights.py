"""The one per-weight hook: every weight passes through :func:`prepare_weight` on its way into any
artifact (Core ML constants, ONNX initializers), like llama.cpp's single tensor-preparation loop.

A lowering describes a constant with a :class:`WeightSpec` (which canonical tensors, laid out how, for
which use, in which precision role); the backend hands the spec to :func:`prepare_weight` when the data
is needed (Core ML: while building; ONNX: while writing, one tensor at a time) and caches by
:meth:`WeightSpec.identity`, so tied weights and repeated uses become one constant.

    spec = WeightSpec.linear(graph, "blocks.0.mlstm.q")           # (out, in) as stored
    arr = prepare_weight(graph, spec, "fp16")                     # loaded, laid out, converted

Layouts (``build``):

    as_stored   the tensor as the checkpoint holds it (after frontend mapping), reshaped to ``shape``
    rows        several tensors stacked along axis 0 (fused i/f gate projections and their biases)
    headwise    block-diagonal weights (nb, bo, bi) each, as (nb, bi, G*bo): ``x (.., nb, 1, bi) @ W``
    gatewise    per-head bias of several (E,) gates as (NH, 1, G*DH), gate-major inside each head
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np

from ..errors import UnsupportedError
from ..frontends import load_weight
from ..graphs import Graph

NP_DTYPES = {"fp16": np.float16, "fp32": np.float32}
BUILDS = ("as_stored", "rows", "headwise", "gatewise")
USES = ("linear", "bias", "headwise", "norm", "conv", "embedding", "lm_head", "skip", "recurrent")


@dataclass(frozen=True)
class WeightSpec:
    """One constant of an artifact, made from canonical tensors."""

    key: str  # its name in the artifact (the canonical name when made from one tensor as stored)
    sources: Tuple[str, ...]  # canonical tensor names
    use: str  # what it is for (USES): what compression policies key on
    role: str  # the precision role that gives its dtype
    shape: Tuple[int, ...]  # of the prepared array
    build: str = "as_stored"
    offset: float = 0.0  # added in fp32 first (the H family's LayerNorm weights are stored as 1 + w)
    rows: Optional[Tuple[int, int]] = None  # a row block [start, stop) of the one source (LM head split)
    groups: int = 1  # gatewise: number of gates

    def identity(self, graph: Graph, dtype: str) -> tuple:
        """Equal for constants with equal data (tied weights share a loader)."""
        loaders = tuple(id(graph.weights[s].loader) for s in self.sources)
        return (loaders, self.build, self.shape, self.offset, self.rows, self.groups, dtype)

    # -- the specs lowerings use ------------------------------------------------------------------
    @staticmethod
    def linear(graph: Graph, prefix: str) -> "WeightSpec":
        name = f"{prefix}.weight"
        return WeightSpec(name, (name,), "linear", "weights", tuple(graph.weights[name].shape))

    @staticmethod
    def bias(graph: Graph, prefix: str, role: str = "weights") -> "WeightSpec":
        name = f"{prefix}.bias"
        return WeightSpec(name, (name,), "bias", role, tuple(graph.weights[name].shape))

    @staticmethod
    def stacked_rows(graph: Graph, key: str, names: Tuple[str, ...], use: str) -> "WeightSpec":
        shapes = [graph.weights[n].shape for n in names]
        shape = (sum(s[0] for s in shapes),) + tuple(shapes[0][1:])
        return WeightSpec(key, tuple(names), use, "weights", shape, build="rows")

    @staticmethod
    def tensor(graph: Graph, name: str, use: str, role: str, shape: Optional[Tuple[int, ...]] = None,
               offset: float = 0.0, key: Optional[str] = None) -> "WeightSpec":
        """One tensor as stored, optionally viewed as ``shape`` (a head norm's (NH*D,) as (NH, 1, D))."""
        h = graph.weights[name]
        shape = tuple(h.shape) if shape is None else tuple(shape)
        if key is None:
            key = name if shape == tuple(h.shape) else f"{name}.heads"
        return WeightSpec(key, (name,), use, role, shape, offset=offset)

    @staticmethod
    def headwise(graph: Graph, key: str, names: Tuple[str, ...], role: str = "weights",
                 use: str = "headwise") -> "WeightSpec":
        nb, bo, bi = graph.weights[names[0]].shape
        return WeightSpec(key, tuple(names), use, role, (nb, bi, len(names) * bo), build="headwise")

    @staticmethod
    def gatewise(graph: Graph, key: str, names: Tuple[str, ...], heads: int, role: str) -> "WeightSpec":
        (E,) = graph.weights[names[0]].shape
        return WeightSpec(key, tuple(names), "bias", role, (heads, 1, len(names) * (E // heads)),
                          build="gatewise", groups=len(names))


def prepare_weight(graph: Graph, spec: WeightSpec, dtype: str) -> np.ndarray:
    """The array of ``spec`` in ``dtype``: loaded (float32, checked finite), the offset folded in
    fp32, laid out, converted. One call per constant; nothing else converts weights."""
    if spec.build not in BUILDS:
        raise UnsupportedError(f"weight {spec.key}: unknown layout {spec.build!r}; known: {BUILDS}")
    if dtype not in NP_DTYPES:
        raise UnsupportedError(f"weight {spec.key}: unknown dtype {dtype!r}; known: {tuple(NP_DTYPES)}")
    handles = [graph.weights[s] for s in spec.sources]
    if spec.rows is not None:
        s, e = spec.rows
        handles = [handles[0].rows(f"{handles[0].name}[{s}:{e}]", s, e)]
    arrs = [load_weight(h) for h in handles]
    if spec.build == "as_stored":
        arr = arrs[0].reshape(spec.shape)
    elif spec.build == "rows":
        arr = np.concatenate(arrs, axis=0)
    elif spec.build == "headwise":  # each (nb, bo, bi) -> (nb, bi, bo), side by side on the last axis
        arr = np.concatenate([np.transpose(a, (0, 2, 1)) for a in arrs], axis=2)
    else:  # gatewise: G x (E,) -> (NH, 1, G*DH)
        NH = spec.shape[0]
        arr = np.concatenate([a.reshape(NH, 1, -1) for a in arrs], axis=2)
    del arrs
    if spec.offset != 0.0:
        arr = arr + np.float32(spec.offset)
    if tuple(arr.shape) != tuple(spec.shape):
        raise UnsupportedError(f"weight {spec.key}: prepared shape {tuple(arr.shape)}, declared {spec.shape}")
    return np.ascontiguousarray(arr.astype(NP_DTYPES[dtype], copy=False))
