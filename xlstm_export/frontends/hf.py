"""transformers xLSTM (``model_type: xlstm``): ``config.json`` + ``model.safetensors`` or shards + index.

Names: ``backbone.embeddings.weight``, ``backbone.blocks.{i}.{norm_mlstm, mlstm_layer.*, norm_ffn, ffn.*}``,
``backbone.out_norm.weight`` (transformers always builds it, whatever ``add_out_norm`` says),
``lm_head.weight``; ``weight_mode: fused`` stores ``qkv_opreact``, ``ifgate_preact``, ``proj_up_gate_z``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from ..errors import CheckpointError, ConfigError, UnsupportedError, short
from ..graphs import Graph, NormSpec
from . import MAX_INDEX_BYTES, check_num_blocks, field, path_exists, read_config, read_json
from ._large_family import (FUSED_BLOCK_TABLE, SINGLE_BLOCK_TABLE, LargeDims, check_values, large_block,
                            model_config, model_rules, positive_dims, round_up_to_next_multiple_of)
from ._table import apply_rules, build_graph
from .safetensors_io import open_safetensors

INDEX = "model.safetensors.index.json"


NAME_MAX = 255  # bytes in one file name on the file systems we run on


def shard_path(d: Path, shard: str, index: Path) -> Path:
    """The shard file an index names: a plain file name in the checkpoint directory (no folders, at most
    ``NAME_MAX`` bytes), checked before the file system sees it."""
    if not shard or Path(shard).name != shard or shard in (".", "..") or "\0" in shard:
        raise CheckpointError(f"{index}: shard name {short(shard, 100)} must be a plain file name in the "
                              f"checkpoint directory")
    if len(shard.encode("utf-8", "surrogatepass")) > NAME_MAX:
        raise CheckpointError(f"{index}: shard name {short(shard, 60)} is {len(shard)} characters long; a file "
                              f"name has at most {NAME_MAX} bytes, so no such shard can exist")
    return d / shard


def open_hf_weights(d: Path, file: Optional[Path]) -> dict:
    if file is not None and file.suffix == ".safetensors":
        return open_safetensors(file)
    single, index = d / "model.safetensors", d / INDEX
    if path_exists(single):
        return open_safetensors(single)
    if not path_exists(index):
        raise CheckpointError(f"{d}: no weights: expected model.safetensors or {INDEX} with its shards")
    idx = read_json(index, MAX_INDEX_BYTES, "safetensors index")
    wm = idx.get("weight_map") if isinstance(idx, dict) else None
    if not isinstance(wm, dict) or not all(isinstance(v, str) for v in wm.values()):
        raise CheckpointError(f"{index}: expected an object with 'weight_map': {{tensor: shard file}}")
    out: dict = {}
    shards = sorted(set(wm.values()))
    paths = {shard: shard_path(d, shard, index) for shard in shards}  # every name checked before any is opened
    for shard in shards:
        sp = paths[shard]
        if not path_exists(sp):
            n = sum(1 for v in wm.values() if v == shard)
            raise CheckpointError(f"{index}: shard {short(shard, 100)} is missing ({n} tensors live there, e.g. "
                                  f"{short(next(k for k, v in wm.items() if v == shard), 100)})")
        handles = open_safetensors(sp)
        for name, h in handles.items():
            if name in out:
                raise CheckpointError(f"{sp}: tensor {short(name, 200)} is also in another shard")
            out[name] = h
        for name, s in wm.items():
            if s == shard and name not in handles:
                raise CheckpointError(f"{index}: tensor {short(name, 200)} is mapped to {short(shard, 100)} but "
                                      f"that shard does not hold it")
    return out


def hf_dims(cfg: dict, where: str, has_lm_head: bool) -> tuple[LargeDims, str]:
    hidden = field(cfg, "hidden_size", int, where, None, optional=True)
    emb = field(cfg, "embedding_dim", int, where, None, optional=True)
    hidden = hidden if hidden is not None else emb
    emb = emb if emb is not None else hidden
    if hidden is None:
        hidden = emb = 4096
    if emb != hidden:
        raise UnsupportedError(f"{where}: embedding_dim {emb} != hidden_size {hidden}; transformers' xLSTM "
                               f"builds with both, which only works when they are equal")
    layers = field(cfg, "num_hidden_layers", int, where, None, optional=True)
    nblocks = field(cfg, "num_blocks", int, where, None, optional=True)
    layers = layers if layers is not None else nblocks
    nblocks = nblocks if nblocks is not None else layers
    if layers is None:
        layers = nblocks = 32
    if layers != nblocks:
        raise UnsupportedError(f"{where}: num_blocks {nblocks} != num_hidden_layers {layers}")
    nh = field(cfg, "num_heads", int, where, 8)
    qkf = field(cfg, "qk_dim_factor", float, where, 0.5)
    vf = field(cfg, "v_dim_factor", float, where, 1.0)
    ffn_f = field(cfg, "ffn_proj_factor", float, where, 2.667)
    mult = field(cfg, "ffn_round_up_to_multiple_of", int, where, 64)
    positive_dims(where, hidden_size=hidden, num_heads=nh, ffn_round_up_to_multiple_of=mult,
                  hidden_size__qk_dim_factor=hidden * qkf, hidden_size__v_dim_factor=hidden * vf,
                  hidden_size__ffn_proj_factor=hidden * ffn_f)
    qk_lin, v_lin = int(hidden * qkf), int(hidden * vf)
    qk_cache, v_cache = round_up_to_next_multiple_of(hidden * qkf, 64), round_up_to_next_multiple_of(hidden * vf, 64)
    if qk_lin != qk_cache or v_lin != v_cache:
        raise UnsupportedError(
            f"{where}: hidden_size {hidden} x qk_dim_factor {qkf} / v_dim_factor {vf} gives Linear dims "
            f"{qk_lin}/{v_lin} but transformers' xLSTMCache uses the round-up-to-64 dims {qk_cache}/{v_cache}; "
            f"such a model cannot run in transformers and is not supported")
    eps_n = field(cfg, "norm_eps", float, where, 1e-6)
    use_bias = field(cfg, "use_bias", bool, where, False)
    force = field(cfg, "norm_reduction_force_float32", bool, where, True)
    up = round_up_to_next_multiple_of(hidden * ffn_f, mult)
    weight_mode = field(cfg, "weight_mode", str, where, "single")
    if weight_mode not in ("single", "fused"):
        raise ConfigError(f"{where}: field 'weight_mode' must be 'single' or 'fused', got {short(weight_mode)}")
    tie = field(cfg, "tie_word_embeddings", bool, where, False) and not has_lm_head
    check_values(cfg, where, eps_n)
    d = LargeDims(
        vocab_size=field(cfg, "vocab_size", int, where, 50304), embedding_dim=hidden, num_heads=nh,
        num_blocks=layers, qk_dim=qk_lin, v_dim=v_lin, up_dim=up, use_bias=use_bias, norm_eps=eps_n,
        force_float32=force, eps=field(cfg, "eps", float, where, 1e-6),
        gate_soft_cap=field(cfg, "gate_soft_cap", float, where, 15.0, optional=True),
        output_logit_soft_cap=field(cfg, "output_logit_soft_cap", float, where, 30.0, optional=True),
        # transformers' xLSTMModel always has out_norm = RMSNorm(hidden, eps=norm_eps): no bias, fp32
        out_norm=NormSpec(kind="rmsnorm", eps=eps_n, bias=False, force_float32=True),
        tie_weights=tie,
    )
    return d, weight_mode


def load_hf(d: Path, file: Optional[Path] = None) -> Graph:
    cfg_path = d / "config.json"
    if not path_exists(cfg_path):
        raise CheckpointError(f"{d}: config.json is missing (expected a transformers xLSTM checkpoint)")
    cfg = read_config(cfg_path)
    where = str(cfg_path)
    if cfg.get("model_type") != "xlstm":
        raise ConfigError(f"{where}: field 'model_type' must be 'xlstm', got {short(cfg.get('model_type'))}")
    ckpt = open_hf_weights(d, file)
    dims, weight_mode = hf_dims(cfg, where, "lm_head.weight" in ckpt)
    if dims.num_blocks <= 0:
        raise ConfigError(f"{where}: field 'num_hidden_layers' must be positive, got {dims.num_blocks}")
    check_num_blocks(dims.num_blocks, len(ckpt), where, "num_hidden_layers")
    block = large_block(dims, where)
    blocks = (block,) * dims.num_blocks
    table = FUSED_BLOCK_TABLE if weight_mode == "fused" else SINGLE_BLOCK_TABLE
    mapped = apply_rules(ckpt, model_rules("backbone.embeddings.weight", dims), blocks, lambda b: table)
    return build_graph(model_config(dims), blocks, ckpt, mapped, source=str(d), config_source=str(cfg_path))
