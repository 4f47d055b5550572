"""Pieces the block lowerings share: weights, linear, norms, FFN, the conv ring, the mLSTM cell, the head.

Everything here writes one decode step on a time slice: activations are ``(B, D)`` (the head also takes
``(B, T, D)``). ``Ctx.act`` is the dtype of weights and activations (fp32 or fp16); ``Ctx.cell`` the
dtype of the recurrent cells and their states (fp32 unless measured otherwise, see ``emit.py``).
Norm reductions always run in fp32, as the reference's ``Norm`` does.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..frontends import load_weight
from ..graphs import FFNSpec, Graph, NormSpec
from .builder import F32, NP_DTYPE, GraphBuilder, Initializer

HEADWISE_FORMS = ("batched", "dense")


@dataclass
class Ctx:
    """What a lowering writes into: the builder of the current graph (main or Scan body), the IR graph,
    dtypes, batch size, and the weight initializers made so far (shared with every other Ctx)."""

    b: GraphBuilder
    graph: Graph
    batch: int
    act: int = F32  # weights / activations
    cell: int = F32  # recurrent cell math and states
    headwise_form: str = "batched"  # block-diagonal weights: "batched" MatMul over heads, or "dense"
    lm_head_block: int = 16384  # LM head column blocks (Core ML EP rejects dims > 16384)
    _weights: Dict[tuple, str] = field(default_factory=dict)

    def on(self, b: GraphBuilder) -> "Ctx":
        """The same context writing into another graph (a Scan body); weights stay shared."""
        return replace(self, b=b, _weights=self._weights)

    # -- weights -------------------------------------------------------------------------------
    def weight(self, key: str, dims: Sequence[int], make: Callable[[], np.ndarray], dtype: Optional[int] = None,
               sources: Sequence[str] = ()) -> str:
        """An initializer named ``key`` whose data ``make()`` computes when the model is written."""
        elem = self.act if dtype is None else dtype
        cache_key = (key, elem)
        if cache_key in self._weights:
            return self._weights[cache_key]
        name = key if elem == self.act or dtype is None else f"{key}.{'f32' if elem == F32 else 'f16'}"
        src = ", ".join(sources)
        self.b.model.add_initializer(Initializer(name, elem, tuple(int(d) for d in dims), make, src))
        self._weights[cache_key] = name
        return name

    def load(self, name: str) -> np.ndarray:
        """A checkpoint tensor as float32 (checked finite), read now."""
        return load_weight(self.graph.weights[name])

    def param(self, name: str, offset: float = 0.0, dtype: Optional[int] = None,
              shape: Optional[Sequence[int]] = None) -> str:
        """A checkpoint tensor as stored (plus ``offset``, folded in fp32 like the reference's 1 + w),
        optionally viewed as ``shape`` (e.g. a (D,) head-norm weight as (NH, D/NH))."""
        h = self.graph.weights[name]
        elem = self.act if dtype is None else dtype
        key = name if offset == 0.0 else f"{name}.plus{offset:g}".replace("-", "m")
        dims = tuple(h.shape) if shape is None else tuple(shape)
        if shape is not None:
            key += ".heads"

        def make() -> np.ndarray:
            a = self.load(name)
            if offset != 0.0:
                a = a + np.float32(offset)
            return a.reshape(dims).astype(NP_DTYPE[elem], copy=False)

        return self.weight(key, dims, make, elem, [h.source])

    def param_t(self, name: str, dtype: Optional[int] = None) -> str:
        """A Linear weight ``(out, in)`` transposed to ``(in, out)`` for ``MatMul(x, W)``."""
        h = self.graph.weights[name]
        elem = self.act if dtype is None else dtype
        return self.weight(f"{name}.T", (h.shape[1], h.shape[0]),
                           lambda: self.load(name).T.astype(NP_DTYPE[elem], order="C"), elem,
                           [h.source])

    # -- layers --------------------------------------------------------------------------------
    def linear(self, x: str, prefix: str, bias: bool, name: str) -> str:
        """``x @ W^T (+ b)``; x (..., in) -> (..., out)."""
        b = self.b
        y = b.matmul(x, self.param_t(f"{prefix}.weight"), name)
        if bias:
            y = b.add(y, self.param(f"{prefix}.bias"), f"{name}.bias")
        return y

    def norm(self, x: str, spec: NormSpec, prefix: str, name: str, num_heads: int = 1,
             out_dtype: Optional[int] = None) -> str:
        """RMSNorm / LayerNorm over the last axis, reductions in fp32 (the reference's ``Norm``).

        x (..., D), or (..., NH, DH) per head with the weight viewed as (NH, DH).
        ``y = cast(normalise(float(x)), out) * (offset + w) (+ bias)``.
        """
        b = self.b
        out = self.act if out_dtype is None else out_dtype
        xf = b.cast(x, F32, f"{name}.to_f32")
        if spec.kind == "layernorm":
            mu = b.reduce_mean(xf, [-1], True, f"{name}.mean")
            xf = b.sub(xf, mu, f"{name}.center")
        var = b.reduce_mean(b.mul(xf, xf, f"{name}.square"), [-1], True, f"{name}.var")
        std = b.sqrt(b.add(var, b.const(spec.eps, F32), f"{name}.var_eps"), f"{name}.std")
        y = b.cast(b.div(xf, std, f"{name}.normed"), out, f"{name}.cast")
        heads = None
        if num_heads > 1:
            d = self.graph.weights[f"{prefix}.weight"].shape[0]
            heads = (num_heads, d // num_heads)
        w = self.param(f"{prefix}.weight", offset=spec.weight_offset, dtype=out, shape=heads)
        y = b.mul(y, w, name if not spec.bias else f"{name}.scale")
        if spec.bias:
            y = b.add(y, self.param(f"{prefix}.bias", dtype=out, shape=heads), name)
        return y

    def activation(self, x: str, kind: str, name: str) -> str:
        b = self.b
        if kind == "silu":
            return b.silu(x, name)
        if kind == "gelu":
            return b.gelu(x, name)
        if kind == "relu":
            return b.relu(x, name)
        return b.sigmoid(x, name)

    def ffn(self, x: str, spec: FFNSpec, index: int) -> str:
        """``down(act(gate(n)) * up(n))`` with ``n = ffn_norm(x)``; x (B, E) -> (B, E)."""
        p = f"blocks.{index}"
        b = self.b
        with b.scope(f"{p}.ffn"):
            xn = self.norm(x, spec.norm, f"{p}.ffn_norm", "norm")
            g = self.activation(self.linear(xn, f"{p}.ffn.gate", spec.bias, "gate"), spec.activation, "act")
            u = self.linear(xn, f"{p}.ffn.up", spec.bias, "up")
            return self.linear(b.mul(g, u, "gated"), f"{p}.ffn.down", spec.bias, "down")

    def headwise(self, x: str, key: str, weight_names: Sequence[str], name: str, elem: Optional[int] = None
                 ) -> str:
        """Block-diagonal linear, several weights fused along each block's output.

        "batched" is the default, by measurement (hybrid E=512, 4 blocks, step graph, ORT CPU, 1 thread):
        30 MB and 3.8 ms/step, against 74 MB and 6.5 ms/step for "dense" (qkv blocks of 4 make the dense
        matrices mostly zeros); both are one Core ML EP partition (MatMul either way).

        x reshapes to (B, nb*bi); each weight is stored (nb, bo, bi) (headwise q/k/v, sLSTM gate weights
        and recurrent kernels); y (B, nb, 1, G*bo), G = len(weight_names),
        ``y[b, h, 0, g*bo + o] = sum_i x[b, h*bi + i] W_g[h, o, i]``:

            "batched": MatMul((B, nb, 1, bi), W (nb, bi, G*bo))             weights as stored, transposed
            "dense":   MatMul((B, nb*bi), block-diagonal (nb*bi, nb*G*bo)) -> Reshape (B, nb, 1, G*bo)
        """
        b = self.b
        hs = [self.graph.weights[n] for n in weight_names]
        nb, bo, bi = hs[0].shape
        G = len(hs)
        B = self.batch
        elem = self.act if elem is None else elem
        npd = NP_DTYPE[elem]

        def fused() -> np.ndarray:  # (nb, bi, G*bo)
            return np.concatenate([np.transpose(self.load(n), (0, 2, 1)) for n in weight_names], axis=2)

        if self.headwise_form == "batched":
            w = self.weight(f"{key}.heads", (nb, bi, G * bo), lambda: fused().astype(npd, copy=False), elem,
                            [h.source for h in hs])
            xh = b.reshape(x, [B, nb, 1, bi], f"{name}.in")
            return b.matmul(xh, w, name)

        def dense() -> np.ndarray:  # (nb*bi, nb*G*bo) block-diagonal
            f = fused()
            out = np.zeros((nb * bi, nb * G * bo), dtype=npd)
            for h in range(nb):
                out[h * bi:(h + 1) * bi, h * G * bo:(h + 1) * G * bo] = f[h]
            return out

        w = self.weight(f"{key}.blockdiag", (nb * bi, nb * G * bo), dense, elem, [h.source for h in hs])
        y = b.matmul(b.reshape(x, [B, nb * bi], f"{name}.in"), w, f"{name}.dense")
        return b.reshape(y, [B, nb, 1, G * bo], name)

    def slstm_bias(self, key: str, names: Sequence[str], NH: int, DH: int) -> str:
        """The four gate biases (E,) each, as (NH, 1, 4 DH) gate-major per head, in the cell dtype."""
        hs = [self.graph.weights[n] for n in names]

        def make() -> np.ndarray:
            per = [self.load(n).reshape(NH, 1, DH) for n in names]
            return np.concatenate(per, axis=2).astype(NP_DTYPE[self.cell], copy=False)

        return self.weight(f"{key}.heads", (NH, 1, 4 * DH), make, self.cell, [h.source for h in hs])

    def conv_step(self, x: str, ring: str, prefix: str, kernel: int, dim: int) -> Tuple[str, str]:
        """Depthwise causal conv, one step, over the ring of the last K inputs (oldest first).

            ring (B, K, D) --drop oldest--> (B, K-1, D) --append x--> ring' (B, K, D)
            y = sum_k ring'[:, k] * w[k] + bias                            (B, D)
        """
        b = self.b
        B = self.batch
        xr = b.reshape(x, [B, 1, dim], "conv.frame")
        ring = b.cast(ring, self.act, "conv.ring_in")
        if kernel > 1:
            old = b.slice(ring, [1], [kernel], [1], "conv.keep")  # (B, K-1, D)
            new_ring = b.concat([old, xr], 1, "conv.ring")  # (B, K, D)
        else:
            new_ring = xr
        taps = b.mul(new_ring, self.param(f"{prefix}.conv.weight"), "conv.taps")  # (B, K, D)
        y = b.reduce_sum(taps, [1], False, "conv.sum")  # (B, D)
        y = b.add(y, self.param(f"{prefix}.conv.bias"), "conv")
        return y, new_ring

    def mlstm_cell(self, q: str, k: str, v: str, i: str, f: str, c: str, n: str, m: str, eps: float,
                   NH: int, DQK: int, DV: int) -> Tuple[str, str, str, str]:
        """The stabilized mLSTM step (reference ``kernels.mlstm_step``), in ``Ctx.cell`` dtype::

            f_log = -softplus(-f)                          (B, NH, 1)
            m'    = max(f_log + m, i)
            fa    = exp(f_log + m - m');  ia = exp(i - m')
            C'    = fa C + ia k v^T                        (B, NH, DQK, DV)
            n'    = fa n + ia k                            (B, NH, DQK)
            h     = q C' / (max(|q . n'|, exp(-m')) + eps) (B, NH, DV)
        """
        b = self.b
        B = self.batch
        with b.scope("cell"):
            f_log = b.logsigmoid(f, "f_log")
            f_m = b.add(f_log, m, "f_log_plus_m")
            m_new = b.max(f_m, i, "m")
            fa = b.exp(b.sub(f_m, m_new, "f_arg"), "f_act")  # (B, NH, 1)
            ia = b.exp(b.sub(i, m_new, "i_arg"), "i_act")
            kv = b.mul(b.reshape(k, [B, NH, DQK, 1], "k_col"), b.reshape(v, [B, NH, 1, DV], "v_row"), "kv")
            fa4 = b.reshape(fa, [B, NH, 1, 1], "f_act4")
            ia4 = b.reshape(ia, [B, NH, 1, 1], "i_act4")
            c_new = b.add(b.mul(fa4, c, "c_decay"), b.mul(ia4, kv, "c_in"), "c")
            n_new = b.add(b.mul(fa, n, "n_decay"), b.mul(ia, k, "n_in"), "n")
            h_num = b.matmul(b.reshape(q, [B, NH, 1, DQK], "q_row"), c_new, "h_num")  # (B, NH, 1, DV)
            qn = b.reduce_sum(b.mul(q, n_new, "qn_prod"), [-1], True, "qn")  # (B, NH, 1)
            floor = b.exp(b.neg(m_new, "neg_m"), "exp_neg_m")
            den = b.add(b.max(b.abs(qn, "qn_abs"), floor, "den_max"), b.scalar_like(eps, qn), "den")
            h = b.div(b.reshape(h_num, [B, NH, DV], "h_num3"), den, "h")  # (B, NH, DV)
        return h, c_new, n_new, m_new


def lm_head_blocks(vocab: int, block: int) -> List[Tuple[int, int]]:
    """Column ranges [start, stop) of the LM head, each at most ``block`` wide."""
    if block <= 0:
        raise ValueError(f"lm_head_block must be positive, got {block}")
    return [(s, min(s + block, vocab)) for s in range(0, vocab, block)]


def head(ctx: Ctx, x: str) -> str:
    """``out_norm -> lm_head -> soft cap``; x (B, T, E) -> logits (B, T, V) float32.

    When V exceeds ``ctx.lm_head_block`` the LM head is several MatMuls over column blocks, each
    capped on its own, then one Concat (every Core ML node input stays <= 16384 wide)::

        x -> out_norm -+-> MatMul W[:, 0:16384]     -> cast -> cap -+
                       +-> MatMul W[:, 16384:32768] -> cast -> cap -+-> Concat -> logits
                       +-> ...                                      -+
    """
    b = ctx.b
    cfg = ctx.graph.config
    with b.scope("head"):
        if cfg.out_norm is not None:
            x = ctx.norm(x, cfg.out_norm, "out_norm", "out_norm")
        h = ctx.graph.weights["lm_head.weight"]
        V, E = h.shape
        parts = []
        blocks = lm_head_blocks(V, ctx.lm_head_block)
        for j, (s, e) in enumerate(blocks):
            suffix = "" if len(blocks) == 1 else f".{j}"
            rows = h if len(blocks) == 1 else h.rows(f"lm_head.weight[{s}:{e}]", s, e)
            w = ctx.weight(f"lm_head.weight.T{suffix}", (E, e - s),
                           lambda rows=rows: load_weight(rows).T.astype(NP_DTYPE[ctx.act], order="C"),
                           ctx.act, [h.source])
            y = b.cast(b.matmul(x, w, f"lm_head{suffix}"), F32, f"lm_head{suffix}.f32")
            if cfg.output_logit_soft_cap:
                y = b.soft_cap(y, float(cfg.output_logit_soft_cap), f"soft_cap{suffix}")
            parts.append(y)
        return parts[0] if len(parts) == 1 else b.concat(parts, -1, "logits")
