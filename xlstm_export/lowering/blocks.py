"""One lowering per (block kind, form, mode), written once for every graph target.

    lower(ops, index, block, x, states) -> x'        x (B, E) residual stream in the stream dtype

Each reads like the reference block it must equal (``reference/model.py``), shapes in comments.
"""

from __future__ import annotations

from ..graphs import MLSTMBlock, SLSTMBlock
from ..graphs.names import SLSTM_GATES
from .layers import (as_shape, conv_step, ffn, fused_gates, headwise, linear, mlstm_cell, norm, residual, silu,
                     slstm_cell)
from .ops import V, Ops
from .registry import LOWERINGS
from .states import MLSTMStates, SLSTMStates
from .weights import WeightSpec


@LOWERINGS.register("mlstm", "large", "step")
def mlstm_large_step(ops: Ops, index: int, block: MLSTMBlock, x: V, st: MLSTMStates) -> V:
    """L family block (xLSTM-Large / xLSTM-7B), one step::

        x ─ norm ─┬─ q (· DQK^-1/2), k, v (Linear) ─────────┐
                  ├─ [i f] (one Linear, soft cap) ─────────┴─ cell(C, n, m) ─ head_norm ─┐
                  └─ ogate (Linear) ─ sigmoid ──────────────────────────────────────── * ─┴─ out_proj ─ + x
        x ─ ffn_norm ─ down(act(gate) * up) ─ + x
    """
    B, NH, DQK, DV = ops.batch, block.num_heads, block.qk_head_dim, block.v_head_dim
    p = f"blocks.{index}.mlstm"
    xn = norm(ops, x, block.norm, f"blocks.{index}.norm")  # (B, E)
    q = linear(ops, xn, f"{p}.q", block.bias)  # (B, NH*DQK)
    k = linear(ops, xn, f"{p}.k", block.bias)
    v = linear(ops, xn, f"{p}.v", block.bias)  # (B, NH*DV)
    cap = float(block.gate_soft_cap) if block.gate_soft_cap is not None else None
    i, f = fused_gates(ops, xn, p, NH, cap)  # (B, NH, 1, 1) each
    q = ops.reshape(ops.cast(q, "cell", f"{p}.q"), (B, NH, 1, DQK), f"{p}.q.heads")
    q = ops.mul(q, ops.const(DQK ** -0.5, q), f"{p}.q.scaled")
    k = ops.reshape(ops.cast(k, "cell", f"{p}.k"), (B, NH, DQK, 1), f"{p}.k.heads")
    v = ops.reshape(ops.cast(v, "cell", f"{p}.v"), (B, NH, 1, DV), f"{p}.v.heads")
    c = ops.read_state(st.c, "cell")  # (B, NH, DQK, DV)
    n = as_shape(ops, ops.read_state(st.n, "cell"), st.n.shape, (B, NH, DQK, 1), f"{p}.n.heads")
    m = as_shape(ops, ops.read_state(st.m, "cell"), st.m.shape, (B, NH, 1, 1), f"{p}.m.heads")
    h, c, n, m = mlstm_cell(ops, p, q, k, v, i, f, c, n, m, float(block.cell_eps))
    ops.write_state(st.c, c)
    ops.write_state(st.n, as_shape(ops, n, (B, NH, DQK, 1), st.n.shape, f"{p}.n.state"))
    ops.write_state(st.m, as_shape(ops, m, (B, NH, 1, 1), st.m.shape, f"{p}.m.state"))
    h = norm(ops, h, block.head_norm, f"{p}.head_norm", heads=NH)  # (B, NH, 1, DV)
    h = ops.cast(ops.reshape(h, (B, NH * DV), f"{p}.h"), "weights", f"{p}.h")  # (B, NH*DV)
    o = ops.sigmoid(linear(ops, xn, f"{p}.ogate", block.bias), f"{p}.ogate.act")
    y = linear(ops, ops.mul(o, h, f"{p}.gated"), f"{p}.out_proj", block.bias)  # (B, E)
    x = residual(ops, x, y, f"blocks.{index}.mlstm_residual")
    if block.ffn is not None:
        x = residual(ops, x, ffn(ops, x, block.ffn, index), f"blocks.{index}.ffn_residual")
    return x


