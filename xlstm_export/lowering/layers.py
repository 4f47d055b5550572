"""Layers every block lowering uses, written once against the ops protocol (``ops.py``).

Each mirrors a piece of the reference (``reference/model.py``, ``reference/kernels.py``), which stays
independent: it is the oracle these are checked against.
"""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

from ..graphs import FFNSpec, NormSpec, StateSpec
from .ops import V, Ops, marked
from .weights import WeightSpec


def linear(ops: Ops, x: V, prefix: str, bias: bool) -> V:
    """``nn.Linear`` named ``prefix``: x (R, in) -> (R, out) in the weights dtype."""
    g = ops.graph
    x = ops.cast(x, "weights", f"{prefix}.in")
    b = WeightSpec.bias(g, prefix) if bias else None
    return ops.linear(x, WeightSpec.linear(g, prefix), b, prefix)


def rows(ops: Ops) -> int:
    """Rows of the activations: B for a step, B*T for a prefill chunk."""
    return ops.batch * ops.tokens


def fused_gates(ops: Ops, x: V, prefix: str, heads: int, cap: Optional[float]) -> Tuple[V, V]:
    """The input and forget gate pre-activations as one Linear (``igate`` and ``fgate`` stacked by rows),
    soft-capped, split per head, time on axis 2::

        x (R, in) --Linear [W_i; W_f] + [b_i; b_f]--> (R, 2NH) --cap--> (B, 2NH, T, 1) --split--> i, f (B, NH, T, 1)
    """
    g, B, T = ops.graph, ops.batch, ops.tokens
    w = WeightSpec.stacked_rows(g, f"{prefix}.gates.weight", (f"{prefix}.igate.weight", f"{prefix}.fgate.weight"),
                                "linear")
    b = WeightSpec.stacked_rows(g, f"{prefix}.gates.bias", (f"{prefix}.igate.bias", f"{prefix}.fgate.bias"), "bias")
    y = ops.linear(ops.cast(x, "weights", f"{prefix}.gates.in"), w, b, f"{prefix}.gates")  # (R, 2NH)
    y = ops.cast(y, "cell", f"{prefix}.gates")
    if cap is not None:
        y = soft_cap(ops, y, cap, f"{prefix}.gates.capped")
    if T > 1:  # (B, T, 2NH) -> (B, 2NH, T)
        y = ops.transpose(ops.reshape(y, (B, T, 2 * heads), f"{prefix}.gates.time"), (0, 2, 1),
                          f"{prefix}.gates.time_last")
    y = ops.reshape(y, (B, 2 * heads, T, 1), f"{prefix}.gates.heads")
    i, f = ops.split(y, (heads, heads), 1, f"{prefix}.gates.split")
    return i, f


def to_heads(ops: Ops, x: V, heads: int, dim: int, name: str, keys: bool = False) -> V:
    """Rows (R, NH*D) -> (B, NH, T, D), or with ``keys`` (B, NH, D, T) (k^T, what ``Q K^T`` and ``k v^T`` take).
    One reshape for a step (T = 1), reshape + transpose for a chunk."""
    B, T = ops.batch, ops.tokens
    if T == 1:
        return ops.reshape(x, (B, heads, dim, 1) if keys else (B, heads, 1, dim), name)
    x = ops.reshape(x, (B, T, heads, dim), f"{name}.split")
    return ops.transpose(x, (0, 2, 3, 1) if keys else (0, 2, 1, 3), name)


def from_heads(ops: Ops, h: V, heads: int, dim: int, name: str) -> V:
    """(B, NH, T, D) -> rows (R, NH*D), row b*T + t."""
    B, T = ops.batch, ops.tokens
    if T > 1:
        h = ops.transpose(h, (0, 2, 1, 3), f"{name}.time_major")  # (B, T, NH, D)
    return ops.reshape(h, (B * T, heads * dim), name)


def headwise(ops: Ops, xb: V, prefix: str, bias: bool) -> V:
    """Block-diagonal linear on input already in blocks: xb (R, nb, 1, bi) -> (R, nb*bo) (+ bias)."""
    g = ops.graph
    nb, bo, _ = g.weights[f"{prefix}.weight"].shape
    y = ops.matmul(xb, ops.weight(WeightSpec.headwise(g, f"{prefix}.weight", (f"{prefix}.weight",))), prefix)
    y = ops.reshape(y, (rows(ops), nb * bo), f"{prefix}.flat")  # (R, nb*bo)
    if bias:
        y = ops.add(y, ops.weight(WeightSpec.bias(g, prefix)), f"{prefix}.bias")
    return y


