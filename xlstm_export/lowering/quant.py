"""Weight compression through the one per-weight hook: which weights are compressed (the xLSTM-aware
policy, one table), and how (block-wise integers or palettes, round-to-nearest or GPTQ).

A backend asks :meth:`Compression.scheme_for` for each weight it makes; ``None`` keeps the weight at
its precision role's dtype (``prepare_weight``), otherwise :func:`quantize` gives the compressed form,
made from the float32 array of that one weight (no second full-precision copy of the model)::

    comp = Compression("int4", block_size=32)
    scheme = comp.scheme_for(spec)            # Scheme("int4", 32) for a projection, None for a gate
    qw = quantize(graph, spec, scheme, comp)  # QuantizedWeight: codes + per-block scale (+ offset)
    qw.dequantize()                           # what the artifact computes with (float32)

Formats (blocks run along the input axis, the last axis of a weight as stored, ``(out, in)``):

    int8   signed codes in [-127, 127], one scale per block, symmetric
    int4   codes in [0, 15] with an offset (zero point) per block: value = scale * (code - offset),
           or symmetric codes in [-8, 7] (``Compression.symmetric``); per-block clipping search
    lut4   16-entry palette per output row (k-means), 4-bit indices   (Core ML only)
    lut6   64-entry palette per output row (k-means), 6-bit indices   (Core ML only)

The policy (:data:`POLICY`, measured on the trained example LM, ``docs/COMPRESSION.md``) keeps the input
and forget gate projections, norms, conv, biases, skips and headwise (block-diagonal) weights at full
precision, stores the embedding table and the LM head in int8 and the projections in the scheme asked for.
``--keep PATTERN`` keeps any other weight (fnmatch over canonical names).
"""

from __future__ import annotations

import fnmatch
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Tuple

import numpy as np

from ..errors import ArtifactError, UnsupportedError
from ..graphs import Graph
from .weights import WeightSpec, prepare_weight

SCHEMES = ("int8", "int4", "lut4", "lut6")
METHODS = ("rtn", "gptq")
BITS = {"int8": 8, "int4": 4, "lut4": 4, "lut6": 6}
CLIP_GRID = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75)
QUANT_THREADS = max(1, min(16, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))  # shrink factors of a block's range tried by the clipping search


@dataclass(frozen=True)
class Scheme:
    """How one weight is stored: ``kind`` (SCHEMES) and its block size along the input axis (int only)."""

    kind: str
    block_size: int = 32
    symmetric: bool = True

    @property
    def bits(self) -> int:
        return BITS[self.kind]

    @property
    def is_lut(self) -> bool:
        return self.kind.startswith("lut")

    def label(self) -> str:
        if self.is_lut:
            return self.kind
        return f"{self.kind}/b{self.block_size}" + ("" if self.symmetric or self.kind == "int8" else "/asym")


# use -> what the policy does with it: "scheme" (the one asked for), "int8", or "keep". Measured choices:
# docs/COMPRESSION.md has the per-use sensitivity figures behind each row.
POLICY: Mapping[str, str] = {
    "linear": "scheme",  # q, k, v, output gate, out_proj, FFN, proj_up/down: ~all of the parameters
    "gates": "keep",  # input/forget gate pre-activations: exp(i) amplifies their error (measured)
    "lm_head": "int8",  # int4 cost 1.3 points of top-1 agreement on the example LM (x1.0135 vs x1.0219 ppl)
    "embedding": "int8",  # a lookup table: no matmul error amplification; int8 is lossless in practice
    "headwise": "keep",  # block-diagonal q/k/v and sLSTM gates: few parameters, 4-wide blocks
    "norm": "keep",
    "bias": "keep",
    "conv": "keep",
    "skip": "keep",
    "recurrent": "keep",
}


def weight_use(spec: WeightSpec) -> str:
    """The policy row of a weight: its use, with the stacked input/forget gate projection told apart."""
    if spec.use == "linear" and spec.key.endswith(".gates.weight"):
        return "gates"
    return spec.use


