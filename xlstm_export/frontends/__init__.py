"""Checkpoint frontends: each format is a name table + a config reader that builds a :class:`Graph`.

``load_checkpoint(path)`` detects the format from the files present; reading a config and building
the graph reads only safetensors headers (or a state dict's pickle), never tensor data.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from .. import progress
from typing import Any, Optional

import numpy as np

from ..errors import CheckpointError, ConfigError
from ..graphs import Graph, WeightHandle

FORMATS = ("hf", "large", "hybrid", "profile")
HYBRID_KEYS = ("mlstm_block", "slstm_block", "slstm_at")
LARGE_REQUIRED = ("embedding_dim", "num_heads", "num_blocks", "vocab_size")
EXPECTED = ("a checkpoint directory with one of: config.json with model_type 'xlstm' + model.safetensors "
            "(transformers xLSTM); config.yaml with xLSTMLargeConfig fields + model.safetensors (xlstm_large); "
            "config.yaml/config.json with xLSTMLMModelConfig fields (mlstm_block/slstm_block/slstm_at) + "
            "model.safetensors or a .pt/.pth/.bin state dict (xLSTMLMModel); profile.json + model.safetensors "
            "(xlstm-export profile)")


def check_finite(handle: WeightHandle, arr: np.ndarray) -> np.ndarray:
    """Raise CheckpointError naming the tensor if ``arr`` (loaded from ``handle``) has NaN or Inf."""
    if arr.dtype.kind in "fc":
        finite = np.isfinite(arr)
        if not finite.all():
            bad = int(arr.size - np.count_nonzero(finite))
            raise CheckpointError(f"{handle.source}: tensor {handle.name!r} has {bad} non-finite value(s) "
                                  f"(NaN/Inf) of {arr.size}; the checkpoint is corrupt or diverged")
    return arr


def load_weight(handle: WeightHandle) -> np.ndarray:
    """``handle.load()`` as float32 (or stored int type), checked finite. What emitters call."""
    return check_finite(handle, handle.load())


# -- config files --------------------------------------------------------------------------------
def read_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON ({e})") from None
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply to be a config") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read ({e})") from None


def read_yaml(path: Path) -> Any:
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            return yaml.safe_load(f)
    except yaml.YAMLError as e:
        first = " ".join(str(e).split())
        raise ConfigError(f"{path}: not valid YAML ({first})") from None
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply to be a config") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read ({e})") from None


def read_config(path: Path) -> dict:
    d = read_yaml(path) if path.suffix in (".yaml", ".yml") else read_json(path)
    if not isinstance(d, dict):
        raise ConfigError(f"{path}: expected a mapping of config fields, got {type(d).__name__}")
    return d


_MISSING = object()


def field(d: dict, key: str, types, where: str, default: Any = _MISSING, *, optional: bool = False) -> Any:
    """``d[key]`` checked against ``types`` (int accepted for float; bool never for numbers)."""
    if key not in d:
        if default is _MISSING:
            raise ConfigError(f"{where}: field {key!r} is missing")
        return default
    v = d[key]
    if v is None and optional:
        return None
    if types is float and isinstance(v, int) and not isinstance(v, bool):
        try:
            v = float(v)
        except OverflowError:
            raise ConfigError(f"{where}: field {key!r} must be a finite number, got {v!r}") from None
    ok = isinstance(v, types) and not (isinstance(v, bool) and types in (int, float))
    if not ok:
        tname = getattr(types, "__name__", None) or "/".join(t.__name__ for t in types)
        raise ConfigError(f"{where}: field {key!r} must be {tname}{' or null' if optional else ''}, got {v!r}")
    if isinstance(v, float) and not math.isfinite(v):
        raise ConfigError(f"{where}: field {key!r} must be a finite number, got {v!r}")
    if isinstance(v, int) and not isinstance(v, bool) and not -2**63 <= v < 2**63:
        raise ConfigError(f"{where}: field {key!r} is out of range (a 64-bit integer), got {v}")
    return v


def check_num_blocks(nb: int, n_tensors: int, where: str, key: str = "num_blocks") -> None:
    """Every block has several tensors: more blocks than the checkpoint has tensors is a broken config
    (and would make an absurdly large schedule: ``num_blocks: 2147483647`` must not eat the memory)."""
    if nb > n_tensors:
        raise ConfigError(f"{where}: field {key!r} is {nb}, but the checkpoint holds only {n_tensors} tensors "
                          f"(every block has several); the config does not belong to these weights")


# -- detection -----------------------------------------------------------------------------------
def _dir_and_file(path: Path) -> tuple[Path, Optional[Path]]:
    try:
        exists, is_dir = path.exists(), path.is_dir()
    except OSError as e:  # a name too long for the file system, a loop of links...
        raise CheckpointError(f"{str(path)[:200]}: cannot access: {e.strerror or e}") from None
    if not exists:
        raise CheckpointError(f"{path}: no such file or directory; expected {EXPECTED}")
    if is_dir:
        return path, None
    return path.parent, path


def list_dir(d: Path) -> list[Path]:
    """The entries of checkpoint directory ``d``, sorted (CheckpointError if it cannot be listed)."""
    try:
        return sorted(d.iterdir())
    except OSError as e:
        raise CheckpointError(f"{d}: cannot list the directory: {e.strerror or e}") from None


def detect_format(path: str | os.PathLike) -> str:
    path = Path(path)
    d, file = _dir_and_file(path)
    if file is not None and (file.name == "profile.json" or (d / "profile.json").exists()):
        return "profile"
    if file is None and (d / "profile.json").exists():
        return "profile"
    cj, cy = d / "config.json", d / "config.yaml"
    if cj.exists():
        cfg = read_config(cj)
        if cfg.get("model_type") == "xlstm":
            return "hf"
        if any(k in cfg for k in HYBRID_KEYS):
            return "hybrid"
    if cy.exists():
        cfg = read_config(cy)
        if any(k in cfg for k in HYBRID_KEYS):
            return "hybrid"
        if all(k in cfg for k in LARGE_REQUIRED):
            return "large"
    entries = list_dir(d)
    if file is None and not entries:
        raise CheckpointError(f"{d}: the directory is empty; expected {EXPECTED}")
    found = [p.name for p in entries][:8]
    raise CheckpointError(f"{path}: no recognisable checkpoint (found {found}); expected {EXPECTED}")


def load_checkpoint(path: str | os.PathLike, format: Optional[str] = None) -> Graph:
    """Read a checkpoint's config and tensor headers into a validated Graph (no tensor data read)."""
    path = Path(path)
    if format is not None and format not in FORMATS:
        raise CheckpointError(f"unknown checkpoint format {format!r}; choose one of {list(FORMATS)}")
    fmt = format or detect_format(path)
    d, file = _dir_and_file(path)
    progress.note(f"reading checkpoint {path} ({fmt})")
    if fmt == "hf":
        from .hf import load_hf
        return load_hf(d, file)
    if fmt == "large":
        from .xlstm_large import load_large
        return load_large(d, file)
    if fmt == "hybrid":
        from .hybrid import load_hybrid
        return load_hybrid(d, file)
    from .profile import load_profile
    return load_profile(d, file)


__all__ = ["FORMATS", "load_checkpoint", "detect_format", "check_finite", "load_weight"]
