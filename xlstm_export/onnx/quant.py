"""Compressed weights in ONNX graphs: how a weight the compression compresses (``lowering/quant.py``) is
laid out as initializers, and how those initializers decode back to the dense weight (numpy only).

Two forms of a compressed Linear (``OnnxOptions.quantize_format``)::

    matmulnbits   x (R, K) ─ MatMulNBits(B, scales[, zero_points][, bias]) ─ (R, N)      com.microsoft, ORT CPU
                  B (N, K/b, b*bits/8) uint8, codes + 2^(bits-1) (symmetric) or codes (asymmetric), packed
                  along K two per byte for 4 bits (low nibble first); scales (N, K/b) in the activation
                  dtype; zero_points (N, ceil(K/b / 2)) uint8, packed like B (asymmetric int4 only)
    qdq           codes (K, N) int8 | int4 | uint4 ─ DequantizeLinear(axis 0, block_size b) ─ W (K, N)
                  x (R, K) ─ MatMul(W) [─ Add(bias)] ─ (R, N)        opset 21 (blocked DequantizeLinear)
                  scales (K/b, N); zero_points (K/b, N) uint4 (asymmetric int4 only)

The embedding table (the policy stores it int8, blocks along E) is the same in both forms: the rows are
gathered *as codes* and dequantized after the lookup::

    ids ─ Gather(codes (V, E) int8) ─ Cast ─ (B, T, E/b, b) ─┐
    ids ─ Gather(scales (V, E/b))   ─────── (B, T, E/b, 1) ─ Mul ─ (B, T, E)

so a step costs E multiplies, where ``DequantizeLinear -> Gather`` would dequantize all V x E entries every
call (ORT does not fold a DequantizeLinear of constants by default) and needs opset 21 in the
MatMulNBits form too. Initializers are named ``<weight key>.codes`` / ``.scales`` / ``.zero_points``.

Each part is made from the one :class:`~..lowering.quant.QuantizedWeight` of its weight while the model
is written (:class:`QuantCache` keeps the last one, so a weight is quantized once although its parts are
three tensors); :func:`decode` turns the stored bytes back into the dense float32 weight ``(out, in)``,
which validation uses as the weights the artifact computes with.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from ..errors import ArtifactError, UnsupportedError
from ..lowering.quant import Compression, QuantizedWeight, Scheme
from ..lowering.weights import WeightSpec
from .builder import F32, I4, I8, NP_DTYPE, SUB_BYTE, U4, U8, pack_nibbles, unpack_nibbles

FORMATS = ("matmulnbits", "qdq")
MS_DOMAIN = "com.microsoft"
QDQ_OPSET = 21  # DequantizeLinear with block_size
PARTS = ("codes", "scales", "zero_points")


def check_compression(comp: Optional[Compression], fmt: str) -> None:
    """One line for what the ONNX target cannot write (palettes, a MatMulNBits block size)."""
    if fmt not in FORMATS:
        raise UnsupportedError(f"onnx: --quantize-format must be one of {', '.join(FORMATS)}; got {fmt!r}")
    if comp is None:
        return
    if comp.scheme.startswith("lut"):
        raise UnsupportedError(f"onnx: --quantize {comp.scheme} (palettized weights) is Core ML only; ONNX takes "
                               f"--quantize int8 or int4")
    b = comp.block_size
    if fmt == "matmulnbits" and (b < 16 or b & (b - 1)):
        raise UnsupportedError(f"onnx: MatMulNBits takes a block size that is a power of two >= 16 (16, 32, 64, "
                               f"128 ...); got --block-size {b} (or use --quantize-format qdq)")
    if dict(comp.policy).get("embedding") == "scheme" and comp.scheme != "int8":
        raise UnsupportedError(f"onnx: the embedding table is stored int8 or kept; a policy storing it "
                               f"{comp.scheme} is not written by the ONNX target")


def opset_for(opset: int, comp: Optional[Compression], fmt: str) -> int:
    """The default-domain opset of the graph: the one asked for, raised to 21 for the qdq form only."""
    return max(opset, QDQ_OPSET) if comp is not None and fmt == "qdq" else opset


@dataclass(frozen=True)
class Part:
    """One initializer of a compressed weight: its data made from the weight's QuantizedWeight."""

    suffix: str  # codes | scales | zero_points
    elem: int
    dims: Tuple[int, ...]
    make: Callable[[QuantizedWeight], np.ndarray]


