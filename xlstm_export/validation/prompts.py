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
    """``n`` held-out sequences of the checkpoint's training task; [] when it names none.

    A ``train_log.json`` that cannot be read, or whose task is malformed, is a ConfigError naming it."""
    from .. import tasks

    p = Path(checkpoint)
    log = (p if p.is_dir() else p.parent) / TRAIN_LOG
    if not log.is_file():
        return []
    fix = "fix or remove the file"
    try:
        info = json.loads(log.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:  # JSONDecodeError is a ValueError
        raise ConfigError(f"{log}: cannot read the example task from it ({type(e).__name__}: {e}); {fix}") from None
    if not isinstance(info, dict) or not isinstance(info.get("task"), dict):
        got = type(info.get("task") if isinstance(info, dict) else info).__name__
        raise ConfigError(f"{log}: expected an object with a 'task' object, got {got}; {fix}")
    task = info["task"]
    if "name" not in task:
        raise ConfigError(f"{log}: field 'task.name' is missing; {fix}")
    if task["name"] not in tasks.TASKS:
        return []  # a task this tool does not generate: the seeded prompts only
    ev = info.get("eval", {})
    try:
        seed = int(ev.get("seed", 0))
    except (AttributeError, TypeError, ValueError, OverflowError):  # eval not an object, seed not a number
        seed = -1
    if seed < 0:
        raise ConfigError(f"{log}: field 'eval' must be an object whose 'seed' is a non-negative integer, "
                          f"got {ev!r}; {fix}")
    try:
        ids, _ = tasks.generate(task, n, seed)
    except ConfigError as e:
        raise ConfigError(f"{log}: cannot generate the example task from it ({e}); {fix}") from None
    except MemoryError:
        raise ConfigError(f"{log}: the task {task['name']!r} asks for sequences too large to generate; {fix}") from None
    return [row.tolist() for row in ids]
