"""One lowering per (block kind, form, mode), written once for every graph target.

    lower(ops, index, block, x, states) -> x'        x (B, E) residual stream in the stream dtype

Each reads like the reference block it must equal (``reference/model.py``), shapes in comments.
"""

from __future__ import annotations

from ..graphs import MLSTMBlock, SLSTMBlock
from ..graphs.names import SLSTM_GATES
from .layers import (as_shape, conv_sequence, conv_step, ffn, from_heads, fused_gates, headwise, linear, mlstm_cell,
                     mlstm_chunk, norm, residual, rows, silu, slstm_cell, to_heads)
from .ops import V, Ops
from .registry import LOWERINGS
from .states import MLSTMStates, SLSTMStates
from .weights import WeightSpec


@LOWERINGS.register("mlstm", "large", "step")
def mlstm_large_step(ops: Ops, index: int, block: MLSTMBlock, x: V, st: MLSTMStates) -> V:
    return _mlstm_large(ops, index, block, x, st, mlstm_cell)


@LOWERINGS.register("mlstm", "large", "prefill")
def mlstm_large_prefill(ops: Ops, index: int, block: MLSTMBlock, x: V, st: MLSTMStates) -> V:
    return _mlstm_large(ops, index, block, x, st, mlstm_chunk)


def _mlstm_large(ops: Ops, index: int, block: MLSTMBlock, x: V, st: MLSTMStates, cell) -> V:
    """L family block (xLSTM-Large / xLSTM-7B) on rows x (R, E); ``cell`` is the step's recurrence
    (``mlstm_cell``, T = 1) or the chunkwise form (``mlstm_chunk``, T = ``ops.tokens``)::

        x ─ norm ─┬─ q (· DQK^-1/2), k, v (Linear) ─────────┐
                  ├─ [i f] (one Linear, soft cap) ─────────┴─ cell(C, n, m) ─ head_norm ─┐
                  └─ ogate (Linear) ─ sigmoid ──────────────────────────────────────── * ─┴─ out_proj ─ + x
        x ─ ffn_norm ─ down(act(gate) * up) ─ + x
    """
    B, NH, DQK, DV = ops.batch, block.num_heads, block.qk_head_dim, block.v_head_dim
    p = f"blocks.{index}.mlstm"
    xn = norm(ops, x, block.norm, f"blocks.{index}.norm")  # (R, E)
    q = linear(ops, xn, f"{p}.q", block.bias)  # (R, NH*DQK)
    k = linear(ops, xn, f"{p}.k", block.bias)
    v = linear(ops, xn, f"{p}.v", block.bias)  # (R, NH*DV)
    cap = float(block.gate_soft_cap) if block.gate_soft_cap is not None else None
    i, f = fused_gates(ops, xn, p, NH, cap)  # (B, NH, T, 1) each
    q = to_heads(ops, ops.cast(q, "cell", f"{p}.q"), NH, DQK, f"{p}.q.heads")  # (B, NH, T, DQK)
    q = ops.mul(q, ops.const(DQK ** -0.5, q), f"{p}.q.scaled")
    k = to_heads(ops, ops.cast(k, "cell", f"{p}.k"), NH, DQK, f"{p}.k.heads", keys=True)  # (B, NH, DQK, T)
    v = to_heads(ops, ops.cast(v, "cell", f"{p}.v"), NH, DV, f"{p}.v.heads")  # (B, NH, T, DV)
    c = ops.read_state(st.c, "cell")  # (B, NH, DQK, DV)
    n = as_shape(ops, ops.read_state(st.n, "cell"), st.n.shape, (B, NH, DQK, 1), f"{p}.n.heads")
    m = as_shape(ops, ops.read_state(st.m, "cell"), st.m.shape, (B, NH, 1, 1), f"{p}.m.heads")
    h, c, n, m = cell(ops, p, q, k, v, i, f, c, n, m, float(block.cell_eps))
    ops.write_state(st.c, c)
    ops.write_state(st.n, as_shape(ops, n, (B, NH, DQK, 1), st.n.shape, f"{p}.n.state"))
    ops.write_state(st.m, as_shape(ops, m, (B, NH, 1, 1), st.m.shape, f"{p}.m.state"))
    h = norm(ops, h, block.head_norm, f"{p}.head_norm", heads=NH)  # (B, NH, T, DV)
    h = ops.cast(from_heads(ops, h, NH, DV, f"{p}.h"), "weights", f"{p}.h")  # (R, NH*DV)
    o = ops.sigmoid(linear(ops, xn, f"{p}.ogate", block.bias), f"{p}.ogate.act")
    y = linear(ops, ops.mul(o, h, f"{p}.gated"), f"{p}.out_proj", block.bias)  # (R, E)
    x = residual(ops, x, y, f"blocks.{index}.mlstm_residual")
    if block.ffn is not None:
        x = residual(ops, x, ffn(ops, x, block.ffn, index), f"blocks.{index}.ffn_residual")
    return x