@dataclass(frozen=True)
class Compression:
    """``--quantize`` and its options: the scheme for the compressed weights, and how to compute it."""

    scheme: str
    block_size: int = 32
    symmetric: bool = True
    method: str = "rtn"
    keep: Tuple[str, ...] = ()
    policy: Mapping[str, str] = field(default_factory=lambda: tuple(sorted(POLICY.items())))  # (use, what) pairs
    # GPTQ: per canonical input (the Linear's prefix), the Hessian X^T X of its calibration activations
    hessians: Optional[Dict[str, np.ndarray]] = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        rows = dict(self.policy)  # stored as sorted (use, what) pairs: hashable, equal when equal
        object.__setattr__(self, "policy", tuple(sorted(rows.items())))
        object.__setattr__(self, "keep", tuple(self.keep))
        if self.scheme not in SCHEMES:
            raise UnsupportedError(f"--quantize must be one of none, {', '.join(SCHEMES)}; got {self.scheme!r}")
        if self.method not in METHODS:
            raise UnsupportedError(f"--quant-method must be one of {', '.join(METHODS)}; got {self.method!r}")
        if not self.scheme.startswith("lut") and (self.block_size < 8 or self.block_size % 8):
            raise UnsupportedError(f"--block-size must be a positive multiple of 8 (8, 16, 32, 64, ...); "
                                   f"got {self.block_size}")

    def scheme_for(self, spec: WeightSpec) -> Optional[Scheme]:
        """How ``spec`` is stored, or None to keep it at its precision role's dtype."""
        if len(spec.shape) != 2 or self.kept(spec):
            return None
        what = dict(self.policy).get(weight_use(spec), "keep")
        if what == "keep":
            return None
        kind = self.scheme if what == "scheme" else what
        if kind.startswith("lut"):
            return Scheme(kind, 0, True)
        return Scheme(kind, self.block_size, self.symmetric or kind == "int8")

    def kept(self, spec: WeightSpec) -> bool:
        names = (spec.key,) + tuple(spec.sources)
        return any(fnmatch.fnmatchcase(n, p) for p in self.keep for n in names)

    def label(self) -> str:
        """The compression as artifacts and reports name it: ``int4`` / ``int4-b64`` / ``lut6``."""
        if self.scheme.startswith("lut") or self.block_size == 32:
            return self.scheme
        return f"{self.scheme}-b{self.block_size}"

    @staticmethod
    def from_json(d: object) -> "Compression":
        """The compression an artifact's contract declares (``UnsupportedError`` naming the field if off)."""
        if not isinstance(d, dict):
            raise UnsupportedError(f"quantize: expected an object, got {type(d).__name__}")
        keys = {"scheme", "block_size", "symmetric", "method", "keep", "policy"}
        if set(d) != keys:
            raise UnsupportedError(f"quantize: expected the fields {sorted(keys)}, got {sorted(map(str, d))}")
        scheme, block, keep, policy = d["scheme"], d["block_size"], d["keep"], d["policy"]
        if not isinstance(scheme, str) or scheme not in SCHEMES:
            raise UnsupportedError(f"quantize.scheme: expected one of {SCHEMES}, got {str(scheme)[:40]!r}")
        if scheme.startswith("lut"):
            block = 32 if block is None else block
        if isinstance(block, bool) or not isinstance(block, int):
            raise UnsupportedError(f"quantize.block_size: expected an integer, got {str(block)[:40]!r}")
        if not isinstance(keep, list) or not all(isinstance(k, str) for k in keep):
            raise UnsupportedError("quantize.keep: expected a list of name patterns")
        if not isinstance(policy, dict) or set(policy) != set(POLICY) or \
                not all(v in ("scheme", "int8", "keep") for v in policy.values()):
            raise UnsupportedError(f"quantize.policy: expected {{use: scheme|int8|keep}} for the uses {sorted(POLICY)}")
        if not isinstance(d["symmetric"], bool):
            raise UnsupportedError("quantize.symmetric: expected true or false")
        return Compression(scheme, block, d["symmetric"], str(d["method"]), tuple(keep), dict(policy))

    def to_json(self) -> dict:
        return {"scheme": self.scheme, "block_size": None if self.scheme.startswith("lut") else self.block_size,
                "symmetric": self.symmetric, "method": self.method, "keep": list(self.keep),
                "policy": dict(self.policy)}


