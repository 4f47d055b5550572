"""Upstream ``xlstm.xlstm_large`` (``xLSTMLarge``): ``config.yaml`` + ``model.safetensors`` or
``model_{n}.safetensors``, as ``xlstm.xlstm_large.from_pretrained.load_from_pretrained`` reads them.

Names as transformers' but the embedding is ``embedding.weight``. Upstream loads with
``weight_mode`` forced to "single", so only single-mode names are accepted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from ..errors import CheckpointError, ConfigError, short
from ..graphs import Graph, NormSpec
from ..graphs.spec import check_positive
from . import check_num_blocks, field, path_exists, read_config
from ._large_family import (SINGLE_BLOCK_TABLE, LargeDims, check_values, large_block, model_config,
                            model_rules, positive_dims, round_up_to_next_multiple_of)
from ._table import apply_rules, build_graph
from .safetensors_io import open_safetensors

# xLSTMLargeConfig's fields (xlstm 2.0.6); a field not here makes upstream's constructor fail
LARGE_FIELDS = (
    "embedding_dim", "num_heads", "num_blocks", "vocab_size", "use_bias", "norm_eps",
    "norm_reduction_force_float32", "add_out_norm", "qk_dim_factor", "v_dim_factor", "chunkwise_kernel",
    "sequence_kernel", "step_kernel", "mode", "chunk_size", "return_last_states", "autocast_kernel_dtype",
    "eps", "inference_state_dtype", "ffn_proj_factor", "ffn_round_up_to_multiple_of", "gate_soft_cap",
    "output_logit_soft_cap", "weight_mode",
)


def open_large_weights(d: Path, file: Optional[Path]) -> dict:
    if file is not None and file.suffix == ".safetensors":
        return open_safetensors(file)
    single = d / "model.safetensors"
    if path_exists(single):
        return open_safetensors(single)
    out: dict = {}
    n = 0
    while path_exists(d / f"model_{n}.safetensors"):
        for name, h in open_safetensors(d / f"model_{n}.safetensors").items():
            if name in out:
                raise CheckpointError(f"{d / f'model_{n}.safetensors'}: tensor {short(name, 200)} is also in an "
                                      f"earlier shard")
            out[name] = h
        n += 1
    if n == 0:
        raise CheckpointError(f"{d}: no weights: expected model.safetensors or model_0.safetensors, "
                              f"model_1.safetensors, ...")
    return out


def load_large(d: Path, file: Optional[Path] = None) -> Graph:
    cfg_path = d / "config.yaml"
    if not path_exists(cfg_path):
        raise CheckpointError(f"{d}: config.yaml is missing (expected an xlstm_large checkpoint)")
    cfg = read_config(cfg_path)
    where = str(cfg_path)
    unknown = sorted(set(cfg) - set(LARGE_FIELDS), key=str)
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {short(unknown, 200)} for xLSTMLargeConfig")
    E = field(cfg, "embedding_dim", int, where)
    nh = field(cfg, "num_heads", int, where)
    nb = field(cfg, "num_blocks", int, where)
    V = field(cfg, "vocab_size", int, where)
    check_positive(where, embedding_dim=E, num_heads=nh, num_blocks=nb, vocab_size=V)
    use_bias = field(cfg, "use_bias", bool, where, False)
    eps_n = field(cfg, "norm_eps", float, where, 1e-6)
    force = field(cfg, "norm_reduction_force_float32", bool, where, True)
    add_out_norm = field(cfg, "add_out_norm", bool, where, True)
    qkf = field(cfg, "qk_dim_factor", float, where, 0.5)
    vf = field(cfg, "v_dim_factor", float, where, 1.0)
    ffn_f = field(cfg, "ffn_proj_factor", float, where, 2.6667)
    mult = field(cfg, "ffn_round_up_to_multiple_of", int, where, 64)
    positive_dims(where, ffn_round_up_to_multiple_of=mult, embedding_dim__qk_dim_factor=E * qkf,
                  embedding_dim__v_dim_factor=E * vf, embedding_dim__ffn_proj_factor=E * ffn_f)
    check_values(cfg, where, eps_n)
    ckpt = open_large_weights(d, file)
    check_num_blocks(nb, len(ckpt), where)
    dims = LargeDims(
        vocab_size=V, embedding_dim=E, num_heads=nh, num_blocks=nb,
        qk_dim=int(E * qkf), v_dim=int(E * vf), up_dim=round_up_to_next_multiple_of(E * ffn_f, mult),
        use_bias=use_bias, norm_eps=eps_n, force_float32=force, eps=field(cfg, "eps", float, where, 1e-6),
        gate_soft_cap=field(cfg, "gate_soft_cap", float, where, 15.0, optional=True),
        output_logit_soft_cap=field(cfg, "output_logit_soft_cap", float, where, 30.0, optional=True),
        out_norm=NormSpec(kind="rmsnorm", eps=eps_n, bias=use_bias, force_float32=force) if add_out_norm else None,
    )
    block = large_block(dims, where)
    blocks = (block,) * nb
    mapped = apply_rules(ckpt, model_rules("embedding.weight", dims), blocks, lambda b: SINGLE_BLOCK_TABLE)
    return build_graph(model_config(dims), blocks, ckpt, mapped, source=str(d), config_source=str(cfg_path))
