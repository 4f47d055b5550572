"""MAD-style synthetic tasks (in-context recall, selective copying): numpy only, seeded, deterministic.

Both generators return ``(input_ids, targets)``, int64 arrays of shape (N, T). ``targets`` holds
``IGNORE_INDEX`` (-100) wherever nothing is scored.

Alignment convention (one for both tasks): ``targets[:, t]`` is the token the model should predict
after reading ``input_ids[:, : t + 1]``; the argmax of the next-token logits at position t is the
prediction scored against ``targets[:, t]``. Targets are already shifted: train with
``cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100)`` directly, not with a
loss that shifts labels again (transformers' ``labels=`` does).

Same seed and arguments give the same arrays on every platform (``numpy.random.default_rng``).

Example code, not part of the library: the training script (``train_examples.py``), the demo (``demo.py``)
and the tests import it with this folder on ``sys.path``. The library reads what validation needs from
each checkpoint's ``validation_prompts.json`` (:func:`write_validation_prompts` writes it).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # run from anywhere: import xlstm_export from this checkout

from xlstm_export.errors import ConfigError, UnsupportedError  # noqa: E402

IGNORE_INDEX = -100


class TaskError(ConfigError, ValueError):
    """A task's arguments (or a ``train_log.json`` task description) are out of range or of the wrong type.

    Also a ``ValueError``, as these functions raised before they joined the error hierarchy."""


def _check_ints(fn: str, **values) -> None:
    """Every value an integer (numpy integers too; bools and floats are not), seeds non-negative."""
    for key, v in values.items():
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise TaskError(f"{fn}: {key} must be an integer, got {v!r}")
    if "seed" in values and values["seed"] < 0:
        raise TaskError(f"{fn}: seed must be >= 0, got {values['seed']}")


def in_context_recall(
    n: int,
    seq_len: int,
    vocab_size: int,
    seed: int,
    num_keys: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Multi-query associative recall (MAD's in-context recall with ``multi_query=True``).

    Each sequence is ``seq_len // 2`` key/value pairs ``k0 v0 k1 v1 ...``. Keys come from
    ``[0, num_keys)``, values from ``[vocab_size // 2, vocab_size)``; each sequence draws its own
    key -> value map, so the association must be read from the context. Keys recur; at the position
    of a key that already appeared earlier in the sequence, the target is its value (the token that
    follows). Every other position is ``IGNORE_INDEX``. The last pair always repeats an earlier key,
    so each sequence has at least one scored position.

    ``num_keys`` (default ``vocab_size // 2``) makes the task easier when smaller: fewer distinct
    associations to hold, more recurrences to score.
    """
    _check_ints("in_context_recall", n=n, seq_len=seq_len, vocab_size=vocab_size, seed=seed)
    half = vocab_size // 2
    num_keys = half if num_keys is None else num_keys
    _check_ints("in_context_recall", num_keys=num_keys)
    if n < 1:
        raise TaskError(f"in_context_recall: n must be >= 1, got {n}")
    if seq_len < 4 or seq_len % 2:
        raise TaskError(f"in_context_recall: seq_len must be even and >= 4 (key/value pairs), got {seq_len}")
    if vocab_size < 4:
        raise TaskError(f"in_context_recall: vocab_size must be >= 4 (keys and values), got {vocab_size}")
    if not 1 <= num_keys <= half:
        raise TaskError(f"in_context_recall: num_keys must be in [1, vocab_size // 2 = {half}], got {num_keys}")

    rng = np.random.default_rng(seed)
    num_pairs = seq_len // 2
    num_values = vocab_size - half
    keys = rng.integers(0, num_keys, size=(n, num_pairs))  # (N, P)
    kv_map = half + rng.integers(0, num_values, size=(n, num_keys))  # (N, K) per-sequence map
    # the final pair probes a key from an earlier pair
    probe_src = rng.integers(0, num_pairs - 1, size=n)
    rows = np.arange(n)
    keys[:, -1] = keys[rows, probe_src]
    values = np.take_along_axis(kv_map, keys, axis=1)  # (N, P)

    # recurring[:, j]: key of pair j appeared in pairs 0..j-1
    seen = np.zeros((n, num_keys), dtype=bool)
    recurring = np.zeros((n, num_pairs), dtype=bool)
    for j in range(num_pairs):
        recurring[:, j] = seen[rows, keys[:, j]]
        seen[rows, keys[:, j]] = True

    input_ids = np.empty((n, seq_len), dtype=np.int64)
    input_ids[:, 0::2] = keys
    input_ids[:, 1::2] = values
    targets = np.full((n, seq_len), IGNORE_INDEX, dtype=np.int64)
    targets[:, 0::2] = np.where(recurring, values, IGNORE_INDEX)
    return input_ids, targets


