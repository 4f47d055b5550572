"""Atomic, exclusive, no-clobber artifact writing.

    with atomic_output(out_path, force=False, ours=target.foreign_reason) as tmp:
        write_everything_to(tmp)          # a file or a directory (.mlpackage)
    # moved onto out_path only if the block finished without an exception

    with atomic_outputs([model, data], force, ours) as (tmp_model, tmp_data):   # all or none
        ...

Where the temporaries live: one private folder per call, created beside the output with an
unpredictable name (``.<name>.xlstm-tmp-<pid>-<random>``, or ``.xlstm-tmp-<pid>-<random>`` where that
would be too long for the file system), exclusively (``mkdir``), mode 0700, holding a marker file. The
artifact is built at ``<folder>/new/<name>`` (its own name: a name that fits the file system fits there);
:func:`scratch_for` gives a folder for a writer's own temporaries (TorchScript's raw archive,
coremltools' package), so nothing goes to TMPDIR. Nothing else beside the output is ever opened, trusted
or deleted: a file planted at a name we might use is not ours and stays where it is.

The final step is atomic and exclusive: ``renameat2(RENAME_NOREPLACE)`` on Linux (``renamex_np`` on
macOS; else ``link`` for files, or an exclusively created placeholder that the rename replaces), so of two
exports racing to the same new path exactly one succeeds and the other says "already exists". With
``force`` an existing output is replaced only if it is recognisably an artifact of this tool (see
:func:`foreign_reason`; a directory where a file goes never is), and only once the new one is complete:
``renameat2(RENAME_EXCHANGE)`` swaps them in one step (elsewhere the old one is moved aside into the
private folder first and put back if the move-in fails). Several outputs are committed together (the
artifact itself last) and rolled back together.

The private folder is removed on any failure, KeyboardInterrupt and SIGTERM included; the moves run with
SIGINT/SIGTERM held back. A folder left by a process that was SIGKILLed is recognised by its name, owner
and marker (its pid no longer running) and removed by the next export into the same directory, after
putting back an artifact that the killed process had moved aside. A write that fails for want of room or
permission is an :class:`OutputError` (one line, exit 2).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import json
import os
import re
import secrets
import shutil
import signal
import stat
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Sequence

from .errors import OutputError

# errors of the output side (whatever file the writer was touching when they happened)
WRITE_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EFBIG, getattr(errno, "EDQUOT", errno.ENOSPC)}
_NAME_MAX = 255
_TAG = "xlstm-tmp"
_MARKER = ".xlstm-export-tmp"  # inside the private folder: {"tool", "pid", "outputs"}
_PRIVATE = re.compile(rf"^\.(?:.+\.)?{_TAG}-(\d+)-([0-9a-f]{{16}})$")
_UNSUPPORTED = {errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM, errno.EXDEV}


def _short(path: Path | str, n: int = 200) -> str:
    s = str(path)
    return s if len(s) <= n else s[: n - 3] + "..."


# -- what is ours -------------------------------------------------------------------------------------------
# What is recognisably an output of this tool is for whoever writes it to say (a target's ``foreign_reason``,
# the validation report's): a function ``(path, is_dir) -> None`` (ours) or why not, called for an existing
# path after the checks every output shares (it exists, it is a regular file or a folder, it is readable).
Recogniser = Callable[[Path, bool], Optional[str]]


def head(path: Path, n: int) -> bytes:
    """The first ``n`` bytes of ``path`` (what recognisers read: markers sit near the start)."""
    with open(path, "rb") as f:
        return f.read(n)


def foreign_reason(path: str | os.PathLike, ours: Recogniser) -> Optional[str]:
    """``None`` if the existing ``path`` is recognisably an output of xlstm-export, which ``--force`` may
    replace; otherwise why not ("a directory", "not a regular file", or what ``ours`` says: "not a
    TorchScript archive", ...). A symbolic link is judged by what it points to (and only the link is
    replaced)."""
    p = Path(path)
    try:
        st = os.stat(p)
    except FileNotFoundError:
        return "a dangling symbolic link" if os.path.islink(p) else "missing"
    except OSError as e:
        return f"unreadable: {e.strerror or e}"
    is_dir = stat.S_ISDIR(st.st_mode)
    if not is_dir and not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    try:
        return ours(p, is_dir)
    except OSError as e:
        return f"unreadable: {e.strerror or e}"


def nothing_is_ours(path: Path, is_dir: bool) -> Optional[str]:
    """The recogniser where the caller names none: nothing existing is replaced, even with ``force``."""
    return "no recogniser of this tool's outputs was given for it"


def plain_file(path: Path, is_dir: bool) -> Optional[str]:
    """The recogniser of outputs that carry no mark of their own (text files beside an artifact): any
    regular file; never a directory."""
    return "a directory" if is_dir else None


def _exists(p: Path) -> bool:
    return os.path.lexists(p)


def check_output_path(out_path: Path, force: bool, ours: Recogniser = nothing_is_ours) -> None:
    """``out_path`` may be written: its folder exists and is writable; if it exists, only with ``force`` and
    only if it is recognisably ours (:func:`foreign_reason`). Otherwise an :class:`OutputError`."""
    out_path = Path(out_path)
    try:
        os.lstat(out_path)
        taken = True
    except (FileNotFoundError, NotADirectoryError):
        taken = False
    except OSError as e:  # a name too long for the file system, a loop of links, no permission...
        raise OutputError(f"{_short(out_path)}: cannot be an output path: {e.strerror or e}") from None
    if taken:
        why = foreign_reason(out_path, ours)
        if why is not None:
            raise OutputError(f"{out_path}: already exists and is not an artifact of xlstm-export ({why}); "
                              f"--force replaces only those: remove it or choose another path")
        if not force:
            raise OutputError(f"{out_path}: already exists; pass --force to replace it")
    parent = out_path.parent
    try:
        st = os.stat(parent)
    except (FileNotFoundError, NotADirectoryError):
        raise OutputError(f"{out_path}: parent directory {parent} does not exist") from None
    except OSError as e:
        raise OutputError(f"{_short(out_path)}: cannot reach its folder: {e.strerror or e}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise OutputError(f"{out_path}: {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"{out_path}: directory {parent} is not writable")


# -- renames that do not replace / that swap ------------------------------------------------------------
def _load_libc():
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    except OSError:
        return None


_LIBC = _load_libc()
_RENAMEAT2 = getattr(_LIBC, "renameat2", None) if sys.platform.startswith("linux") else None
_RENAMEX_NP = getattr(_LIBC, "renamex_np", None) if sys.platform == "darwin" else None
if _RENAMEAT2 is not None:
    _RENAMEAT2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    _RENAMEAT2.restype = ctypes.c_int
if _RENAMEX_NP is not None:
    _RENAMEX_NP.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_uint]
    _RENAMEX_NP.restype = ctypes.c_int
_AT_FDCWD = -100
_NOREPLACE, _EXCHANGE = "noreplace", "exchange"
_FLAGS = {"linux": {_NOREPLACE: 1, _EXCHANGE: 2}, "darwin": {_NOREPLACE: 0x4, _EXCHANGE: 0x2}}


def _rename_flag(src: Path, dst: Path, how: str) -> bool:
    """rename with RENAME_NOREPLACE / RENAME_EXCHANGE; False where the system or file system has no
    such rename (the caller falls back); an OSError (FileExistsError for NOREPLACE) otherwise."""
    if _RENAMEAT2 is not None:
        rc = _RENAMEAT2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), _FLAGS["linux"][how])
    elif _RENAMEX_NP is not None:
        rc = _RENAMEX_NP(os.fsencode(src), os.fsencode(dst), _FLAGS["darwin"][how])
    else:
        return False
    if rc == 0:
        return True
    e = ctypes.get_errno()
    if e in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(e, os.strerror(e), str(src), None, str(dst))


def _move_noreplace(src: Path, dst: Path) -> None:
    """Move ``src`` to ``dst`` only if nothing is at ``dst`` (FileExistsError otherwise), atomically."""
    if _rename_flag(src, dst, _NOREPLACE):
        return
    if not src.is_dir():
        try:
            os.link(src, dst)  # fails with EEXIST if dst exists; never replaces
        except FileExistsError:
            raise
        except OSError as e:
            if e.errno not in _UNSUPPORTED | {errno.EMLINK}:
                raise
        else:
            os.unlink(src)
            return
        fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # reserve the name, then replace it
        os.close(fd)
    else:
        os.mkdir(dst, 0o700)  # reserve the name; a directory may replace an empty one
    try:
        os.replace(src, dst)
    except BaseException:
        with contextlib.suppress(OSError):
            (os.rmdir if src.is_dir() else os.unlink)(dst)
        raise


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    elif _exists(p):
        with contextlib.suppress(OSError):
            p.unlink()


# -- the private folder -----------------------------------------------------------------------------------
def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, not ours
        return True
    return True


def _private_name(parent: Path, first: str) -> str:
    tail = f"{_TAG}-{os.getpid()}-{secrets.token_hex(8)}"
    name = f".{first}.{tail}"
    return name if len(os.fsencode(name)) <= _NAME_MAX else f".{tail}"


def _make_private(parent: Path, names: Sequence[str]) -> Path:
    for _ in range(8):
        d = parent / _private_name(parent, names[0])
        try:
            os.mkdir(d, 0o700)
        except FileExistsError:
            continue
        try:
            (d / "new").mkdir()
            with open(d / _MARKER, "x", encoding="utf-8") as f:
                json.dump({"tool": "xlstm-export", "pid": os.getpid(), "outputs": list(names)}, f)
        except BaseException:
            shutil.rmtree(d, ignore_errors=True)
            raise
        return d
    raise OutputError(f"{_short(parent / names[0])}: cannot create a temporary folder beside it")


def scratch_for(tmp: Path) -> Path:
    """A folder for a writer's own temporaries while it writes ``tmp`` (the path :func:`atomic_output`
    gave): in the private folder, on the output's file system, removed with it."""
    d = Path(tmp).parent.parent / "scratch"
    d.mkdir(exist_ok=True)
    return d


