"""Core ML lowerings: one decode step (T = 1) of each block kind, as MIL ops.

    x (B, E) --[lower_<kind>(ctx, index, block, x)]--> x' (B, E)        residual stream, ctx.stream dtype

Every lowering reads its recurrent states with ``ctx.read_state`` (fp16 state -> cast to the cell
dtype) and writes them with ``ctx.write_state`` (cast to fp16 -> ``coreml_update_state``); the weights
are frozen constants named by their canonical names (``blocks.3.mlstm.q.weight``), and ops are named
after the canonical module they compute (``blocks.3.mlstm.q``), so a parity failure points at a place.
(The Core ML backend rewrites dots to underscores: ``blocks_3_mlstm_q``.)

Precision (see :class:`Precision`): weights and the linear / conv / headwise matmuls run in
``weights``; the residual stream and norms in ``stream``; gates, exp, the stabilizers, the C/n update,
the normaliser and the sLSTM recurrence in ``cell``. Core ML states are fp16 only. A plain fp16 state
cannot carry the recurrence: the mLSTM output depends on m through ``eps * exp(m)`` and at |m| ~ 8..16
fp16's grid (2^-7) swallows the per-step ``log sigmoid(f)`` of a forget gate near 1, so a stored m stops
following the reference's; C and n lose ~2^-11 per step. States listed in ``split`` are therefore stored
as two fp16 buffers, ``x`` (the fp16 rounding) and ``x_lo`` = (value - x) * 2^11 (the remainder, scaled
out of fp16's subnormal range): value = x + x_lo / 2^11, ~22 significant bits, exact to fp32 in practice.

Measured (``python -m xlstm_export.coreml.measure``; executor of the saved package vs the fp32 reference,
max over every step of max|dlogits| / max|ref logits|):

    policy               hf fixture  hf, stressed  hybrid fixture  hf-recall task  hybrid-copy task
                         1024 tok    gates, 1024   1024 tok        2048 tok        512 tok
    fp32, states split   <5e-5       1e-4          <5e-5           <5e-5           <5e-5
    fp32, m rounded      1.0e-2      0.36          2.6e-3          1.7e-2          9.7e-3
    fp16, states split   7.2e-3      7.8e-2        1.9e-3          1.1e-2          4.3e-3    <- "fp16"
    fp16, only m split   1.3e-2      0.18          3.0e-3          3.1e-2          9.2e-3
    fp16, m rounded      1.4e-2      0.33          3.0e-3          1.6e-2          1.5e-2
    all fp16, plain      8.8e-2      0.64          3.6e-3          0.35            5.2e-2

("stressed gates": the fixture with forget-gate bias +6 and input-gate weights x10, i.e. long memory and
m ~ 15; there fp16 weights alone cost 7.8e-2, fp32 split states alone 1e-4.) Hence "fp16": fp16 weights
and matmuls (the bandwidth), fp32 stream and cell math, C, n, m and the sLSTM state stored split
(2x state memory: for xLSTM-7B 134 MB instead of 67 MB next to 14 GB of weights).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Optional, Sequence, Tuple

import numpy as np

from ..frontends import load_weight
from ..graphs import FFNSpec, Graph, MLSTMBlock, NormSpec, SLSTMBlock
from ..graphs.names import SLSTM_GATES
from ..registry import Registry

NP_DTYPES = {"fp16": np.float16, "fp32": np.float32}


@dataclass(frozen=True)
class Precision:
    """Which dtype each part of the step computes in (``"fp16"`` / ``"fp32"``), and how states are stored."""

    name: str
    weights: str  # weight constants and the matmuls that use them (linear, headwise, conv)
    stream: str  # residual stream, pre-norms, logits soft cap
    cell: str  # gates, exp, stabilizer, C/n update, normaliser, head norm, sLSTM recurrence
    split: Tuple[str, ...] = ("m",)  # state roles stored as fp16 high part + fp16 low part (~22 bits)
    round_m: bool = True  # mLSTM m not split: round it to fp16 before it rescales C and n


SPLIT_FP16 = ("c", "n", "m", "slstm")  # the conv ring holds fp16 matmul outputs already: exact in fp16
SPLIT_FP32 = ("c", "n", "m", "conv", "slstm")

# The two precisions the CLI offers, chosen by measurement (``python -m xlstm_export.coreml.measure``;
# figures in the module docstring): fp16 weights and matmuls, fp32 stream and cell math, recurrent
# states stored as fp16 high + low parts; or everything fp32 (the states still fp16 pairs).
PRECISIONS: Dict[str, Precision] = {
    "fp16": Precision("fp16", weights="fp16", stream="fp32", cell="fp32", split=SPLIT_FP16),
    "fp32": Precision("fp32", weights="fp32", stream="fp32", cell="fp32", split=SPLIT_FP32),
}
# The alternatives measured against them (``emit`` accepts these names; the CLI does not offer them).
EXPERIMENTAL: Dict[str, Precision] = {
    "fp16-split-m": Precision("fp16-split-m", weights="fp16", stream="fp32", cell="fp32", split=("m",)),
    "fp16-round": Precision("fp16-round", weights="fp16", stream="fp32", cell="fp32", split=(), round_m=True),
    "fp16-plain": Precision("fp16-plain", weights="fp16", stream="fp32", cell="fp32", split=(), round_m=False),
    "fp16-stream16": Precision("fp16-stream16", weights="fp16", stream="fp16", cell="fp32", split=SPLIT_FP16),
    "fp16-all": Precision("fp16-all", weights="fp16", stream="fp16", cell="fp16", split=(), round_m=False),
    "fp32-split-m": Precision("fp32-split-m", weights="fp32", stream="fp32", cell="fp32", split=("m",)),
    "fp32-round": Precision("fp32-round", weights="fp32", stream="fp32", cell="fp32", split=(), round_m=True),
}
LOW_SUFFIX = ".lo"  # canonical key of the low part of a split state: "blocks.0.mlstm.m.lo"
# value = high + low / LOW_SCALE. The remainder of an fp16 rounding is at most half an ulp (2^-11 of the
# high part), so scaling it by 2^11 keeps it as large as the high part at most (no overflow) and out of
# fp16's subnormal range for states of small magnitude, where an unscaled remainder would lose its bits.
LOW_SCALE = 2048.0


def core_ml_name(canonical: str) -> str:
    """``blocks.3.mlstm.c`` -> ``blocks_3_mlstm_c``: a valid identifier for a Core ML feature name."""
    return canonical.replace(".", "_")


def stored_states(graph: Graph, batch_size: int, precision: Precision) -> list:
    """Every Core ML state of the package, in order: ``(key, Core ML name, shape, part_of)``.

    The contract's states (``part_of`` None), each one stored split followed by its low part
    (key ``blocks.0.mlstm.m.lo``, ``part_of`` the contract name).
    """
    out = []
    for s in graph.state_contract(batch_size):
        out.append((s.name, core_ml_name(s.name), tuple(s.shape), None))
        if s.role in precision.split:
            key = s.name + LOW_SUFFIX
            out.append((key, core_ml_name(key), tuple(s.shape), s.name))
    return out


class LowerCtx:
    """What lowerings build with: named ops, weight constants (one tensor loaded at a time, tied
    weights once), state reads/updates, and the precision policy."""

    def __init__(self, graph: Graph, precision: Precision, batch_size: int, state_vars: dict):
        from coremltools.converters.mil.mil import Builder as mb

        self.mb = mb
        self.graph = graph
        self.p = precision
        self.B = batch_size
        self.state_vars = state_vars  # canonical state name -> MIL state placeholder var
        self._names: Dict[str, int] = {}
        self._consts: Dict[tuple, object] = {}
        self.weight_bytes = 0  # bytes of weight constants emitted (after dedup of tied weights)

    # -- names and constants -----------------------------------------------------------------
    def name(self, base: str) -> str:
        """A unique op name derived from ``base`` (a canonical module name)."""
        n = self._names.get(base, 0)
        self._names[base] = n + 1
        return base if n == 0 else f"{base}#{n}"

    def scalar(self, value: float, dtype: str):
        return np.array(value, dtype=NP_DTYPES[dtype])

    def const(self, name: str, value: np.ndarray):
        return self.mb.const(val=value, name=self.name(name))

    def weight(self, name: str, dtype: str, offset: float = 0.0,
               transform: Optional[Callable[[np.ndarray], np.ndarray]] = None, key: str = ""):
        """The canonical tensor ``name`` as a constant in ``dtype`` (offset folded in fp32 first, as the
        reference does). Loaded, converted and handed to the builder one tensor at a time."""
        h = self.graph.weights[name]
        ck = (id(h.loader), dtype, offset, key)
        if ck in self._consts:
            return self._consts[ck]
        arr = load_weight(h)
        if offset != 0.0:
            arr = arr + np.float32(offset)
        if transform is not None:
            arr = transform(arr)
        arr = np.ascontiguousarray(arr.astype(NP_DTYPES[dtype], copy=False))
        self.weight_bytes += arr.nbytes
        var = self.const(name + (f".{key}" if key else ""), arr)
        self._consts[ck] = var
        return var

    def stacked(self, name: str, parts: Sequence[str], dtype: str, fn: Callable[[list], np.ndarray]):
        """A constant made of several canonical tensors (e.g. the sLSTM gates side by side)."""
        arrs = [load_weight(self.graph.weights[p]) for p in parts]
        arr = np.ascontiguousarray(fn(arrs).astype(NP_DTYPES[dtype], copy=False))
        del arrs
        self.weight_bytes += arr.nbytes
        return self.const(name, arr)

    # -- ops with the policy's dtypes --------------------------------------------------------
    def cast(self, x, dtype: str, name: str):
        if dtype == _dtype_str(x):
            return x
        return self.mb.cast(x=x, dtype=dtype, name=self.name(name))

    def reshape(self, x, shape: Sequence[int], name: str):
        return self.mb.reshape(x=x, shape=list(shape), name=self.name(name))

    def linear(self, x, prefix: str, bias: bool):
        """``nn.Linear`` named ``prefix``: x (..., in) -> (..., out) in the weights dtype."""
        dt = self.p.weights
        x = self.cast(x, dt, f"{prefix}.in")
        w = self.weight(f"{prefix}.weight", dt)
        kw = {"bias": self.weight(f"{prefix}.bias", dt)} if bias else {}
        return self.mb.linear(x=x, weight=w, name=self.name(prefix), **kw)

    def headwise(self, x, prefix: str, num_blocks: int, bias: bool):
        """Block-diagonal linear: x (B, nb*d_in) with weight (nb, d_out, d_in) -> (B, nb*d_out)."""
        dt = self.p.weights
        w_h = self.graph.weights[f"{prefix}.weight"]
        nb, d_out, d_in = w_h.shape
        x = self.cast(x, dt, f"{prefix}.in")
        xb = self.reshape(x, (self.B, nb, 1, d_in), f"{prefix}.blocks")  # (B, nb, 1, d_in)
        w = self.weight(f"{prefix}.weight", dt)  # (nb, d_out, d_in)
        y = self.mb.matmul(x=xb, y=w, transpose_y=True, name=self.name(prefix))  # (B, nb, 1, d_out)
        y = self.reshape(y, (self.B, nb * d_out), f"{prefix}.flat")  # (B, nb*d_out)
        if bias:
            y = self.mb.add(x=y, y=self.weight(f"{prefix}.bias", dt), name=self.name(f"{prefix}.bias"))
        return y

    def norm(self, x, spec: NormSpec, prefix: str, num_heads: int = 1):
        """RMSNorm / LayerNorm over the last axis of x, in x's dtype; per head when ``num_heads`` > 1
        (x (B, NH, D), weight stored flat (NH*D,) applied as (NH, D))."""
        mb = self.mb
        dt = _dtype_str(x)
        D = x.shape[-1]
        shape = (num_heads, D) if num_heads > 1 else None
        reshape = (lambda a: a.reshape(shape)) if shape else None
        w = self.weight(f"{prefix}.weight", dt, offset=spec.weight_offset, transform=reshape,
                        key="" if num_heads == 1 else "heads")
        b = self.weight(f"{prefix}.bias", dt, transform=reshape, key="" if num_heads == 1 else "heads") \
            if spec.bias else None
        eps = self.scalar(spec.eps, dt)
        if spec.kind == "rmsnorm":
            sq = mb.mul(x=x, y=x, name=self.name(f"{prefix}.square"))
            ms = mb.reduce_mean(x=sq, axes=[-1], keep_dims=True, name=self.name(f"{prefix}.mean_square"))
            r = mb.rsqrt(x=ms, epsilon=eps, name=self.name(f"{prefix}.rsqrt"))
            y = mb.mul(x=x, y=r, name=self.name(f"{prefix}.normed"))
        else:
            y = mb.layer_norm(x=x, axes=[-1], epsilon=eps, name=self.name(f"{prefix}.normed"))
        y = mb.mul(x=y, y=w, name=self.name(prefix))
        if b is not None:
            y = mb.add(x=y, y=b, name=self.name(f"{prefix}.bias"))
        return y

    def activation(self, x, act: str, name: str):
        mb = self.mb
        if act == "silu":
            return mb.silu(x=x, name=self.name(name))
        if act == "gelu":
            return mb.gelu(x=x, mode="EXACT", name=self.name(name))
        if act == "relu":
            return mb.relu(x=x, name=self.name(name))
        return mb.sigmoid(x=x, name=self.name(name))

    def soft_cap(self, x, cap: float, name: str):
        """``cap * tanh(x / cap)``."""
        dt = _dtype_str(x)
        t = self.mb.tanh(x=self.mb.mul(x=x, y=self.scalar(1.0 / cap, dt), name=self.name(f"{name}.scaled")),
                         name=self.name(f"{name}.tanh"))
        return self.mb.mul(x=t, y=self.scalar(cap, dt), name=self.name(name))

    def residual(self, x, y, name: str):
        return self.mb.add(x=x, y=self.cast(y, self.p.stream, f"{name}.cast"), name=self.name(name))

    # -- states -----------------------------------------------------------------------------
    def read_state(self, canonical: str, dtype: str):
        """The state's current value (fp16 on the device) cast to ``dtype``; a split state is its high
        part + its low part (added in fp32)."""
        mb = self.mb
        s = mb.read_state(input=self.state_vars[canonical], name=self.name(f"{canonical}.read"))
        if canonical + LOW_SUFFIX in self.state_vars:
            lo = mb.read_state(input=self.state_vars[canonical + LOW_SUFFIX], name=self.name(f"{canonical}.read.lo"))
            lo = mb.mul(x=self.cast(lo, "fp32", f"{canonical}.read.lo32"), y=self.scalar(1.0 / LOW_SCALE, "fp32"),
                        name=self.name(f"{canonical}.read.lo_unscaled"))
            s = mb.add(x=self.cast(s, "fp32", f"{canonical}.read.hi32"), y=lo, name=self.name(f"{canonical}.read.joined"))
        return self.cast(s, dtype, f"{canonical}.read.cast")

    def write_state(self, canonical: str, value):
        """Store ``value`` as the state's new value: cast to fp16, or split into fp16 high part + fp16
        remainder."""
        mb = self.mb
        if canonical + LOW_SUFFIX not in self.state_vars:
            v = self.cast(value, "fp16", f"{canonical}.new")
            mb.coreml_update_state(state=self.state_vars[canonical], value=v, name=self.name(f"{canonical}.write"))
            return
        value = self.cast(value, "fp32", f"{canonical}.new32")
        hi = mb.cast(x=value, dtype="fp16", name=self.name(f"{canonical}.new"))
        rest = mb.sub(x=value, y=mb.cast(x=hi, dtype="fp32", name=self.name(f"{canonical}.new.hi32")),
                      name=self.name(f"{canonical}.new.rest"))
        mb.coreml_update_state(state=self.state_vars[canonical], value=hi, name=self.name(f"{canonical}.write"))
        rest = mb.mul(x=rest, y=self.scalar(LOW_SCALE, "fp32"), name=self.name(f"{canonical}.new.rest_scaled"))
        lo = mb.cast(x=rest, dtype="fp16", name=self.name(f"{canonical}.new.lo"))
        mb.coreml_update_state(state=self.state_vars[canonical + LOW_SUFFIX], value=lo,
                               name=self.name(f"{canonical}.write.lo"))

    def conv_step(self, x, prefix: str, state: str, K: int):
        """Causal depthwise conv of one new frame, continuing the ring of the last K inputs.

            ring (B, K, D) [oldest..newest] --drop oldest, append x--> full (B, K, D) = new ring
            y = sum_k full[:, k] * w[k] + b            (w (K, D): tap K-1 multiplies the newest frame)
        """
        mb = self.mb
        dt = self.p.weights
        D = x.shape[-1]
        ring = self.read_state(state, dt)  # (B, K, D)
        x = self.cast(x, dt, f"{prefix}.in")
        keep = mb.slice_by_index(x=ring, begin=[0, 1, 0], end=[self.B, K, D],
                                 name=self.name(f"{prefix}.ring_keep"))  # (B, K-1, D)
        x3 = self.reshape(x, (self.B, 1, D), f"{prefix}.frame")  # (B, 1, D)
        full = mb.concat(values=[keep, x3], axis=1, name=self.name(f"{prefix}.window"))  # (B, K, D)
        self.write_state(state, full)
        w = self.weight(f"{prefix}.weight", dt)  # (K, D)
        y = mb.reduce_sum(x=mb.mul(x=full, y=w, name=self.name(f"{prefix}.taps")), axes=[1], keep_dims=False,
                          name=self.name(f"{prefix}.sum"))  # (B, D)
        return mb.add(x=y, y=self.weight(f"{prefix}.bias", dt), name=self.name(prefix))

    # -- the mLSTM cell (shared by both families) --------------------------------------------
    def mlstm_cell(self, p: str, q, k, v, i, f, c, n, m, eps: float):
        """One stabilized step in the cell dtype (the reference's ``kernels.mlstm_step``).

            q, k (B, NH, DQK)   v (B, NH, DV)   i, f, m (B, NH, 1)   c (B, NH, DQK, DV)   n (B, NH, DQK)

            f_log + m = m - softplus(-f)           m' = max(f_log + m, i)   [rounded to fp16]
            C' = exp(f_log + m - m') C + exp(i - m') k v^T       n' = ... n + ... k
            h  = q^T C' / (max(|q . n'|, exp(-m')) + eps)                -> h (B, NH, DV)
        """
        mb, dt, nm = self.mb, self.p.cell, self.name
        neg_f = mb.mul(x=f, y=self.scalar(-1.0, dt), name=nm(f"{p}.f_neg"))
        fm = mb.sub(x=m, y=mb.softplus(x=neg_f, name=nm(f"{p}.f_softplus")), name=nm(f"{p}.f_log_plus_m"))
        m_new = mb.maximum(x=fm, y=i, name=nm(f"{p}.m_new"))  # (B, NH, 1)
        if self.p.round_m and "m" not in self.p.split and dt != "fp16":
            m_new = mb.cast(x=mb.cast(x=m_new, dtype="fp16", name=nm(f"{p}.m_new.fp16")), dtype=dt,
                            name=nm(f"{p}.m_new.rounded"))
        f_act = mb.exp(x=mb.sub(x=fm, y=m_new, name=nm(f"{p}.f_log_act")), name=nm(f"{p}.f_act"))  # (B, NH, 1)
        i_act = mb.exp(x=mb.sub(x=i, y=m_new, name=nm(f"{p}.i_log_act")), name=nm(f"{p}.i_act"))
        B, NH, DQK = q.shape
        DV = v.shape[-1]
        f4 = mb.expand_dims(x=f_act, axes=[-1], name=nm(f"{p}.f_act4"))  # (B, NH, 1, 1)
        ik = mb.mul(x=i_act, y=k, name=nm(f"{p}.i_k"))  # (B, NH, DQK)
        kv = mb.mul(x=mb.expand_dims(x=ik, axes=[-1], name=nm(f"{p}.i_k4")),
                    y=mb.expand_dims(x=v, axes=[-2], name=nm(f"{p}.v4")), name=nm(f"{p}.kv"))  # (B, NH, DQK, DV)
        c_new = mb.add(x=mb.mul(x=f4, y=c, name=nm(f"{p}.c_decay")), y=kv, name=nm(f"{p}.c_new"))
        n_new = mb.add(x=mb.mul(x=f_act, y=n, name=nm(f"{p}.n_decay")), y=ik, name=nm(f"{p}.n_new"))
        q4 = mb.expand_dims(x=q, axes=[-2], name=nm(f"{p}.q4"))  # (B, NH, 1, DQK)
        h_num = mb.reshape(x=mb.matmul(x=q4, y=c_new, name=nm(f"{p}.h_num4")), shape=[B, NH, DV],
                           name=nm(f"{p}.h_num"))  # (B, NH, DV)
        qn = mb.reduce_sum(x=mb.mul(x=q, y=n_new, name=nm(f"{p}.q_n")), axes=[-1], keep_dims=True,
                           name=nm(f"{p}.qn"))  # (B, NH, 1)
        floor = mb.exp(x=mb.mul(x=m_new, y=self.scalar(-1.0, dt), name=nm(f"{p}.m_neg")), name=nm(f"{p}.floor"))
        den = mb.add(x=mb.maximum(x=mb.abs(x=qn, name=nm(f"{p}.qn_abs")), y=floor, name=nm(f"{p}.den_max")),
                     y=self.scalar(eps, dt), name=nm(f"{p}.den"))
        h = mb.real_div(x=h_num, y=den, name=nm(f"{p}.h"))  # (B, NH, DV)
        return h, c_new, n_new, m_new

    def ffn(self, x, spec: FFNSpec, index: int):
        """``x -> down(act(gate(norm(x))) * up(norm(x)))`` (the residual add is the caller's)."""
        p = f"blocks.{index}"
        xn = self.norm(x, spec.norm, f"{p}.ffn_norm")
        g = self.linear(xn, f"{p}.ffn.gate", spec.bias)
        u = self.linear(xn, f"{p}.ffn.up", spec.bias)
        a = self.mb.mul(x=self.activation(g, spec.activation, f"{p}.ffn.act"), y=u, name=self.name(f"{p}.ffn.gated"))
        return self.linear(a, f"{p}.ffn.down", spec.bias)


def _dtype_str(x) -> str:
    from coremltools.converters.mil.mil import types

    return types.builtin_to_string(x.dtype)


LOWERINGS: Registry = Registry("coreml")


@LOWERINGS.register("mlstm/large")
def lower_mlstm_large(ctx: LowerCtx, index: int, block: MLSTMBlock, x):
    """L family block (xLSTM-Large / xLSTM-7B), one step::

        x ─ norm ─┬─ q, k, v (Linear) ──────────┐
                  ├─ i, f (Linear + soft cap) ──┴─ cell(C, n, m) ─ head_norm ─┐
                  └─ ogate (Linear) ─ sigmoid ──────────────────────────── * ─┴─ out_proj ─ + x
        x ─ ffn_norm ─ down(silu(gate) * up) ─ + x
    """
    mb, nm, dt = ctx.mb, ctx.name, ctx.p.cell
    B, NH, DQK, DV = ctx.B, block.num_heads, block.qk_head_dim, block.v_head_dim
    p = f"blocks.{index}.mlstm"
    xn = ctx.norm(x, block.norm, f"blocks.{index}.norm")  # (B, E)
    q = ctx.cast(ctx.reshape(ctx.linear(xn, f"{p}.q", block.bias), (B, NH, DQK), f"{p}.q.heads"), dt, f"{p}.q.cell")
    q = mb.mul(x=q, y=ctx.scalar(DQK ** -0.5, dt), name=nm(f"{p}.q.scaled"))  # (B, NH, DQK)
    k = ctx.cast(ctx.reshape(ctx.linear(xn, f"{p}.k", block.bias), (B, NH, DQK), f"{p}.k.heads"), dt, f"{p}.k.cell")
    v = ctx.cast(ctx.reshape(ctx.linear(xn, f"{p}.v", block.bias), (B, NH, DV), f"{p}.v.heads"), dt, f"{p}.v.cell")
    gates = []
    for g in ("igate", "fgate"):
        a = ctx.cast(ctx.linear(xn, f"{p}.{g}", True), dt, f"{p}.{g}.cell")  # (B, NH)
        if block.gate_soft_cap is not None:
            a = ctx.soft_cap(a, float(block.gate_soft_cap), f"{p}.{g}.capped")
        gates.append(ctx.reshape(a, (B, NH, 1), f"{p}.{g}.heads"))  # (B, NH, 1)
    c = ctx.read_state(f"{p}.c", dt)  # (B, NH, DQK, DV)
    n = ctx.read_state(f"{p}.n", dt)  # (B, NH, DQK)
    m = ctx.read_state(f"{p}.m", dt)  # (B, NH, 1)
    h, c, n, m = ctx.mlstm_cell(f"{p}.cell", q, k, v, gates[0], gates[1], c, n, m, float(block.cell_eps))
    ctx.write_state(f"{p}.c", c)
    ctx.write_state(f"{p}.n", n)
    ctx.write_state(f"{p}.m", m)
    h = ctx.norm(h, block.head_norm, f"{p}.head_norm", NH)  # (B, NH, DV)
    h = ctx.cast(ctx.reshape(h, (B, NH * DV), f"{p}.h"), ctx.p.weights, f"{p}.h.cast")
    o = mb.sigmoid(x=ctx.linear(xn, f"{p}.ogate", block.bias), name=nm(f"{p}.ogate.act"))  # (B, NH*DV)
    y = ctx.linear(mb.mul(x=o, y=h, name=nm(f"{p}.gated")), f"{p}.out_proj", block.bias)  # (B, E)
    x = ctx.residual(x, y, f"blocks.{index}.mlstm_residual")
    if block.ffn is not None:
        x = ctx.residual(x, ctx.ffn(x, block.ffn, index), f"blocks.{index}.ffn_residual")
    return x


@LOWERINGS.register("mlstm/hybrid")
def lower_mlstm_hybrid(ctx: LowerCtx, index: int, block: MLSTMBlock, x):
    """H family mLSTM block (upstream ``mLSTMLayer``), one step::

        x ─ norm ─┬─ up_x ─┬─ conv(ring) ─ silu ─ xc ─┬─ q, k (headwise) ─┐
                  │        └──────────────────────────┼─ v (headwise) ────┴─ i, f = Linear(cat(q, k, v))
                  │                                   │   cell(C, n, m) ─ head_norm ─ + skip * xc ─┐
                  └─ up_z ─ silu ───────────────────────────────────────────────────────────── * ─┴─ out_proj ─ + x
    """
    mb, nm, dt = ctx.mb, ctx.name, ctx.p.cell
    B, NH, DH, inner = ctx.B, block.num_heads, block.qk_head_dim, block.inner_dim
    nb = inner // block.qkv_blocksize
    p = f"blocks.{index}.mlstm"
    xn = ctx.norm(x, block.norm, f"blocks.{index}.norm")  # (B, E)
    xm = ctx.linear(xn, f"{p}.up_x", block.bias)  # (B, inner)
    z = ctx.linear(xn, f"{p}.up_z", block.bias)  # (B, inner)
    if block.conv_kernel > 0:
        xc = mb.silu(x=ctx.conv_step(xm, f"{p}.conv", f"{p}.conv", block.conv_kernel), name=nm(f"{p}.conv.act"))
    else:
        xc = xm
    q = ctx.headwise(xc, f"{p}.q", nb, block.bias)  # (B, inner)
    k = ctx.headwise(xc, f"{p}.k", nb, block.bias)
    v = ctx.headwise(xm, f"{p}.v", nb, block.bias)
    qkv = mb.concat(values=[q, k, v], axis=-1, name=nm(f"{p}.gates_in"))  # (B, 3*inner)
    gates = [ctx.reshape(ctx.cast(ctx.linear(qkv, f"{p}.{g}", True), dt, f"{p}.{g}.cell"), (B, NH, 1),
                         f"{p}.{g}.heads") for g in ("igate", "fgate")]  # (B, NH, 1)
    qh = ctx.cast(ctx.reshape(q, (B, NH, DH), f"{p}.q.heads"), dt, f"{p}.q.cell")  # (B, NH, DH)
    kh = ctx.cast(ctx.reshape(k, (B, NH, DH), f"{p}.k.heads"), dt, f"{p}.k.cell")
    kh = mb.mul(x=kh, y=ctx.scalar(DH ** -0.5, dt), name=nm(f"{p}.k.scaled"))
    vh = ctx.cast(ctx.reshape(v, (B, NH, DH), f"{p}.v.heads"), dt, f"{p}.v.cell")
    c = ctx.read_state(f"{p}.c", dt)  # (B, NH, DH, DH)
    n = ctx.reshape(ctx.read_state(f"{p}.n", dt), (B, NH, DH), f"{p}.n.cell")  # (B, NH, DH, 1) -> (B, NH, DH)
    m = ctx.reshape(ctx.read_state(f"{p}.m", dt), (B, NH, 1), f"{p}.m.cell")  # (B, NH, 1, 1) -> (B, NH, 1)
    h, c, n, m = ctx.mlstm_cell(f"{p}.cell", qh, kh, vh, gates[0], gates[1], c, n, m, float(block.cell_eps))
    ctx.write_state(f"{p}.c", c)
    ctx.write_state(f"{p}.n", ctx.reshape(n, (B, NH, DH, 1), f"{p}.n.state"))
    ctx.write_state(f"{p}.m", ctx.reshape(m, (B, NH, 1, 1), f"{p}.m.state"))
    h = ctx.norm(h, block.head_norm, f"{p}.head_norm", NH)  # (B, NH, DH)
    h = ctx.cast(ctx.reshape(h, (B, inner), f"{p}.h"), ctx.p.weights, f"{p}.h.cast")  # (B, inner)
    skip = mb.mul(x=ctx.weight(f"{p}.skip.weight", ctx.p.weights), y=xc, name=nm(f"{p}.skip"))
    h = mb.mul(x=mb.add(x=h, y=skip, name=nm(f"{p}.h_skip")), y=mb.silu(x=z, name=nm(f"{p}.up_z.act")),
               name=nm(f"{p}.gated"))
    y = ctx.linear(h, f"{p}.out_proj", block.bias)  # (B, E)
    return ctx.residual(x, y, f"blocks.{index}.mlstm_residual")


@LOWERINGS.register("slstm")
def lower_slstm(ctx: LowerCtx, index: int, block: SLSTMBlock, x):
    """H family sLSTM block (upstream ``sLSTMLayer``, vanilla cell), one step::

        x ─ norm ─┬─ conv(ring) ─ silu ─ xc ─ [i f] (headwise) ─┐
                  └──────────────────── xn ─ [z o] (headwise) ─┴─ + R [y] + b ─ cell(y, c, n, m) ─ head_norm ─ + x
        x ─ ffn_norm ─ down(act(gate) * up) ─ + x

    Per head, the four gates sit side by side on the last axis ([i f z o], 4*DH), so the input and
    recurrent contributions are three batched matmuls against block-diagonal constants.
    """
    mb, nm, dt, wdt = ctx.mb, ctx.name, ctx.p.cell, ctx.p.weights
    B, NH, DH = ctx.B, block.num_heads, block.head_dim
    E = NH * DH
    p = f"blocks.{index}.slstm"
    xn = ctx.cast(ctx.norm(x, block.norm, f"blocks.{index}.norm"), wdt, f"blocks.{index}.norm.cast")  # (B, E)
    if block.conv_kernel > 0:
        xc = mb.silu(x=ctx.conv_step(xn, f"{p}.conv", f"{p}.conv", block.conv_kernel), name=nm(f"{p}.conv.act"))
    else:
        xc = xn
    gw = [f"{p}.{g}gate.weight" for g in SLSTM_GATES]  # each (NH, DH, DH)
    cat1 = lambda arrs: np.concatenate(arrs, axis=1)  # noqa: E731  -> (NH, n*DH, DH)
    w_if = ctx.stacked(f"{p}.if_gates.weight", gw[:2], wdt, cat1)  # (NH, 2DH, DH)
    w_zo = ctx.stacked(f"{p}.zo_gates.weight", gw[2:], wdt, cat1)
    xc4 = ctx.reshape(xc, (B, NH, 1, DH), f"{p}.xc.heads")
    xn4 = ctx.reshape(xn, (B, NH, 1, DH), f"{p}.xn.heads")
    wx = mb.concat(values=[mb.matmul(x=xc4, y=w_if, transpose_y=True, name=nm(f"{p}.if_gates")),
                           mb.matmul(x=xn4, y=w_zo, transpose_y=True, name=nm(f"{p}.zo_gates"))],
                   axis=-1, name=nm(f"{p}.wx"))  # (B, NH, 1, 4DH)
    wx = ctx.cast(wx, dt, f"{p}.wx.cell")
    r = ctx.stacked(f"{p}.recurrent", [f"{p}.{g}gate.recurrent" for g in SLSTM_GATES], dt, cat1)  # (NH, 4DH, DH)
    bias = ctx.stacked(f"{p}.bias", [f"{p}.{g}gate.bias" for g in SLSTM_GATES], dt,
                       lambda a: np.stack(a).reshape(4, NH, DH).transpose(1, 0, 2).reshape(NH, 1, 4 * DH))
    st = ctx.reshape(ctx.read_state(f"{p}.state", dt), (4 * B, NH, 1, DH), f"{p}.state.heads")  # rows y, c, n, m
    y, c, n, m = mb.split(x=st, num_splits=4, axis=0, name=nm(f"{p}.state.rows"))  # each (B, NH, 1, DH)
    ry = mb.matmul(x=y, y=r, transpose_y=True, name=nm(f"{p}.ry"))  # (B, NH, 1, 4DH)
    raw = mb.add(x=mb.add(x=wx, y=ry, name=nm(f"{p}.raw_in")), y=bias, name=nm(f"{p}.raw"))  # (B, NH, 1, 4DH)
    i_raw, f_raw, z_raw, o_raw = mb.split(x=raw, num_splits=4, axis=-1, name=nm(f"{p}.gates"))  # (B, NH, 1, DH)
    neg_f = mb.mul(x=f_raw, y=ctx.scalar(-1.0, dt), name=nm(f"{p}.cell.f_neg"))
    fm = mb.sub(x=m, y=mb.softplus(x=neg_f, name=nm(f"{p}.cell.f_softplus")), name=nm(f"{p}.cell.f_log_plus_m"))
    m_new = mb.maximum(x=i_raw, y=fm, name=nm(f"{p}.cell.m_new"))
    if ctx.p.round_m and "slstm" not in ctx.p.split and dt != "fp16":  # stored m exact, c and n consistent
        m_new = mb.cast(x=mb.cast(x=m_new, dtype="fp16", name=nm(f"{p}.cell.m_new.fp16")), dtype=dt,
                        name=nm(f"{p}.cell.m_new.rounded"))
    i_act = mb.exp(x=mb.sub(x=i_raw, y=m_new, name=nm(f"{p}.cell.i_log_act")), name=nm(f"{p}.cell.i_act"))
    f_act = mb.exp(x=mb.sub(x=fm, y=m_new, name=nm(f"{p}.cell.f_log_act")), name=nm(f"{p}.cell.f_act"))
    c_new = mb.add(x=mb.mul(x=f_act, y=c, name=nm(f"{p}.cell.c_decay")),
                   y=mb.mul(x=i_act, y=mb.tanh(x=z_raw, name=nm(f"{p}.cell.z_act")), name=nm(f"{p}.cell.c_in")),
                   name=nm(f"{p}.cell.c_new"))
    n_new = mb.add(x=mb.mul(x=f_act, y=n, name=nm(f"{p}.cell.n_decay")), y=i_act, name=nm(f"{p}.cell.n_new"))
    y_new = mb.real_div(x=mb.mul(x=mb.sigmoid(x=o_raw, name=nm(f"{p}.cell.o_act")), y=c_new,
                                 name=nm(f"{p}.cell.o_c")), y=n_new, name=nm(f"{p}.cell.y_new"))
    new = mb.concat(values=[y_new, c_new, n_new, m_new], axis=0, name=nm(f"{p}.state.new_rows"))  # (4B, NH, 1, DH)
    ctx.write_state(f"{p}.state", ctx.reshape(new, (4, B, E), f"{p}.state.flat"))
    h = ctx.norm(ctx.reshape(y_new, (B, NH, DH), f"{p}.y"), block.head_norm, f"{p}.head_norm", NH)  # (B, NH, DH)
    x = ctx.residual(x, ctx.reshape(h, (B, E), f"{p}.out"), f"blocks.{index}.slstm_residual")
    if block.ffn is not None:
        x = ctx.residual(x, ctx.ffn(x, block.ffn, index), f"blocks.{index}.ffn_residual")
    return x


def lower_model(ctx: LowerCtx, input_ids):
    """The whole step::

        input_ids (B, 1) ─ gather(embedding) ─ blocks ─ out_norm ─ lm_head ─ soft cap ─ logits (B, 1, V)
    """
    mb, nm = ctx.mb, ctx.name
    g = ctx.graph
    cfg = g.config
    B, E, V = ctx.B, cfg.embedding_dim, cfg.vocab_size
    # The vocab matrices are usually the largest tensors: made into constants first, their float32
    # transients coincide with few other constants (made last, the lm_head's sat on top of all of them).
    head = ctx.weight("lm_head.weight", ctx.p.weights)  # (V, E)
    emb = ctx.weight("embedding.weight", ctx.p.weights)  # (V, E)
    x = mb.gather(x=emb, indices=input_ids, axis=0, name=nm("embedding"))  # (B, 1, E)
    x = ctx.cast(ctx.reshape(x, (B, E), "embedding.flat"), ctx.p.stream, "embedding.cast")  # (B, E)
    for i, block in enumerate(g.blocks):
        x = LOWERINGS[block](ctx, i, block, x)
    if cfg.out_norm is not None:
        x = ctx.norm(x, cfg.out_norm, "out_norm")
    logits = mb.linear(x=ctx.cast(x, ctx.p.weights, "lm_head.in"), weight=head, name=nm("lm_head"))
    logits = ctx.cast(logits, "fp32", "lm_head.cast")  # (B, V)
    if cfg.output_logit_soft_cap:
        logits = ctx.soft_cap(logits, float(cfg.output_logit_soft_cap), "logits.capped")
    return mb.reshape(x=logits, shape=[B, 1, V], name="logits")  # (B, 1, V)


__all__ = ["LOWERINGS", "LowerCtx", "Precision", "PRECISIONS", "EXPERIMENTAL", "LOW_SCALE", "LOW_SUFFIX", "core_ml_name",
           "lower_model", "stored_states"]