def check_blocks(graph: Graph, comp: Compression, specs) -> None:
    """One line naming the first weight whose input dim the block size does not divide."""
    for spec in specs:
        s = comp.scheme_for(spec)
        if s is not None and not s.is_lut and spec.shape[1] % s.block_size:
            raise UnsupportedError(f"--block-size {s.block_size} does not divide the input dim {spec.shape[1]} "
                                   f"of weight {spec.key} {list(spec.shape)}; pick a divisor of it (e.g. "
                                   f"{_divisor_hint(spec.shape[1])}) or --keep {spec.key}")


def _divisor_hint(n: int) -> int:
    for b in (32, 16, 8, 64, 128):
        if n % b == 0:
            return b
    return n


@dataclass
class QuantizedWeight:
    """A compressed weight ``(out, in)``. Integers: ``codes`` (int8 array, values in the scheme's range),
    ``scale`` (out, in / block) float32, ``offset`` (out, in / block) int8 or None. Palettes: ``codes`` are
    indices (uint8), ``lut`` (out, 2^bits) float32."""

    spec: WeightSpec
    scheme: Scheme
    codes: np.ndarray
    scale: Optional[np.ndarray] = None
    offset: Optional[np.ndarray] = None
    lut: Optional[np.ndarray] = None

    def dequantize(self) -> np.ndarray:
        if self.scheme.is_lut:
            return np.take_along_axis(self.lut, self.codes.astype(np.int64), axis=1).astype(np.float32)
        out, n = self.codes.shape
        b = self.scheme.block_size
        c = self.codes.astype(np.float32).reshape(out, n // b, b)
        if self.offset is not None:
            c = c - self.offset.astype(np.float32)[..., None]
        return (c * self.scale[..., None]).reshape(out, n)

    @property
    def nbytes(self) -> int:
        """Bytes on disk at the scheme's bit width (sub-byte codes packed), scales in fp16."""
        n = self.codes.size * self.scheme.bits // 8
        if self.lut is not None:
            n += self.lut.size * 2
        if self.scale is not None:
            n += self.scale.size * 2
        if self.offset is not None:
            n += self.offset.size * self.scheme.bits // 8
        return n


# -- round to nearest ------------------------------------------------------------------------------
def _int_range(scheme: Scheme) -> Tuple[int, int]:
    if scheme.kind == "int8":
        return -127, 127
    return (-8, 7) if scheme.symmetric else (0, 15)


def _block_params(wb: np.ndarray, scheme: Scheme, shrink: float) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """Scale (and offset) per block of ``wb`` (..., b) with its range shrunk by ``shrink``."""
    lo_q, hi_q = _int_range(scheme)
    if scheme.symmetric or scheme.kind == "int8":
        amax = np.abs(wb).max(axis=-1) * shrink
        scale = np.where(amax > 0, amax / hi_q, 1.0).astype(np.float32)
        return scale, None
    lo, hi = wb.min(axis=-1) * shrink, wb.max(axis=-1) * shrink
    lo, hi = np.minimum(lo, 0.0), np.maximum(hi, 0.0)  # zero stays representable exactly
    scale = np.where(hi > lo, (hi - lo) / (hi_q - lo_q), 1.0).astype(np.float32)
    offset = np.clip(np.round(-lo / scale), lo_q, hi_q).astype(np.int8)
    return scale, offset


def _fp16_scale(scale: np.ndarray) -> np.ndarray:
    """Scales are stored in fp16: quantize against the stored value (tiny ones kept normal)."""
    return np.maximum(scale, 6.2e-5).astype(np.float16).astype(np.float32)


def _codes(wb: np.ndarray, scale: np.ndarray, offset: Optional[np.ndarray], scheme: Scheme) -> np.ndarray:
    lo_q, hi_q = _int_range(scheme)
    z = 0.0 if offset is None else offset.astype(np.float32)[..., None]
    return np.clip(np.round(wb / scale[..., None] + z), lo_q, hi_q).astype(np.int8)


def _rtn_rows(w: np.ndarray, scheme: Scheme, search: bool) -> Tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]:
    out, n = w.shape
    b = scheme.block_size
    wb = w.reshape(out, n // b, b)
    best = None
    for shrink in (CLIP_GRID if search else (1.0,)):
        scale, offset = _block_params(wb, scheme, shrink)
        scale = _fp16_scale(scale)
        codes = _codes(wb, scale, offset, scheme)
        deq = codes.astype(np.float32) - (0.0 if offset is None else offset.astype(np.float32)[..., None])
        err = ((deq * scale[..., None] - wb) ** 2).sum(axis=-1)
        if best is None:
            best = [err, codes, scale, offset]
            continue
        better = err < best[0]
        best[0] = np.where(better, err, best[0])
        best[1] = np.where(better[..., None], codes, best[1])
        best[2] = np.where(better, scale, best[2])
        if offset is not None:
            best[3] = np.where(better, offset, best[3])
    _, codes, scale, offset = best
    return codes.reshape(out, n), scale, offset


def rtn(w: np.ndarray, scheme: Scheme, search: bool = True) -> Tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]:
    """Round-to-nearest codes, scale, offset of ``w`` (out, in), with a per-block clipping search (the
    shrink of the block's range with the least squared error) unless ``search`` is False. Rows go in
    slices of ~1 MB so the candidates' temporaries stay in cache (a 7B model has 6.4e9 weights)."""
    out, n = w.shape
    rows = max(1, (1 << 18) // max(n, 1))
    if out <= rows:
        return _rtn_rows(w, scheme, search)
    codes = np.empty((out, n), dtype=np.int8)
    scales = np.empty((out, n // scheme.block_size), dtype=np.float32)
    asym = not (scheme.symmetric or scheme.kind == "int8")
    offsets = np.empty((out, n // scheme.block_size), dtype=np.int8) if asym else None

    def part(r: int) -> None:
        c, s, o = _rtn_rows(w[r:r + rows], scheme, search)
        codes[r:r + rows], scales[r:r + rows] = c, s
        if offsets is not None:
            offsets[r:r + rows] = o

    # numpy releases the GIL in its array loops: slices in threads use every core (7B: minutes, not an hour)
    with ThreadPoolExecutor(max_workers=QUANT_THREADS) as pool:
        list(pool.map(part, range(0, out, rows)))
    return codes, scales, offsets


# -- GPTQ ------------------------------------------------------------------------------------------
def gptq(w: np.ndarray, hessian: np.ndarray, scheme: Scheme, damp: float = 0.01, lazy: int = 128,
         act_order: bool = True) -> Tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]:
    """GPTQ (Frantar et al. 2022): quantize the columns of ``w`` (out, in) one at a time, spreading each
    column's rounding error over the columns not yet quantized through the inverse Hessian of the
    layer's calibration inputs (``hessian`` = X^T X, in x in).

    ``act_order``: columns in order of decreasing Hessian diagonal (the inputs with the most energy first,
    while the most columns are left to absorb their error), with *static* blocks: each block's scale (and
    offset) chosen up front from the original weights by the clipping search, so the stored layout stays
    blocks of consecutive input columns. Without it, columns go in storage order and each block's
    parameters come from the error-updated weights when the quantizer reaches its first column."""
    import torch

    W = torch.from_numpy(np.array(w, dtype=np.float32)).double()
    H = torch.from_numpy(np.asarray(hessian, dtype=np.float64)).clone()
    out, n = W.shape
    b = scheme.block_size
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    lo_q, hi_q = _int_range(scheme)
    asym = not (scheme.symmetric or scheme.kind == "int8")
    codes = np.zeros((out, n), dtype=np.int8)
    if act_order:
        _, scales, offsets = rtn(W.float().numpy(), scheme)
        perm = torch.argsort(torch.diag(H), descending=True)
        W, H = W[:, perm], H[perm][:, perm]
    else:
        scales = np.zeros((out, n // b), dtype=np.float32)
        offsets = np.zeros((out, n // b), dtype=np.int8) if asym else None
        perm = torch.arange(n)
    H += torch.eye(n, dtype=H.dtype) * (damp * torch.mean(torch.diag(H)))
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    S = torch.from_numpy(scales).double()
    Z = torch.from_numpy(offsets.astype(np.float64)) if offsets is not None else None
    lazy = b * max(1, lazy // b)  # storage order: a block's parameters see every earlier column's update
    for i1 in range(0, n, lazy):
        i2 = min(i1 + lazy, n)
        W1 = W[:, i1:i2].clone()
        Err = torch.zeros_like(W1)
        Hi = Hinv[i1:i2, i1:i2]
        for j in range(i2 - i1):
            col = int(perm[i1 + j])
            g = col // b
            if not act_order and col % b == 0:  # the block's parameters from the error-updated weights
                blk = torch.cat([W1[:, j:], W[:, i2:]], dim=1)[:, :b].float().numpy()
                _, s_, o_ = rtn(blk, scheme)
                S[:, g] = torch.from_numpy(s_[:, 0]).double()
                if Z is not None:
                    Z[:, g] = torch.from_numpy(o_[:, 0].astype(np.float64))
            s = S[:, g]
            z = 0.0 if Z is None else Z[:, g]
            q = torch.clamp(torch.round(W1[:, j] / s + z), lo_q, hi_q)
            codes[:, col] = q.numpy().astype(np.int8)
            e = (W1[:, j] - (q - z) * s) / Hi[j, j]
            W1[:, j:] -= e[:, None] * Hi[j, j:][None, :]
            Err[:, j] = e
        W[:, i2:] -= Err @ Hinv[i1:i2, i2:]
    scales = S.float().numpy()
    offsets = None if Z is None else Z.numpy().astype(np.int8)
    return codes, scales, offsets


# -- palettes --------------------------------------------------------------------------------------
def kmeans_rows(w: np.ndarray, entries: int, iters: int = 12) -> Tuple[np.ndarray, np.ndarray]:
    """Per row of ``w`` (out, in), a palette of ``entries`` values (1-D k-means, initialised at the
    row's quantiles) and each weight's index into it."""
    qs = (np.arange(entries, dtype=np.float64) + 0.5) / entries
    lut = np.quantile(w, qs, axis=1).T.astype(np.float32)  # (out, entries), sorted
    for _ in range(iters):
        idx = _nearest(w, lut)
        sums = np.zeros_like(lut, dtype=np.float64)
        counts = np.zeros_like(lut, dtype=np.float64)
        rows = np.broadcast_to(np.arange(w.shape[0])[:, None], idx.shape)
        np.add.at(sums, (rows, idx), w)
        np.add.at(counts, (rows, idx), 1.0)
        lut = np.where(counts > 0, sums / np.maximum(counts, 1.0), lut).astype(np.float32)
        lut.sort(axis=1)
    lut = lut.astype(np.float16).astype(np.float32)  # stored in fp16
    return _nearest(w, lut).astype(np.uint8), lut


def _nearest(w: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """Index of the nearest palette entry (palette sorted per row): midpoints + searchsorted per row."""
    mids = (lut[:, 1:] + lut[:, :-1]) * 0.5
    out = np.empty(w.shape, dtype=np.int64)
    for r in range(w.shape[0]):
        out[r] = np.searchsorted(mids[r], w[r])
    return out


# -- which weights ---------------------------------------------------------------------------------
def compressed_weights_of(graph: Graph, policy, comp: Compression, batch_size: int = 1,
                          max_matmul_width: Optional[int] = None, form=lambda spec, scheme: None) -> List[tuple]:
    """``(spec, scheme, owner)`` for every weight the step lowering asks for that ``comp`` compresses, tied
    ones included: ``owner`` is the spec whose constant holds it (the first asked with the same identity,
    scheme and ``form``, as the backends cache), so a tied embedding (int8) and LM head (int4) are two
    constants, and tied ones of one scheme are one."""
    from .inventory import Inventory
    from .model import step

    class _Every(Inventory):
        def weight(self, spec: WeightSpec) -> str:
            asked.setdefault(spec.key, spec)
            return super().weight(spec)

    asked: Dict[str, WeightSpec] = {}
    inv = _Every(graph, policy, batch_size)
    inv.max_matmul_width = max_matmul_width
    step(inv, "int32")
    out, owners = [], {}
    for spec in asked.values():
        scheme = comp.scheme_for(spec)
        if scheme is None:
            continue
        ident = spec.identity(graph, policy.dtype(spec.role)) + (scheme, form(spec, scheme))
        owner = owners.setdefault(ident, spec)
        out.append((spec, scheme, owner))
    return out


# -- the hook --------------------------------------------------------------------------------------
def quantize(graph: Graph, spec: WeightSpec, scheme: Scheme, comp: Compression) -> QuantizedWeight:
    """The compressed form of one weight: loaded in float32 through ``prepare_weight``, then quantized
    (GPTQ where the compression carries a Hessian for the weight's input, round-to-nearest otherwise)."""
    w = prepare_weight(graph, spec, "fp32")
    if scheme.is_lut:
        codes, lut = kmeans_rows(w, 2 ** scheme.bits)
        return QuantizedWeight(spec, scheme, codes, lut=lut)
    if w.shape[1] % scheme.block_size:
        raise UnsupportedError(f"--block-size {scheme.block_size} does not divide the input dim {w.shape[1]} "
                               f"of weight {spec.key}")
    h = hessian_for(comp, spec)
    if h is not None:
        codes, scale, offset = gptq(w, h, scheme)
    else:
        codes, scale, offset = rtn(w, scheme)
    return QuantizedWeight(spec, scheme, codes, scale, offset)


def hessian_for(comp: Compression, spec: WeightSpec) -> Optional[np.ndarray]:
    """The calibration Hessian of ``spec``'s input, when GPTQ is asked for and one was collected."""
    if comp.method != "gptq" or not comp.hessians or spec.use == "embedding":
        return None
    for s in spec.sources:
        prefix = s.rsplit(".", 1)[0]
        if prefix in comp.hessians:
            return comp.hessians[prefix]
    return None


def split_sources(graph: Graph, spec, arr: np.ndarray) -> Dict[str, np.ndarray]:
    """The canonical tensors of a prepared 2-D weight: itself as stored, or its sources stacked by rows
    (``build="rows"``: the fused input/forget gate projection)."""
    if spec.build == "as_stored":
        return {spec.sources[0]: arr.reshape(graph.weights[spec.sources[0]].shape)}
    if spec.build != "rows":
        raise ArtifactError(f"compressed weight {spec.key}: layout {spec.build!r} is not compressed by xlstm-export")
    out, start = {}, 0
    for name in spec.sources:
        shape = tuple(graph.weights[name].shape)
        out[name] = arr[start:start + shape[0]].reshape(shape)
        start += shape[0]
    return out


__all__ = ["BITS", "Compression", "compressed_weights_of", "METHODS", "POLICY", "QuantizedWeight", "SCHEMES", "Scheme", "check_blocks",
           "gptq", "kmeans_rows", "quantize", "rtn", "split_sources", "weight_use"]
