"""TorchScript emitter: the reference model, scripted whole (``torch.jit.script``, not traced).

    graph --build_model(cpu, precision)--> ReferenceModel --torch.jit.script--> model.pt
                                                                  + extra file "xlstm_export.io"

The saved module has the reference model's four methods, for both families:

    forward(input_ids (B, T) int64) -> logits (B, T, V) float32          from an empty state
    init_states(batch_size) -> List[Tensor]                              zeros, contract order, fp32
    forward_with_states(input_ids, states) -> (logits, states)           any T, carries the context
    generate_greedy(input_ids, max_new_tokens) -> (B, max_new_tokens)     new token ids only

Unlike the ONNX and Core ML emitters there is no lowering per block kind (DESIGN #5's registry): the
scripted module *is* the reference model, so it computes exactly the reference's math and adding a block
kind to the reference adds it here. Weights are stored in ``precision`` (fp32 / fp16 / bf16); the cell
math and the states stay fp32. The contract's state ``input``/``output`` is the state's index in the
``states`` list (``"states[3]"``).

Byte-reproducible: TorchScript serialises tensors and most code in a fixed order, but (a) its
``*.debug_pkl`` records hold the absolute paths of the Python sources (this checkout's, torch's), and
(b) it declares a module's ``__constants__`` (``Linear.in_features``/``out_features``) in the order of a
Python ``set``, which changes with the interpreter's string hash seed. So the archive is saved to a temporary
file (beside the output, in the private folder of :func:`~xlstm_export.outputs.atomic_output`) and re-written
record by record with torch's own zip writer: without the debug records (what is lost: original-source line
numbers in TorchScript runtime error messages) and with each run of ``Final`` constant declarations sorted by
name (declaration order has no meaning). The writer writes through a file object, so every record is under
``archive/`` whatever the output is called. Same graph and options -> same bytes from a fresh interpreter
(every ``xlstm-export torchscript`` run), whatever its hash seed, the output's name and wherever the tool is
installed.

A full disk: torch's zip writer, writing to a path, dies in ``std::terminate`` (SIGABRT) when a write fails,
so the raw save runs in a forked child on Linux (elsewhere after a check of the room; :func:`save_raw`) and the re-write goes through a file object that
keeps the error instead of raising it into the writer (:class:`_GuardedFile`); both end as one
:class:`~xlstm_export.errors.OutputError` line with nothing left behind. Also within one process: TorchScript's process-wide type registry gives a module class scripted again
with other attributes a mangled name (``Linear`` -> ``___torch_mangle_13.Linear``), so scripting after other
scripting in the same process would name (and group) its classes differently. :func:`script_model` therefore
scripts in a fresh compilation unit with fresh type caches (:func:`isolated_scripting`), as a fresh
interpreter would, and puts torch's back afterwards (clearing the registry instead,
``torch._C._jit_clear_class_registry``, crashes modules scripted earlier). So an archive's code is a function
of the I/O contract alone (profile, precision, batch size) and torch's version: ``torchscript/trust.py``
checks archives against it before loading them, since loading a TorchScript archive runs its code.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import shutil
import signal
import sys
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, Optional, Tuple

try:
    import resource
except ImportError:  # not POSIX
    resource = None

from .. import progress
from ..errors import UnsupportedError
from ..graphs import Graph
from ..graphs.io import IO_KEY, dumps, io_contract
from ..outputs import Artifact, room_at, scratch_for
from ..quiet import quiet
from ..target import Build
from .names import PRECISIONS, TARGET


@dataclass(frozen=True)
class TorchScriptOptions:
    precision: str = "fp32"  # weights; states and cell math stay fp32
    batch_size: int = 1  # only recorded in the contract: the module takes any batch size
    force: bool = False  # replace an existing output


def check_options(options: TorchScriptOptions) -> None:
    if options.precision not in PRECISIONS:
        raise UnsupportedError(f"torchscript: precision must be one of {PRECISIONS}, got {options.precision!r}")
    if not isinstance(options.batch_size, int) or options.batch_size < 1:
        raise UnsupportedError(f"torchscript: batch size must be a positive integer, got {options.batch_size!r}")


def contract_for(graph: Graph, options: TorchScriptOptions) -> dict:
    index = {s.name: i for i, s in enumerate(graph.state_contract(1))}
    return io_contract(
        graph, batch_size=options.batch_size, seq_len=None, ids_dtype="int64", logits_dtype="float32",
        state_dtype="float32", state_input=lambda n: f"states[{index[n]}]",
        state_output=lambda n: f"states[{index[n]}]", target=TARGET, precision=options.precision)


@contextlib.contextmanager
def isolated_scripting() -> Iterator[None]:
    """Script inside a fresh compilation unit with fresh type and function caches, as a fresh interpreter
    would: class names are then not mangled by what this process scripted before, so the archive's
    code is the same in every process. torch's own unit and caches are put back afterwards; modules
    scripted before or inside keep theirs (a module holds its compilation unit). Not thread-safe."""
    import torch
    import torch.jit._recursive as recursive
    import torch.jit._state as state

    saved = (state._python_cu, recursive._python_cu, recursive.concrete_type_store, state._jit_caching_layer,
             state._jit_function_overload_caching, dict(state._script_classes), dict(state._name_to_pyclass))
    state._python_cu = recursive._python_cu = torch._C.CompilationUnit()
    recursive.concrete_type_store = recursive.ConcreteTypeStore()
    state._jit_caching_layer = weakref.WeakKeyDictionary()
    state._jit_function_overload_caching = weakref.WeakKeyDictionary()
    state._script_classes.clear()
    state._name_to_pyclass.clear()
    try:
        yield
    finally:
        (state._python_cu, recursive._python_cu, recursive.concrete_type_store, state._jit_caching_layer,
         state._jit_function_overload_caching, classes, names) = saved
        state._script_classes.clear()
        state._script_classes.update(classes)
        state._name_to_pyclass.clear()
        state._name_to_pyclass.update(names)


def script_model(graph: Graph, precision: str = "fp32"):
    """The scripted reference model of ``graph`` on cpu with weights in ``precision`` (scripted in isolation:
    the same code in every process)."""
    import torch

    from ..reference import build_model

    model = build_model(graph, device="cpu", dtype=precision)
    with quiet(), isolated_scripting():  # torch.jit is deprecated (a warning), still supported
        return torch.jit.script(model)


def build(graph: Graph, options: TorchScriptOptions, out_path: Path) -> Build:
    """The reference model of ``graph`` scripted at ``options.precision``, and the writer of its archive with
    the I/O contract as an extra file; the saved module has ``forward``, ``init_states``,
    ``forward_with_states`` and ``generate_greedy``."""
    check_options(options)
    contract = contract_for(graph, options)
    progress.note("torch.jit.script of the reference model")
    made = {"scripted": script_model(graph, options.precision)}

    def write(tmps):
        raw = scratch_for(tmps[0]) / "raw.pt"  # beside the output (its file system), not in TMPDIR
        save_raw(made.pop("scripted"), raw, {IO_KEY: dumps(contract)})  # the weights live on only in raw.pt
        made["records"] = canonical_archive(raw, tmps[0])

    def done():
        remember_records(contract, made["records"])  # what validating this contract's archives compares against

    return Build((out_path,), contract, TARGET, options.precision, write, done=done)


def emit(graph: Graph, options: TorchScriptOptions, out_path: str | os.PathLike) -> Artifact:
    """Script the reference model of ``graph`` and save it at ``out_path`` (atomically, no clobber without
    ``options.force``): the export pipeline of :class:`~xlstm_export.target.Target` over :func:`build`."""
    from .target import TARGET as _TARGET

    return _TARGET.write(graph, options, out_path)


def save_raw(scripted, raw: Path, extra_files: dict) -> None:
    """``torch.jit.save`` of ``scripted`` to ``raw``. On Linux it runs in a forked child (which shares the
    weights' memory, copy-on-write): a write that fails there (a full disk, a file size limit) ends in
    ``std::terminate`` inside torch's zip writer (its destructor throws while the first error unwinds), a
    SIGABRT that no handler can catch. The parent sees the child fail and raises an OSError naming ``raw``
    (so :func:`~xlstm_export.outputs.atomic_output` makes it one line). Elsewhere (macOS: a fork after the
    Objective-C runtime started may crash the child) the save runs here, after a check that the file
    system has room for the raw and the final archive."""
    import torch

    if not sys.platform.startswith("linux") or not hasattr(os, "fork"):
        need = 2 * sum(t.numel() * t.element_size() for t in scripted.state_dict().values()) + (1 << 20)
        free = shutil.disk_usage(raw.parent).free
        if free < need:
            raise OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)}: the export needs about {need} bytes "
                                        f"there, {free} are free", str(raw))
        with quiet():
            torch.jit.save(scripted, str(raw), _extra_files=extra_files)
        return
    r, w = os.pipe()
    with quiet():  # Python >= 3.12 warns of a fork of a threaded process
        pid = os.fork()
    if pid == 0:  # the child: save, say why not, never return
        code = 1
        try:
            os.close(r)
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, signal.SIG_DFL)
            try:
                with quiet():  # std::terminate's message is not for the user
                    torch.jit.save(scripted, str(raw), _extra_files=extra_files)
                code = 0
            except BaseException as e:  # noqa: BLE001 - reported to the parent, which decides
                os.write(w, " ".join(str(e).split())[:500].encode("utf-8", "replace"))
        finally:
            os._exit(code)
    os.close(w)
    try:
        chunks = []
        while True:
            b = os.read(r, 4096)
            if not b:
                break
            chunks.append(b)
        _, status = os.waitpid(pid, 0)
    except BaseException:  # interrupted: the child goes too
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        raise
    finally:
        os.close(r)
    if status == 0:
        return
    msg = b"".join(chunks).decode("utf-8", "replace")
    how = (f"killed by {signal.Signals(os.WTERMSIG(status)).name}" if os.WIFSIGNALED(status)
           else msg or f"exit status {os.waitstatus_to_exitcode(status)}")
    written = raw.stat().st_size if raw.exists() else 0
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0] if resource is not None else None
    if limit not in (None, getattr(resource, "RLIM_INFINITY", None)) and written >= limit:
        code = errno.EFBIG
    elif shutil.disk_usage(raw.parent).free < (1 << 20) or "No space" in msg:
        code = errno.ENOSPC
    else:
        code = errno.EIO
    raise OSError(code, f"{os.strerror(code)}: torch.jit.save stopped after {written} bytes ({how}; "
                        f"{room_at(raw.parent)})", str(raw))


class _GuardedFile:
    """The file torch's zip writer writes through: a failing write is never raised into the writer (an
    exception there ends in ``std::terminate``); the first OSError is kept, later writes are skipped, and
    :meth:`close` raises it."""

    def __init__(self, path: Path):
        self.path = str(path)
        self.f = open(path, "wb")
        self.error: OSError | None = None

    def _keep(self, e: OSError) -> None:  # named after the file, so that it reads as an output error
        if self.error is None:
            self.error = OSError(e.errno, e.strerror or str(e), self.path)

    def write(self, data) -> int:
        n = memoryview(data).nbytes
        if self.error is None:
            try:
                self.f.write(data)
            except OSError as e:
                self._keep(e)
            except ValueError:  # closed: a writer finalised by its destructor after a failure
                pass
        return n

    def seek(self, offset: int, whence: int = 0) -> int:
        if self.error is None:
            try:
                return self.f.seek(offset, whence)
            except OSError as e:
                self._keep(e)
            except ValueError:
                pass
        return 0

    def close(self) -> None:
        try:
            self.f.close()
        except OSError as e:
            self._keep(e)
        if self.error is not None:
            raise self.error


_FINAL = re.compile(rb"^ +\w+ : Final\[.*\] = .*$")


def _sort_final_runs(code: bytes) -> bytes:
    lines = code.split(b"\n")
    out, run = [], []
    for line in lines + [b""]:
        if _FINAL.match(line):
            run.append(line)
            continue
        out.extend(sorted(run))
        run = []
        out.append(line)
    return b"\n".join(out[:-1])


# Records torch's writer adds itself (canonical_archive drops the source's): byteorder, and an id derived
# from the content (it changes with the weights, and nothing reads it as code).
WRITER_RECORDS = ("byteorder", ".data/serialization_id")
DATA_RECORD = re.compile(r"^data/\d+$")  # tensor storages: weights, whose values validation measures
Digest = Tuple[int, Optional[str]]  # (size, sha256 hex; None for data records and the serialization id)


def record_digest(name: str, rec: bytes) -> Digest:
    """A record's size and, unless it holds weights or the serialization id, its sha256."""
    if DATA_RECORD.match(name) or name == ".data/serialization_id":
        return len(rec), None
    return len(rec), hashlib.sha256(rec).hexdigest()


