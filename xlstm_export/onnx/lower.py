"""One lowering per block kind: a decode step of the block on a time slice, as ONNX nodes.

    lower(ctx, index, block, x, states) -> (x', new_states)

``x`` is the residual stream ``(B, E)`` in ``ctx.act``; ``states`` are this block's states in contract
order and shapes (``graph.state_contract``), dtype ``ctx.cell``; the new states come back the same way.
The step graph calls these once per block; the Scan graph calls the very same functions inside its
body, so the math exists once. Each lowering mirrors the reference block in ``reference/model.py``.
"""

from __future__ import annotations

from typing import List, Tuple

from ..graphs import MLSTMBlock, SLSTMBlock
from ..graphs.names import SLSTM_GATES
from ..registry import Registry
from .layers import Ctx

LOWERINGS: Registry = Registry("onnx")


@LOWERINGS.register("mlstm/large")
def lower_mlstm_large(ctx: Ctx, index: int, block: MLSTMBlock, x: str, states: List[str]) -> Tuple[str, List[str]]:
    """L family (xLSTM-Large / 7B) block::

        x -> norm -+-> q (* DQK^-1/2), k, v ------------------> cell -> head_norm --+
                   +-> igate, fgate (+ bias, soft cap) ----------^                   * -> out_proj -> (+x) -> FFN (+)
                   +-> ogate -> sigmoid ---------------------------------------------+

    x (B, E); states c (B, NH, DQK, DV), n (B, NH, DQK), m (B, NH, 1).
    """
    b = ctx.b
    B, NH, DQK, DV = ctx.batch, block.num_heads, block.qk_head_dim, block.v_head_dim
    p = f"blocks.{index}.mlstm"
    c, n, m = (b.cast(s, ctx.cell, f"{p}.state_in") for s in states)
    with b.scope(f"blocks.{index}"):
        xn = ctx.norm(x, block.norm, f"blocks.{index}.norm", "norm")  # (B, E)
    with b.scope(p):
        def heads(name: str, D: int) -> str:  # Linear -> (B, NH, D) in the cell dtype
            y = ctx.linear(xn, f"{p}.{name}", block.bias, name)  # (B, NH*D)
            return b.reshape(b.cast(y, ctx.cell, f"{name}.cell"), [B, NH, D], f"{name}.heads")

        def gate(name: str) -> str:  # Linear(E -> NH) + bias, soft-capped -> (B, NH, 1)
            g = b.cast(ctx.linear(xn, f"{p}.{name}", True, name), ctx.cell, f"{name}.cell")
            if block.gate_soft_cap:
                g = b.soft_cap(g, float(block.gate_soft_cap), f"{name}.soft_cap")
            return b.reshape(g, [B, NH, 1], f"{name}.heads")

        q = b.mul(heads("q", DQK), b.const(DQK ** -0.5, ctx.cell), "q.scaled")  # (B, NH, DQK)
        k = heads("k", DQK)
        v = heads("v", DV)  # (B, NH, DV)
        i, f = gate("igate"), gate("fgate")
        h, c, n, m = ctx.mlstm_cell(q, k, v, i, f, c, n, m, block.cell_eps, NH, DQK, DV)
        h = ctx.norm(h, block.head_norm, f"{p}.head_norm", "head_norm", num_heads=NH)  # (B, NH, DV)
        h = b.reshape(h, [B, NH * DV], "h")
        o = b.sigmoid(ctx.linear(xn, f"{p}.ogate", block.bias, "ogate"), "ogate.sigmoid")
        y = ctx.linear(b.mul(o, h, "gated"), f"{p}.out_proj", block.bias, "out_proj")
        x = b.add(x, y, "residual")
    if block.ffn is not None:
        x = b.add(x, ctx.ffn(x, block.ffn, index), f"blocks.{index}.ffn.residual")
    return x, [c, n, m]


