"""Atomic, no-clobber artifact writing.

    with atomic_output(out_path, force=False) as tmp:
        write_everything_to(tmp)          # a file or a directory (.mlpackage)
    # renamed onto out_path only if the block finished without an exception

An existing ``out_path`` is never touched without ``force``; with ``force`` it is replaced only after
the new artifact is complete, so a failing export leaves the old one intact. The temporary sibling
(``.<name>.tmp-<pid>``) is removed on any failure, KeyboardInterrupt and SIGTERM included.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
from pathlib import Path
from typing import Iterator

from .errors import OutputError


def check_output_path(out_path: Path, force: bool) -> None:
    if out_path.exists() and not force:
        raise OutputError(f"{out_path}: already exists; pass --force to replace it")
    if not out_path.parent.exists():
        raise OutputError(f"{out_path}: parent directory {out_path.parent} does not exist")


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    elif p.exists() or p.is_symlink():
        p.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_output(out_path: str | os.PathLike, force: bool = False) -> Iterator[Path]:
    out_path = Path(out_path)
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
        yield tmp
        if not tmp.exists():
            raise OutputError(f"{out_path}: the exporter wrote nothing")
        if out_path.exists():
            backup = out_path.with_name(f".{out_path.name}.old-{os.getpid()}")
            os.replace(out_path, backup) if not out_path.is_dir() else out_path.rename(backup)
            try:
                os.replace(tmp, out_path)
            except BaseException:
                backup.rename(out_path)
                raise
            _remove(backup)
        else:
            os.replace(tmp, out_path)
    finally:
        _remove(tmp)
        if old is not None:
            signal.signal(signal.SIGTERM, old)
