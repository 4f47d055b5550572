"""Library noise: the one way xlstm-export keeps what third-party libraries print off its users' screens.

    with quiet():                          # a call into a noisy library: what it says is dropped
        import coremltools
    with quiet(show_after=keep) as term:   # a CLI command: held, then shown if keep(exception or None)
        ...                                # term: the real stderr, for progress lines

Inside the block, file descriptor 2 (and 1 with ``stdout=True``) is redirected, so C and C++ libraries
(ExecuTorch's runtime, coremltools' MIL writer) and logging handlers made earlier are held too, and
``sys.stderr`` / ``sys.stdout`` are swapped where they do not write to those descriptors (``CliRunner``, a
notebook, pytest's capture). Without ``show_after`` everything goes to the null device, Python warnings
are not issued and log records below ERROR are not made (nothing would show them): the libraries' known
import notes, progress bars, deprecations and runtime logs, which concern this tool, not its user. With
``show_after``, stderr is held in a temporary file (warnings and log records reach it as Python writes
them) and written to stderr after the block when ``show_after`` says so, cut at :data:`HELD_REPLAY_MAX`
characters.

Process-wide, like the descriptors it redirects: blocks nest (an inner block holds into whatever the outer
one holds), but another thread writing meanwhile is held as well.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import os
import sys
import tempfile
import warnings
from typing import Any, BinaryIO, Callable, Iterator, List, Optional

HELD_REPLAY_MAX = 20000  # characters of held-back output shown after a block


class _HeldStream(io.TextIOBase):
    """``sys.<name>`` inside a block when it does not write to its descriptor: text goes to ``sink`` while
    held; afterwards to whatever ``sys.<name>`` is then (a logging handler made in the block keeps this object)."""

    def __init__(self, sink: BinaryIO, encoding: str, name: str):
        self._sink, self._enc, self._name, self.held = sink, encoding, name, True

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return self._enc

    def writable(self) -> bool:
        return True

    def write(self, s: str) -> int:
        if self.held:
            self._sink.write(s.encode(self._enc, "replace"))
        elif getattr(sys, self._name) is not self:
            getattr(sys, self._name).write(s)
        return len(s)

    def flush(self) -> None:
        if not self.held and getattr(sys, self._name) is not self:
            getattr(sys, self._name).flush()

    def isatty(self) -> bool:
        return False


def _writes_to(stream: Any, fd: int) -> bool:
    try:
        return stream.fileno() == fd
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return False


def _flush(*streams: Any) -> None:
    for s in streams:
        with contextlib.suppress(Exception):
            s.flush()
    with contextlib.suppress(Exception):  # C stdio buffers (a library's printf): out before a descriptor moves
        _libc().fflush(None)


@functools.lru_cache(maxsize=1)
def _libc():
    import ctypes

    return ctypes.CDLL(None)


class _Redirect:
    """One of stdout / stderr held into ``sink``: its descriptor when open (when dropping, or when
    ``sys.<name>`` writes to it), and ``sys.<name>`` when it does not write to the descriptor."""

    def __init__(self, name: str, fd: int, sink: BinaryIO, encoding: str, drop: bool):
        self.name, self.fd, self.outer = name, fd, getattr(sys, name)
        self.saved: Optional[int] = None
        self.proxy: Optional[_HeldStream] = None
        on_fd = _writes_to(self.outer, fd)
        if on_fd or drop:
            with contextlib.suppress(OSError):  # a closed descriptor: nothing to hold there
                self.saved = os.dup(fd)
                os.dup2(sink.fileno(), fd)
        if not on_fd:
            self.proxy = _HeldStream(sink, encoding, name)
            setattr(sys, name, self.proxy)

    def restore(self) -> None:
        if self.saved is not None:
            os.dup2(self.saved, self.fd)
            os.close(self.saved)
        if self.proxy is not None:
            self.proxy.held = False
            setattr(sys, self.name, self.outer)


@contextlib.contextmanager
def quiet(show_after: Optional[Callable[[Optional[BaseException]], bool]] = None, *,
          stdout: bool = True) -> Iterator[Any]:
    """Hold library output inside the block (see the module doc); yields a stream to the real stderr.
    ``show_after(exception or None)``: write what was held to stderr after the block (default: never)."""
    drop = show_after is None
    enc = getattr(sys.stderr, "encoding", None) or "utf-8"
    _flush(sys.stdout, sys.stderr)
    try:
        sink: BinaryIO = open(os.devnull, "wb", buffering=0) if drop else tempfile.TemporaryFile(buffering=0)
    except OSError:  # no descriptors left, no room for a temporary file: run unheld rather than not at all
        yield sys.stderr
        return
    redirects: List[_Redirect] = []
    terminal, own_terminal = sys.stderr, False
    failure: Optional[BaseException] = None
    with sink, contextlib.ExitStack() as stack:
        try:
            for name, fd in (("stdout", 1), ("stderr", 2)) if stdout else (("stderr", 2),):
                redirects.append(_Redirect(name, fd, sink, enc, drop))
            err = redirects[-1]
            if err.saved is not None and err.proxy is None:  # progress lines go where stderr went
                with contextlib.suppress(OSError):
                    terminal = os.fdopen(os.dup(err.saved), "w", buffering=1, encoding=enc, errors="replace")
                    own_terminal = True
            if drop:
                stack.enter_context(warnings.catch_warnings())
                warnings.simplefilter("ignore")
                stack.callback(logging.disable, logging.root.manager.disable)
                logging.disable(logging.WARNING)
            yield terminal
        except BaseException as e:
            failure = e
            raise
        finally:
            _flush(sys.stdout, sys.stderr)
            for r in reversed(redirects):
                r.restore()
            if own_terminal:
                with contextlib.suppress(Exception):
                    terminal.close()
            if not drop and show_after(failure):
                _replay(sink, enc)


def _replay(sink: BinaryIO, encoding: str) -> None:
    size = sink.seek(0, os.SEEK_END)
    if not size:
        return
    sink.seek(0)
    text = sink.read(HELD_REPLAY_MAX * 4).decode(encoding, "replace")
    cut = len(text) > HELD_REPLAY_MAX or size > HELD_REPLAY_MAX * 4
    text = text[:HELD_REPLAY_MAX]
    with contextlib.suppress(Exception):
        sys.stderr.write(text if text.endswith("\n") else text + "\n")
        if cut:
            sys.stderr.write(f"[xlstm-export: {size} bytes of library messages, the rest cut]\n")
        sys.stderr.flush()


__all__ = ["HELD_REPLAY_MAX", "quiet"]