def selective_copying(
    n: int,
    seq_len: int,
    num_tokens_to_copy: int,
    vocab_size: int,
    seed: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Selective copying (MAD's ``generate_selective_copying_instance``).

    Token ids: content ``[0, vocab_size - 2)``, blank ``vocab_size - 2``, copy marker
    ``vocab_size - 1``. The first ``seq_len - num_tokens_to_copy`` positions hold
    ``num_tokens_to_copy`` content tokens at random positions (in order) among blanks; the last
    ``num_tokens_to_copy`` positions are copy markers. At the i-th copy marker the target is the i-th
    content token, so the model emits the content tokens in order; all other positions are
    ``IGNORE_INDEX``. (MAD puts one copy token followed by blanks and scores the blanks; here the
    queries are the markers themselves, so the first marker already asks for the first token.)
    """
    _check_ints("selective_copying", n=n, seq_len=seq_len, num_tokens_to_copy=num_tokens_to_copy,
                vocab_size=vocab_size, seed=seed)
    data_len = seq_len - num_tokens_to_copy
    if n < 1:
        raise TaskError(f"selective_copying: n must be >= 1, got {n}")
    if num_tokens_to_copy < 1:
        raise TaskError(f"selective_copying: num_tokens_to_copy must be >= 1, got {num_tokens_to_copy}")
    if data_len <= num_tokens_to_copy:
        raise TaskError(
            f"selective_copying: seq_len ({seq_len}) must exceed 2 * num_tokens_to_copy "
            f"({2 * num_tokens_to_copy}) so that at least one blank separates the tokens to copy"
        )
    if vocab_size < 3:
        raise TaskError(f"selective_copying: vocab_size must be >= 3 (content, blank, copy), got {vocab_size}")

    rng = np.random.default_rng(seed)
    blank, copy = vocab_size - 2, vocab_size - 1
    to_copy = rng.integers(0, vocab_size - 2, size=(n, num_tokens_to_copy))  # (N, C)
    # positions of the content tokens in the data region: a sorted random subset per row
    positions = np.sort(np.argsort(rng.random((n, data_len)), axis=1)[:, :num_tokens_to_copy], axis=1)

    input_ids = np.full((n, seq_len), blank, dtype=np.int64)
    np.put_along_axis(input_ids, positions, to_copy, axis=1)
    input_ids[:, data_len:] = copy
    targets = np.full((n, seq_len), IGNORE_INDEX, dtype=np.int64)
    targets[:, data_len:] = to_copy
    return input_ids, targets


def accuracy(logits_or_predictions, targets) -> float:
    """Fraction of scored positions (``targets != IGNORE_INDEX``) predicted correctly.

    ``logits_or_predictions`` is either logits (N, T, V), reduced by argmax over the last axis, or
    predicted token ids (N, T). Anything ``numpy.asarray`` accepts works (a CPU torch tensor without
    grad included). Position t's prediction is compared with ``targets[:, t]`` (module docstring).
    """
    targets = np.asarray(targets)
    pred = np.asarray(logits_or_predictions)
    if pred.ndim == targets.ndim + 1:
        pred = pred.argmax(axis=-1)
    if pred.shape != targets.shape:
        raise TaskError(
            f"accuracy: predictions of shape {pred.shape} (after argmax) do not match targets {targets.shape}"
        )
    scored = targets != IGNORE_INDEX
    total = int(scored.sum())
    if total == 0:
        raise TaskError("accuracy: targets have no scored positions (all are IGNORE_INDEX)")
    return float((pred[scored] == targets[scored]).sum()) / total


TASKS = ("in_context_recall", "selective_copying")


def generate(task: dict, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` sequences of the task a ``train_log.json`` describes (``{"name": ..., "seq_len": ...}``).

    Raises UnsupportedError for a task name this module does not generate, TaskError (a ConfigError)
    for a description that is not an object with the task's integer fields.
    """
    if not isinstance(task, dict):
        raise TaskError(f"task: expected an object with 'name' and the task's fields, got {type(task).__name__}")
    name = task.get("name")
    if name not in TASKS:
        raise UnsupportedError(f"no generator for the task {name!r}; known: {TASKS}")

    def get(key: str):
        if key not in task:
            raise TaskError(f"task {name!r}: field {key!r} is missing")
        return task[key]

    if name == "in_context_recall":
        return in_context_recall(n, get("seq_len"), get("vocab_size"), seed, num_keys=task.get("num_keys"))
    return selective_copying(n, get("seq_len"), get("num_tokens_to_copy"), get("vocab_size"), seed)


# -- the held-out prompts validation reads ----------------------------------------------------------
VALIDATION_PROMPTS = 2  # held-out sequences a checkpoint folder carries for validation


def write_validation_prompts(checkpoint: Path, task: dict, seed: int, n: int = VALIDATION_PROMPTS) -> Path:
    """Write ``checkpoint/validation_prompts.json``: ``n`` held-out sequences of ``task`` at ``seed`` (the
    example's eval seed, never a training batch's), which ``xlstm-export validate`` and the demo add to their
    seeded prompts (``xlstm_export.validation.prompts``: the library reads this file, it runs no task code)."""
    from xlstm_export.validation.prompts import PROMPTS_FILE

    ids, _ = generate(task, n, seed)
    doc = {"about": f"{n} held-out sequences of the task the checkpoint was trained on (examples/tasks.py "
                    f"{task['name']}, seed {seed}); validation adds them to its seeded prompts",
           "task": task, "seed": int(seed), "prompts": [row.tolist() for row in ids]}
    path = Path(checkpoint) / PROMPTS_FILE
    head = ",\n".join(f" {json.dumps(k)}: {json.dumps(v)}" for k, v in doc.items() if k != "prompts")
    rows = ",\n".join(f"  {json.dumps(r)}" for r in doc["prompts"])
    path.write_text(f"{{\n{head},\n \"prompts\": [\n{rows}\n ]\n}}\n", encoding="utf-8")
    return path