@LOWERINGS.register("mlstm", "hybrid", "step")
def mlstm_hybrid_step(ops: Ops, index: int, block: MLSTMBlock, x: V, st: MLSTMStates) -> V:
    return _mlstm_hybrid(ops, index, block, x, st, mlstm_cell, conv_step)


@LOWERINGS.register("mlstm", "hybrid", "prefill")
def mlstm_hybrid_prefill(ops: Ops, index: int, block: MLSTMBlock, x: V, st: MLSTMStates) -> V:
    return _mlstm_hybrid(ops, index, block, x, st, mlstm_chunk, conv_sequence)


def _mlstm_hybrid(ops: Ops, index: int, block: MLSTMBlock, x: V, st: MLSTMStates, cell, conv) -> V:
    """H family mLSTM block (upstream ``mLSTMLayer``) on rows x (R, E); ``cell`` / ``conv`` are the step's
    (T = 1) or the chunk's (T = ``ops.tokens``)::

        x ─ norm ─┬─ up_x ─┬─ conv(ring) ─ silu ─ xc ─┬─ q, k (headwise) ─┐
                  │        └──────────────────────────┼─ v (headwise) ────┴─ [i f] = Linear(cat(q, k, v))
                  │                                   │   cell(q, k · DH^-1/2, v) ─ head_norm ─ + skip · xc ─┐
                  └─ up_z ─ silu ─────────────────────────────────────────────────────────────────── * ─┴─ out_proj ─ + x
    """
    NH, DH, inner = block.num_heads, block.qk_head_dim, block.inner_dim
    R = rows(ops)
    bs = block.qkv_blocksize
    nb = inner // bs
    p = f"blocks.{index}.mlstm"
    xn = norm(ops, x, block.norm, f"blocks.{index}.norm")  # (R, E)
    xm = linear(ops, xn, f"{p}.up_x", block.bias)  # (R, inner)
    z = linear(ops, xn, f"{p}.up_z", block.bias)  # (R, inner)
    xc = silu(ops, conv(ops, xm, st.conv, f"{p}.conv"), f"{p}.conv.act") if st.conv is not None else xm
    xcb = ops.reshape(xc, (R, nb, 1, bs), f"{p}.qk.blocks")  # (R, nb, 1, bs)
    q = headwise(ops, xcb, f"{p}.q", block.bias)  # (R, inner)
    k = headwise(ops, xcb, f"{p}.k", block.bias)
    v = headwise(ops, ops.reshape(xm, (R, nb, 1, bs), f"{p}.v.blocks"), f"{p}.v", block.bias)
    qkv = ops.concat([q, k, v], -1, f"{p}.gates_in")  # (R, 3 inner)
    i, f = fused_gates(ops, qkv, p, NH, None)  # (B, NH, T, 1) each
    qh = to_heads(ops, ops.cast(q, "cell", f"{p}.q"), NH, DH, f"{p}.q.heads")  # (B, NH, T, DH)
    kh = to_heads(ops, ops.cast(k, "cell", f"{p}.k"), NH, DH, f"{p}.k.heads", keys=True)  # (B, NH, DH, T)
    kh = ops.mul(kh, ops.const(DH ** -0.5, kh), f"{p}.k.scaled")
    vh = to_heads(ops, ops.cast(v, "cell", f"{p}.v"), NH, DH, f"{p}.v.heads")  # (B, NH, T, DH)
    c = ops.read_state(st.c, "cell")  # (B, NH, DH, DH)
    n = ops.read_state(st.n, "cell")  # (B, NH, DH, 1)
    m = ops.read_state(st.m, "cell")  # (B, NH, 1, 1)
    h, c, n, m = cell(ops, p, qh, kh, vh, i, f, c, n, m, float(block.cell_eps))
    ops.write_state(st.c, c)
    ops.write_state(st.n, n)
    ops.write_state(st.m, m)
    h = norm(ops, h, block.head_norm, f"{p}.head_norm", heads=NH)  # (B, NH, T, DH)
    h = ops.cast(from_heads(ops, h, NH, DH, f"{p}.h"), "weights", f"{p}.h")  # (R, inner)
    skip = ops.mul(ops.weight(WeightSpec.tensor(ops.graph, f"{p}.skip.weight", "skip", "weights")), xc, f"{p}.skip")
    h = ops.mul(ops.add(h, skip, f"{p}.h_skip"), silu(ops, z, f"{p}.up_z.act"), f"{p}.gated")
    return residual(ops, x, linear(ops, h, f"{p}.out_proj", block.bias), f"blocks.{index}.mlstm_residual")


