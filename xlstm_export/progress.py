"""Progress of long steps, on stderr, for people watching a terminal.

Library code says what it is doing (``progress.note("lowering block 3/12")``); nothing is printed unless
a sink is active. The CLI activates one on stderr when stderr is a terminal and ``--quiet`` is not given;
a Python caller can pass any callable::

    with progress.reporting(print):          # or progress.reporting(None) for silence
        xlstm_export.export("ckpt", "onnx", "m.onnx")

Lines are ``[xlstm-export  12.3s] <what>``, the time since the sink was activated. Notes that repeat
within ``min_interval`` seconds (per-tensor writes, per-block lowering) are dropped, except the last of a
counted series (``i == n``), so a fast step prints one line and a slow one shows it is moving.
"""

from __future__ import annotations

import contextlib
import sys
import time
from typing import Callable, Iterator, Optional

Sink = Callable[[str], None]

_sink: Optional[Sink] = None
_t0 = 0.0
_last = 0.0
MIN_INTERVAL = 1.0  # seconds between two counted notes of one series


def note(what: str, i: Optional[int] = None, n: Optional[int] = None) -> None:
    """Report ``what`` (with ``i``/``n``: item i of n of a series, throttled)."""
    global _last
    if _sink is None:
        return
    now = time.perf_counter()
    if i is not None and n is not None:
        if i != n and i != 1 and now - _last < MIN_INTERVAL:
            return
        what = f"{what} {i}/{n}"
    _last = now
    _sink(f"[xlstm-export {now - _t0:6.1f}s] {what}")


def active() -> bool:
    return _sink is not None


@contextlib.contextmanager
def reporting(sink: Optional[Sink]) -> Iterator[None]:
    """Send notes to ``sink`` inside the block (None: silence); the previous sink is restored after."""
    global _sink, _t0, _last
    saved = (_sink, _t0, _last)
    _sink, _t0, _last = sink, time.perf_counter(), 0.0
    try:
        yield
    finally:
        _sink, _t0, _last = saved


def stderr_sink(quiet: bool = False, stream=None) -> Optional[Sink]:
    """A sink writing to stderr when it is a terminal and not ``quiet`` (None otherwise)."""
    stream = stream or sys.stderr
    if quiet or not getattr(stream, "isatty", lambda: False)():
        return None

    def write(line: str) -> None:
        print(line, file=stream, flush=True)

    return write


__all__ = ["note", "reporting", "active", "stderr_sink", "MIN_INTERVAL"]
