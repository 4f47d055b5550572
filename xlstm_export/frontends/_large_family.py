"""Shared by the two L-family formats (transformers xLSTM and upstream ``xlstm_large``).

Both store ``backbone.blocks.{i}.{norm_mlstm, mlstm_layer.*, norm_ffn, ffn.*}``,
``backbone.out_norm`` and ``lm_head``; only the embedding's name differs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

from ..errors import ConfigError
from ..graphs import FFNSpec, MLSTMBlock, ModelConfig, NormSpec
from ..graphs.spec import check_cap, check_eps
from ._table import Rule, split_rows


def round_up_to_next_multiple_of(x: float, multiple_of: int) -> int:
    """Exactly upstream's ``xlstm_large.utils.round_up_to_next_multiple_of`` (float floor-division)."""
    return int(((x + multiple_of - 1) // multiple_of) * multiple_of)


@dataclass(frozen=True)
class LargeDims:
    vocab_size: int
    embedding_dim: int
    num_heads: int
    num_blocks: int
    qk_dim: int
    v_dim: int
    up_dim: int
    use_bias: bool
    norm_eps: float
    force_float32: bool
    eps: float
    gate_soft_cap: Optional[float]
    output_logit_soft_cap: Optional[float]
    out_norm: Optional[NormSpec]
    tie_weights: bool = False


def positive_dims(where: str, **dims: float) -> None:
    """Sizes a config implies (products of its fields): finite and positive, else a ConfigError."""
    for what, v in dims.items():
        if not (math.isfinite(v) and v > 0):
            raise ConfigError(f"{where}: {what.replace('__', ' x ')} = {v!r} must be a positive size; "
                              f"check those fields")


def check_values(cfg: dict, where: str, norm_eps: float) -> None:
    """The L family's numeric fields that must describe a working model, named as in the config:
    ``norm_eps`` and ``eps`` small positive numbers, ``gate_soft_cap`` / ``output_logit_soft_cap`` positive
    (within fp16's range) or null. Read with their upstream defaults, as the dims are."""
    from . import field

    check_eps(where, "norm_eps", norm_eps)
    check_eps(where, "eps", field(cfg, "eps", float, where, 1e-6))
    for key, default in (("gate_soft_cap", 15.0), ("output_logit_soft_cap", 30.0)):
        check_cap(where, key, field(cfg, key, float, where, default, optional=True))


def large_block(d: LargeDims, where: str) -> MLSTMBlock:
    if d.num_heads <= 0:
        raise ConfigError(f"{where}: field 'num_heads' must be positive, got {d.num_heads}")
    if d.qk_dim % d.num_heads or d.v_dim % d.num_heads:
        raise ConfigError(f"{where}: num_heads {d.num_heads} must divide the q/k dim {d.qk_dim} and the v dim "
                          f"{d.v_dim}")
    rms = NormSpec(kind="rmsnorm", eps=d.norm_eps, bias=d.use_bias, force_float32=d.force_float32)
    return MLSTMBlock(
        num_heads=d.num_heads, qk_head_dim=d.qk_dim // d.num_heads, v_head_dim=d.v_dim // d.num_heads,
        norm=rms,
        head_norm=NormSpec(kind="layernorm", eps=d.norm_eps, bias=d.use_bias, force_float32=d.force_float32),
        form="large", cell_eps=d.eps, gate_soft_cap=d.gate_soft_cap, bias=d.use_bias, qk_scale_on="q",
        ffn=FFNSpec(up_dim=d.up_dim, activation="silu", norm=rms, bias=d.use_bias),
    )


def model_config(d: LargeDims) -> ModelConfig:
    return ModelConfig(family="large", vocab_size=d.vocab_size, embedding_dim=d.embedding_dim,
                       out_norm=d.out_norm, tie_weights=d.tie_weights,
                       output_logit_soft_cap=d.output_logit_soft_cap)


def _bias(block) -> bool:
    return block.bias


P = "backbone.blocks.{i}."
C = "blocks.{i}."

_COMMON = [
    Rule(P + "norm_mlstm.weight", C + "norm.weight"),
    Rule(P + "norm_mlstm.bias", C + "norm.bias", when=_bias),
    Rule(P + "mlstm_layer.multihead_norm.weight", C + "mlstm.head_norm.weight"),
    Rule(P + "mlstm_layer.multihead_norm.bias", C + "mlstm.head_norm.bias", when=_bias),
    Rule(P + "mlstm_layer.out_proj.weight", C + "mlstm.out_proj.weight"),
    Rule(P + "mlstm_layer.out_proj.bias", C + "mlstm.out_proj.bias", when=_bias),
    Rule(P + "norm_ffn.weight", C + "ffn_norm.weight"),
    Rule(P + "norm_ffn.bias", C + "ffn_norm.bias", when=_bias),
    Rule(P + "ffn.proj_down.weight", C + "ffn.down.weight"),
    Rule(P + "ffn.proj_down.bias", C + "ffn.down.bias", when=_bias),
]

SINGLE_BLOCK_TABLE = _COMMON + [
    Rule(P + f"mlstm_layer.{ck}.{wb}", C + f"mlstm.{cn}.{wb}", when=None if wb == "weight" else _bias)
    for ck, cn in (("q", "q"), ("k", "k"), ("v", "v"), ("ogate_preact", "ogate"))
    for wb in ("weight", "bias")
] + [
    Rule(P + f"mlstm_layer.{g}gate_preact.{wb}", C + f"mlstm.{g}gate.{wb}") for g in "if" for wb in ("weight", "bias")
] + [
    Rule(P + f"ffn.{ck}.{wb}", C + f"ffn.{cn}.{wb}", when=None if wb == "weight" else _bias)
    for ck, cn in (("proj_up_gate", "gate"), ("proj_up", "up")) for wb in ("weight", "bias")
]


def _qk(b):
    return b.num_heads * b.qk_head_dim


def _v(b):
    return b.num_heads * b.v_head_dim


def _nh(b):
    return b.num_heads


def _u(b):
    return b.ffn.up_dim


FUSED_BLOCK_TABLE = _COMMON + [
    Rule(P + f"mlstm_layer.qkv_opreact.{wb}",
         tuple(C + f"mlstm.{n}.{wb}" for n in ("q", "k", "v", "ogate")),
         split_rows(_qk, _qk, _v, _v), when=None if wb == "weight" else _bias)
    for wb in ("weight", "bias")
] + [
    Rule(P + f"mlstm_layer.ifgate_preact.{wb}", (C + f"mlstm.igate.{wb}", C + f"mlstm.fgate.{wb}"),
         split_rows(_nh, _nh)) for wb in ("weight", "bias")
] + [
    Rule(P + f"ffn.proj_up_gate_z.{wb}", (C + f"ffn.gate.{wb}", C + f"ffn.up.{wb}"), split_rows(_u, _u),
         when=None if wb == "weight" else _bias)
    for wb in ("weight", "bias")
]


def model_rules(embedding_name: str, d: LargeDims) -> list[Rule]:
    rules = [Rule(embedding_name, "embedding.weight")]
    if d.out_norm is not None:
        rules.append(Rule("backbone.out_norm.weight", "out_norm.weight"))
        if d.out_norm.bias:
            rules.append(Rule("backbone.out_norm.bias", "out_norm.bias"))
    tied = (lambda handles, names: [handles["embedding.weight"].rename("lm_head.weight")]
            if d.tie_weights and "embedding.weight" in handles else None)
    rules.append(Rule("lm_head.weight", "lm_head.weight", fallback=tied))
    return rules
