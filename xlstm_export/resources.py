"""Bounds on what one command may ask for, and a memory check before a validation allocates.

The API's counts have maxima far above what a check or a demo needs (``MAX_*``), checked by the API
functions themselves (:func:`check_range`; the CLI's options show the same ranges in ``--help``); a batch size is also
checked against the memory this machine has free: :func:`check_validation_memory` estimates what a
validation at batch B holds at once (both runners' states, the logits of a prompt, the reference's
activations, the weights twice) and refuses, in one line naming both figures, when that exceeds
``MemAvailable`` of ``/proc/meminfo``. Measured per sequence (peak RSS at batch 512 or 2048 minus batch 1,
over the batch; 3 prompts of 12 tokens + 10 steps): the hybrid-copy example 352 KB (ONNX) and 435 KB
(TorchScript) against 581 KB estimated, hf-recall 385 KB (ONNX) and 620 KB (Core ML executor) against
599 KB estimated. The libraries' own ~0.3-0.5 GB are not counted. Where ``/proc/meminfo`` cannot be read
(macOS) only the maxima apply.
"""

from __future__ import annotations

from typing import Optional

from .errors import ConfigError

MAX_NEW_TOKENS = 65536  # generate --max-new-tokens
MAX_STEPS = 8192  # validate / export --steps (decode steps per prompt)
MAX_PROMPTS = 1024  # validate --prompts
MAX_PROMPT_LEN = 8192  # validate --prompt-len
MAX_BATCH_SIZE = 65536  # --batch-size of every export and of validate

MAX_TOP_K = 1 << 30  # generate / run --top-k
MAX_TEMPERATURE = 1e4  # generate / run --temperature
MAX_SEED = 2 ** 63 - 1  # generate / run --seed
MAX_HELDOUT_TOKENS = 65536  # validate --heldout-tokens
OPTION_MAX = {"batch_size": MAX_BATCH_SIZE}  # maxima of target options that the target registry leaves open

MEMINFO = "/proc/meminfo"


def check_range(flag: str, value, minimum=None, maximum=None, *, integer: bool = True, optional: bool = False,
                min_open: bool = False):
    """``value`` if it is an integer (a number with ``integer=False``) within ``[minimum, maximum]`` (``minimum``
    excluded with ``min_open``; None: unbounded); else ConfigError, one line naming ``flag`` as the CLI's range
    check words it (``--steps: 100000 is not in the range 0<=x<=8192``). ``optional``: None passes."""
    import numbers

    if value is None and optional:
        return value
    kind = numbers.Integral if integer else numbers.Real
    if isinstance(value, bool) or not isinstance(value, kind):
        raise ConfigError(f"{flag}: expected {'an integer' if integer else 'a number'}, got {value!r}"[:200])
    lo = "" if minimum is None else f"{minimum}{'<' if min_open else '<='}"
    hi = "" if maximum is None else f"<={maximum}"
    if ((minimum is not None and (value <= minimum if min_open else value < minimum))
            or (maximum is not None and value > maximum) or value != value):  # NaN is in no range
        raise ConfigError(f"{flag}: {value} is not in the range {lo}x{hi}")
    return value


def available_memory() -> Optional[int]:
    """Bytes this machine can give a process without swapping (``MemAvailable``); None if unknown."""
    try:
        with open(MEMINFO, "rb") as f:
            text = f.read(65536).decode("ascii", "replace")
    except OSError:
        return None
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key.strip() == "MemAvailable":
            parts = rest.split()
            try:
                n = int(parts[0])
            except (IndexError, ValueError):
                return None
            unit = parts[1].lower() if len(parts) > 1 else "b"
            return n * {"kb": 1024, "mb": 1024 ** 2, "gb": 1024 ** 3}.get(unit, 1)
    return None


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024.0
    return f"{n:.1f} PB"  # pragma: no cover


def validation_bytes(graph, batch_size: int, tokens: int) -> tuple[int, int]:
    """(per-sequence bytes, fixed bytes) a validation of ``graph`` at ``batch_size`` holds at once when
    its longest prompt has ``tokens`` tokens: per sequence, the fp32 states 12 times (the reference's and
    the artifact's, in and out of a call, as tensors and as arrays, the chunkwise prefill's per-chunk
    states, the comparison's float64 copies), that prompt's logits 4 times and 32 activations of the
    embedding width per token; fixed, the weights as fp32 twice (reference and artifact)."""
    state = sum(_prod(s.shape) for s in graph.state_contract(1))
    V, E = graph.config.vocab_size, graph.config.embedding_dim
    per_seq = 4 * (12 * state + 4 * tokens * V + 32 * tokens * E)
    return per_seq, 2 * 4 * int(graph.num_params)


def check_validation_memory(graph, batch_size: int, tokens: int, what: str = "--batch-size", hint: str = "",
                            available: Optional[int] = None) -> None:
    """ConfigError (one line, both figures) when a validation at ``batch_size`` cannot fit in memory."""
    avail = available_memory() if available is None else available
    if avail is None:
        return
    per_seq, fixed = validation_bytes(graph, batch_size, tokens)
    need = per_seq * batch_size + fixed
    if need > avail:
        raise ConfigError(
            f"{what} {batch_size}: validating needs about {human_bytes(need)} ({human_bytes(per_seq)} of states, "
            f"logits and activations per sequence x {batch_size} + {human_bytes(fixed)} of weights), but this "
            f"machine has {human_bytes(avail)} available (MemAvailable in {MEMINFO}); use a smaller batch size{hint}")


def _prod(shape) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


__all__ = ["MAX_NEW_TOKENS", "MAX_STEPS", "MAX_PROMPTS", "MAX_PROMPT_LEN", "MAX_BATCH_SIZE", "MAX_TOP_K",
           "MAX_TEMPERATURE", "MAX_SEED", "MAX_HELDOUT_TOKENS", "OPTION_MAX", "available_memory", "validation_bytes",
           "check_validation_memory", "check_range", "human_bytes"]
