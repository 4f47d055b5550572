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
file and re-written record by record with torch's own zip writer: without the debug records (what is lost:
original-source line numbers in TorchScript runtime error messages) and with each run of ``Final``
constant declarations sorted by name (declaration order has no meaning). Same graph and options -> same
bytes from a fresh interpreter (every ``xlstm-export torchscript`` run), whatever its hash seed,
wherever the tool is installed and whatever the output file is called (the archive's top folder is
always ``archive/``). Not across emits *within one process*: TorchScript's process-wide type
registry gives a module class scripted again with other attributes a mangled name
(``Linear`` -> ``___torch_mangle_13.Linear``), so an emit after other scripting in the same process names
(and groups) its classes differently -- an equivalent module, other bytes. Clearing that registry
(``torch._C._jit_clear_class_registry``) crashes modules scripted earlier, so the emitter does not.
"""

from __future__ import annotations

import os
import re
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from .. import progress
from ..errors import UnsupportedError
from ..graphs import Graph
from ..graphs.io import IO_KEY, dumps, io_contract
from ..outputs import Artifact, atomic_output, check_output_path
from ..targets import check_suffix

TARGET = "torchscript"
PRECISIONS = ("fp32", "fp16", "bf16")


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


def script_model(graph: Graph, precision: str = "fp32"):
    """The scripted reference model of ``graph`` on cpu with weights in ``precision``."""
    import torch

    from ..reference import build_model

    model = build_model(graph, device="cpu", dtype=precision)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated, still supported
        return torch.jit.script(model)


def emit(graph: Graph, options: TorchScriptOptions, out_path: str | os.PathLike) -> Artifact:
    """Script the reference model of ``graph`` at ``options.precision`` and save it at ``out_path``
    (atomically, no clobber without ``options.force``) with its I/O contract as an extra file; the saved
    module has ``forward``, ``init_states``, ``forward_with_states`` and ``generate_greedy``."""
    import torch

    out_path = Path(out_path)
    check_options(options)
    check_suffix(TARGET, out_path)
    check_output_path(out_path, options.force)  # fail before the (slow) build
    contract = contract_for(graph, options)
    progress.note("torch.jit.script of the reference model")
    scripted = script_model(graph, options.precision)
    with tempfile.TemporaryDirectory(prefix="xlstm-export-ts-") as raw_dir:
        raw = Path(raw_dir) / "raw.pt"
        torch.jit.save(scripted, str(raw), _extra_files={IO_KEY: dumps(contract)})
        del scripted  # the weights live on only in raw.pt now
        with atomic_output(out_path, options.force) as tmp, open(tmp, "wb") as f:
            canonical_archive(raw, f)
    return Artifact(out_path, TARGET, options.precision, contract)


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


def canonical_archive(src: Path, dst: BinaryIO) -> None:
    """Re-write the TorchScript zip ``src`` into the open binary file ``dst`` without ``*.debug_pkl``
    records and with sorted ``Final`` declarations, by torch's own reader and writer (64-byte aligned
    records; it adds ``byteorder`` and ``serialization_id`` itself, the latter derived from the content).
    File to file, one record at a time: export memory stays at about one copy of the weights.

    ``dst`` is a file object, not a path: given a path, torch names the archive's top folder after the
    file (``.model.pt.tmp-123/data.pkl``), so the bytes would depend on the output's name; given a file
    object it writes ``archive/``, as ``torch.save`` to a buffer does, whatever the file is called."""
    import torch

    reader = torch._C.PyTorchFileReader(str(src))
    writer = torch._C.PyTorchFileWriter(dst)
    for name in reader.get_all_records():
        if name.endswith(".debug_pkl") or name in ("byteorder", ".data/serialization_id"):
            continue
        rec = reader.get_record(name)
        if name.startswith("code/") and name.endswith(".py"):
            rec = _sort_final_runs(rec)
        writer.write_record(name, rec, len(rec))
        del rec
    writer.write_end_of_file()
    del writer, reader
