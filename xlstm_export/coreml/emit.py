"""Core ML emitter: a hand-built, stateful MIL decode program (iOS18), saved as an ``.mlpackage``.

    graph --lowering.step over MILOps (backend.py)--> MIL Function
          --ct.convert(prog, mlprogram, iOS18)--> spec + weight.bin --metadata, Swift snippet--> .mlpackage

The program is one decode step::

    input_ids (B, 1) int32 ──> logits (B, 1, V) float32
    states: one fp16 ``StateType`` per contract state (``blocks_3_mlstm_c`` ...), read with
            ``read_state``, written with ``coreml_update_state``; zeros (a fresh ``makeState()``) are
            the empty context.

Not ``ct.convert`` of a traced model: the MIL is built op by op from the graph, with the trained
weights as constants (one tensor loaded at a time). ``ct.convert`` only runs coremltools' default
MIL passes and serialises; ``compute_precision`` is FLOAT32 there because every op already carries
the dtype the precision policy (``lowering/precision.py``) gave it; no automatic fp16 rewrite happens.

Reproducible: op names are explicit (coremltools' global name counters are reset for the few ops its
passes add), the spec is serialised deterministically, the conversion date is dropped, and the
package's ``Manifest.json`` identifiers are UUIDs derived from the content's hash, so the same graph
and options give byte-identical files.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ._ct import ct as _ct
from .. import __version__, progress
from ..errors import OutputError, UnsupportedError, first_line
from ..graphs import Graph
from ..graphs.io import IO_KEY, dumps, io_contract, source_id
from ..lowering import LOW_SCALE, PrecisionPolicy, check_prefill_chunk, core_ml_name, prefill, step
from .policy import policy_for
from ..lowering.inventory import weight_specs
from ..lowering.quant import Compression, check_blocks
from ..contract import judged_precision
from ..quiet import quiet
from ..outputs import WRITE_ERRNOS, Artifact, normalise_modes, room_at, scratch_for
from ..target import Build
from .target import swift_path_for
from .swift import shape_str
from .backend import MILOps, stored_states
from .names import COMPUTE_UNITS, PREFILL_FUNCTION, TARGET

SPEC_PATH = ("Data", "com.apple.CoreML", "model.mlmodel")
WEIGHTS_PATH = ("Data", "com.apple.CoreML", "weights")
# 16 bytes of a fixed namespace for the manifest's content-derived UUIDs
_MANIFEST_NS = uuid.UUID("6f1c1a52-8c55-4d0b-9a43-1f1c7e0c0de5")

ROLE_TEXT = {
    "c": "mLSTM matrix memory C",
    "n": "mLSTM normaliser n",
    "m": "mLSTM log-domain stabilizer m (C and n are stored scaled by exp(-m))",
    "conv": "causal-conv ring buffer: the last K inputs of the block's conv, oldest first",
    "slstm": "sLSTM state, rows y, c, n, m",
}


@dataclass(frozen=True)
class CoreMLOptions:
    batch_size: int = 1  # fixed: Core ML states have a fixed shape, batch included
    precision: str = "fp16"  # "fp16" | "fp32" (coreml/policy.py)
    compute_units: str = "all"  # recorded in the metadata and used by the macOS runner; not a package property
    force: bool = False  # replace an existing output
    swift: bool = True  # write the Swift package next to the package (<stem>-swift/)
    author: Optional[str] = None
    license: Optional[str] = None
    version: Optional[str] = None
    description: Optional[str] = None
    policy: Optional[PrecisionPolicy] = None  # measurements only (benchmarks/): replaces the named policy
    prefill_chunk: Optional[int] = None  # T: add the ``prefill`` function of T tokens (same states and weights)
    last_logits_only: bool = False  # the prefill function returns the chunk's last logits only
    compression: Optional[Compression] = None  # --quantize: compressed weights (lowering/quant.py)


def precision_policy(options: CoreMLOptions) -> PrecisionPolicy:
    return policy_for(options.precision, options.policy)


def check_options(options: CoreMLOptions) -> PrecisionPolicy:
    if options.last_logits_only and options.prefill_chunk is None:
        raise UnsupportedError("coreml: --last-logits-only applies to the prefill function; add --prefill-chunk T")
    if not isinstance(options.batch_size, int) or isinstance(options.batch_size, bool) or options.batch_size < 1:
        raise UnsupportedError(f"coreml: batch size must be a positive integer, got {options.batch_size!r}")
    if options.compression is not None and options.compression.method == "gptq" \
            and not options.compression.hessians:
        raise UnsupportedError("coreml: --quant-method gptq needs calibration (api.calibrate or --calibration)")
    if options.compute_units not in COMPUTE_UNITS:
        raise UnsupportedError(f"coreml: compute units must be one of {COMPUTE_UNITS}, "
                               f"got {options.compute_units!r}")
    return precision_policy(options)


def contract_for(graph: Graph, options: CoreMLOptions) -> dict:
    """The I/O contract: ``input`` of a state is its Core ML state name, ``output`` is null (updated in place).

    ``extra_states`` lists the Core ML states that are not contract states: the low parts of states
    stored split (value of the contract state ``part_of`` = its high part + this one / ``scale``).
    """
    contract = io_contract(
        graph, batch_size=options.batch_size, seq_len=1, ids_dtype="int32", logits_dtype="float32",
        state_dtype="float16", state_input=core_ml_name, state_output=lambda n: None, target=TARGET,
        precision=options.precision)
    if options.prefill_chunk is not None:
        contract["prefill"] = {"function": PREFILL_FUNCTION, "chunk": options.prefill_chunk,
                               "last_logits_only": bool(options.last_logits_only)}
    if options.compression is not None:
        contract["quantize"] = options.compression.to_json()
    contract["extra_states"] = [
        {"name": key, "part_of": of, "part": "low", "scale": LOW_SCALE, "input": cm, "shape": list(shape),
         "dtype": "float16"}
        for key, cm, shape, of in stored_states(graph, options.batch_size, precision_policy(options))
        if of is not None]
    return contract


# -- building the program ----------------------------------------------------------------------
def build_program(graph: Graph, policy: PrecisionPolicy, batch_size: int, prefill_chunk: Optional[int] = None,
                  last_logits_only: bool = False, compression: Optional[Compression] = None):
    """The MIL program: function ``main``, one decode step, and with ``prefill_chunk`` T the function
    ``prefill`` (input_ids (B, T) -> logits (B, T, V), or (B, 1, V) with ``last_logits_only``) over the same
    states, its weights the same constants (one blob each on disk). Returns the program and the step's
    ops backend."""
    ct = _ct()
    from coremltools.converters.mil.mil import Builder as mb
    from coremltools.converters.mil.mil import Function, Program, types

    # coremltools names unnamed ops from global counters; every op here is named, and resetting the
    # counters makes the names of the few ops its passes add the same in every export.
    mb.name_count.clear()
    stored = stored_states(graph, batch_size, policy)
    prog = Program()
    ops = None
    for fname, T in (("main", 1), (PREFILL_FUNCTION, prefill_chunk)):
        if T is None:
            continue
        specs = {"input_ids": mb.TensorSpec((batch_size, T), types.int32)}
        for _, cm, shape, _ in stored:
            specs[cm] = mb.StateTensorSpec(shape, types.fp16)
        with Function(specs, opset_version=ct.target.iOS18) as func:
            states = {key: func.inputs[cm] for key, cm, _, _ in stored}
            f_ops = MILOps(graph, policy, batch_size, states, tokens=T, prepared=ops.prepared if ops else None,
                           compression=compression)
            if fname == "main":
                logits = step(f_ops, func.inputs["input_ids"])
                ops = f_ops
            else:
                logits = prefill(f_ops, func.inputs["input_ids"], last_logits_only)
            func.set_outputs([logits])
        prog.add_function(fname, func)
    if prefill_chunk is not None:
        prog.default_function_name = "main"
        prog.export_as_multifunction = True
    return prog, ops


def convert(prog, workdir: Optional[Path] = None, where: str = "the Core ML package"):
    """coremltools' default MIL passes + serialisation (no fp16 rewrite: dtypes are explicit).

    coremltools writes the weights, the spec and the package it returns to temporary folders; with
    ``workdir`` they go there (``tempfile.tempdir`` for the call: the output's file system, not TMPDIR,
    removed with the output's private folder). A write that fails there (a full disk: coremltools' blob
    writer says "[MIL FileWriter]: Unknown error ...") is an :class:`OutputError` naming ``where``."""
    ct = _ct()
    failed = None
    saved = tempfile.tempdir
    try:
        if workdir is not None:
            tempfile.tempdir = str(workdir)
        with quiet():  # coremltools' per-pass progress bars
            return ct.convert(prog, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS18,
                              compute_precision=ct.precision.FLOAT32, skip_model_load=True)
    except OSError as e:
        if e.errno not in WRITE_ERRNOS and not _in(e.filename, workdir):
            raise
        failed = f"{e.strerror or first_line(e)}"
    except RuntimeError as e:  # the blob writer and the package writer are C++: no errno
        text = first_line(e)
        if not any(k in text for k in ("FileWriter", "write", "No space", "too large", "ModelPackage")):
            raise
        failed = text[:300]
    finally:
        tempfile.tempdir = saved
    # raised here, outside the handler: the failed call's frames (and coremltools' temporary folders in
    # them) are released first
    room = room_at(workdir) if workdir is not None and Path(workdir).exists() else ""
    raise OutputError(f"{where}: cannot write: coremltools failed writing the package ({failed})"
                      + (f"; {room}" if room else "") + "; nothing was written")


def _in(filename, folder) -> bool:
    return filename is not None and folder is not None and str(filename).startswith(str(folder))


# -- metadata ----------------------------------------------------------------------------------
def checkpoint_license(graph: Graph) -> Optional[str]:
    """The license a checkpoint declares in its folder's ``README.md`` front matter (``license: apache-2.0``,
    as Hugging Face model cards do); None when it declares none."""
    if not graph.source:
        return None
    src = Path(graph.source)
    card = (src if src.is_dir() else src.parent) / "README.md"
    from ..errors import XlstmExportError
    from ..frontends import open_regular

    try:  # a regular file only (a FIFO or a device there is skipped, never read), its head only
        with open_regular(card, "model card") as f:
            text = f.read(20000).decode("utf-8", errors="replace")
    except (OSError, XlstmExportError):
        return None
    if not text.startswith("---"):
        return None
    for line in text.splitlines()[1:]:
        if line.strip() == "---":
            break
        key, _, value = line.partition(":")
        if key.strip() == "license" and value.strip():
            return value.strip().strip("'\"")[:200]
    return None


def describe(spec, graph: Graph, contract: dict, options: CoreMLOptions) -> None:
    """Author, license, version, description, per-feature descriptions and the I/O contract, in place."""
    cfg = graph.config
    src = source_id(graph)  # never the checkpoint's folder: the same checkpoint anywhere gives the same bytes
    fam = {"large": "xLSTM-Large (mLSTM + FFN blocks)", "hybrid": "xLSTM hybrid (mLSTM/sLSTM blocks)"}[cfg.family]
    md = spec.description.metadata
    md.author = options.author or f"xlstm-export {__version__}"
    md.license = options.license or checkpoint_license(graph) or f"Same license as the source checkpoint ({src})"
    md.versionString = options.version or "1.0"
    how = (f"Functions: 'main', one decode step, and '{PREFILL_FUNCTION}', {options.prefill_chunk} prompt tokens per "
           f"prediction; run a prompt through '{PREFILL_FUNCTION}' in chunks and its remainder through 'main', "
           f"all with the same MLState" if options.prefill_chunk else
           "One decode step. Feed one token per prediction (prompt included) with the same MLState")
    md.shortDescription = options.description or (
        f"{fam}, {len(graph.blocks)} blocks, vocab {cfg.vocab_size}. {how}; a fresh makeState() is an empty "
        f"context. Exported by xlstm-export from an {src}.")
    ud = md.userDefined
    ud.pop("com.github.apple.coremltools.conversion_date", None)  # the date would break reproducibility
    ud[IO_KEY] = dumps(contract)
    ud["xlstm_export.version"] = __version__
    ud["xlstm_export.precision"] = options.precision
    if options.compression is not None:
        ud["xlstm_export.quantize"] = options.compression.label()
    ud["xlstm_export.compute_units"] = options.compute_units
    ud["xlstm_export.family"] = cfg.family
    B = options.batch_size
    by_name = {s["input"]: s for s in contract["states"]}
    low = {s["input"]: s for s in contract.get("extra_states", [])}
    low_of = {s["part_of"]: s["input"] for s in low.values()}
    roles = {s.name: s.role for s in graph.state_contract(B)}
    cap = f" (soft-capped at {cfg.output_logit_soft_cap:g})" if cfg.output_logit_soft_cap else ""
    T = options.prefill_chunk
    functions = list(spec.description.functions) or [spec.description]
    for desc in functions:
        prefill_fn = getattr(desc, "name", "") == PREFILL_FUNCTION
        n_out = 1 if not prefill_fn or options.last_logits_only else T
        for f in desc.input:
            if f.name == "input_ids" and prefill_fn:
                f.shortDescription = (f"int32 {shape_str((B, T))}: the next {T} prompt tokens of each of the {B} "
                                      f"sequence(s); a prompt's last (length mod {T}) tokens go through 'main'.")
            elif f.name == "input_ids":
                f.shortDescription = (f"int32 {shape_str((B, 1))}: the next token id of each of the {B} sequence(s)"
                                      + (f"; prompts enter through 'prefill' in chunks of {T}, the remainder here."
                                         if T else ". Prompts are fed one token per prediction too."))
        for f in desc.output:
            if f.name == "logits":
                what = "the chunk's last position's next-token logits" if prefill_fn and n_out == 1 and T != 1 \
                    else "next-token logits"
                f.shortDescription = f"float32 {shape_str((B, n_out, cfg.vocab_size))}: {what}{cap}."
        for f in desc.state:
            if f.name in by_name:
                s = by_name[f.name]
                text = f"{ROLE_TEXT[roles[s['name']]]} of block {s['name'].split('.')[1]} ({s['name']})"
                if s["name"] in low_of:
                    text += f", high part (value = {f.name} + {low_of[s['name']]} / {LOW_SCALE:g})"
            elif f.name in low:
                s = low[f.name]
                text = (f"low part of {s['part_of']} (value = {core_ml_name(s['part_of'])} + {f.name} / "
                        f"{LOW_SCALE:g}; fp16 alone loses the recurrence over long sequences)")
            else:
                continue
            f.shortDescription = f"{text}, fp16 {shape_str(s['shape'])}. Zeros = empty context."


# -- writing the package -----------------------------------------------------------------------
def _tree_digest(path: Path) -> str:
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for p in files:
        h.update(p.relative_to(path).as_posix().encode() if p != path else b"")
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def write_manifest(pkg: Path) -> None:
    """Rewrite ``Manifest.json`` with item identifiers derived from each item's content (coremltools
    writes random UUIDs), keeping its structure."""
    mpath = pkg / "Manifest.json"
    manifest = json.loads(mpath.read_text())
    items = manifest["itemInfoEntries"]
    root_old = manifest.get("rootModelIdentifier")
    new_items, root_new = {}, None
    for old_id, info in items.items():
        digest = _tree_digest(pkg / "Data" / info["path"])
        new_id = str(uuid.uuid5(_MANIFEST_NS, f"{info['path']}:{digest}")).upper()
        new_items[new_id] = info
        if old_id == root_old:
            root_new = new_id
    manifest["itemInfoEntries"] = dict(sorted(new_items.items()))
    if root_new is not None:
        manifest["rootModelIdentifier"] = root_new
    mpath.write_text(json.dumps(manifest, indent=4, sort_keys=True) + "\n")


def add_text_items(dest: Path, graph: Graph) -> None:
    """The checkpoint's tokenizer / generation files into the package (``Data/com.xlstm-export/text``),
    registered in ``Manifest.json`` as one item of author ``com.xlstm-export`` (the format's way of
    carrying more than the model; coremltools and Core ML load the package as before)."""
    from .target import PACKAGE_AUTHOR, PACKAGE_TEXT_DIR

    if graph.text is None:
        return
    folder = dest.joinpath(*PACKAGE_TEXT_DIR)
    folder.mkdir(parents=True)
    for n, b in graph.text.files:
        (folder / n).write_bytes(b)
    mpath = dest / "Manifest.json"
    manifest = json.loads(mpath.read_text())
    manifest["itemInfoEntries"]["text"] = {"author": PACKAGE_AUTHOR, "description": "Tokenizer and generation "
                                           "config of the source checkpoint (xlstm-export)", "name": "text",
                                           "path": f"{PACKAGE_AUTHOR}/text"}
    mpath.write_text(json.dumps(manifest))


def write_package(mlmodel, spec, dest: Path, graph: Optional[Graph] = None) -> None:
    """The package coremltools made (weights), our spec (serialised deterministically), our manifest, with
    the modes a new file gets under the umask (0644 / 0755 under umask 022; coremltools' temporaries are
    0600 / 0700). The package is moved if it is on ``dest``'s file system (see :func:`convert`'s
    ``workdir``), else copied; either way no file of it keeps a mode or a path from its temporary folder."""
    src = Path(mlmodel.package_path)
    try:
        same_fs = os.stat(src).st_dev == os.stat(dest.parent).st_dev
    except OSError:
        same_fs = False
    if same_fs:
        os.rename(src, dest)
    else:
        _copy_tree(src, dest)
    (dest.joinpath(*SPEC_PATH)).write_bytes(spec.SerializeToString(deterministic=True))
    if graph is not None:
        add_text_items(dest, graph)
    write_manifest(dest)
    normalise_modes(dest)


def _copy_tree(src: Path, dest: Path) -> None:
    """Files and folders only, with fresh modes (``shutil.copytree`` copies 0700 / 0600 along and gathers
    failures into a ``shutil.Error`` without an errno)."""
    dest.mkdir()
    for p in sorted(src.iterdir()):
        if p.is_symlink():
            continue
        if p.is_dir():
            _copy_tree(p, dest / p.name)
        else:
            shutil.copyfile(p, dest / p.name)


def count_ops(spec, function: str = "main") -> dict:
    """Ops of one function of the saved program: total non-const ops per call and counts per type."""
    fn = spec.mlProgram.functions[function]
    block = fn.block_specializations[fn.opset]
    types: dict = {}
    for op in block.operations:
        types[op.type] = types.get(op.type, 0) + 1
    consts = types.get("const", 0)
    return {"ops_per_step": sum(types.values()) - consts, "consts": consts, "op_types": dict(sorted(types.items()))}


def build(graph: Graph, options: CoreMLOptions, out_path: Path) -> Build:
    """The MIL program of ``graph`` (lowered once) and the writer of its ``.mlpackage`` at ``out_path`` and,
    with ``options.swift``, the Swift package beside it (``<stem>-swift/``: Package.swift, Sources/). With
    ``options.prefill_chunk`` the package has a ``prefill`` function beside ``main``. The writer's figures:
    ops per step (and per prefill token) and weight bytes."""
    from .swift import write_swift_package

    policy = check_options(options)
    check_prefill_chunk(graph, options.prefill_chunk, TARGET)
    if options.compression is not None:
        check_blocks(graph, options.compression, weight_specs(graph, policy, options.batch_size))
    swift_path = swift_path_for(out_path) if options.swift else None
    contract = contract_for(graph, options)
    prog, ops = build_program(graph, policy, options.batch_size, options.prefill_chunk, options.last_logits_only,
                              options.compression)
    made = {"prog": prog, "weight_bytes": ops.weight_bytes}
    del ops, prog

    def write(tmps):  # the package and its snippet; coremltools' temporaries in the output's private folder
        progress.note("coremltools: MIL passes and serialisation of the program")
        mlmodel = convert(made.pop("prog"), scratch_for(tmps[0]), str(out_path))
        spec = mlmodel._spec  # the converted spec; described and written below (coremltools' own save
        describe(spec, graph, contract, options)  # would write random manifest UUIDs)
        stats = count_ops(spec)
        stats["weight_bytes"] = made["weight_bytes"]
        if options.prefill_chunk is not None:
            p = count_ops(spec, PREFILL_FUNCTION)
            stats.update(prefill_chunk=options.prefill_chunk, prefill_ops=p["ops_per_step"],
                         prefill_ops_per_token=round(p["ops_per_step"] / options.prefill_chunk, 2))
        progress.note(f"writing {out_path.name}")
        write_package(mlmodel, spec, tmps[0], graph)
        del mlmodel
        if swift_path is not None:
            write_swift_package(tmps[1], contract, out_path.name, options.compute_units)
        return stats

    kind = TARGET if options.prefill_chunk is None else f"{TARGET}-prefill"
    files = (out_path,) if swift_path is None else (out_path, swift_path)
    return Build(files, contract, kind, judged_precision(contract), write)


def emit(graph: Graph, options: CoreMLOptions, out_path: str | os.PathLike) -> Artifact:
    """Write the ``.mlpackage`` of ``graph`` at ``out_path`` (atomically; never over an existing one without
    ``options.force``): the export pipeline of :class:`~xlstm_export.target.Target` over :func:`build`."""
    from .target import TARGET as _TARGET

    return _TARGET.write(graph, options, out_path)


__all__ = ["Artifact", "CoreMLOptions", "COMPUTE_UNITS", "TARGET", "build", "build_program", "contract_for",
           "count_ops", "emit", "precision_policy", "swift_path_for"]