@LOWERINGS.register("slstm", "vanilla", "step")
def slstm_step(ops: Ops, index: int, block: SLSTMBlock, x: V, st: SLSTMStates) -> V:
    """H family sLSTM block (upstream ``sLSTMLayer``, vanilla cell), one step::

        x ─ norm ─┬─ conv(ring) ─ silu ─ xc ─ [i f] (headwise) ─┐
                  └──────────────────── xn ─ [z o] (headwise) ─┴─ + R y + b ─ cell(y, c, n, m) ─ head_norm ─ + x
        x ─ ffn_norm ─ down(act(gate) * up) ─ + x

    Per head the four gates sit side by side on the last axis ([i f z o], 4 DH), so the input and
    recurrent contributions are three batched matmuls against block-diagonal constants.
    """
    B, NH, DH = ops.batch, block.num_heads, block.head_dim
    p = f"blocks.{index}.slstm"
    wx, r, bias = _slstm_inputs(ops, index, block, x, st, conv_step)  # (B, NH, 1, 4DH)
    y, c, n, m = _slstm_read(ops, p, st, B, NH, DH)  # each (B, NH, 1, DH)
    raw = ops.add(ops.add(wx, ops.matmul(y, r, f"{p}.ry"), f"{p}.raw_in"), bias, f"{p}.raw")  # (B, NH, 1, 4DH)
    i, f, z, o = ops.split(raw, (DH, DH, DH, DH), -1, f"{p}.gates")  # each (B, NH, 1, DH)
    y, c, n, m = slstm_cell(ops, p, i, f, z, o, c, n, m)
    _slstm_write(ops, p, st, y, c, n, m, B, NH, DH)
    return _slstm_out(ops, index, block, x, y)


@LOWERINGS.register("slstm", "vanilla", "prefill")
def slstm_prefill(ops: Ops, index: int, block: SLSTMBlock, x: V, st: SLSTMStates) -> V:
    """The sLSTM block over a chunk of T tokens. The recurrence has no parallel form: the input
    contributions (norm, conv, [i f] and [z o] headwise, bias) are computed for all T rows at once, then
    the cell is unrolled over the T steps (names ``blocks.{i}.slstm.t{t}.*``), each step the decode step's
    ops; the outputs are stacked on the time axis for one head norm::

        wx (B, T, NH, 4DH) ─ t = 0..T-1: wx_t + R y_{t-1} ─ cell ─ y_t ─┬─ stack (B, NH, T, DH) ─ head_norm ─ + x
    """
    B, T, NH, DH = ops.batch, ops.tokens, block.num_heads, block.head_dim
    p = f"blocks.{index}.slstm"
    wx, r, bias = _slstm_inputs(ops, index, block, x, st, conv_sequence)  # (R, NH, 1, 4DH)
    wx = ops.reshape(ops.add(wx, bias, f"{p}.wx_bias"), (B, T, NH, 4 * DH), f"{p}.wx.time")  # (B, T, NH, 4DH)
    y, c, n, m = _slstm_read(ops, p, st, B, NH, DH)  # each (B, NH, 1, DH)
    ys = []
    for t in range(T):
        pt = f"{p}.t{t}"
        wx_t = ops.reshape(ops.slice(wx, 1, t, t + 1, f"{pt}.wx"), (B, NH, 1, 4 * DH), f"{pt}.wx.heads")
        raw = ops.add(wx_t, ops.matmul(y, r, f"{pt}.ry"), f"{pt}.raw")  # (B, NH, 1, 4DH)
        i, f, z, o = ops.split(raw, (DH, DH, DH, DH), -1, f"{pt}.gates")
        y, c, n, m = slstm_cell(ops, pt, i, f, z, o, c, n, m)
        ys.append(y)
    _slstm_write(ops, p, st, y, c, n, m, B, NH, DH)
    h = ops.concat(ys, 2, f"{p}.y_seq") if T > 1 else ys[0]  # (B, NH, T, DH)
    return _slstm_out(ops, index, block, x, h)