@LOWERINGS.register("mlstm", "hybrid", "step")
def mlstm_hybrid_step(ops: Ops, index: int, block: MLSTMBlock, x: V, st: MLSTMStates) -> V:
    """H family mLSTM block (upstream ``mLSTMLayer``), one step::

        x ─ norm ─┬─ up_x ─┬─ conv(ring) ─ silu ─ xc ─┬─ q, k (headwise) ─┐
                  │        └──────────────────────────┼─ v (headwise) ────┴─ [i f] = Linear(cat(q, k, v))
                  │                                   │   cell(q, k · DH^-1/2, v) ─ head_norm ─ + skip · xc ─┐
                  └─ up_z ─ silu ─────────────────────────────────────────────────────────────────── * ─┴─ out_proj ─ + x
    """
    B, NH, DH, inner = ops.batch, block.num_heads, block.qk_head_dim, block.inner_dim
    bs = block.qkv_blocksize
    nb = inner // bs
    p = f"blocks.{index}.mlstm"
    xn = norm(ops, x, block.norm, f"blocks.{index}.norm")  # (B, E)
    xm = linear(ops, xn, f"{p}.up_x", block.bias)  # (B, inner)
    z = linear(ops, xn, f"{p}.up_z", block.bias)  # (B, inner)
    xc = silu(ops, conv_step(ops, xm, st.conv, f"{p}.conv"), f"{p}.conv.act") if st.conv is not None else xm
    xcb = ops.reshape(xc, (B, nb, 1, bs), f"{p}.qk.blocks")  # (B, nb, 1, bs)
    q = headwise(ops, xcb, f"{p}.q", block.bias)  # (B, inner)
    k = headwise(ops, xcb, f"{p}.k", block.bias)
    v = headwise(ops, ops.reshape(xm, (B, nb, 1, bs), f"{p}.v.blocks"), f"{p}.v", block.bias)
    qkv = ops.concat([q, k, v], -1, f"{p}.gates_in")  # (B, 3 inner)
    i, f = fused_gates(ops, qkv, p, NH, None)  # (B, NH, 1, 1) each
    qh = ops.reshape(ops.cast(q, "cell", f"{p}.q"), (B, NH, 1, DH), f"{p}.q.heads")
    kh = ops.reshape(ops.cast(k, "cell", f"{p}.k"), (B, NH, DH, 1), f"{p}.k.heads")
    kh = ops.mul(kh, ops.const(DH ** -0.5, kh), f"{p}.k.scaled")
    vh = ops.reshape(ops.cast(v, "cell", f"{p}.v"), (B, NH, 1, DH), f"{p}.v.heads")
    c = ops.read_state(st.c, "cell")  # (B, NH, DH, DH)
    n = ops.read_state(st.n, "cell")  # (B, NH, DH, 1)
    m = ops.read_state(st.m, "cell")  # (B, NH, 1, 1)
    h, c, n, m = mlstm_cell(ops, p, qh, kh, vh, i, f, c, n, m, float(block.cell_eps))
    ops.write_state(st.c, c)
    ops.write_state(st.n, n)
    ops.write_state(st.m, m)
    h = norm(ops, h, block.head_norm, f"{p}.head_norm", heads=NH)  # (B, NH, 1, DH)
    h = ops.cast(ops.reshape(h, (B, inner), f"{p}.h"), "weights", f"{p}.h")  # (B, inner)
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
    g, B, NH, DH = ops.graph, ops.batch, block.num_heads, block.head_dim
    E = NH * DH
    p = f"blocks.{index}.slstm"
    gate = [f"{p}.{name}gate" for name in SLSTM_GATES]
    xn = ops.cast(norm(ops, x, block.norm, f"blocks.{index}.norm"), "weights", f"blocks.{index}.norm")  # (B, E)
    xc = silu(ops, conv_step(ops, xn, st.conv, f"{p}.conv"), f"{p}.conv.act") if st.conv is not None else xn
    w_if = ops.weight(WeightSpec.headwise(g, f"{p}.if_gates.weight", (f"{gate[0]}.weight", f"{gate[1]}.weight")))
    w_zo = ops.weight(WeightSpec.headwise(g, f"{p}.zo_gates.weight", (f"{gate[2]}.weight", f"{gate[3]}.weight")))
    wx = ops.concat([ops.matmul(ops.reshape(xc, (B, NH, 1, DH), f"{p}.xc.heads"), w_if, f"{p}.if_gates"),
                     ops.matmul(ops.reshape(xn, (B, NH, 1, DH), f"{p}.xn.heads"), w_zo, f"{p}.zo_gates")],
                    -1, f"{p}.wx")  # (B, NH, 1, 4DH)
    wx = ops.cast(wx, "cell", f"{p}.wx")
    r = ops.weight(WeightSpec.headwise(g, f"{p}.recurrent", tuple(f"{n}.recurrent" for n in gate), role="cell",
                                       use="recurrent"))  # (NH, DH, 4DH)
    bias = ops.weight(WeightSpec.gatewise(g, f"{p}.bias", tuple(f"{n}.bias" for n in gate), NH, "cell"))
    rows = ops.reshape(ops.read_state(st.state, "cell"), (4 * B, NH, 1, DH), f"{p}.state.heads")
    y, c, n, m = ops.split(rows, (B, B, B, B), 0, f"{p}.state.rows")  # each (B, NH, 1, DH)
    raw = ops.add(ops.add(wx, ops.matmul(y, r, f"{p}.ry"), f"{p}.raw_in"), bias, f"{p}.raw")  # (B, NH, 1, 4DH)
    i, f, z, o = ops.split(raw, (DH, DH, DH, DH), -1, f"{p}.gates")  # each (B, NH, 1, DH)
    y, c, n, m = slstm_cell(ops, p, i, f, z, o, c, n, m)
    new = ops.concat([y, c, n, m], 0, f"{p}.state.new_rows")  # (4B, NH, 1, DH)
    ops.write_state(st.state, ops.reshape(new, (4, B, E), f"{p}.state.flat"))
    h = norm(ops, y, block.head_norm, f"{p}.head_norm", heads=NH)  # (B, NH, 1, DH)
    x = residual(ops, x, ops.reshape(h, (B, E), f"{p}.out"), f"blocks.{index}.slstm_residual")
    if block.ffn is not None:
        x = residual(ops, x, ffn(ops, x, block.ffn, index), f"blocks.{index}.ffn_residual")
    return x
