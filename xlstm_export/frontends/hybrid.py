"""Upstream ``xLSTMLMModel`` (mLSTM/sLSTM hybrid stacks).

Config: ``config.yaml`` or ``config.json`` holding ``xLSTMLMModelConfig``'s fields as in upstream's
README (nested ``mlstm_block`` / ``slstm_block`` / ``feedforward`` dicts). Unknown fields anywhere
are an error, like ``dacite.from_dict(..., config=Config(strict=True))``. Weights: ``model.safetensors``
or a torch state dict (``.pt/.pth/.bin``, loaded with ``weights_only=True``).

Mapping notes (upstream xlstm 2.0.6):
* every LayerNorm applies ``1 + weight`` (eps 1e-5); mLSTM ``outnorm`` and sLSTM ``group_norm`` are
  per-head group norms: the block's ``head_norm``.
* ``sLSTMLayer`` feeds the cell's input gate from its ``fgate`` module and the forget gate from
  ``igate``: canonical ``igate`` <- checkpoint ``fgate`` and vice versa.
* ``slstm_cell._recurrent_kernel_`` / ``_bias_`` are stored in the backend's internal layout:
  vanilla R (NH, 4*DH, DH) = [h, g*DH+out, in], bias (G, NH, DH); cuda R (NH, DH, 4*DH) =
  [h, in, g*DH+out], bias (NH, G, DH); gate order i, f, z, o.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ..errors import CheckpointError, ConfigError, UnsupportedError, cut, short
from ..graphs import FFNSpec, Graph, MLSTMBlock, ModelConfig, NormSpec, SLSTMBlock, WeightHandle
from ..graphs.names import SLSTM_GATES
from ..graphs.spec import check_positive
from . import STATE_DICT_SUFFIXES, check_num_blocks, field, list_dir, path_exists, read_config
from ._table import Misshaped, Rule, apply_rules, build_graph, conv_weight, split_rows
from .safetensors_io import open_safetensors, open_torch_state_dict

# upstream dataclass fields (name -> default); a nested dataclass is a dict schema.
FFN_FIELDS = {"proj_factor": 1.3, "round_proj_up_dim_up": True, "round_proj_up_to_multiple_of": 64,
              "_proj_up_dim": None, "act_fn": "gelu", "embedding_dim": -1, "dropout": 0.0, "bias": False,
              "ff_type": "ffn_gated", "_num_blocks": 1}
MLSTM_LAYER_FIELDS = {"proj_factor": 2.0, "round_proj_up_dim_up": True, "round_proj_up_to_multiple_of": 64,
                      "_proj_up_dim": None, "conv1d_kernel_size": 4, "qkv_proj_blocksize": 4, "num_heads": 4,
                      "embedding_dim": -1, "bias": False, "dropout": 0.0, "context_length": -1,
                      "_num_blocks": 1, "_inner_embedding_dim": None}
SLSTM_LAYER_FIELDS = {"hidden_size": -1, "num_heads": 4, "num_states": 4, "backend": "cuda", "function": "slstm",
                      "bias_init": "powerlaw_blockdependent", "recurrent_weight_init": "zeros", "_block_idx": 0,
                      "_num_blocks": 1, "num_gates": 4, "gradient_recurrent_cut": False,
                      "gradient_recurrent_clipval": None, "forward_clipval": None, "batch_size": 8,
                      "input_shape": "BSGNH", "internal_input_shape": "SBNGH", "output_shape": "BNSH",
                      "constants": {}, "dtype": "bfloat16", "dtype_b": "float32", "dtype_r": None,
                      "dtype_w": None, "dtype_g": None, "dtype_s": None, "dtype_a": None,
                      "enable_automatic_mixed_precision": True, "initial_val": 0.0, "embedding_dim": -1,
                      "conv1d_kernel_size": 4, "group_norm_weight": True, "dropout": 0.0}
MLSTM_BLOCK_FIELDS = {"mlstm": MLSTM_LAYER_FIELDS, "_num_blocks": None, "_block_idx": None}
SLSTM_BLOCK_FIELDS = {"slstm": SLSTM_LAYER_FIELDS, "feedforward": FFN_FIELDS, "_num_blocks": None,
                      "_block_idx": None}
MODEL_FIELDS = {"mlstm_block": None, "slstm_block": None, "context_length": -1, "num_blocks": 1,
                "embedding_dim": 128, "add_post_blocks_norm": True, "bias": False, "dropout": 0.0,
                "slstm_at": [], "_block_map": None, "vocab_size": -1, "tie_weights": False,
                "weight_decay_on_embedding": False, "add_embedding_dropout": False}
_NESTED = {"mlstm_block": MLSTM_BLOCK_FIELDS, "slstm_block": SLSTM_BLOCK_FIELDS}

ACT = {"gelu": "gelu", "swish": "silu", "relu": "relu", "sigmoid": "sigmoid"}
LN = NormSpec(kind="layernorm", eps=1e-5, weight_offset=1.0)


def check_strict(d: Any, schema: dict, where: str) -> None:
    """Like dacite strict: every key must be a field of the dataclass, nested dicts too."""
    if not isinstance(d, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(d).__name__}")
    unknown = sorted(set(d) - set(schema), key=str)
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {short(unknown, 200)}; allowed: {sorted(schema)}")
    for k, sub in schema.items():
        if k in ("mlstm", "slstm", "feedforward") and d.get(k) is not None:
            check_strict(d[k], sub, f"{where}.{k}")


def proj_up_dim(cfg: dict, E: int, where: str, default_factor: float) -> int:
    """upstream ``UpProjConfigMixin._set_proj_up_dim``."""
    factor = field(cfg, "proj_factor", float, where, default_factor)
    mult = field(cfg, "round_proj_up_to_multiple_of", int, where, 64)
    up = field(cfg, "round_proj_up_dim_up", bool, where, True)
    if mult <= 0:
        raise ConfigError(f"{where}: field 'round_proj_up_to_multiple_of' must be positive, got {mult}")
    m = factor * E / mult
    if not math.isfinite(m):
        raise ConfigError(f"{where}: proj_factor {factor} x embedding_dim {E} is not a finite size")
    return int((math.ceil(m) if up else math.floor(m)) * mult)


def _mlstm_spec(cfg: dict, E: int, bias: bool, where: str) -> MLSTMBlock:
    layer = cfg.get("mlstm", {})
    w = f"{where}.mlstm"
    if not isinstance(layer, dict):
        raise ConfigError(f"{w}: expected a mapping of mLSTMLayerConfig fields, got {short(layer)}")
    inner = proj_up_dim(layer, E, w, 2.0)
    nh = field(layer, "num_heads", int, w, 4)
    k = field(layer, "conv1d_kernel_size", int, w, 4)
    bs = field(layer, "qkv_proj_blocksize", int, w, 4)
    if nh <= 0 or inner <= 0 or bs <= 0:
        raise ConfigError(f"{w}: num_heads ({nh}), qkv_proj_blocksize ({bs}) and the inner dim ({inner}) "
                          f"must be positive")
    if k <= 0:
        raise UnsupportedError(f"{w}: conv1d_kernel_size must be positive for mLSTM blocks (upstream's "
                               f"mLSTMLayer cannot be built without its conv), got {k}")
    return MLSTMBlock(num_heads=nh, qk_head_dim=inner // nh, v_head_dim=inner // nh, norm=LN, head_norm=LN,
                      form="hybrid", cell_eps=1e-6, gate_soft_cap=None, bias=bias, qk_scale_on="k",
                      inner_dim=inner, conv_kernel=k, qkv_blocksize=bs, ffn=None)


def _ffn_spec(ff: Optional[dict], E: int, where: str) -> Optional[FFNSpec]:
    if ff is None:
        return None
    act = field(ff, "act_fn", str, where, "gelu")
    if act not in ACT:
        raise UnsupportedError(f"{where}: act_fn {short(act)} is not supported (supported: {sorted(ACT)})")
    ff_type = field(ff, "ff_type", str, where, "ffn_gated")
    if ff_type != "ffn_gated":
        raise ConfigError(f"{where}: field 'ff_type' must be 'ffn_gated', got {short(ff_type)}")
    return FFNSpec(up_dim=proj_up_dim(ff, E, where, 1.3), activation=ACT[act], norm=LN,
                   bias=field(ff, "bias", bool, where, False))


def _slstm_spec(cfg: dict, E: int, where: str) -> tuple[SLSTMBlock, str, bool]:
    layer = cfg.get("slstm", {})
    w = f"{where}.slstm"
    if not isinstance(layer, dict):
        raise ConfigError(f"{w}: expected a mapping of sLSTMLayerConfig fields, got {short(layer)}")
    nh = field(layer, "num_heads", int, w, 4)
    if nh <= 0:
        nh = 1  # upstream's sLSTMCellConfig.__post_init__
    if E % nh:
        raise ConfigError(f"{w}: num_heads {nh} must divide embedding_dim {E}")
    backend = field(layer, "backend", str, w, "cuda")
    if backend not in ("vanilla", "cuda"):
        raise ConfigError(f"{w}: field 'backend' must be 'vanilla' or 'cuda', got {short(backend)}")
    for key, want in (("function", "slstm"), ("num_gates", 4), ("input_shape", "BSGNH"), ("output_shape", "BNSH")):
        if layer.get(key, want) != want:
            raise UnsupportedError(f"{w}: {key}={short(layer[key])} is not supported (only {want!r})")
    if layer.get("forward_clipval") is not None:
        raise UnsupportedError(f"{w}: forward_clipval is not supported")
    k = field(layer, "conv1d_kernel_size", int, w, 4)
    if k < 0:
        raise ConfigError(f"{w}: conv1d_kernel_size must be >= 0, got {k}")
    gn_weight = field(layer, "group_norm_weight", bool, w, True)
    ff = cfg["feedforward"] if "feedforward" in cfg else dict(FFN_FIELDS)
    spec = SLSTMBlock(num_heads=nh, head_dim=E // nh, norm=LN, head_norm=LN, conv_kernel=k,
                      ffn=_ffn_spec(ff, E, f"{where}.feedforward"))
    return spec, backend, gn_weight


def parse_config(cfg: dict, where: str, n_tensors: Optional[int] = None) -> tuple[ModelConfig, tuple, dict]:
    check_strict(cfg, MODEL_FIELDS, where)
    for k in ("mlstm_block", "slstm_block"):
        if cfg.get(k) is not None:
            check_strict(cfg[k], _NESTED[k], f"{where}.{k}")
    E = field(cfg, "embedding_dim", int, where, 128)
    nb = field(cfg, "num_blocks", int, where, 1)
    V = field(cfg, "vocab_size", int, where, -1)
    check_positive(where, embedding_dim=E, num_blocks=nb, vocab_size=V)
    if n_tensors is not None:
        check_num_blocks(nb, n_tensors, where)
    bias = field(cfg, "bias", bool, where, False)
    mcfg, scfg = cfg.get("mlstm_block"), cfg.get("slstm_block")
    slstm_at = cfg.get("slstm_at", [])
    if mcfg is None:
        slstm_at = "all"
    if slstm_at == "all":
        slstm_at = list(range(nb))
    if not isinstance(slstm_at, list) or not all(isinstance(x, int) and not isinstance(x, bool) for x in slstm_at):
        raise ConfigError(f"{where}: field 'slstm_at' must be a list of block indices or 'all', got {short(slstm_at)}")
    bad = [x for x in slstm_at if not 0 <= x < nb]
    if bad:
        raise ConfigError(f"{where}: slstm_at {short(bad)} out of range for num_blocks {nb}")
    if slstm_at and scfg is None:
        raise ConfigError(f"{where}: slstm_at {short(slstm_at)} places sLSTM blocks but slstm_block is null")
    if mcfg is None and scfg is None:
        raise ConfigError(f"{where}: both mlstm_block and slstm_block are null")
    m_spec = _mlstm_spec(mcfg, E, bias, f"{where}.mlstm_block") if mcfg is not None and len(slstm_at) < nb else None
    extra: dict = {}
    s_spec = None
    if scfg is not None and slstm_at:
        s_spec, extra["backend"], extra["group_norm_weight"] = _slstm_spec(scfg, E, f"{where}.slstm_block")
    at = set(slstm_at)
    blocks = tuple(s_spec if i in at else m_spec for i in range(nb))
    ctx = field(cfg, "context_length", int, where, -1)
    config = ModelConfig(
        family="hybrid", vocab_size=V, embedding_dim=E,
        out_norm=LN if field(cfg, "add_post_blocks_norm", bool, where, True) else None,
        tie_weights=field(cfg, "tie_weights", bool, where, False), output_logit_soft_cap=None,
        context_length=ctx if ctx > 0 else None,
    )
    return config, blocks, extra


# -- the name table ----------------------------------------------------------------------------
P = "xlstm_block_stack.blocks.{i}."
C = "blocks.{i}."


def _bias(b) -> bool:
    return b.bias


def _inner(b) -> int:
    return b.inner_dim


def _recurrent(layout: str):
    def fn(h, names, b):
        NH, DH = b.num_heads, b.head_dim
        want = (NH, 4 * DH, DH) if layout == "vanilla" else (NH, DH, 4 * DH)
        other = (NH, DH, 4 * DH) if layout == "vanilla" else (NH, 4 * DH, DH)
        if tuple(h.shape) != want:
            hint = (f" (that is the {'cuda' if layout == 'vanilla' else 'vanilla'} layout: set "
                    f"slstm_block.slstm.backend to match how it was saved)") if tuple(h.shape) == other else ""
            raise Misshaped(f"expected {list(want)} for backend {layout!r}{hint}")
        out = []
        for g, name in enumerate(names):
            if layout == "vanilla":  # [h, g*DH+out, in]
                f = (lambda a, g=g: a.reshape(NH, 4, DH, DH)[:, g])
            else:  # [h, in, g*DH+out] -> (NH, out, in)
                f = (lambda a, g=g: a.reshape(NH, DH, 4, DH)[:, :, g, :].transpose(0, 2, 1))
            out.append(h.derive(name, (NH, DH, DH), f))
        return out
    return fn


def _gate_bias(layout: str):
    def fn(h, names, b):
        NH, DH = b.num_heads, b.head_dim
        if tuple(h.shape) != (4 * NH * DH,):
            raise Misshaped(f"expected {[4 * NH * DH]}")
        out = []
        for g, name in enumerate(names):
            if layout == "vanilla":  # (G, NH, DH)
                f = (lambda a, g=g: a.reshape(4, NH, DH)[g].reshape(NH * DH))
            else:  # (NH, G, DH)
                f = (lambda a, g=g: a.reshape(NH, 4, DH)[:, g].reshape(NH * DH))
            out.append(h.derive(name, (NH * DH,), f))
        return out
    return fn


MLSTM_TABLE = [
    Rule(P + "xlstm_norm.weight", C + "norm.weight"),
    Rule(P + "xlstm.proj_up.weight", (C + "mlstm.up_x.weight", C + "mlstm.up_z.weight"), split_rows(_inner, _inner)),
    Rule(P + "xlstm.proj_up.bias", (C + "mlstm.up_x.bias", C + "mlstm.up_z.bias"), split_rows(_inner, _inner),
         when=_bias),
    Rule(P + "xlstm.conv1d.conv.weight", C + "mlstm.conv.weight", conv_weight(_inner)),
    Rule(P + "xlstm.conv1d.conv.bias", C + "mlstm.conv.bias"),
    *[Rule(P + f"xlstm.{n}_proj.weight", C + f"mlstm.{n}.weight") for n in "qkv"],
    *[Rule(P + f"xlstm.{n}_proj.bias", C + f"mlstm.{n}.bias", when=_bias) for n in "qkv"],
    *[Rule(P + f"xlstm.mlstm_cell.{g}gate.{wb}", C + f"mlstm.{g}gate.{wb}") for g in "if" for wb in ("weight", "bias")],
    Rule(P + "xlstm.mlstm_cell.outnorm.weight", C + "mlstm.head_norm.weight"),
    Rule(P + "xlstm.learnable_skip", C + "mlstm.skip.weight"),
    Rule(P + "xlstm.proj_down.weight", C + "mlstm.out_proj.weight"),
    Rule(P + "xlstm.proj_down.bias", C + "mlstm.out_proj.bias", when=_bias),
]

def _has_ffn(b) -> bool:
    return b.ffn is not None


def _ffn_bias(b) -> bool:
    return b.ffn is not None and b.ffn.bias


def _up(b) -> int:
    return b.ffn.up_dim


_FFN_TABLE = [
    Rule(P + "ffn_norm.weight", C + "ffn_norm.weight", when=_has_ffn),
    Rule(P + "ffn.proj_up.weight", (C + "ffn.gate.weight", C + "ffn.up.weight"), split_rows(_up, _up),
         when=_has_ffn),
    Rule(P + "ffn.proj_up.bias", (C + "ffn.gate.bias", C + "ffn.up.bias"), split_rows(_up, _up), when=_ffn_bias),
    Rule(P + "ffn.proj_down.weight", C + "ffn.down.weight", when=_has_ffn),
    Rule(P + "ffn.proj_down.bias", C + "ffn.down.bias", when=_ffn_bias),
]


def slstm_table(backend: str, group_norm_weight: bool) -> list[Rule]:
    gates = tuple(C + f"slstm.{g}gate" for g in SLSTM_GATES)

    rules = [
        Rule(P + "xlstm_norm.weight", C + "norm.weight"),
        Rule(P + "xlstm.conv1d.conv.weight", C + "slstm.conv.weight",
             conv_weight(lambda b: b.num_heads * b.head_dim), when=lambda b: b.conv_kernel > 0),
        Rule(P + "xlstm.conv1d.conv.bias", C + "slstm.conv.bias", when=lambda b: b.conv_kernel > 0),
        # upstream's layer: cell input gate <- module `fgate`, cell forget gate <- module `igate`
        Rule(P + "xlstm.fgate.weight", C + "slstm.igate.weight"),
        Rule(P + "xlstm.igate.weight", C + "slstm.fgate.weight"),
        Rule(P + "xlstm.zgate.weight", C + "slstm.zgate.weight"),
        Rule(P + "xlstm.ogate.weight", C + "slstm.ogate.weight"),
        Rule(P + "xlstm.slstm_cell._recurrent_kernel_", tuple(g + ".recurrent" for g in gates), _recurrent(backend)),
        Rule(P + "xlstm.slstm_cell._bias_", tuple(g + ".bias" for g in gates), _gate_bias(backend)),
    ]
    if group_norm_weight:
        rules.append(Rule(P + "xlstm.group_norm.weight", C + "slstm.head_norm.weight"))
    return rules + _FFN_TABLE


_STATE_DICTS = "/".join(STATE_DICT_SUFFIXES)


def open_hybrid_weights(d: Path, file: Optional[Path]) -> dict:
    if file is not None:
        if file.suffix == ".safetensors":
            return open_safetensors(file)
        if file.suffix in STATE_DICT_SUFFIXES:
            return open_torch_state_dict(file)
        raise CheckpointError(f"{file}: expected a .safetensors or {_STATE_DICTS} weights file")
    if path_exists(d / "model.safetensors"):
        return open_safetensors(d / "model.safetensors")
    cands = [p for p in list_dir(d) if p.suffix in STATE_DICT_SUFFIXES]
    if len(cands) == 1:
        return open_torch_state_dict(cands[0])
    if not cands:
        raise CheckpointError(f"{d}: no weights: expected model.safetensors or one {_STATE_DICTS} state dict")
    raise CheckpointError(f"{d}: several state dicts {[cut(p.name, 60) for p in cands][:8]}: pass the one to use as "
                          f"--checkpoint")


def load_hybrid(d: Path, file: Optional[Path] = None) -> Graph:
    cfg_path = d / "config.yaml" if path_exists(d / "config.yaml") else d / "config.json"
    if not path_exists(cfg_path):
        raise CheckpointError(f"{d}: config.yaml / config.json is missing (expected an xLSTMLMModel checkpoint)")
    cfg = read_config(cfg_path)
    ckpt = open_hybrid_weights(d, file)
    config, blocks, extra = parse_config(cfg, str(cfg_path), n_tensors=len(ckpt))
    E = config.embedding_dim
    model_rules = [Rule("token_embedding.weight", "embedding.weight")]
    if config.out_norm is not None:
        model_rules.append(Rule("xlstm_block_stack.post_blocks_norm.weight", "out_norm.weight"))
    if config.tie_weights:
        mapped = apply_rules(ckpt, model_rules, (), lambda b: ())
        if "embedding.weight" in mapped.handles:
            mapped.handles["lm_head.weight"] = mapped.handles["embedding.weight"].rename("lm_head.weight")
        if "lm_head.weight" in ckpt:
            mapped.consumed.add("lm_head.weight")  # upstream ties it to the embedding
        model_rules = []
    else:
        mapped = None
        model_rules.append(Rule("lm_head.weight", "lm_head.weight"))
    s_rules = slstm_table(extra.get("backend", "cuda"), extra.get("group_norm_weight", True))

    def rules_for(b):
        return MLSTM_TABLE if isinstance(b, MLSTMBlock) else s_rules

    mapped = apply_rules(ckpt, model_rules, blocks, rules_for, mapped)
    if not extra.get("group_norm_weight", True):
        for i, b in enumerate(blocks):
            if isinstance(b, SLSTMBlock):
                n = f"blocks.{i}.slstm.head_norm.weight"
                mapped.handles[n] = WeightHandle(n, (E,), "float32", "<group_norm_weight: false>",
                                                 lambda: np.zeros(E, np.float32))  # lazy: E may be absurd
    return build_graph(config, blocks, ckpt, mapped, source=str(d), config_source=str(cfg_path))