@LOWERINGS.register("mlstm/hybrid")
def lower_mlstm_hybrid(ctx: Ctx, index: int, block: MLSTMBlock, x: str, states: List[str]
                       ) -> Tuple[str, List[str]]:
    """H family mLSTM block (upstream ``mLSTMLayer``)::

        x -> norm -> up_x (xm) -> conv ring -> silu (xc) -> q, k (headwise) -+
                  |        \\----------------------------> v  (headwise)    -+-> cat -> igate, fgate
                  \\-> up_z (z)                         cell(q, k * DH^-1/2, v, i, f) -> head_norm (h)
        x + out_proj((h + skip * xc) * silu(z))

    x (B, E); states c (B, NH, DH, DH), n (B, NH, DH, 1), m (B, NH, 1, 1), conv (B, K, inner) if K > 0.
    """
    b = ctx.b
    B, NH, DH, inner = ctx.batch, block.num_heads, block.qk_head_dim, block.inner_dim
    p = f"blocks.{index}.mlstm"
    c = b.cast(states[0], ctx.cell, f"{p}.state_in")
    with b.scope(f"blocks.{index}"):
        xn = ctx.norm(x, block.norm, f"blocks.{index}.norm", "norm")
    with b.scope(p):
        n = b.reshape(b.cast(states[1], ctx.cell, "n_in"), [B, NH, DH], "n_in3")  # (B, NH, DH)
        m = b.reshape(b.cast(states[2], ctx.cell, "m_in"), [B, NH, 1], "m_in3")  # (B, NH, 1)
        xm = ctx.linear(xn, f"{p}.up_x", block.bias, "up_x")  # (B, inner)
        z = ctx.linear(xn, f"{p}.up_z", block.bias, "up_z")
        if block.conv_kernel > 0:
            xc, ring = ctx.conv_step(xm, states[3], p, block.conv_kernel, inner)
            xc = b.silu(xc, "conv.silu")
        else:
            xc = xm
        bs = block.qkv_blocksize
        qk = ctx.headwise(xc, f"{p}.qk", [f"{p}.q.weight", f"{p}.k.weight"], "qk")  # (B, nb, 1, 2bs)
        q, k = (b.reshape(t, [B, inner], f"{nm}.flat")
                for t, nm in zip(b.split(qk, [bs, bs], -1, "qk.split"), ("q", "k")))
        v = b.reshape(ctx.headwise(xm, f"{p}.v", [f"{p}.v.weight"], "v"), [B, inner], "v.flat")
        if block.bias:
            q = b.add(q, ctx.param(f"{p}.q.bias"), "q.bias")
            k = b.add(k, ctx.param(f"{p}.k.bias"), "k.bias")
            v = b.add(v, ctx.param(f"{p}.v.bias"), "v.bias")
        gates_in = b.concat([q, k, v], -1, "qkv")  # (B, 3 inner)

        def gate(name: str) -> str:
            g = b.cast(ctx.linear(gates_in, f"{p}.{name}", True, name), ctx.cell, f"{name}.cell")
            return b.reshape(g, [B, NH, 1], f"{name}.heads")

        i, f = gate("igate"), gate("fgate")
        qh = b.reshape(b.cast(q, ctx.cell, "q.cell"), [B, NH, DH], "q.heads")
        kh = b.mul(b.reshape(b.cast(k, ctx.cell, "k.cell"), [B, NH, DH], "k.heads"),
                   b.const(DH ** -0.5, ctx.cell), "k.scaled")
        vh = b.reshape(b.cast(v, ctx.cell, "v.cell"), [B, NH, DH], "v.heads")
        h, c, n, m = ctx.mlstm_cell(qh, kh, vh, i, f, c, n, m, block.cell_eps, NH, DH, DH)
        h = ctx.norm(h, block.head_norm, f"{p}.head_norm", "head_norm", num_heads=NH)  # (B, NH, DH)
        h = b.reshape(h, [B, inner], "h")
        h = b.add(h, b.mul(ctx.param(f"{p}.skip.weight"), xc, "skip"), "h_skip")
        h = b.mul(h, b.silu(z, "z.silu"), "gated")
        x = b.add(x, ctx.linear(h, f"{p}.out_proj", block.bias, "out_proj"), "residual")
        new = [c, b.reshape(n, [B, NH, DH, 1], "n_out"), b.reshape(m, [B, NH, 1, 1], "m_out")]
        if block.conv_kernel > 0:
            new.append(b.cast(ring, ctx.cell, "conv.ring_out"))
    return x, new


