"""Layers every block lowering uses, written once against the ops protocol (``ops.py``).

Each mirrors a piece of the reference (``reference/model.py``, ``reference/kernels.py``), which stays
independent: it is the oracle these are checked against.
"""

from __future__ import annotations

from typing import Optional, Tuple

from ..graphs import FFNSpec, NormSpec, StateSpec
from .ops import V, Ops, marked
from .weights import WeightSpec


def linear(ops: Ops, x: V, prefix: str, bias: bool) -> V:
    """``nn.Linear`` named ``prefix``: x (R, in) -> (R, out) in the weights dtype."""
    g = ops.graph
    x = ops.cast(x, "weights", f"{prefix}.in")
    b = WeightSpec.bias(g, prefix) if bias else None
    return ops.linear(x, WeightSpec.linear(g, prefix), b, prefix)


def fused_gates(ops: Ops, x: V, prefix: str, heads: int, cap: Optional[float]) -> Tuple[V, V]:
    """The input and forget gate pre-activations as one Linear (``igate`` and ``fgate`` stacked by rows),
    soft-capped, split per head::

        x (B, in) --Linear [W_i; W_f] + [b_i; b_f]--> (B, 2NH) --cap--> (B, 2NH, 1, 1) --split--> i, f (B, NH, 1, 1)
    """
    g, B = ops.graph, ops.batch
    w = WeightSpec.stacked_rows(g, f"{prefix}.gates.weight", (f"{prefix}.igate.weight", f"{prefix}.fgate.weight"),
                                "linear")
    b = WeightSpec.stacked_rows(g, f"{prefix}.gates.bias", (f"{prefix}.igate.bias", f"{prefix}.fgate.bias"), "bias")
    y = ops.linear(ops.cast(x, "weights", f"{prefix}.gates.in"), w, b, f"{prefix}.gates")  # (B, 2NH)
    y = ops.cast(y, "cell", f"{prefix}.gates")
    if cap is not None:
        y = soft_cap(ops, y, cap, f"{prefix}.gates.capped")
    y = ops.reshape(y, (B, 2 * heads, 1, 1), f"{prefix}.gates.heads")
    i, f = ops.split(y, (heads, heads), 1, f"{prefix}.gates.split")
    return i, f


def headwise(ops: Ops, xb: V, prefix: str, bias: bool) -> V:
    """Block-diagonal linear on input already in blocks: xb (B, nb, 1, bi) -> (B, nb*bo) (+ bias)."""
    g, B = ops.graph, ops.batch
    nb, bo, _ = g.weights[f"{prefix}.weight"].shape
    y = ops.matmul(xb, ops.weight(WeightSpec.headwise(g, f"{prefix}.weight", (f"{prefix}.weight",))), prefix)
    y = ops.reshape(y, (B, nb * bo), f"{prefix}.flat")  # (B, nb*bo)
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


__all__ = ["linear", "fused_gates", "headwise", "norm", "soft_cap", "silu", "activation", "residual", "ffn",
           "conv_step", "as_shape", "mlstm_cell", "slstm_cell", "marked"]
