"""A small ONNX graph builder: named nodes, lazy initializers, and ops in Core-ML-EP-safe form.

    model = ModelState(opset=18)
    b = GraphBuilder(model, "xlstm_step")
    x = b.input("x", F32, (1, 64))
    with b.scope("blocks.0.mlstm"):
        q = b.matmul(x, w, name="q")             # node "blocks.0.mlstm.q", output "blocks.0.mlstm.q"
        y = b.logsigmoid(q, name="f_log")        # -Softplus(-q), written with Mul by -1

Node names follow the canonical names (``blocks.3.mlstm.q``), so a parity failure points at a place;
a repeated local name gets a ``_2``, ``_3`` ... suffix. A node's (single) output value is named like
the node; value names are unique across the model (main graph and Scan body share one namespace).

Only ops ORT's Core ML execution provider (MLProgram) takes are written past the embedding: no Neg
(``Mul(x, -1)``), Abs (``Max(x, 0 - x)``), Log (logsigmoid is ``-Softplus(-x)``), Gather, Scan, Loop,
If. Constants are initializers of shape ``[1]`` (or the shape given), deduplicated by value; weights
are :class:`Initializer` s whose data is produced only when the model is written (``writer.py``).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import onnx
from onnx import TensorProto, helper

from ..errors import XlstmExportError

F32 = TensorProto.FLOAT
F16 = TensorProto.FLOAT16
I64 = TensorProto.INT64
U8 = TensorProto.UINT8
I8 = TensorProto.INT8
I4 = TensorProto.INT4
U4 = TensorProto.UINT4
# 4-bit tensors are made as int8 / uint8 arrays of their logical shape, written packed (two per byte)
NP_DTYPE = {F32: np.float32, F16: np.float16, I64: np.int64, U8: np.uint8, I8: np.int8, I4: np.int8, U4: np.uint8}
DTYPE_NAME = {F32: "float32", F16: "float16", I64: "int64"}
ELEM = {"float32": F32, "float16": F16, "int64": I64}
SUB_BYTE = frozenset({I4, U4})

# ops the Core ML EP (MLProgram) takes; the emitter checks every node past the embedding against it
COREML_OPS = frozenset({
    "Add", "Sub", "Mul", "Div", "Max", "Exp", "Sqrt", "Softplus", "Sigmoid", "Tanh", "Erf", "Relu", "Gelu",
    "LayerNormalization",
    "MatMul", "Gemm", "ReduceSum", "ReduceMean", "ReduceMax", "Reshape", "Slice", "Concat", "Split",
    "Transpose", "Squeeze", "Unsqueeze", "Cast", "Identity",
})


BUG_NOTE = " (a bug in xlstm-export's ONNX lowering, not in the input; please report it)"


class BuildError(XlstmExportError):
    """The graph builder or writer was used inconsistently (a name reused, a tensor of another shape than
    declared): a bug in a lowering, never a problem of the checkpoint or the options."""

    exit_code = 1

    def __init__(self, message: str):
        super().__init__(message + BUG_NOTE)


@dataclass
class Initializer:
    """A tensor of the model whose data is made only when written (one at a time)."""

    name: str
    data_type: int
    dims: Tuple[int, ...]
    load: Callable[[], np.ndarray]  # -> array of exactly ``dims`` and ``NP_DTYPE[data_type]``
    source: str = ""
    ident: Optional[tuple] = None  # what the data is (a weight's identity): equal idents hold equal data

    @property
    def nbytes(self) -> int:
        n = int(np.prod(self.dims, dtype=np.int64))
        if self.data_type in SUB_BYTE:
            return (n + 1) // 2
        return n * np.dtype(NP_DTYPE[self.data_type]).itemsize

    def materialize(self) -> np.ndarray:
        """The tensor's bytes as an array (4-bit tensors: packed into uint8, ``pack_nibbles``)."""
        arr = self.load()
        want = NP_DTYPE[self.data_type]
        if arr.dtype != want:
            arr = arr.astype(want)
        if tuple(arr.shape) != tuple(self.dims):
            raise BuildError(f"initializer {self.name!r} ({self.source}): produced shape {tuple(arr.shape)}, "
                             f"declared {self.dims}")
        if self.data_type in SUB_BYTE:
            return pack_nibbles(arr.reshape(-1))
        return np.ascontiguousarray(arr)


