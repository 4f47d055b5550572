"""Held-out prompts a checkpoint folder carries for validation, when it carries them.

The example checkpoints (``examples/``) hold ``validation_prompts.json``: a few held-out sequences of the
task they were trained on (``{"prompts": [[3, 9, 3, ...], ...], "task": {...}, "seed": 7}``), written by the
script that trained them (``examples/train_examples.py``, with ``examples/tasks.py``). Validating on them
exercises the states the way the model is used. The library reads the sequences as data; it generates no
task itself.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import List

from ..errors import ConfigError

PROMPTS_FILE = "validation_prompts.json"
MAX_PROMPTS_BYTES = 16 * 1024 * 1024  # a prompts file larger than this is not what the examples write


def task_prompts(checkpoint: str | os.PathLike) -> List[List[int]]:
    """The token-id sequences of the checkpoint folder's ``validation_prompts.json``; [] when it has none.

    A file that cannot be read, or that is not an object whose ``prompts`` is a list of non-empty lists of
    non-negative integers, is a ConfigError naming it (the ids' range is checked against the model's
    vocabulary where the prompts are used)."""
    p = Path(checkpoint)
    path = (p if p.is_dir() else p.parent) / PROMPTS_FILE
    if not path.is_file():
        return []
    fix = "fix or remove the file"
    try:
        if path.stat().st_size > MAX_PROMPTS_BYTES:
            raise ConfigError(f"{path}: larger than {MAX_PROMPTS_BYTES} bytes, not a prompts file; {fix}")
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:  # JSONDecodeError is a ValueError
        why = f"{type(e).__name__}: {e}"
        raise ConfigError(f"{path}: cannot read the held-out prompts from it ({why}); {fix}") from None
    prompts = doc.get("prompts") if isinstance(doc, dict) else None
    if not isinstance(prompts, list):
        got = type(prompts if isinstance(doc, dict) else doc).__name__
        raise ConfigError(f"{path}: expected an object whose 'prompts' is a list of token-id lists, got {got}; {fix}")
    for i, row in enumerate(prompts):
        if (not isinstance(row, list) or not row
                or not all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in row)):
            shown = repr(row)[:60]
            raise ConfigError(f"{path}: field 'prompts[{i}]': expected a non-empty list of non-negative integer "
                              f"token ids, got {shown}; {fix}")
    return [list(row) for row in prompts]