@LOWERINGS.register("slstm")
def lower_slstm(ctx: Ctx, index: int, block: SLSTMBlock, x: str, states: List[str]) -> Tuple[str, List[str]]:
    """H family sLSTM block (upstream ``sLSTMLayer``), gates fused per head::

        x -> norm (xn) -> conv ring -> silu (xc) -> [i f] headwise --+
                       \\----------------------> [z o] headwise  ----+-> + R y_prev (per head) + bias
        state (4, B, E) rows y, c, n, m --split--> y_prev, c, n, m          |
            m' = max(i, m + logsigmoid(f));  c' = e^(f+m-m') c + e^(i-m') tanh z
            n' = e^(f+m-m') n + e^(i-m');    y' = sigmoid(o) c' / n'   -> state' = [y', c', n', m']
        x + head_norm(y') (per head) -> + FFN

    x (B, E); states conv (B, K, E) if K > 0, slstm (4, B, E).
    """
    b = ctx.b
    B, NH, DH = ctx.batch, block.num_heads, block.head_dim
    E = NH * DH
    p = f"blocks.{index}.slstm"
    with b.scope(f"blocks.{index}"):
        xn = ctx.norm(x, block.norm, f"blocks.{index}.norm", "norm")
    with b.scope(p):
        if block.conv_kernel > 0:
            xc, ring = ctx.conv_step(xn, states[0], p, block.conv_kernel, E)
            xc = b.silu(xc, "conv.silu")
            st = states[1]
        else:
            xc, st = xn, states[0]
        st = b.cast(st, ctx.cell, "state_in")
        gi, gf, gz, go = (f"{p}.{g}gate" for g in SLSTM_GATES)
        wx_if = ctx.headwise(xc, f"{p}.if", [f"{gi}.weight", f"{gf}.weight"], "wx_if")  # (B, NH, 1, 2DH)
        wx_zo = ctx.headwise(xn, f"{p}.zo", [f"{gz}.weight", f"{go}.weight"], "wx_zo")
        wx = b.concat([b.cast(wx_if, ctx.cell, "wx_if.cell"), b.cast(wx_zo, ctx.cell, "wx_zo.cell")], -1,
                      "wx")  # (B, NH, 1, 4DH), gate-major inside each head
        y_prev, c, n, m = b.split(st, [1, 1, 1, 1], 0, "state")  # each (1, B, E)
        ry = ctx.headwise(y_prev, f"{p}.recurrent", [f"{g}.recurrent" for g in (gi, gf, gz, go)], "ry",
                          elem=ctx.cell)  # (B, NH, 1, 4DH), fp32 like the reference's R
        raw = b.add(b.add(wx, ry, "raw"), ctx.slstm_bias(f"{p}.bias", [f"{g}.bias" for g in (gi, gf, gz, go)], NH, DH),
                    "raw.bias")  # (B, NH, 1, 4DH)
        i_raw, f_raw, z_raw, o_raw = (b.reshape(t, [1, B, E], f"{g}_raw")
                                      for t, g in zip(b.split(raw, [DH] * 4, -1, "gates"), SLSTM_GATES))
        with b.scope("cell"):
            f_m = b.add(m, b.logsigmoid(f_raw, "f_log"), "f_log_plus_m")
            m_new = b.max(i_raw, f_m, "m")
            ia = b.exp(b.sub(i_raw, m_new, "i_arg"), "i_act")
            fa = b.exp(b.sub(f_m, m_new, "f_arg"), "f_act")
            c_new = b.add(b.mul(fa, c, "c_decay"), b.mul(ia, b.tanh(z_raw, "z_tanh"), "c_in"), "c")
            n_new = b.add(b.mul(fa, n, "n_decay"), ia, "n")
            y_new = b.div(b.mul(b.sigmoid(o_raw, "o_act"), c_new, "y_num"), n_new, "y")  # (1, B, E)
            st_new = b.concat([y_new, c_new, n_new, m_new], 0, "state")  # (4, B, E)
        y = ctx.norm(b.reshape(y_new, [B, NH, DH], "y.heads"), block.head_norm, f"{p}.head_norm", "head_norm",
                     num_heads=NH)
        x = b.add(x, b.reshape(y, [B, E], "y.flat"), "residual")
    if block.ffn is not None:
        x = b.add(x, ctx.ffn(x, block.ffn, index), f"blocks.{index}.ffn.residual")
    new = [st_new]
    if block.conv_kernel > 0:
        new.insert(0, b.cast(ring, ctx.cell, f"{p}.conv.ring_out"))
    return x, new


__all__ = ["LOWERINGS", "lower_mlstm_large", "lower_mlstm_hybrid", "lower_slstm"]