def pack_nibbles(values: np.ndarray) -> np.ndarray:
    """4-bit values (int8 in [-8, 7] or uint8 in [0, 15]) two per byte, as ONNX stores INT4 / UINT4 and
    MatMulNBits its blobs: element 2i in the low nibble of byte i, element 2i+1 in the high nibble (an
    odd count is padded with a zero nibble). Along the last axis; leading axes are kept."""
    v = np.asarray(values).astype(np.uint8) & 0x0F
    if v.shape[-1] % 2:
        v = np.concatenate([v, np.zeros(v.shape[:-1] + (1,), dtype=np.uint8)], axis=-1)
    return np.ascontiguousarray(v[..., 0::2] | (v[..., 1::2] << 4))


def unpack_nibbles(packed: np.ndarray, count: int, signed: bool) -> np.ndarray:
    """The inverse of :func:`pack_nibbles` along the last axis: ``count`` values per row, int8 in [-8, 7]
    when ``signed`` (two's complement nibbles), else uint8 in [0, 15]."""
    p = np.asarray(packed, dtype=np.uint8)
    out = np.empty(p.shape[:-1] + (2 * p.shape[-1],), dtype=np.uint8)
    out[..., 0::2], out[..., 1::2] = p & 0x0F, p >> 4
    out = out[..., :count]
    if signed:
        return (out.astype(np.int16) - ((out >= 8) * 16)).astype(np.int8)
    return out


class ModelState:
    """What the main graph and its subgraphs share: initializers, constants, the value namespace."""

    def __init__(self, opset: int):
        self.opset = opset
        self.initializers: List[Initializer] = []
        self._init_index: Dict[str, Initializer] = {}
        self._consts: Dict[tuple, str] = {}
        self.used_names: set[str] = set()
        self.dtypes: Dict[str, int] = {}
        self.domains: Dict[str, int] = {}  # opset imports beyond the default domain (com.microsoft: MatMulNBits)

    def unique(self, name: str) -> str:
        if name not in self.used_names:
            self.used_names.add(name)
            return name
        k = 2
        while f"{name}_{k}" in self.used_names:
            k += 1
        self.used_names.add(f"{name}_{k}")
        return f"{name}_{k}"

    def add_initializer(self, init: Initializer) -> str:
        if init.name in self._init_index:
            raise BuildError(f"initializer {init.name!r} registered twice")
        if init.name in self.used_names:
            raise BuildError(f"initializer name {init.name!r} collides with a value name")
        self.used_names.add(init.name)
        self.initializers.append(init)
        self._init_index[init.name] = init
        self.dtypes[init.name] = init.data_type
        return init.name

    def has_initializer(self, name: str) -> bool:
        return name in self._init_index

    def const(self, value: np.ndarray) -> str:
        """A small constant initializer, deduplicated by dtype, shape and bytes."""
        value = np.ascontiguousarray(value)
        key = (value.dtype.str, value.shape, value.tobytes())
        if key in self._consts:
            return self._consts[key]
        tag = {np.float32: "f32", np.float16: "f16", np.int64: "i64"}[value.dtype.type]
        flat = value.reshape(-1)
        if flat.size <= 8:
            body = "_".join(_fmt(v) for v in flat.tolist())
        else:
            body = f"{flat.size}x"
        name = self.unique(f"const.{tag}.{body}")
        self.used_names.discard(name)  # add_initializer re-adds it
        arr = value.copy()
        self.add_initializer(Initializer(name, _elem_of(arr.dtype), tuple(arr.shape), lambda: arr, "<constant>"))
        self._consts[key] = name
        return name


def _fmt(v) -> str:
    """A value for a constant's name, in [A-Za-z0-9.] only: -1 -> m1, 1e-05 -> 1em05."""
    if isinstance(v, float):
        text = ("inf" if v > 0 else "minf") if math.isinf(v) else f"{v:.7g}"
    else:
        text = str(v)
    return text.replace("-", "m").replace("+", "p")


def _elem_of(dtype: np.dtype) -> int:
    return {np.dtype(np.float32): F32, np.dtype(np.float16): F16, np.dtype(np.int64): I64,
            np.dtype(np.uint8): U8, np.dtype(np.int8): I8}[np.dtype(dtype)]


