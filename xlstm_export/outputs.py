"""Atomic, no-clobber artifact writing.

    with atomic_output(out_path, force=False) as tmp:
        write_everything_to(tmp)          # a file or a directory (.mlpackage)
    # renamed onto out_path only if the block finished without an exception

An existing ``out_path`` is never touched without ``force``; with ``force`` it is replaced only after
the new artifact is complete, so a failing export leaves the old one intact. The temporary sibling
(``.<name>.tmp-<pid>``) is removed on any failure, KeyboardInterrupt and SIGTERM included; the
rename onto ``out_path`` runs with SIGINT/SIGTERM held back, so a signal never splits it. A sibling
left by a process that was SIGKILLed is removed by the next export to the same path. A write that
fails for want of room or permission is an :class:`OutputError` (one line, exit 2).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import signal
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from .errors import OutputError

# errors of the output side (whatever file the writer was touching when they happened)
_WRITE_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EFBIG, getattr(errno, "EDQUOT", errno.ENOSPC)}


def check_output_path(out_path: Path, force: bool) -> None:
    out_path = Path(out_path)
    try:
        taken = out_path.exists() or out_path.is_symlink()
    except OSError as e:  # a name too long for the file system, a loop of links...
        raise OutputError(f"{str(out_path)[:200]}: cannot be an output path: {e.strerror or e}") from None
    if taken and not force:
        raise OutputError(f"{out_path}: already exists; pass --force to replace it")
    parent = out_path.parent
    if not parent.exists():
        raise OutputError(f"{out_path}: parent directory {parent} does not exist")
    if not parent.is_dir():
        raise OutputError(f"{out_path}: {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"{out_path}: directory {parent} is not writable")


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    elif p.exists() or p.is_symlink():
        p.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, not ours
        return True
    return True


def _clean_stale(out_path: Path) -> None:
    """Siblings left by a killed export to ``out_path`` (its pid no longer runs): temporaries are
    removed; a backup is put back if the artifact itself is missing (killed mid-replace), else removed."""
    pat = re.compile(rf"^\.{re.escape(out_path.name)}\.(tmp|old)-(\d+)$")
    try:
        entries = sorted(out_path.parent.iterdir())
    except OSError:
        return
    for p in entries:
        m = pat.match(p.name)
        if not m or int(m.group(2)) == os.getpid() or _alive(int(m.group(2))):
            continue
        if m.group(1) == "old" and not (out_path.exists() or out_path.is_symlink()):
            with contextlib.suppress(OSError):
                os.replace(p, out_path)
            continue  # restored (or left alone if that failed): never delete the only copy
        _remove(p)


def _is_write_error(e: OSError, tmp: Path) -> bool:
    return e.errno in _WRITE_ERRNOS or (e.filename is not None and str(e.filename).startswith(str(tmp)))


@contextlib.contextmanager
def _signals_held():
    """SIGINT/SIGTERM wait until the block is done (main thread, POSIX); elsewhere a no-op."""
    if not hasattr(signal, "pthread_sigmask") or threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _commit(tmp: Path, out_path: Path) -> None:
    try:
        with _signals_held():
            if out_path.exists() or out_path.is_symlink():
                backup = out_path.with_name(f".{out_path.name}.old-{os.getpid()}")
                _remove(backup)
                os.replace(out_path, backup)
                try:
                    os.replace(tmp, out_path)
                except BaseException:
                    os.replace(backup, out_path)
                    raise
                _remove(backup)
            else:
                os.replace(tmp, out_path)
    except OSError as e:
        raise OutputError(f"{out_path}: cannot move the finished artifact into place: {e.strerror or e}") from None


@contextlib.contextmanager
def atomic_output(out_path: str | os.PathLike, force: bool = False) -> Iterator[Path]:
    out_path = Path(out_path)
    _clean_stale(out_path)  # first: it may put back an artifact a killed replace had moved aside
    check_output_path(out_path, force)
    tmp = out_path.with_name(f".{out_path.name}.tmp-{os.getpid()}")
    _remove(tmp)

    def on_term(signum, frame):  # turn SIGTERM into an exception so the cleanup below runs
        raise KeyboardInterrupt(f"signal {signum}")

    old = None
    try:
        old = signal.signal(signal.SIGTERM, on_term)
    except ValueError:  # not the main thread
        old = None
    try:
        try:
            yield tmp
        except OSError as e:
            if _is_write_error(e, tmp):
                raise OutputError(f"{out_path}: cannot write: {e.strerror or e}; nothing was written") from None
            raise
        if not tmp.exists():
            raise OutputError(f"{out_path}: the exporter wrote nothing")
        _commit(tmp, out_path)
    finally:
        _remove(tmp)
        if old is not None:
            signal.signal(signal.SIGTERM, old)


@dataclass(frozen=True)
class Artifact:
    """What every emitter returns: the artifact, every file it wrote (the artifact first: ONNX external
    data, the Core ML Swift snippet follow), its I/O contract and the emitter's figures."""

    path: Path
    kind: str  # the artifact kind (targets.KINDS): "torchscript", "onnx", "onnx-scan", "onnx-prefill", "coreml", ...
    precision: str
    contract: dict
    files: tuple = ()
    stats: dict = field(default_factory=dict)

    def __post_init__(self):
        if not self.files:
            object.__setattr__(self, "files", (self.path,))


def bytes_on_disk(path: Path) -> int:
    """An artifact's bytes on disk: the file or the package folder, plus ONNX external data beside it."""
    path = Path(path)
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    data = path.with_name(path.name + ".data")
    return path.stat().st_size + (data.stat().st_size if data.exists() else 0)