def _slstm_inputs(ops: Ops, index: int, block: SLSTMBlock, x: V, st: SLSTMStates, conv):
    """The input contributions of every row, in the cell dtype: wx (R, NH, 1, 4DH) = [xc W_if, xn W_zo]
    (gates [i f z o] side by side per head); the recurrent kernel (NH, DH, 4DH) and the bias (NH, 1, 4DH)."""
    g, NH, DH = ops.graph, block.num_heads, block.head_dim
    R = rows(ops)
    p = f"blocks.{index}.slstm"
    gate = [f"{p}.{name}gate" for name in SLSTM_GATES]
    xn = ops.cast(norm(ops, x, block.norm, f"blocks.{index}.norm"), "weights", f"blocks.{index}.norm")  # (R, E)
    xc = silu(ops, conv(ops, xn, st.conv, f"{p}.conv"), f"{p}.conv.act") if st.conv is not None else xn
    w_if = ops.weight(WeightSpec.headwise(g, f"{p}.if_gates.weight", (f"{gate[0]}.weight", f"{gate[1]}.weight")))
    w_zo = ops.weight(WeightSpec.headwise(g, f"{p}.zo_gates.weight", (f"{gate[2]}.weight", f"{gate[3]}.weight")))
    wx = ops.concat([ops.matmul(ops.reshape(xc, (R, NH, 1, DH), f"{p}.xc.heads"), w_if, f"{p}.if_gates"),
                     ops.matmul(ops.reshape(xn, (R, NH, 1, DH), f"{p}.xn.heads"), w_zo, f"{p}.zo_gates")],
                    -1, f"{p}.wx")  # (R, NH, 1, 4DH)
    wx = ops.cast(wx, "cell", f"{p}.wx")
    r = ops.weight(WeightSpec.headwise(g, f"{p}.recurrent", tuple(f"{n}.recurrent" for n in gate), role="cell",
                                       use="recurrent"))  # (NH, DH, 4DH)
    bias = ops.weight(WeightSpec.gatewise(g, f"{p}.bias", tuple(f"{n}.bias" for n in gate), NH, "cell"))
    return wx, r, bias


def _slstm_read(ops: Ops, p: str, st: SLSTMStates, B: int, NH: int, DH: int):
    rows_ = ops.reshape(ops.read_state(st.state, "cell"), (4 * B, NH, 1, DH), f"{p}.state.heads")
    return ops.split(rows_, (B, B, B, B), 0, f"{p}.state.rows")  # y, c, n, m each (B, NH, 1, DH)


def _slstm_write(ops: Ops, p: str, st: SLSTMStates, y: V, c: V, n: V, m: V, B: int, NH: int, DH: int) -> None:
    new = ops.concat([y, c, n, m], 0, f"{p}.state.new_rows")  # (4B, NH, 1, DH)
    ops.write_state(st.state, ops.reshape(new, (4, B, NH * DH), f"{p}.state.flat"))


def _slstm_out(ops: Ops, index: int, block: SLSTMBlock, x: V, y: V) -> V:
    """head_norm of the outputs y (B, NH, T, DH), back to rows, the residual, the FFN."""
    NH, DH = block.num_heads, block.head_dim
    p = f"blocks.{index}.slstm"
    h = norm(ops, y, block.head_norm, f"{p}.head_norm", heads=NH)  # (B, NH, T, DH)
    x = residual(ops, x, from_heads(ops, h, NH, DH, f"{p}.out"), f"blocks.{index}.slstm_residual")
    if block.ffn is not None:
        x = residual(ops, x, ffn(ops, x, block.ffn, index), f"blocks.{index}.ffn_residual")
    return x