def _stale_private(p: Path) -> Optional[dict]:
    """The marker of a private folder left by a dead process of ours, else None (not ours, or alive)."""
    m = _PRIVATE.match(p.name)
    if not m or int(m.group(1)) == os.getpid() or _alive(int(m.group(1))):
        return None
    try:
        st = os.lstat(p)
        if not stat.S_ISDIR(st.st_mode) or (hasattr(os, "geteuid") and st.st_uid != os.geteuid()):
            return None
        mst = os.lstat(p / _MARKER)
        if not stat.S_ISREG(mst.st_mode) or mst.st_size > 1 << 16:
            return None
        marker = json.loads((p / _MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if (not isinstance(marker, dict) or marker.get("tool") != "xlstm-export" or marker.get("pid") != int(m.group(1))
            or not isinstance(marker.get("outputs"), list)):
        return None
    return marker


def _clean_stale(parent: Path) -> None:
    """Private folders of killed exports into ``parent``: an artifact a killed replace had moved aside is
    put back if its place is empty; the folder is then removed. Anything else is left alone."""
    try:
        entries = sorted(parent.iterdir())
    except OSError:
        return
    for p in entries:
        marker = _stale_private(p)
        if marker is None:
            continue
        keep = False
        for name in marker["outputs"]:
            if not isinstance(name, str) or "/" in name or name in ("", ".", ".."):
                continue
            old = p / "old" / name
            if _exists(old) and not _exists(parent / name):
                try:
                    _move_noreplace(old, parent / name)
                except OSError:
                    keep = True  # never delete the only copy
        if not keep:
            shutil.rmtree(p, ignore_errors=True)


# -- committing -----------------------------------------------------------------------------------------
def _is_write_error(e: OSError, private: Path) -> bool:
    if e.errno in WRITE_ERRNOS:
        return True
    return any(f is not None and str(f).startswith(str(private)) for f in (e.filename, e.filename2))


@contextlib.contextmanager
def _signals_held():
    """SIGINT/SIGTERM that arrive during the block take effect after it (as KeyboardInterrupt), so a signal
    never splits what the block does. Python-level handlers, not a signal mask: in a process with other
    threads (torch's, onnxruntime's) the kernel may hand a signal to any of them, and Python runs its
    handler in the main thread whichever received it. Outside the main thread: a no-op."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    got: List[int] = []
    old = {}
    try:
        for s in (signal.SIGINT, signal.SIGTERM):
            old[s] = signal.signal(s, lambda signum, frame: got.append(signum))
    except (ValueError, OSError):  # no signals here (an embedded interpreter)
        pass
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)
    if got:
        raise KeyboardInterrupt(f"signal {got[0]}")


@dataclass
class _Done:
    out: Path
    tmp: Path
    old: Optional[Path] = None  # where the replaced artifact is now (tmp after a swap, private/old/... else)
    swapped: bool = False


def _commit(tmp: Path, out_path: Path, force: bool, ours: Recogniser) -> _Done:
    """Move the finished ``tmp`` onto ``out_path``: exclusively, or with ``force`` replacing what is there if
    it is ours."""
    for _ in range(4):
        try:
            _move_noreplace(tmp, out_path)
            return _Done(out_path, tmp)
        except FileExistsError:
            if not force:
                raise OutputError(f"{out_path}: already exists (written while this export ran); pass --force "
                                  f"to replace it; nothing was written") from None
        why = foreign_reason(out_path, ours)
        if why == "missing":
            continue  # gone meanwhile: try the exclusive move again
        if why is not None:
            raise OutputError(f"{out_path}: already exists and is not an artifact of xlstm-export ({why}); "
                              f"--force replaces only those: remove it or choose another path")
        try:
            if _rename_flag(tmp, out_path, _EXCHANGE):
                return _Done(out_path, tmp, old=tmp, swapped=True)
        except FileNotFoundError:
            continue
        old = tmp.parent.parent / "old" / out_path.name
        old.parent.mkdir(exist_ok=True)
        if not tmp.is_dir() and not out_path.is_dir():
            with contextlib.suppress(OSError):
                os.link(out_path, old, follow_symlinks=False)  # a copy to put back on rollback
            os.replace(tmp, out_path)  # a file replaces a file in one step
            return _Done(out_path, tmp, old=old if _exists(old) else None)
        try:
            os.replace(out_path, old)
        except FileNotFoundError:
            continue
        try:
            _move_noreplace(tmp, out_path)
        except BaseException:
            with contextlib.suppress(OSError):
                _move_noreplace(old, out_path)
            raise
        return _Done(out_path, tmp, old=old)
    raise OutputError(f"{out_path}: kept changing while the finished artifact was moved into place; nothing was written")


def _undo(d: _Done) -> None:
    """Put back what ``d`` replaced (or remove what it added); best effort, used only on failure."""
    with contextlib.suppress(OSError):
        if d.swapped:
            _rename_flag(d.tmp, d.out, _EXCHANGE)
        elif d.old is not None:
            if d.out.is_dir() and not d.out.is_symlink():
                os.replace(d.out, d.tmp)
            os.replace(d.old, d.out)
        else:
            os.replace(d.out, d.tmp)  # the new one goes back into the private folder, removed with it


@contextlib.contextmanager
def atomic_outputs(out_paths: Sequence[str | os.PathLike], force: bool = False,
                   ours: Recogniser = nothing_is_ours) -> Iterator[List[Path]]:
    """Temporaries for several outputs written together (an ONNX model and its data, a package and its
    Swift snippet, a report's files): after the block, all are moved into place (the first, the artifact,
    last) or, if one cannot be, none is (those already moved are rolled back). ``ours`` says which existing
    outputs ``force`` may replace (:func:`foreign_reason`)."""
    outs = [Path(p) for p in out_paths]
    parents = {p.parent for p in outs}
    if len(parents) != 1 or len({p.name for p in outs}) != len(outs):
        raise OutputError(f"{_short(outs[0])}: outputs written together must be distinct names in one folder")
    parent = outs[0].parent
    _clean_stale(parent)  # first: it may put back an artifact a killed replace had moved aside
    for p in outs:
        check_output_path(p, force, ours)

    def on_term(signum, frame):  # turn SIGTERM into an exception so the cleanup below runs
        raise KeyboardInterrupt(f"signal {signum}")

    old = None
    try:
        old = signal.signal(signal.SIGTERM, on_term)
    except ValueError:  # not the main thread
        old = None
    private: Optional[Path] = None
    done: List[_Done] = []
    try:
        try:
            with _signals_held():  # made and known to the cleanup below in one step
                private = _make_private(parent, [p.name for p in outs])
        except OSError as e:
            raise OutputError(f"{_short(outs[0])}: cannot create a temporary folder in {_short(parent)}: "
                              f"{e.strerror or e}") from None
        tmps = [private / "new" / p.name for p in outs]
        try:
            yield tmps
        except OSError as e:
            if _is_write_error(e, private):
                raise OutputError(f"{_short(outs[0])}: cannot write: {e.strerror or e}; nothing was written") from None
            raise
        for p, t in zip(outs, tmps):
            if not _exists(t):
                raise OutputError(f"{p}: the exporter wrote nothing")
        try:
            with _signals_held():
                for p, t in reversed(list(zip(outs, tmps))):
                    done.append(_commit(t, p, force, ours))
                done.clear()  # all in place: nothing to roll back
        except OSError as e:
            raise OutputError(f"{_short(outs[0])}: cannot move the finished artifact into place: "
                              f"{e.strerror or e}; nothing was written") from None
    finally:
        with _signals_held():
            for d in reversed(done):
                _undo(d)
            if private is not None:
                shutil.rmtree(private, ignore_errors=True)
        if old is not None:
            signal.signal(signal.SIGTERM, old)


@contextlib.contextmanager
def atomic_output(out_path: str | os.PathLike, force: bool = False,
                  ours: Recogniser = nothing_is_ours) -> Iterator[Path]:
    """The temporary for one output (see :func:`atomic_outputs`)."""
    with atomic_outputs([out_path], force, ours) as (tmp,):
        yield tmp


def room_at(folder: str | os.PathLike) -> str:
    """What a failed write there may have run out of: the bytes free on its file system, and the process's
    file size limit where there is one ("1.2 GB free there; file size limit 500000 bytes")."""
    parts = []
    with contextlib.suppress(OSError):
        parts.append(f"{shutil.disk_usage(folder).free / 1e9:.3g} GB free there")
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
        if soft != resource.RLIM_INFINITY:
            parts.append(f"file size limit {soft} bytes")
    except (ImportError, OSError, ValueError):
        pass
    return "; ".join(parts)


def normalise_modes(path: Path) -> None:
    """Give ``path`` (a file or a folder tree) the modes a new file gets under the current umask (0644 files,
    0755 folders under umask 022): writers that build in private temporary folders (coremltools) leave
    0600 / 0700, which other users cannot read."""
    umask = current_umask()
    fmode, dmode = 0o666 & ~umask, 0o777 & ~umask
    path = Path(path)
    items = [path] if not path.is_dir() else [path, *path.rglob("*")]
    for p in items:
        if p.is_symlink():
            continue
        os.chmod(p, dmode if p.is_dir() else fmode)


def current_umask() -> int:
    try:  # Linux >= 4.7: read it without changing it
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@dataclass(frozen=True)
class Artifact:
    """What every emitter returns: the artifact, every file it wrote (the artifact first: ONNX external
    data, the Core ML Swift snippet follow), its I/O contract and the emitter's figures."""

    path: Path
    kind: str  # the artifact kind (``targets.KINDS``)
    precision: str
    contract: dict
    files: tuple = ()
    stats: dict = field(default_factory=dict)

    def __post_init__(self):
        if not self.files:
            object.__setattr__(self, "files", (self.path,))


def describe_artifact(art) -> str:
    """The line an export prints: files, kind, precision, batch, states, the emitter's key figures, and the
    text files the artifact carries (or that it takes token ids only)."""
    c = art.contract
    B = c["inputs"][0]["shape"][0]
    n, extra = len(c["states"]), len(c.get("extra_states", []))
    parts = [art.kind, art.precision, f"batch {B}",
             f"{n} states" + (f" in {n + extra} fp16 buffers" if extra else "")]
    for key, label in (("nodes", "nodes"), ("ops_per_step", "ops per step")):
        if key in art.stats:
            parts.append(f"{art.stats[key]} {label}")
    text = c.get("text") or {}
    if text.get("tokenizer"):
        ids = [f"{k} {v}" for k, v in (("bos", text.get("bos_token_id")), ("eos", text.get("eos_token_id") or None),
                                       ("pad", text.get("pad_token_id"))) if v is not None]
        parts.append("text: " + " + ".join(f["name"] for f in text["files"]) + (f" ({', '.join(ids)})" if ids else ""))
    else:  # a checkpoint without a tokenizer still exports, and the line says so
        parts.append("no tokenizer.json in the checkpoint: token ids only")
    return f"wrote {' + '.join(str(f) for f in art.files)} ({'; '.join([', '.join(parts[:-1]), parts[-1]])})"


def bytes_on_disk(files: Sequence[Path]) -> int:
    """Bytes on disk of ``files`` (a folder: every file under it); a target's ``files_of(path)`` lists an
    artifact's."""
    total = 0
    for path in map(Path, files):
        if path.is_dir():
            total += sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        elif path.exists():
            total += path.stat().st_size
    return total
