"""Canonical weight names and shapes: what a graph needs, per block kind.

Every frontend maps its checkpoint names onto these; every emitter and the reference read these.
Shapes follow ``nn.Linear`` (out, in). Headwise ("block-diagonal") projections are stored as
``(num_blocks, out_per_block, in_per_block)``; the sLSTM recurrent kernels as ``(NH, DH_out, DH_in)``
per gate; conv kernels as ``(K, D)`` (tap 0 multiplies the oldest frame of the ring).

sLSTM gate names are the roles in the cell (i, f, z, o). Note upstream's ``sLSTMLayer`` feeds the
cell's input gate from its module called ``fgate`` and the forget gate from ``igate``; the H-family
frontend maps that, so here ``igate`` always means the cell's input gate.
"""

from __future__ import annotations

from .spec import BlockSpec, FFNSpec, MLSTMBlock, ModelConfig, NormSpec

SLSTM_GATES = ("i", "f", "z", "o")


def _norm(prefix: str, spec: NormSpec, dim: int) -> dict[str, tuple[int, ...]]:
    out = {f"{prefix}.weight": (dim,)}
    if spec.bias:
        out[f"{prefix}.bias"] = (dim,)
    return out


def _linear(prefix: str, out_dim: int, in_dim: int, bias: bool) -> dict[str, tuple[int, ...]]:
    out = {f"{prefix}.weight": (out_dim, in_dim)}
    if bias:
        out[f"{prefix}.bias"] = (out_dim,)
    return out


def _ffn(prefix: str, ffn: FFNSpec, E: int) -> dict[str, tuple[int, ...]]:
    U = ffn.up_dim
    return {
        **_norm(f"{prefix}.ffn_norm", ffn.norm, E),
        **_linear(f"{prefix}.ffn.gate", U, E, ffn.bias),
        **_linear(f"{prefix}.ffn.up", U, E, ffn.bias),
        **_linear(f"{prefix}.ffn.down", E, U, ffn.bias),
    }


def block_weights(index: int, block: BlockSpec, E: int) -> dict[str, tuple[int, ...]]:
    """Canonical name -> shape of every tensor block ``index`` needs."""
    p = f"blocks.{index}"
    out = dict(_norm(f"{p}.norm", block.norm, E))
    if isinstance(block, MLSTMBlock):
        NH, DQK, DV = block.num_heads, block.qk_head_dim, block.v_head_dim
        m = f"{p}.mlstm"
        if block.form == "large":
            out.update(_linear(f"{m}.q", NH * DQK, E, block.bias))
            out.update(_linear(f"{m}.k", NH * DQK, E, block.bias))
            out.update(_linear(f"{m}.v", NH * DV, E, block.bias))
            out.update(_linear(f"{m}.ogate", NH * DV, E, block.bias))
            out.update(_linear(f"{m}.igate", NH, E, True))
            out.update(_linear(f"{m}.fgate", NH, E, True))
            out.update(_norm(f"{m}.head_norm", block.head_norm, NH * DV))
            out.update(_linear(f"{m}.out_proj", E, NH * DV, block.bias))
        else:
            inner, bs = block.inner_dim, block.qkv_blocksize
            nb = inner // bs
            out.update(_linear(f"{m}.up_x", inner, E, block.bias))
            out.update(_linear(f"{m}.up_z", inner, E, block.bias))
            if block.conv_kernel > 0:
                out[f"{m}.conv.weight"] = (block.conv_kernel, inner)
                out[f"{m}.conv.bias"] = (inner,)
            for name in ("q", "k", "v"):
                out[f"{m}.{name}.weight"] = (nb, bs, bs)
                if block.bias:
                    out[f"{m}.{name}.bias"] = (inner,)
            out.update(_linear(f"{m}.igate", NH, 3 * inner, True))
            out.update(_linear(f"{m}.fgate", NH, 3 * inner, True))
            out.update(_norm(f"{m}.head_norm", block.head_norm, inner))
            out[f"{m}.skip.weight"] = (inner,)
            out.update(_linear(f"{m}.out_proj", E, inner, block.bias))
    else:
        NH, DH = block.num_heads, block.head_dim
        s = f"{p}.slstm"
        if block.conv_kernel > 0:
            out[f"{s}.conv.weight"] = (block.conv_kernel, E)
            out[f"{s}.conv.bias"] = (E,)
        for g in SLSTM_GATES:
            out[f"{s}.{g}gate.weight"] = (NH, DH, DH)
            out[f"{s}.{g}gate.recurrent"] = (NH, DH, DH)
            out[f"{s}.{g}gate.bias"] = (E,)
        out.update(_norm(f"{s}.head_norm", block.head_norm, E))
    if block.ffn is not None:
        out.update(_ffn(p, block.ffn, E))
    return out


def model_weights(config: ModelConfig, blocks: tuple[BlockSpec, ...]) -> dict[str, tuple[int, ...]]:
    """Canonical name -> shape of every tensor the model needs, in execution order."""
    V, E = config.vocab_size, config.embedding_dim
    out: dict[str, tuple[int, ...]] = {"embedding.weight": (V, E)}
    for i, b in enumerate(blocks):
        out.update(block_weights(i, b, E))
    if config.out_norm is not None:
        out.update(_norm("out_norm", config.out_norm, E))
    out["lm_head.weight"] = (V, E)
    return out
