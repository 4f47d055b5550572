"""The MIL backend: the lowering ops protocol (``lowering/ops.py``) as coremltools MIL builder ops.

One protocol op is one MIL op, named by the canonical name (coremltools turns ``.`` into ``_``);
repeated names get ``_2``, ``_3`` ... as in the ONNX backend. Weights become frozen constants made by
the per-weight hook, one tensor at a time. States are fp16 ``StateType`` s: ``read_state`` casts the
stored value to the role asked for, and a state the policy stores *split* is two fp16 buffers, the
high part ``x`` and the low part ``x_lo`` = (value - x) * LOW_SCALE, joined on read and split on write.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..graphs import Graph, StateSpec
from ..lowering import LOW_SCALE, LOW_SUFFIX, PrecisionPolicy, WeightSpec, core_ml_name, marked, prepare_weight
from ..lowering.quant import Compression, Scheme, quantize
from ..lowering.weights import NP_DTYPES


def stored_states(graph: Graph, batch_size: int, policy: PrecisionPolicy) -> List[Tuple[str, str, tuple, Optional[str]]]:
    """Every Core ML state of the package, in order: ``(key, Core ML name, shape, part_of)``: each contract
    state (``part_of`` None), followed by its low part when stored split (key ``blocks.0.mlstm.m.lo``,
    ``part_of`` the contract name)."""
    out = []
    for s in graph.state_contract(batch_size):
        out.append((s.name, core_ml_name(s.name), tuple(s.shape), None))
        if policy.storage(s.role).split:
            key = s.name + LOW_SUFFIX
            out.append((key, core_ml_name(key), tuple(s.shape), s.name))
    return out


def _dtype(x) -> str:
    from coremltools.converters.mil.mil import types

    return types.builtin_to_string(x.dtype)


class MILOps:
    """The ops protocol over coremltools' MIL builder (inside a ``Function`` context)."""

    max_matmul_width = None

    def __init__(self, graph: Graph, policy: PrecisionPolicy, batch_size: int, state_vars: dict, tokens: int = 1,
                 prepared: Optional[Dict[tuple, np.ndarray]] = None, compression: Optional[Compression] = None):
        from coremltools.converters.mil.mil import Builder as mb

        self.mb = mb
        self.graph = graph
        self.policy = policy
        self.batch = batch_size
        self.tokens = tokens
        # prepared weight arrays by identity, shared by the functions of one program (one array each)
        self.prepared: Dict[tuple, np.ndarray] = {} if prepared is None else prepared
        self.state_vars = state_vars  # canonical state key -> MIL state placeholder
        self._names: Dict[str, int] = {}
        self._weights: Dict[tuple, object] = {}
        self.weight_bytes = 0  # bytes of weight constants (tied weights once)
        self.compression = compression  # --quantize: compressed weights become constexpr ops

    def _n(self, name: str) -> str:
        k = self._names.get(name, 0) + 1
        self._names[name] = k
        return name if k == 1 else f"{name}_{k}"

    # -- constants -------------------------------------------------------------------------------
    def dtype(self, x) -> str:
        return _dtype(x)

    def const(self, value: float, like):
        return np.array(value, dtype=NP_DTYPES[_dtype(like)])

    def weight(self, spec: WeightSpec):
        dtype = self.policy.dtype(spec.role)
        scheme = self.compression.scheme_for(spec) if self.compression is not None else None
        if scheme is not None:
            return self._compressed(spec, scheme, dtype)
        ident = spec.identity(self.graph, dtype)
        if ident not in self._weights:
            arr = self.prepared.get(ident)
            if arr is None:
                arr = self.prepared[ident] = prepare_weight(self.graph, spec, dtype)
                self.weight_bytes += arr.nbytes
            var = self.mb.const(val=arr, name=self._n(spec.key))
            # the functions of one program store each weight once: equal weight_ids share one blob
            var.op.weight_id = f"w{list(self.prepared).index(ident)}"
            self._weights[ident] = var
        return self._weights[ident]

    def _blob(self, ident: tuple, arr: Optional[np.ndarray], name: str, bits: Optional[int] = None):
        """A const shared by the functions of the program (one blob on disk); ``bits``: of sub-byte codes."""
        if ident not in self.prepared:
            self.prepared[ident] = arr
            self.weight_bytes += arr.nbytes if bits is None else arr.size * bits // 8
        var = self.mb.const(val=self.prepared[ident], name=self._n(name))
        var.op.weight_id = f"w{list(self.prepared).index(ident)}"
        return var

    def _compressed(self, spec: WeightSpec, scheme: Scheme, dtype: str):
        """``constexpr_blockwise_shift_scale`` (integers) or ``constexpr_lut_to_dense`` (palettes), named
        by the weight's key; its codes, scales and offsets are consts ``<key>_codes`` ... . The runtime
        decompresses at load (or on the fly); the package holds only the compressed form."""
        from coremltools.converters.mil.mil import types

        ident = spec.identity(self.graph, dtype) + (scheme,)
        if ident in self._weights:
            return self._weights[ident]
        key = ("q",) + ident
        ft = NP_DTYPES[dtype]
        name = core_ml_name(spec.key)
        # the arrays are kept once, as stored (shared with the prefill function); the quantizer's own
        # int8 codes are dropped as soon as the stored forms exist (7B: no second copy of the codes)
        qw = quantize(self.graph, spec, scheme, self.compression) if key + ("codes",) not in self.prepared else None

        def blob(part: str, make, bits: Optional[int] = None):
            return self._blob(key + (part,), make() if qw is not None else None, f"{name}_{part}", bits)

        if scheme.is_lut:
            sub = {4: types.np_uint4_dtype, 6: types.np_uint6_dtype}[scheme.bits]
            idx = blob("codes", lambda: qw.codes.astype(sub), scheme.bits)
            lut = blob("lut", lambda: qw.lut.astype(ft).reshape(qw.lut.shape[0], 1, -1, 1))
            var = self.mb.constexpr_lut_to_dense(indices=idx, lut=lut, name=self._n(spec.key))
        else:
            asym = self.prepared.get(key + ("offset",)) is not None if qw is None else qw.offset is not None
            sub = np.int8 if scheme.kind == "int8" else (types.np_uint4_dtype if asym else types.np_int4_dtype)
            kw = {"data": blob("codes", lambda: qw.codes.astype(sub), scheme.bits),
                  "scale": blob("scale", lambda: qw.scale.astype(ft))}
            if asym:
                kw["offset"] = blob("offset", lambda: qw.offset.astype(sub), scheme.bits)
            var = self.mb.constexpr_blockwise_shift_scale(name=self._n(spec.key), **kw)
        del qw
        self._weights[ident] = var
        return var

    def constant(self, value: np.ndarray, role: str, name: str):
        key = ("constant", name)
        if key not in self._weights:
            arr = np.ascontiguousarray(value, dtype=NP_DTYPES[self.policy.dtype(role)])
            self._weights[key] = self.mb.const(val=arr, name=self._n(name))
        return self._weights[key]

    # -- ops ---------------------------------------------------------------------------------------
    def linear(self, x, w: WeightSpec, b: Optional[WeightSpec], name: str):
        kw = {"bias": self.weight(b)} if b is not None else {}
        return self.mb.linear(x=x, weight=self.weight(w), name=self._n(name), **kw)

    def matmul(self, a, b, name: str):
        return self.mb.matmul(x=a, y=b, name=self._n(name))

    def add(self, a, b, name: str):
        return self.mb.add(x=a, y=b, name=self._n(name))

    def sub(self, a, b, name: str):
        return self.mb.sub(x=a, y=b, name=self._n(name))

    def mul(self, a, b, name: str):
        return self.mb.mul(x=a, y=b, name=self._n(name))

    def div(self, a, b, name: str):
        return self.mb.real_div(x=a, y=b, name=self._n(name))

    def maximum(self, a, b, name: str):
        return self.mb.maximum(x=a, y=b, name=self._n(name))

    def exp(self, x, name: str):
        return self.mb.exp(x=x, name=self._n(name))

    def sqrt(self, x, name: str):
        return self.mb.sqrt(x=x, name=self._n(name))

    def tanh(self, x, name: str):
        return self.mb.tanh(x=x, name=self._n(name))

    def sigmoid(self, x, name: str):
        return self.mb.sigmoid(x=x, name=self._n(name))

    def softplus(self, x, name: str):
        return self.mb.softplus(x=x, name=self._n(name))

    def relu(self, x, name: str):
        return self.mb.relu(x=x, name=self._n(name))

    def gelu(self, x, name: str):
        return self.mb.gelu(x=x, mode="EXACT", name=self._n(name))

    def reduce_mean(self, x, axis: int, keepdims: bool, name: str):
        return self.mb.reduce_mean(x=x, axes=[axis], keep_dims=keepdims, name=self._n(name))

    def reduce_sum(self, x, axis: int, keepdims: bool, name: str):
        return self.mb.reduce_sum(x=x, axes=[axis], keep_dims=keepdims, name=self._n(name))

    def reduce_max(self, x, axis: int, keepdims: bool, name: str):
        return self.mb.reduce_max(x=x, axes=[axis], keep_dims=keepdims, name=self._n(name))

    def layer_norm(self, x, dim: int, eps: float, gamma, beta, name: str):
        kw = {k: v for k, v in (("gamma", gamma), ("beta", beta)) if v is not None}
        return self.mb.layer_norm(x=x, axes=[-1], epsilon=self.const(eps, x), name=self._n(name), **kw)

    def reshape(self, x, shape: Sequence[int], name: str):
        return self.mb.reshape(x=x, shape=list(shape), name=self._n(name))

    def concat(self, xs, axis: int, name: str):
        return self.mb.concat(values=list(xs), axis=axis, name=self._n(name))

    def split(self, x, sizes: Sequence[int], axis: int, name: str):
        return list(self.mb.split(x=x, split_sizes=list(sizes), axis=axis, name=self._n(name)))

    def slice(self, x, axis: int, start: int, stop: int, name: str):
        shape = list(x.shape)
        axis = axis % len(shape)
        begin = [0] * len(shape)
        begin[axis], shape[axis] = start, stop
        return self.mb.slice_by_index(x=x, begin=begin, end=shape, name=self._n(name))

    def transpose(self, x, perm: Sequence[int], name: str):
        return self.mb.transpose(x=x, perm=list(perm), name=self._n(name))

    def gather(self, table, ids, name: str):
        return self.mb.gather(x=table, indices=ids, axis=0, name=self._n(name))

    # -- precision and states ------------------------------------------------------------------------
    def _cast_to(self, x, dtype: str, name: str):
        return x if _dtype(x) == dtype else self.mb.cast(x=x, dtype=dtype, name=self._n(name))

    def cast(self, x, role: str, place: str):
        return self._cast_to(x, self.policy.dtype(role), marked(place, "cast"))

    def read_state(self, state: StateSpec, role: str):
        """The state's value (fp16 buffers) in ``role``'s dtype; a split state is high + low / LOW_SCALE."""
        mb, key = self.mb, state.name
        s = mb.read_state(input=self.state_vars[key], name=self._n(marked(key, "read")))
        if key + LOW_SUFFIX in self.state_vars:
            lo = mb.read_state(input=self.state_vars[key + LOW_SUFFIX], name=self._n(marked(key, "read_lo")))
            lo = mb.mul(x=self._cast_to(lo, "fp32", marked(key, "lo32")), y=np.float32(1.0 / LOW_SCALE),
                        name=self._n(marked(key, "lo_unscaled")))
            s = mb.add(x=self._cast_to(s, "fp32", marked(key, "hi32")), y=lo, name=self._n(marked(key, "joined")))
        return self._cast_to(s, self.policy.dtype(role), marked(key, "cast"))

    def write_state(self, state: StateSpec, value) -> None:
        """Store ``value``: cast to fp16, or split into an fp16 high part and an fp16 scaled remainder."""
        mb, key = self.mb, state.name
        if key + LOW_SUFFIX not in self.state_vars:
            v = self._cast_to(value, "fp16", marked(key, "next"))
            mb.coreml_update_state(state=self.state_vars[key], value=v, name=self._n(marked(key, "write")))
            return
        value = self._cast_to(value, "fp32", marked(key, "next32"))
        hi = mb.cast(x=value, dtype="fp16", name=self._n(marked(key, "next")))
        rest = mb.sub(x=value, y=mb.cast(x=hi, dtype="fp32", name=self._n(marked(key, "next_hi32"))),
                      name=self._n(marked(key, "next_rest")))
        mb.coreml_update_state(state=self.state_vars[key], value=hi, name=self._n(marked(key, "write")))
        rest = mb.mul(x=rest, y=np.float32(LOW_SCALE), name=self._n(marked(key, "next_rest_scaled")))
        lo = mb.cast(x=rest, dtype="fp16", name=self._n(marked(key, "next_lo")))
        mb.coreml_update_state(state=self.state_vars[key + LOW_SUFFIX], value=lo,
                               name=self._n(marked(key, "write_lo")))


__all__ = ["MILOps", "stored_states"]
