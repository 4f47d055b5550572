"""Our own format: ``profile.json`` (the graph profile, see ``graphs.graph.config_from_profile``) +
``model.safetensors`` under canonical names. ``save_profile_checkpoint`` converts any loaded graph.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

from ..errors import CheckpointError, ConfigError, OutputError
from ..graphs import Graph, config_from_profile
from . import path_exists, read_json
from ._table import Mapped, build_graph
from .safetensors_io import open_safetensors, write_safetensors

PROFILE = "profile.json"
WEIGHTS = "model.safetensors"


def load_profile(d: Path, file: Optional[Path] = None) -> Graph:
    prof_path = file if file is not None and file.suffix == ".json" else d / PROFILE
    if not path_exists(prof_path):
        raise CheckpointError(f"{d}: {PROFILE} is missing (expected an xlstm-export profile checkpoint)")
    try:
        config, blocks = config_from_profile(read_json(prof_path), str(prof_path))
    except ConfigError as e:  # the schedule's own checks name the block, not the file
        if str(e).startswith(str(prof_path)):
            raise
        raise ConfigError(f"{prof_path}: {e}") from None
    weights = file if file is not None and file.suffix == ".safetensors" else d / WEIGHTS
    if not path_exists(weights):
        raise CheckpointError(f"{d}: {WEIGHTS} is missing next to {PROFILE}")
    ckpt = open_safetensors(weights)
    handles = dict(ckpt)
    if config.tie_weights and "lm_head.weight" not in handles and "embedding.weight" in handles:
        handles["lm_head.weight"] = handles["embedding.weight"].rename("lm_head.weight")
    mapped = Mapped(handles=handles, missing=[], misshaped=[], consumed=set(ckpt))
    return build_graph(config, blocks, ckpt, mapped, source=str(d))


def save_profile_checkpoint(graph: Graph, out_dir: str | os.PathLike, force: bool = False) -> Path:
    """Write ``graph`` as a profile checkpoint: one tensor in memory at a time; files appear atomically.

    ``model.safetensors`` is written first and ``profile.json`` (which marks the directory as a
    checkpoint) last, so an interrupted write never leaves something that loads.
    """
    out = Path(out_dir)
    try:
        if out.exists() and not out.is_dir():
            raise OutputError(f"{out}: exists and is not a directory")
        if not out.parent.exists():
            raise OutputError(f"{out.parent}: parent directory does not exist")
        if (out / PROFILE).exists() and not force:
            raise OutputError(f"{out}: already holds a checkpoint ({PROFILE}); pass force=True (--force) to overwrite")
        out.mkdir(exist_ok=True)
        (out / PROFILE).unlink(missing_ok=True)
    except OSError as e:  # no permission, a name too long, a read-only file system...
        raise OutputError(f"{str(out)[:200]}: cannot write a checkpoint there: {e.strerror or e}") from None
    expected = graph.expected_weights()
    items = [(n, graph.weights[n]) for n in expected
             if not (graph.config.tie_weights and n == "lm_head.weight")]
    write_safetensors(out / WEIGHTS, items, metadata={"format": "xlstm-export-profile"})
    tmp = out / (PROFILE + ".tmp")
    try:
        tmp.write_text(json.dumps(graph.to_profile(informational=False), indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, out / PROFILE)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise OutputError(f"{out / PROFILE}: cannot write: {e.strerror or e}") from None
    return out