class GraphBuilder:
    """Nodes of one graph (the model's main graph or a Scan body) over a shared :class:`ModelState`."""

    def __init__(self, model: ModelState, name: str):
        self.model = model
        self.name = name
        self.nodes: List[onnx.NodeProto] = []
        self.inputs: List[onnx.ValueInfoProto] = []
        self.outputs: List[onnx.ValueInfoProto] = []
        self._scope: List[str] = []

    # -- names ---------------------------------------------------------------------------------
    @contextlib.contextmanager
    def scope(self, prefix: str) -> Iterator[None]:
        self._scope.append(prefix)
        try:
            yield
        finally:
            self._scope.pop()

    def qualified(self, local: str) -> str:
        return ".".join([*self._scope, local]) if self._scope else local

    def dtype(self, value: str) -> int:
        return self.model.dtypes[value]

    # -- graph I/O -----------------------------------------------------------------------------
    def input(self, name: str, elem: int, shape: Sequence[Optional[int | str]]) -> str:
        if name in self.model.used_names:
            raise BuildError(f"graph input name {name!r} is already used")
        self.model.used_names.add(name)
        self.model.dtypes[name] = elem
        self.inputs.append(helper.make_tensor_value_info(name, elem, list(shape)))
        return name

    def output(self, value: str, name: str, shape: Sequence[Optional[int | str]]) -> str:
        """Expose ``value`` as graph output ``name`` (renames the value where it is produced)."""
        if value != name:
            self.rename(value, name)
        self.outputs.append(helper.make_tensor_value_info(name, self.dtype(name), list(shape)))
        return name

    def rename(self, old: str, new: str) -> None:
        if new in self.model.used_names:
            raise BuildError(f"cannot rename {old!r} to {new!r}: the name is taken")
        producers = [n for n in self.nodes if old in n.output]
        if len(producers) != 1:
            raise BuildError(f"cannot rename {old!r}: it is not produced by a node of graph {self.name!r}")
        self.model.used_names.add(new)
        self.model.dtypes[new] = self.model.dtypes[old]
        for n in self.nodes:
            for j, o in enumerate(n.output):
                if o == old:
                    n.output[j] = new
            for j, i in enumerate(n.input):
                if i == old:
                    n.input[j] = new

    # -- constants -----------------------------------------------------------------------------
    def const(self, value, elem: int) -> str:
        """A constant of ``elem`` type; Python scalars become shape ``[1]``."""
        arr = np.asarray(value, dtype=NP_DTYPE[elem])
        if arr.ndim == 0:
            arr = arr.reshape(1)
        return self.model.const(arr)

    def scalar_like(self, value: float, like: str) -> str:
        return self.const(value, self.dtype(like))

    def ints(self, values: Sequence[int]) -> str:
        return self.model.const(np.asarray(list(values), dtype=np.int64))

    # -- nodes ---------------------------------------------------------------------------------
    def op(self, op_type: str, inputs: Sequence[str], name: Optional[str] = None, n_out: int = 1,
           out_dtype: Optional[int] = None, **attrs) -> str | List[str]:
        node_name = self.model.unique(self.qualified(name or op_type.lower()))
        if n_out == 1:
            outs = [node_name]
        else:
            outs = [self.model.unique(f"{node_name}.{k}") for k in range(n_out)]
        node = helper.make_node(op_type, list(inputs), outs, name=node_name, **attrs)
        self.nodes.append(node)
        elem = out_dtype if out_dtype is not None else self.dtype(inputs[0])
        for o in outs:
            self.model.dtypes[o] = elem
        return outs[0] if n_out == 1 else outs

    # elementwise
    def add(self, a: str, b: str, name: str = "add") -> str:
        return self.op("Add", [a, b], name)

    def sub(self, a: str, b: str, name: str = "sub") -> str:
        return self.op("Sub", [a, b], name)

    def mul(self, a: str, b: str, name: str = "mul") -> str:
        return self.op("Mul", [a, b], name)

    def div(self, a: str, b: str, name: str = "div") -> str:
        return self.op("Div", [a, b], name)

    def max(self, a: str, b: str, name: str = "max") -> str:
        return self.op("Max", [a, b], name)

    def exp(self, x: str, name: str = "exp") -> str:
        return self.op("Exp", [x], name)

    def sqrt(self, x: str, name: str = "sqrt") -> str:
        return self.op("Sqrt", [x], name)

    def sigmoid(self, x: str, name: str = "sigmoid") -> str:
        return self.op("Sigmoid", [x], name)

    def tanh(self, x: str, name: str = "tanh") -> str:
        return self.op("Tanh", [x], name)

    def softplus(self, x: str, name: str = "softplus") -> str:
        return self.op("Softplus", [x], name)

    def relu(self, x: str, name: str = "relu") -> str:
        return self.op("Relu", [x], name)

    def erf(self, x: str, name: str = "erf") -> str:
        return self.op("Erf", [x], name)

    def matmul(self, a: str, b: str, name: str = "matmul") -> str:
        return self.op("MatMul", [a, b], name)

    def cast(self, x: str, elem: int, name: str = "cast") -> str:
        if self.dtype(x) == elem:
            return x
        return self.op("Cast", [x], name, out_dtype=elem, to=elem)

    # EP-safe compounds (no Neg / Abs / Log)
    def neg(self, x: str, name: str = "neg") -> str:
        """``-x`` as ``Mul(x, -1)``."""
        return self.mul(x, self.scalar_like(-1.0, x), name)

    def abs(self, x: str, name: str = "abs") -> str:
        """``|x|`` as ``Max(x, 0 - x)``."""
        minus = self.sub(self.scalar_like(0.0, x), x, f"{name}.minus")
        return self.max(x, minus, name)

    def logsigmoid(self, x: str, name: str = "logsigmoid") -> str:
        """``log(sigmoid(x)) = -softplus(-x)``."""
        sp = self.softplus(self.neg(x, f"{name}.negx"), f"{name}.softplus")
        return self.neg(sp, name)

    def silu(self, x: str, name: str = "silu") -> str:
        return self.mul(x, self.sigmoid(x, f"{name}.sigmoid"), name)

    def gelu(self, x: str, name: str = "gelu") -> str:
        """Exact GELU: ``0.5 x (1 + erf(x / sqrt 2))`` (torch's default)."""
        e = self.erf(self.div(x, self.scalar_like(math.sqrt(2.0), x), f"{name}.scaled"), f"{name}.erf")
        half = self.mul(x, self.scalar_like(0.5, x), f"{name}.half")
        return self.mul(half, self.add(e, self.scalar_like(1.0, x), f"{name}.one_plus"), name)

    def soft_cap(self, x: str, cap: float, name: str = "soft_cap") -> str:
        """``cap * tanh(x / cap)``."""
        c = self.scalar_like(cap, x)
        return self.mul(self.tanh(self.div(x, c, f"{name}.div"), f"{name}.tanh"), c, name)

    # shapes
    def reshape(self, x: str, shape: Sequence[int], name: str = "reshape") -> str:
        return self.op("Reshape", [x, self.ints(shape)], name)

    def transpose(self, x: str, perm: Sequence[int], name: str = "transpose") -> str:
        return self.op("Transpose", [x], name, perm=list(perm))

    def concat(self, xs: Sequence[str], axis: int, name: str = "concat") -> str:
        return self.op("Concat", list(xs), name, axis=axis)

    def split(self, x: str, sizes: Sequence[int], axis: int, name: str = "split") -> List[str]:
        return self.op("Split", [x, self.ints(sizes)], name, n_out=len(sizes), axis=axis)

    def slice(self, x: str, starts: Sequence[int], ends: Sequence[int], axes: Sequence[int],
              name: str = "slice") -> str:
        return self.op("Slice", [x, self.ints(starts), self.ints(ends), self.ints(axes)], name)

    def _reduce(self, op: str, x: str, axes: Sequence[int], keepdims: bool, name: str) -> str:
        if op == "ReduceSum" or self.model.opset >= 18:
            return self.op(op, [x, self.ints(axes)], name, keepdims=int(keepdims))
        return self.op(op, [x], name, axes=list(axes), keepdims=int(keepdims))

    def reduce_mean(self, x: str, axes: Sequence[int], keepdims: bool = True, name: str = "mean") -> str:
        return self._reduce("ReduceMean", x, axes, keepdims, name)

    def reduce_sum(self, x: str, axes: Sequence[int], keepdims: bool = True, name: str = "sum") -> str:
        return self._reduce("ReduceSum", x, axes, keepdims, name)

    def reduce_max(self, x: str, axes: Sequence[int], keepdims: bool = True, name: str = "max") -> str:
        return self._reduce("ReduceMax", x, axes, keepdims, name)

    # the one op outside the Core ML EP's set, used once at the very start
    def gather(self, table: str, ids: str, name: str = "gather") -> str:
        return self.op("Gather", [table, ids], name, out_dtype=self.dtype(table), axis=0)

    # -- result --------------------------------------------------------------------------------
    def to_graph(self, doc_string: str = "") -> onnx.GraphProto:
        """The GraphProto (without initializers: those are the model's, written by ``writer.py``)."""
        return helper.make_graph(self.nodes, self.name, self.inputs, self.outputs, doc_string=doc_string or None)
