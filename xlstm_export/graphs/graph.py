"""The Graph: config + block schedule + state contract + lazy weights, and its JSON profile."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Optional

from ..errors import CheckpointError, ConfigError, cut, short
from .names import model_weights
from .text import TextBundle
from .spec import (
    BlockSpec,
    FFNSpec,
    MLSTMBlock,
    ModelConfig,
    NormSpec,
    SLSTMBlock,
    StateSpec,
    block_states,
    check_cap,
    check_positive,
    validate_block,
    validate_norm,
)
from .weights import FLOAT_DTYPES, WeightStore

PROFILE_FORMAT = "xlstm-export-profile/1"
# keys that `inspect --json` adds for people and tools; a profile read back ignores them
INFORMATIONAL_KEYS = ("source", "parameters", "weight_bytes", "states")


@dataclass(frozen=True)
class Graph:
    config: ModelConfig
    blocks: tuple[BlockSpec, ...]
    weights: WeightStore
    source: str = ""  # what it was read from, for messages
    text: Optional["TextBundle"] = None  # the checkpoint's tokenizer / generation files (graphs.text)

    # -- the state contract ---------------------------------------------------------------
    def state_contract(self, batch_size: int = 1) -> list[StateSpec]:
        """Every recurrent state, block by block, in the one order all targets use."""
        out: list[StateSpec] = []
        for i, b in enumerate(self.blocks):
            out.extend(block_states(i, b, batch_size))
        return out

    def expected_weights(self) -> dict[str, tuple[int, ...]]:
        return model_weights(self.config, self.blocks)

    @property
    def num_params(self) -> int:
        return self.weights.numel

    @property
    def weight_bytes(self) -> int:
        return self.weights.nbytes

    def validate(self) -> "Graph":
        """Check every invariant; raise one error that lists all weight problems at once."""
        validate_config(self.config, self.blocks)
        expected = self.expected_weights()
        missing = [f"{n} {list(s)}" for n, s in expected.items() if n not in self.weights]
        misshaped = [
            f"{n}: expected {list(s)}, got {list(self.weights[n].shape)} ({self.weights[n].source})"
            for n, s in expected.items()
            if n in self.weights and tuple(self.weights[n].shape) != tuple(s)
        ]
        unexpected = [n for n in self.weights if n not in expected]
        raise_weight_mismatch(self.source or "checkpoint", missing, misshaped, unexpected,
                              not_float_weights(self.weights, expected))
        return self

    # -- the profile ----------------------------------------------------------------------
    def to_profile(self, informational: bool = True) -> dict[str, Any]:
        cfg = self.config
        prof: dict[str, Any] = {
            "format": PROFILE_FORMAT,
            "family": cfg.family,
            "vocab_size": cfg.vocab_size,
            "embedding_dim": cfg.embedding_dim,
            "tie_weights": cfg.tie_weights,
            "output_logit_soft_cap": cfg.output_logit_soft_cap,
            "context_length": cfg.context_length,
            "out_norm": _asdict(cfg.out_norm),
            "blocks": [block_to_json(b) for b in self.blocks],
        }
        if informational:
            prof["source"] = self.source
            prof["parameters"] = self.num_params
            prof["weight_bytes"] = self.weight_bytes
            prof["states"] = [s.to_json() for s in self.state_contract(1)]
        return prof


MAX_LISTED = 12  # names listed per kind of problem; the rest are counted


def _listed(items: list, sep: str) -> str:
    shown = sep.join(cut(str(x), 400) for x in items[:MAX_LISTED])
    return shown + (f"{sep}... and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else "")


def not_float_weights(weights, expected, also=()) -> list[str]:
    """Every expected weight whose stored dtype is not a float type, one entry per stored tensor with the
    canonical names made from it (``file:tensor is int32 (-> embedding.weight)``); ``also``: more handles
    to check (checkpoint tensors that are read but not used, such as a tied ``lm_head.weight``)."""
    by_source: dict[tuple[str, str], list[str]] = {}
    for n in expected:
        h = weights.get(n)
        if h is not None and h.dtype not in FLOAT_DTYPES:
            by_source.setdefault((h.source, h.dtype), []).append(n)
    for h in also:
        if h.dtype not in FLOAT_DTYPES:
            by_source.setdefault((h.source, h.dtype), [])
    return [f"{src} is {dtype}" + (f" (-> {', '.join(names)})" if names else "")
            for (src, dtype), names in by_source.items()]


def raise_weight_mismatch(source: str, missing: list, misshaped: list, unexpected: list,
                          not_float: list = ()) -> None:
    """One error that lists every missing, misshaped, non-float and unexpected tensor at once (none: no
    error); at most ``MAX_LISTED`` names per kind, the rest counted."""
    problems = []
    if missing:
        problems.append(f"missing {len(missing)}: " + _listed(missing, ", "))
    if misshaped:
        problems.append(f"misshaped {len(misshaped)}: " + _listed(misshaped, "; "))
    if not_float:
        problems.append(f"not a float dtype {len(not_float)}: " + _listed(list(not_float), "; ")
                        + f" (parameters must be stored as {'/'.join(FLOAT_DTYPES)}; integer or bool "
                          f"weights would make a silently wrong model)")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)}: " + _listed(unexpected, ", "))
    if problems:
        raise CheckpointError(f"{source}: weights do not match the config: " + " | ".join(problems))


def validate_config(cfg: ModelConfig, blocks: tuple[BlockSpec, ...]) -> None:
    check_positive("model", vocab_size=cfg.vocab_size, embedding_dim=cfg.embedding_dim)
    if not blocks:
        raise ConfigError("model: the block schedule is empty (num_blocks must be positive)")
    if cfg.family not in ("large", "hybrid"):
        raise ConfigError(f"model: family must be 'large' or 'hybrid', got {short(cfg.family)}")
    if cfg.out_norm is not None:
        validate_norm("model out_norm", cfg.out_norm)
    check_cap("model", "output_logit_soft_cap", cfg.output_logit_soft_cap)
    for i, b in enumerate(blocks):
        validate_block(i, b, cfg.embedding_dim)


def _asdict(x) -> Optional[dict]:
    return None if x is None else dataclasses.asdict(x)


def block_to_json(b: BlockSpec) -> dict[str, Any]:
    d = {"kind": b.kind, **dataclasses.asdict(b)}
    if isinstance(b, SLSTMBlock):
        d["form"] = "hybrid"
    return d


# -- reading a profile back ---------------------------------------------------------------
def _take(d: dict, key: str, types, where: str, default=...):
    if key not in d:
        if default is ...:
            raise ConfigError(f"{where}: field {key!r} is missing")
        return default
    v = d[key]
    if types is float and isinstance(v, int) and not isinstance(v, bool):
        try:
            v = float(v)
        except OverflowError:  # a JSON integer beyond float range
            raise ConfigError(f"{where}: field {key!r} must be a finite number, got {short(v)}") from None
    if not isinstance(v, types) or (isinstance(v, bool) and types in (int, float)):
        tname = getattr(types, "__name__", str(types))
        raise ConfigError(f"{where}: field {key!r} must be {tname}, got {short(v)}")
    if isinstance(v, float) and not math.isfinite(v):
        raise ConfigError(f"{where}: field {key!r} must be finite, got {v!r}")
    return v


def _strict(d: Any, allowed: set[str], where: str) -> dict:
    if not isinstance(d, dict):
        raise ConfigError(f"{where}: expected an object, got {type(d).__name__}")
    extra = sorted(set(d) - allowed, key=str)
    if extra:
        raise ConfigError(f"{where}: unknown field(s) {short(extra, 200)}; allowed: {sorted(allowed)}")
    return d


def norm_from_json(d: Any, where: str) -> NormSpec:
    d = _strict(d, {f.name for f in dataclasses.fields(NormSpec)}, where)
    kind = _take(d, "kind", str, where)
    if kind not in ("rmsnorm", "layernorm"):
        raise ConfigError(f"{where}: field 'kind' must be 'rmsnorm' or 'layernorm', got {short(kind)}")
    return NormSpec(kind=kind, eps=_take(d, "eps", float, where),
                    weight_offset=_take(d, "weight_offset", float, where, 0.0),
                    bias=_take(d, "bias", bool, where, False),
                    force_float32=_take(d, "force_float32", bool, where, True))


def ffn_from_json(d: Any, where: str) -> Optional[FFNSpec]:
    if d is None:
        return None
    d = _strict(d, {f.name for f in dataclasses.fields(FFNSpec)}, where)
    return FFNSpec(up_dim=_take(d, "up_dim", int, where), activation=_take(d, "activation", str, where),
                   norm=norm_from_json(_take(d, "norm", dict, where), f"{where}.norm"),
                   bias=_take(d, "bias", bool, where, False))


_FIELD_TYPES = {"num_heads": int, "qk_head_dim": int, "v_head_dim": int, "head_dim": int, "inner_dim": int,
                "conv_kernel": int, "qkv_blocksize": int, "cell_eps": float, "bias": bool,
                "qk_scale_on": str, "form": str}


def block_from_json(d: Any, i: int) -> BlockSpec:
    where = f"blocks[{i}]"
    if not isinstance(d, dict):
        raise ConfigError(f"{where}: expected an object, got {type(d).__name__}")
    kind = d.get("kind")
    cls = {"mlstm": MLSTMBlock, "slstm": SLSTMBlock}.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ConfigError(f"{where}: field 'kind' must be 'mlstm' or 'slstm', got {short(kind)}")
    d = _strict(d, {f.name for f in dataclasses.fields(cls)} | {"kind", "form"}, where)
    kw: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name in ("norm", "head_norm"):
            kw[f.name] = norm_from_json(_take(d, f.name, dict, where), f"{where}.{f.name}")
        elif f.name == "ffn":
            kw[f.name] = ffn_from_json(d.get("ffn"), f"{where}.ffn")
        elif f.name == "gate_soft_cap":
            kw[f.name] = None if d.get(f.name) is None else _take(d, f.name, float, where)
        else:
            default = f.default if f.default is not dataclasses.MISSING else ...
            kw[f.name] = _take(d, f.name, _FIELD_TYPES[f.name], where, default)
    return cls(**kw)


def config_from_profile(prof: Any, where: str = "profile") -> tuple[ModelConfig, tuple[BlockSpec, ...]]:
    allowed = {"format", "family", "vocab_size", "embedding_dim", "tie_weights", "output_logit_soft_cap",
               "context_length", "out_norm", "blocks", *INFORMATIONAL_KEYS}
    prof = _strict(prof, allowed, where)
    fmt = prof.get("format")
    if fmt != PROFILE_FORMAT:
        raise ConfigError(f"{where}: field 'format' must be {PROFILE_FORMAT!r}, got {short(fmt)}")
    blocks_json = _take(prof, "blocks", list, where)
    blocks = tuple(block_from_json(b, i) for i, b in enumerate(blocks_json))
    cap = prof.get("output_logit_soft_cap")
    ctx = prof.get("context_length")
    out_norm = prof.get("out_norm")
    cfg = ModelConfig(
        family=_take(prof, "family", str, where),
        vocab_size=_take(prof, "vocab_size", int, where),
        embedding_dim=_take(prof, "embedding_dim", int, where),
        out_norm=None if out_norm is None else norm_from_json(out_norm, f"{where}.out_norm"),
        tie_weights=_take(prof, "tie_weights", bool, where, False),
        output_logit_soft_cap=None if cap is None else _take(prof, "output_logit_soft_cap", float, where),
        context_length=None if ctx is None else _take(prof, "context_length", int, where),
    )
    validate_config(cfg, blocks)
    return cfg, blocks


__all__ = ["Graph", "PROFILE_FORMAT", "config_from_profile", "raise_weight_mismatch", "not_float_weights"]