def form_of(spec: WeightSpec, fmt: str, scheme: Optional[Scheme] = None) -> str:
    """How a compressed weight is stored: ``embedding`` (gathered codes), ``matmulnbits``, ``qdq``, or
    ``int8rows``: an int8 Linear in a MatMulNBits graph (the policy's LM head) as codes (N, K) + scales,
    dequantized by Cast/Mul of constants, which ORT folds into a dense weight when the session loads.
    Measured at 100M (2 threads): ORT 1.32's 8-bit MatMulNBits with fp32 activations is several times
    slower than fp32 Gemm; an int8 LM head that way took the int4 step from 1.84x to 1.14x fp32's speed."""
    if spec.use == "embedding":
        return "embedding"
    if fmt == "matmulnbits" and scheme is not None and scheme.kind == "int8":
        return "int8rows"
    return fmt


def parts(spec: WeightSpec, scheme: Scheme, fmt: str, elem: int) -> List[Part]:
    """The initializers of ``spec`` compressed with ``scheme`` in form ``form_of(spec, fmt)``; ``elem``:
    the float type of scales (the weight's precision role)."""
    N, K = spec.shape
    b, nb, bits = scheme.block_size, spec.shape[1] // scheme.block_size, scheme.bits
    asym = scheme.kind == "int4" and not scheme.symmetric
    ft = NP_DTYPE[elem]
    form = form_of(spec, fmt, scheme)
    if form in ("embedding", "int8rows"):
        if scheme.kind != "int8":
            raise UnsupportedError(f"onnx: weight {spec.key}: the embedding table is stored int8, not {scheme.kind}")
        return [Part("codes", I8, (N, K), lambda q: q.codes),
                Part("scales", elem, (N, nb), lambda q: q.scale.astype(ft))]
    if form == "matmulnbits":
        zero = 1 << (bits - 1)

        def blob(q: QuantizedWeight) -> np.ndarray:
            u = q.codes.astype(np.int16) + (0 if asym else zero)  # unsigned, in [0, 2^bits)
            u = u.astype(np.uint8).reshape(N, nb, b)
            return u if bits == 8 else pack_nibbles(u)

        out = [Part("codes", U8, (N, nb, b * bits // 8), blob),
               Part("scales", elem, (N, nb), lambda q: q.scale.astype(ft))]
        if asym:
            out.append(Part("zero_points", U8, (N, (nb + 1) // 2), lambda q: pack_nibbles(q.offset)))
        return out
    # qdq: laid out (in, out) for MatMul, blocks along axis 0
    code_elem = I8 if scheme.kind == "int8" else (U4 if asym else I4)
    out = [Part("codes", code_elem, (K, N), lambda q: q.codes.T.astype(NP_DTYPE[code_elem])),
           Part("scales", elem, (nb, N), lambda q: q.scale.T.astype(ft))]
    if asym:
        out.append(Part("zero_points", U4, (nb, N), lambda q: q.offset.T.astype(np.uint8)))
    return out


def compressed_specs(graph, policy, batch_size: int, max_matmul_width: Optional[int], comp: Compression,
                     fmt: str) -> List[Tuple[WeightSpec, Scheme]]:
    """(spec, scheme) of every compressed weight the ONNX backend writes for the step lowering, one per
    distinct set of initializers (``lowering.quant.compressed_weights_of``, the form included): a tied
    embedding (gathered codes) and LM head are two."""
    from ..lowering.quant import compressed_weights_of

    rows = compressed_weights_of(graph, policy, comp, batch_size, max_matmul_width,
                                 lambda s, sch: form_of(s, fmt, sch))
    return [(spec, scheme) for spec, scheme, owner in rows if owner is spec]


class QuantCache:
    """The last weight quantized: its parts are written one after another, so it is quantized once and
    only one compressed weight is held at a time."""

    def __init__(self):
        self._key: Optional[tuple] = None
        self._value: Optional[QuantizedWeight] = None

    def get(self, key: tuple, make: Callable[[], QuantizedWeight]) -> QuantizedWeight:
        if self._key != key:
            self._key, self._value = None, None
            self._value = make()
            self._key = key
        return self._value


# -- decoding (validation): the stored bytes back to the dense weight --------------------------------------
def tensor_array(elem: int, dims: Tuple[int, ...], raw: bytes, where: str) -> np.ndarray:
    """An initializer's bytes as an array of its logical shape (4-bit tensors unpacked)."""
    n = int(np.prod(dims, dtype=np.int64))
    if elem in SUB_BYTE:
        if len(raw) != (n + 1) // 2:
            raise ArtifactError(f"{where}: {len(raw)} bytes for {n} 4-bit values")
        return unpack_nibbles(np.frombuffer(raw, dtype=np.uint8), n, elem == I4).reshape(dims)
    dt = np.dtype(NP_DTYPE[elem])
    if len(raw) != n * dt.itemsize:
        raise ArtifactError(f"{where}: {len(raw)} bytes for {n} values of {dt}")
    return np.frombuffer(raw, dtype=dt).reshape(dims)


def decode(spec: WeightSpec, scheme: Scheme, fmt: str, arrays: Dict[str, np.ndarray], where: str) -> np.ndarray:
    """The dense float32 weight ``spec.shape`` (out, in) that ``arrays`` (part suffix -> logical array,
    :func:`tensor_array`) stand for, as the runtime computes it: ``(code - zero point) * scale`` per block."""
    N, K = spec.shape
    b, nb, bits = scheme.block_size, K // scheme.block_size, scheme.bits
    want = {p.suffix: (p.dims,) for p in parts(spec, scheme, fmt, F32)}
    if set(arrays) != set(want):
        raise ArtifactError(f"{where}: compressed weight {spec.key} has parts {sorted(arrays)}, expected "
                            f"{sorted(want)}")
    for k, (dims,) in want.items():
        if tuple(arrays[k].shape) != dims:
            raise ArtifactError(f"{where}: {spec.key}.{k} has shape {list(arrays[k].shape)}, expected {list(dims)}")
    scale = arrays["scales"].astype(np.float32)
    form = form_of(spec, fmt, scheme)
    if form in ("embedding", "int8rows"):
        codes, zero = arrays["codes"].astype(np.float32).reshape(N, nb, b), np.zeros((N, nb), np.float32)
    elif form == "matmulnbits":
        blob = arrays["codes"]
        u = blob if bits == 8 else unpack_nibbles(blob, b, False)  # (N, nb, b)
        codes = u.astype(np.float32)
        if "zero_points" in arrays:
            zero = unpack_nibbles(arrays["zero_points"], nb, False).astype(np.float32)
        else:
            zero = np.full((N, nb), float(1 << (bits - 1)), np.float32)
    else:  # qdq: (K, N) codes, (nb, N) scales and zero points
        codes = arrays["codes"].T.astype(np.float32).reshape(N, nb, b)
        scale = scale.T
        zero = arrays["zero_points"].T.astype(np.float32) if "zero_points" in arrays else np.zeros((N, nb), np.float32)
    return ((codes - zero[..., None]) * scale[..., None]).reshape(N, K).astype(np.float32)


__all__ = ["FORMATS", "MS_DOMAIN", "PARTS", "Part", "QDQ_OPSET", "QuantCache", "check_compression", "compressed_specs",
           "decode",
           "form_of", "opset_for", "parts", "tensor_array"]