def canonical_records(reader) -> Iterator[Tuple[str, bytes]]:
    """``(name, bytes)`` of every record the canonical archive copies from a raw one: no ``*.debug_pkl``
    (source paths), none of :data:`WRITER_RECORDS`, ``Final`` declarations sorted in code records."""
    for name in reader.get_all_records():
        if name.endswith(".debug_pkl") or name in WRITER_RECORDS:
            continue
        rec = reader.get_record(name)
        if name.startswith("code/") and name.endswith(".py"):
            rec = _sort_final_runs(rec)
        yield name, rec


def canonical_archive(src: Path, dst: Path) -> Dict[str, Digest]:
    """Re-write the TorchScript zip ``src`` to ``dst`` without ``*.debug_pkl`` records and with sorted
    ``Final`` declarations, by torch's own reader and writer (64-byte aligned records; it adds
    ``byteorder`` and ``serialization_id`` itself, the latter derived from the content). File to file,
    one record at a time: export memory stays at about one copy of the weights. Returns every record's
    :func:`record_digest` (those the writer adds included)."""
    import torch

    reader = torch._C.PyTorchFileReader(str(src))
    digests: Dict[str, Digest] = {}
    out = _GuardedFile(dst)
    try:
        writer = torch._C.PyTorchFileWriter(out)  # through a file object: its records are under "archive/"
        for name, rec in canonical_records(reader):
            writer.write_record(name, rec, len(rec))
            digests[name] = record_digest(name, rec)
            del rec
        writer.write_end_of_file()
        del writer, reader
    finally:
        out.close()  # raises the first failed write (a full disk: ENOSPC) as an OSError
    back = torch._C.PyTorchFileReader(str(dst))
    for name in WRITER_RECORDS:
        digests[name] = record_digest(name, back.get_record(name))
    del back
    return digests


# contract JSON (profile, precision, batch size) -> the record digests of the archive this process writes
# for it; filled by emit and by torchscript.trust (which scripts the model again when it is missing)
_RECORDS: Dict[str, Dict[str, Digest]] = {}


def remember_records(contract: dict, records: Dict[str, Digest]) -> None:
    import torch

    _RECORDS[f"{torch.__version__}\n{dumps(contract)}"] = dict(records)


def remembered_records(contract: dict) -> Optional[Dict[str, Digest]]:
    import torch

    return _RECORDS.get(f"{torch.__version__}\n{dumps(contract)}")