def norm(ops: Ops, x: V, spec: NormSpec, prefix: str, heads: int = 0) -> V:
    """RMSNorm / LayerNorm over the last axis, statistics in the norm dtype, result in the stream dtype.

    ``heads`` > 0: x (B, NH, 1, D) and the (NH*D,) weight applied as (NH, 1, D) (per-head norm).
    A LayerNorm over the whole row takes its weight (``1 + w`` in the H family) inside the one op.

        rms:   y = x / sqrt(mean(x^2) + eps) * w
        layer: y = layer_norm(x) * w (+ b)
    """
    g = ops.graph
    (D,) = g.weights[f"{prefix}.weight"].shape
    xf = ops.cast(x, "norm", f"{prefix}.in")
    if spec.kind == "layernorm" and not heads:
        gamma = ops.weight(WeightSpec.tensor(g, f"{prefix}.weight", "norm", "norm", offset=spec.weight_offset))
        beta = ops.weight(WeightSpec.tensor(g, f"{prefix}.bias", "norm", "norm")) if spec.bias else None
        return ops.cast(ops.layer_norm(xf, D, spec.eps, gamma, beta, prefix), "stream", prefix)
    if spec.kind == "layernorm":
        y = ops.layer_norm(xf, D // heads, spec.eps, None, None, f"{prefix}.normed")
    else:
        ms = ops.reduce_mean(ops.mul(xf, xf, f"{prefix}.square"), -1, True, f"{prefix}.mean_square")
        std = ops.sqrt(ops.add(ms, ops.const(spec.eps, ms), f"{prefix}.var_eps"), f"{prefix}.std")
        y = ops.div(xf, std, f"{prefix}.normed")
    y = ops.cast(y, "stream", f"{prefix}.normed")
    shape = (heads, 1, D // heads) if heads else None
    w = ops.weight(WeightSpec.tensor(g, f"{prefix}.weight", "norm", "stream", shape, offset=spec.weight_offset))
    if not spec.bias:
        return ops.mul(y, w, prefix)
    y = ops.mul(y, w, f"{prefix}.scale")
    return ops.add(y, ops.weight(WeightSpec.tensor(g, f"{prefix}.bias", "norm", "stream", shape)), prefix)


def soft_cap(ops: Ops, x: V, cap: float, name: str) -> V:
    """``cap * tanh(x / cap)``."""
    t = ops.tanh(ops.mul(x, ops.const(1.0 / cap, x), f"{name}.scaled"), f"{name}.tanh")
    return ops.mul(t, ops.const(cap, x), name)


def silu(ops: Ops, x: V, name: str) -> V:
    """``x * sigmoid(x)`` (two ops: ONNX has no SiLU the Core ML EP takes)."""
    return ops.mul(x, ops.sigmoid(x, f"{name}.sigmoid"), name)


def activation(ops: Ops, x: V, kind: str, name: str) -> V:
    """The FFN's nonlinearity, computed in the ``act`` dtype; the result in the weights dtype."""
    x = ops.cast(x, "act", f"{name}.in")
    if kind == "silu":
        y = silu(ops, x, name)
    elif kind == "gelu":
        y = ops.gelu(x, name)
    elif kind == "relu":
        y = ops.relu(x, name)
    else:
        y = ops.sigmoid(x, name)
    return ops.cast(y, "weights", name)


def residual(ops: Ops, x: V, y: V, name: str) -> V:
    """``x + y`` on the residual stream (y cast to the stream dtype)."""
    return ops.add(x, ops.cast(y, "stream", name), name)


def ffn(ops: Ops, x: V, spec: FFNSpec, index: int) -> V:
    """``down(act(gate(n)) * up(n))``, ``n = ffn_norm(x)``; x (B, E) -> (B, E) (the residual is the caller's)."""
    p = f"blocks.{index}"
    xn = norm(ops, x, spec.norm, f"{p}.ffn_norm")
    g = activation(ops, linear(ops, xn, f"{p}.ffn.gate", spec.bias), spec.activation, f"{p}.ffn.act")
    u = linear(ops, xn, f"{p}.ffn.up", spec.bias)
    return linear(ops, ops.mul(g, u, f"{p}.ffn.gated"), f"{p}.ffn.down", spec.bias)


def conv_step(ops: Ops, x: V, ring: StateSpec, prefix: str) -> V:
    """Causal depthwise conv of one new frame over the ring of the last K inputs (oldest first)::

        ring (B, K, D) --drop oldest, append x--> window (B, K, D) = the next ring
        y = sum_k window[:, k] * w[k] + b        (B, D); w (K, D), tap K-1 multiplies the newest frame
    """
    g, B = ops.graph, ops.batch
    _, K, D = ring.shape
    x = ops.cast(x, "weights", f"{prefix}.frame")
    frame = ops.reshape(x, (B, 1, D), f"{prefix}.frame")  # (B, 1, D)
    if K > 1:
        old = ops.read_state(ring, "weights")  # (B, K, D)
        keep = ops.slice(old, 1, 1, K, f"{prefix}.ring_keep")  # (B, K-1, D)
        window = ops.concat([keep, frame], 1, f"{prefix}.window")  # (B, K, D)
    else:
        window = frame
    ops.write_state(ring, window)
    w = ops.weight(WeightSpec.tensor(g, f"{prefix}.weight", "conv", "weights"))  # (K, D)
    y = ops.reduce_sum(ops.mul(window, w, f"{prefix}.taps"), 1, False, f"{prefix}.sum")  # (B, D)
    return ops.add(y, ops.weight(WeightSpec.tensor(g, f"{prefix}.bias", "conv", "weights")), f"{prefix}.out")


def conv_sequence(ops: Ops, x: V, ring: StateSpec, prefix: str) -> V:
    """The causal depthwise conv over a chunk of T frames, continuing from the ring (the reference's
    ``kernels.causal_conv``)::

        full = ring[:, 1:] ++ frames            (B, K-1+T, D)
        y_t  = sum_k full[:, t+k] * w[k] + b    (R, D), row b*T + t
        next ring = full[:, T-1:]               the last K frames
    """
    g, B, T = ops.graph, ops.batch, ops.tokens
    _, K, D = ring.shape
    frames = ops.reshape(ops.cast(x, "weights", f"{prefix}.frame"), (B, T, D), f"{prefix}.frames")  # (B, T, D)
    if K > 1:
        old = ops.read_state(ring, "weights")  # (B, K, D)
        keep = ops.slice(old, 1, 1, K, f"{prefix}.ring_keep")  # (B, K-1, D)
        full = ops.concat([keep, frames], 1, f"{prefix}.window")  # (B, K-1+T, D)
    else:
        full = frames
    ops.write_state(ring, ops.slice(full, 1, T - 1, T - 1 + K, f"{prefix}.ring_next") if T > 1 else full)
    w = ops.weight(WeightSpec.tensor(g, f"{prefix}.weight", "conv", "weights"))  # (K, D)
    y = None
    for k in range(K):
        tap = ops.mul(ops.slice(full, 1, k, k + T, f"{prefix}.tap{k}.frames"),
                      ops.slice(w, 0, k, k + 1, f"{prefix}.tap{k}.weight"), f"{prefix}.tap{k}")  # (B, T, D)
        y = tap if y is None else ops.add(y, tap, f"{prefix}.sum{k}")
    y = ops.add(y, ops.weight(WeightSpec.tensor(g, f"{prefix}.bias", "conv", "weights")), f"{prefix}.out")
    return ops.reshape(y, (B * T, D), f"{prefix}.rows")


def as_shape(ops: Ops, x: V, have: Tuple[int, ...], want: Tuple[int, ...], name: str) -> V:
    """x viewed as ``want`` (no op when the contract's layout already is ``want``)."""
    return x if tuple(have) == tuple(want) else ops.reshape(x, want, name)


def mlstm_cell(ops: Ops, p: str, q: V, k: V, v: V, i: V, f: V, c: V, n: V, m: V, eps: float
               ) -> Tuple[V, V, V, V]:
    """One stabilised mLSTM step in the cell dtype (the reference's ``kernels.mlstm_step``)::

        q (B, NH, 1, DQK)  k (B, NH, DQK, 1)  v (B, NH, 1, DV)  i, f, m (B, NH, 1, 1)
        C (B, NH, DQK, DV)  n (B, NH, DQK, 1)

        f_log + m = m - softplus(-f)            m' = max(f_log + m, i)
        C' = exp(f_log + m - m') C + exp(i - m') k v^T       n' = ... n + ... k
        h  = q C' / (max(|q n'|, exp(-m')) + eps)            h (B, NH, 1, DV)
    """
    c_ = f"{p}.cell"
    f_neg = ops.mul(f, ops.const(-1.0, f), f"{c_}.f_neg")
    f_m = ops.sub(m, ops.softplus(f_neg, f"{c_}.f_softplus"), f"{c_}.f_log_plus_m")
    m_new = ops.maximum(f_m, i, f"{c_}.m_new")  # (B, NH, 1, 1)
    f_act = ops.exp(ops.sub(f_m, m_new, f"{c_}.f_log_act"), f"{c_}.f_act")
    i_act = ops.exp(ops.sub(i, m_new, f"{c_}.i_log_act"), f"{c_}.i_act")
    ik = ops.mul(i_act, k, f"{c_}.i_k")  # (B, NH, DQK, 1)
    c_new = ops.add(ops.mul(f_act, c, f"{c_}.c_decay"), ops.mul(ik, v, f"{c_}.kv"), f"{c_}.c_new")
    n_new = ops.add(ops.mul(f_act, n, f"{c_}.n_decay"), ik, f"{c_}.n_new")  # (B, NH, DQK, 1)
    h_num = ops.matmul(q, c_new, f"{c_}.h_num")  # (B, NH, 1, DV)
    qn = ops.matmul(q, n_new, f"{c_}.qn")  # (B, NH, 1, 1)
    qn_abs = ops.maximum(qn, ops.mul(qn, ops.const(-1.0, qn), f"{c_}.qn_neg"), f"{c_}.qn_abs")
    floor = ops.exp(ops.mul(m_new, ops.const(-1.0, m_new), f"{c_}.m_neg"), f"{c_}.floor")
    den = ops.add(ops.maximum(qn_abs, floor, f"{c_}.den_max"), ops.const(eps, qn), f"{c_}.den")
    return ops.div(h_num, den, f"{c_}.h"), c_new, n_new, m_new


def causal_constants(ops: Ops, name: str) -> Tuple[V, V]:
    """The chunk's two constants (T = ``ops.tokens``), in the cell dtype: the lower-triangular ones
    matrix (a cumulative sum as a matmul: Core ML's EP takes no CumSum) and the additive causal mask
    (0 on and below the diagonal, the dtype's most negative finite value above: exp of it is 0)."""
    T = ops.tokens
    dt = np.float32 if ops.policy.dtype("cell") == "fp32" else np.float16
    tril = np.tril(np.ones((T, T), dtype=dt))
    mask = np.where(tril > 0, 0, np.finfo(dt).min).astype(dt)
    return ops.constant(tril, "cell", f"{name}.cumsum"), ops.constant(mask, "cell", f"{name}.causal_mask")


def mlstm_chunk(ops: Ops, p: str, q: V, kt: V, v: V, i: V, f: V, c: V, n: V, m: V, eps: float
                ) -> Tuple[V, V, V, V]:
    """T stabilised mLSTM steps at once, in the cell dtype: the chunkwise form, exactly the recurrence
    (the reference's ``kernels._mlstm_chunk``; the stabiliser m_t is the step's)::

        q (B, NH, T, DQK)  k^T (B, NH, DQK, T)  v (B, NH, T, DV)  i, f (B, NH, T, 1)
        C (B, NH, DQK, DV)  n (B, NH, DQK, 1)  m (B, NH, 1, 1)

        b   = tril(1) @ logsigmoid(f)                      cumulative log forget  (B, NH, T, 1)
        D   = b_t - b_s + i_s  (+ mask above the diagonal)  log weight of s seen from t  (B, NH, T, T)
        m_t = max(max_s D, b_t + m)                         W = exp(D - m_t),  w_0 = exp(b_t + m - m_t)
        h   = ((Q K^T * W) V + w_0 Q C) / (max(|rowsum(Q K^T * W) + w_0 Q n|, exp(-m_t)) + eps)
        C'  = w_0[T-1] C + (K^T * W[T-1]) V,  n' = w_0[T-1] n + rowsum(K^T * W[T-1]),  m' = m_T
    """
    c_ = f"{p}.cell"
    T = ops.tokens
    tril, mask = causal_constants(ops, "prefill")
    f_log = ops.mul(ops.softplus(ops.mul(f, ops.const(-1.0, f), f"{c_}.f_neg"), f"{c_}.f_softplus"),
                    ops.const(-1.0, f), f"{c_}.f_log")  # (B, NH, T, 1)
    b = ops.matmul(tril, f_log, f"{c_}.f_cumsum")  # (B, NH, T, 1)
    b_in = ops.transpose(ops.sub(b, i, f"{c_}.b_minus_i"), (0, 1, 3, 2), f"{c_}.b_minus_i.row")  # (B, NH, 1, T)
    d = ops.add(ops.sub(b, b_in, f"{c_}.log_d"), mask, f"{c_}.log_d_causal")  # (B, NH, T, T)
    log_state = ops.add(b, m, f"{c_}.log_state")  # (B, NH, T, 1)
    m_t = ops.maximum(ops.reduce_max(d, -1, True, f"{c_}.log_d_max"), log_state, f"{c_}.m_t")  # (B, NH, T, 1)
    w = ops.exp(ops.sub(d, m_t, f"{c_}.log_w"), f"{c_}.w")  # (B, NH, T, T)
    w_state = ops.exp(ops.sub(log_state, m_t, f"{c_}.log_w_state"), f"{c_}.w_state")  # (B, NH, T, 1)
    qk = ops.mul(ops.matmul(q, kt, f"{c_}.qk"), w, f"{c_}.qk_w")  # (B, NH, T, T)
    h_num = ops.add(ops.matmul(qk, v, f"{c_}.h_intra"),
                    ops.mul(w_state, ops.matmul(q, c, f"{c_}.qc"), f"{c_}.h_inter"), f"{c_}.h_num")  # (B, NH, T, DV)
    qn = ops.add(ops.reduce_sum(qk, -1, True, f"{c_}.qn_intra"),
                 ops.mul(w_state, ops.matmul(q, n, f"{c_}.qn_state"), f"{c_}.qn_inter"), f"{c_}.qn")  # (B, NH, T, 1)
    qn_abs = ops.maximum(qn, ops.mul(qn, ops.const(-1.0, qn), f"{c_}.qn_neg"), f"{c_}.qn_abs")
    floor = ops.exp(ops.mul(m_t, ops.const(-1.0, m_t), f"{c_}.m_neg"), f"{c_}.floor")
    den = ops.add(ops.maximum(qn_abs, floor, f"{c_}.den_max"), ops.const(eps, qn), f"{c_}.den")
    h = ops.div(h_num, den, f"{c_}.h")
    # the state after the chunk: row T-1 of the same weights
    m_new = ops.slice(m_t, 2, T - 1, T, f"{c_}.m_new")  # (B, NH, 1, 1)
    w_last = ops.slice(w, 2, T - 1, T, f"{c_}.w_last")  # (B, NH, 1, T)
    w0_last = ops.slice(w_state, 2, T - 1, T, f"{c_}.w_state_last")  # (B, NH, 1, 1)
    kw = ops.mul(kt, w_last, f"{c_}.k_w")  # (B, NH, DQK, T)
    c_new = ops.add(ops.mul(w0_last, c, f"{c_}.c_decay"), ops.matmul(kw, v, f"{c_}.kv"), f"{c_}.c_new")
    n_new = ops.add(ops.mul(w0_last, n, f"{c_}.n_decay"), ops.reduce_sum(kw, -1, True, f"{c_}.k_sum"),
                    f"{c_}.n_new")  # (B, NH, DQK, 1)
    return h, c_new, n_new, m_new


def slstm_cell(ops: Ops, p: str, i: V, f: V, z: V, o: V, c: V, n: V, m: V) -> Tuple[V, V, V, V]:
    """One sLSTM step (vanilla cell) in the cell dtype; every operand (B, NH, 1, DH)::

        m' = max(i, m + logsigmoid(f));  c' = e^(f+m-m') c + e^(i-m') tanh z
        n' = e^(f+m-m') n + e^(i-m');    y' = sigmoid(o) c' / n'
    """
    c_ = f"{p}.cell"
    f_neg = ops.mul(f, ops.const(-1.0, f), f"{c_}.f_neg")
    f_m = ops.sub(m, ops.softplus(f_neg, f"{c_}.f_softplus"), f"{c_}.f_log_plus_m")
    m_new = ops.maximum(i, f_m, f"{c_}.m_new")
    i_act = ops.exp(ops.sub(i, m_new, f"{c_}.i_log_act"), f"{c_}.i_act")
    f_act = ops.exp(ops.sub(f_m, m_new, f"{c_}.f_log_act"), f"{c_}.f_act")
    c_in = ops.mul(i_act, ops.tanh(z, f"{c_}.z_act"), f"{c_}.c_in")
    c_new = ops.add(ops.mul(f_act, c, f"{c_}.c_decay"), c_in, f"{c_}.c_new")
    n_new = ops.add(ops.mul(f_act, n, f"{c_}.n_decay"), i_act, f"{c_}.n_new")
    o_c = ops.mul(ops.sigmoid(o, f"{c_}.o_act"), c_new, f"{c_}.o_c")
    return ops.div(o_c, n_new, f"{c_}.y_new"), c_new, n_new, m_new


__all__ = ["rows", "to_heads", "from_heads", "conv_sequence", "causal_constants", "mlstm_chunk", "linear", "fused_gates", "headwise", "norm", "soft_cap", "silu", "activation", "residual", "ffn",
           "conv_step", "as_shape", "mlstm_cell", "slstm_cell", "marked"]
