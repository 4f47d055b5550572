"""The ONNX backend: the lowering ops protocol (``lowering/ops.py``) as ONNX nodes (``builder.py``).

One protocol op is one node, named by the canonical name (repeated names get ``_2``, ``_3`` ...).
``linear`` is ``Gemm(x, W, b, transB=1)`` on rows, so Linear weights are stored as the checkpoint holds
them ((out, in), shared with the embedding when tied). Weights are initializers whose data the
per-weight hook makes when the model is written. States are graph inputs (``<name>``) and outputs
(``<name>.next``); inside a Scan body, ``scan.<name>`` and ``scan.<name>.next``.

Every op here is one the Core ML EP (MLProgram) takes: Neg and Abs are written by the lowering as
``Mul(x, -1)`` and ``Max(x, -x)``, GELU is the opset-20 ``Gelu`` node, LayerNorm ``LayerNormalization``.

With a compression (``--quantize``), a weight it compresses goes through :mod:`.quant` instead of
``prepare_weight``: a Linear becomes ``MatMulNBits`` or ``DequantizeLinear -> MatMul``, the embedding a
Gather of int8 codes dequantized after the lookup; nothing else changes.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import numpy as np

from ..errors import UnsupportedError
from ..graphs import Graph, StateSpec
from ..lowering import PrecisionPolicy, WeightSpec, marked, prepare_weight
from ..lowering.quant import Compression, Scheme, quantize
from .builder import F16, F32, BuildError, GraphBuilder, Initializer
from .quant import MS_DOMAIN, QuantCache, form_of, parts

ELEM = {"fp16": F16, "fp32": F32}
DTYPE_OF = {F16: "fp16", F32: "fp32"}
GELU_OPSET = 20


class OnnxOps:
    """The ops protocol over one :class:`GraphBuilder` (the main graph or a Scan body)."""

    def __init__(self, b: GraphBuilder, graph: Graph, policy: PrecisionPolicy, batch_size: int,
                 max_matmul_width: Optional[int], weights: Optional[Dict[tuple, str]] = None, tokens: int = 1,
                 compression: Optional[Compression] = None, quantize_format: str = "matmulnbits",
                 quant_cache: Optional[QuantCache] = None):
        self.b = b
        self.graph = graph
        self.policy = policy
        self.batch = batch_size
        self.tokens = tokens
        self.max_matmul_width = max_matmul_width
        self._weights: Dict[tuple, str] = {} if weights is None else weights  # shared with Scan bodies
        self.state_in: Dict[str, str] = {}  # canonical state name -> value read
        self.state_out: Dict[str, str] = {}  # canonical state name -> value written
        self.compression = compression  # --quantize: compressed weights (lowering/quant.py, .quant)
        self.quantize_format = quantize_format
        self.quant_cache = quant_cache if quant_cache is not None else QuantCache()
        self._dequantized: Dict[str, str] = {}  # qdq: weight key -> its DequantizeLinear output in this graph
        self._tables: Dict[str, tuple] = {}  # compressed embedding: codes initializer -> (spec, scheme, parts)
        self._outer: Optional["OnnxOps"] = None  # the main graph's backend, in a Scan body

    def on(self, b: GraphBuilder) -> "OnnxOps":
        """The same backend writing into another graph (a Scan body); initializers stay shared."""
        ops = OnnxOps(b, self.graph, self.policy, self.batch, self.max_matmul_width, self._weights, self.tokens,
                      self.compression, self.quantize_format, self.quant_cache)
        ops._tables = self._tables
        ops._outer = self
        return ops

    def scheme(self, spec: WeightSpec) -> Optional[Scheme]:
        return self.compression.scheme_for(spec) if self.compression is not None else None

    # -- constants -------------------------------------------------------------------------------
    def dtype(self, x: str) -> str:
        return DTYPE_OF[self.b.dtype(x)]

    def const(self, value: float, like: str) -> str:
        return self.b.scalar_like(value, like)

    def weight(self, spec: WeightSpec) -> str:
        scheme = self.scheme(spec)
        if scheme is not None:
            if spec.use != "embedding":  # a compressed Linear is one node (``linear``), not a tensor
                raise BuildError(f"onnx: weight {spec.key} is compressed ({scheme.label()}) but asked for as a "
                                 f"dense tensor")
            names = self._compressed(spec, scheme)
            self._tables[names["codes"]] = (spec, scheme, names)
            return names["codes"]
        dtype = self.policy.dtype(spec.role)
        ident = spec.identity(self.graph, dtype)
        if ident not in self._weights:
            ms = self.b.model
            name = spec.key if spec.key not in ms.used_names else ms.unique(f"{spec.key}.{dtype}")
            ms.used_names.discard(name)  # add_initializer claims it
            graph, sources = self.graph, ", ".join(self.graph.weights[s].source for s in spec.sources)
            ms.add_initializer(Initializer(name, ELEM[dtype], spec.shape,
                                           lambda: prepare_weight(graph, spec, dtype), sources, ident))
            self._weights[ident] = name
        return self._weights[ident]

    def constant(self, value: np.ndarray, role: str, name: str) -> str:
        key = ("constant", name)
        if key not in self._weights:
            arr = np.ascontiguousarray(value, dtype=np.float32 if self.policy.dtype(role) == "fp32" else np.float16)
            ms = self.b.model
            unique = ms.unique(name)
            ms.used_names.discard(unique)  # add_initializer claims it
            self._weights[key] = ms.add_initializer(Initializer(unique, ELEM[self.policy.dtype(role)], arr.shape,
                                                                lambda: arr, "<constant>"))
        return self._weights[key]

    def _compressed(self, spec: WeightSpec, scheme: Scheme) -> Dict[str, str]:
        """The initializers of a compressed weight (part suffix -> name), made once per model; their data is
        quantized while the model is written (one weight at a time, :class:`.quant.QuantCache`)."""
        dtype = self.policy.dtype(spec.role)
        form = form_of(spec, self.quantize_format, scheme)
        ident = spec.identity(self.graph, dtype) + (scheme, form)
        key = ("q",) + ident
        if key not in self._weights:
            ms, graph, comp, cache = self.b.model, self.graph, self.compression, self.quant_cache
            sources = ", ".join(graph.weights[s].source for s in spec.sources)

            def loader(make):
                return lambda: make(cache.get(ident, lambda: quantize(graph, spec, scheme, comp)))

            names = {}
            for p in parts(spec, scheme, self.quantize_format, ELEM[dtype]):
                name = ms.unique(f"{spec.key}.{p.suffix}")
                ms.used_names.discard(name)  # add_initializer claims it
                names[p.suffix] = ms.add_initializer(Initializer(name, p.elem, p.dims, loader(p.make),
                                                                 f"{sources} ({scheme.label()})", ident + (p.suffix,)))
            self._weights[key] = names
        return self._weights[key]

    # -- ops ---------------------------------------------------------------------------------------
    def linear(self, x: str, w: WeightSpec, b: Optional[WeightSpec], name: str) -> str:
        scheme = self.scheme(w)
        if scheme is None:
            inputs = [x, self.weight(w)] + ([self.weight(b)] if b is not None else [])
            return self.b.op("Gemm", inputs, name, transB=1)
        q = self._compressed(w, scheme)
        N, K = w.shape
        if form_of(w, self.quantize_format, scheme) == "int8rows":  # dense (N, K) from constants: folded by ORT
            inputs = [x, self._dequantize(w, scheme, q)] + ([self.weight(b)] if b is not None else [])
            return self.b.op("Gemm", inputs, name, transB=1)
        if self.quantize_format == "matmulnbits":
            inputs = [x, q["codes"], q["scales"], q.get("zero_points", "")]
            if b is not None:
                inputs += ["", self.weight(b)]  # g_idx (deprecated) left out
            while inputs[-1] == "":
                inputs.pop()
            self.b.model.domains[MS_DOMAIN] = 1
            return self.b.op("MatMulNBits", inputs, name, domain=MS_DOMAIN, K=K, N=N, bits=scheme.bits,
                             block_size=scheme.block_size)
        # qdq: the dense (K, N) weight from its blocked codes, then an ordinary MatMul
        wq = self._dequantize(w, scheme, q)
        if b is None:
            return self.b.op("MatMul", [x, wq], name)
        y = self.b.op("MatMul", [x, wq], f"{name}.matmul")
        return self.b.op("Add", [y, self.weight(b)], name)

    def _dequantize(self, w: WeightSpec, scheme: Scheme, q: Dict[str, str]) -> str:
        """The blocked ``DequantizeLinear`` of a weight (once per graph). Inside a Scan body it goes to the
        main graph, before the Scan (once per call, not per token; ORT 1.32's DequantizeLinear -> MatMul
        fusion also fails on a body's DequantizeLinear of an outer-scope initializer)."""
        if self._outer is not None:
            return self._outer._dequantize(w, scheme, q)
        if w.key not in self._dequantized and form_of(w, self.quantize_format, scheme) == "int8rows":
            (N, K), bs = w.shape, scheme.block_size
            elem = self.b.dtype(q["scales"])
            codes = self.b.reshape(self.b.cast(q["codes"], elem, f"{w.key}.codes_float"), [N, K // bs, bs],
                                   f"{w.key}.blocks")
            scales = self.b.reshape(q["scales"], [N, K // bs, 1], f"{w.key}.block_scales")
            self._dequantized[w.key] = self.b.reshape(self.b.mul(codes, scales, f"{w.key}.dequantized"), [N, K],
                                                      w.key)
        if w.key not in self._dequantized:
            dq = [q["codes"], q["scales"]] + ([q["zero_points"]] if "zero_points" in q else [])
            self._dequantized[w.key] = self.b.op("DequantizeLinear", dq, w.key, out_dtype=self.b.dtype(q["scales"]),
                                                 axis=0, block_size=scheme.block_size)
        return self._dequantized[w.key]

    def matmul(self, a: str, b: str, name: str) -> str:
        return self.b.op("MatMul", [a, b], name)

    def add(self, a: str, b: str, name: str) -> str:
        return self.b.op("Add", [a, b], name)

    def sub(self, a: str, b: str, name: str) -> str:
        return self.b.op("Sub", [a, b], name)

    def mul(self, a: str, b: str, name: str) -> str:
        return self.b.op("Mul", [a, b], name)

    def div(self, a: str, b: str, name: str) -> str:
        return self.b.op("Div", [a, b], name)

    def maximum(self, a: str, b: str, name: str) -> str:
        return self.b.op("Max", [a, b], name)

    def exp(self, x: str, name: str) -> str:
        return self.b.op("Exp", [x], name)

    def sqrt(self, x: str, name: str) -> str:
        return self.b.op("Sqrt", [x], name)

    def tanh(self, x: str, name: str) -> str:
        return self.b.op("Tanh", [x], name)

    def sigmoid(self, x: str, name: str) -> str:
        return self.b.op("Sigmoid", [x], name)

    def softplus(self, x: str, name: str) -> str:
        return self.b.op("Softplus", [x], name)

    def relu(self, x: str, name: str) -> str:
        return self.b.op("Relu", [x], name)

    def gelu(self, x: str, name: str) -> str:
        if self.b.model.opset < GELU_OPSET:
            raise UnsupportedError(f"onnx: {name} is a GELU, which needs opset >= {GELU_OPSET} "
                                   f"(got {self.b.model.opset}); export with --opset {GELU_OPSET} or later")
        return self.b.op("Gelu", [x], name)

    def reduce_mean(self, x: str, axis: int, keepdims: bool, name: str) -> str:
        return self.b.reduce_mean(x, [axis], keepdims, name)

    def reduce_sum(self, x: str, axis: int, keepdims: bool, name: str) -> str:
        return self.b.reduce_sum(x, [axis], keepdims, name)

    def reduce_max(self, x: str, axis: int, keepdims: bool, name: str) -> str:
        return self.b.reduce_max(x, [axis], keepdims, name)

    def layer_norm(self, x: str, dim: int, eps: float, gamma: Optional[str], beta: Optional[str], name: str) -> str:
        if gamma is None:
            gamma = self.b.model.const(np.ones(dim, dtype=np.float32 if self.dtype(x) == "fp32" else np.float16))
        inputs = [x, gamma] + ([beta] if beta is not None else [])
        return self.b.op("LayerNormalization", inputs, name, axis=-1, epsilon=float(eps))

    def reshape(self, x: str, shape: Sequence[int], name: str) -> str:
        return self.b.reshape(x, shape, name)

    def concat(self, xs: Sequence[str], axis: int, name: str) -> str:
        return self.b.concat(xs, axis, name)

    def split(self, x: str, sizes: Sequence[int], axis: int, name: str) -> List[str]:
        return self.b.split(x, sizes, axis, name)

    def slice(self, x: str, axis: int, start: int, stop: int, name: str) -> str:
        return self.b.slice(x, [start], [stop], [axis], name)

    def transpose(self, x: str, perm: Sequence[int], name: str) -> str:
        return self.b.transpose(x, perm, name)

    def gather(self, table: str, ids: str, name: str) -> str:
        if table not in self._tables:
            return self.b.gather(table, ids, name)
        # a compressed table: gather the rows' codes and block scales, dequantize only those rows
        spec, scheme, q = self._tables[table]
        E, bs = spec.shape[1], scheme.block_size
        elem = self.b.dtype(q["scales"])
        codes = self.b.cast(self.b.gather(q["codes"], ids, f"{name}.codes"), elem, f"{name}.codes_float")
        codes = self.b.reshape(codes, [self.batch, -1, E // bs, bs], f"{name}.blocks")  # (B, T, E/b, b)
        scales = self.b.reshape(self.b.gather(q["scales"], ids, f"{name}.scales"), [self.batch, -1, E // bs, 1],
                                f"{name}.block_scales")  # (B, T, E/b, 1)
        return self.b.reshape(self.b.mul(codes, scales, f"{name}.dequantized"), [self.batch, -1, E], name)

    # -- precision and states ------------------------------------------------------------------------
    def cast(self, x: str, role: str, place: str) -> str:
        return self.b.cast(x, ELEM[self.policy.dtype(role)], marked(place, "cast"))

    def read_state(self, state: StateSpec, role: str) -> str:
        return self.b.cast(self.state_in[state.name], ELEM[self.policy.dtype(role)], marked(state.name, "cast"))

    def write_state(self, state: StateSpec, value: str) -> None:
        elem = ELEM[self.policy.storage(state.role).dtype]
        self.state_out[state.name] = self.b.cast(value, elem, marked(state.name, "next"))


__all__ = ["OnnxOps", "ELEM", "GELU_OPSET"]
