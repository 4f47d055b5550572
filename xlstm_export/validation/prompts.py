"""Prompts of the example task a checkpoint was trained on, when it says so.

The example checkpoints (``examples/``) carry a ``train_log.json`` naming their task
(``{"task": {"name": "in_context_recall", "seq_len": 64, "vocab_size": 16, ...}, "eval": {"seed": 7}}``);
validating them on sequences of that task exercises the states the way the model is used.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import List

from ..errors import ConfigError

TRAIN_LOG = "train_log.json"


def task_prompts(checkpoint: str | os.PathLike, n: int = 2) -> List[List[int]]:
    """``n`` held-out sequences of the checkpoint's training task; [] when it names none."""
    from .. import tasks

    p = Path(checkpoint)
    log = (p if p.is_dir() else p.parent) / TRAIN_LOG
    if not log.is_file():
        return []
    try:
        info = json.loads(log.read_text(encoding="utf-8"))
        task = info["task"]
        seed = int(info.get("eval", {}).get("seed", 0))
        if task["name"] not in tasks.TASKS:
            return []  # a task this tool does not generate: the seeded prompts only
        ids, _ = tasks.generate(task, n, seed)
    except (ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"{log}: cannot read the example task from it ({type(e).__name__}: {e}); fix or "
                          f"remove the file") from None
    return [row.tolist() for row in ids]
