"""Reliability of ``validate`` against the artifact it judges (issue 14, the artifact side), through the CLI:

* a TorchScript archive whose code is not what xlstm-export writes for its contract is refused before
  ``torch.jit.load`` runs any of it (its code never runs), unless ``--trust-artifact``;
* the tolerance is chosen by the artifact's declared target and precision: a declaration that the
  artifact's actual tensors contradict is refused (an fp32 graph claiming fp16, ...), for every kind;
* a contract that disagrees with the artifact (shapes, dtypes, state names, low parts) is one line, exit 2,
  never a traceback, an exit 1 or a pass;
* corrupt, truncated or non-regular artifact files (a FIFO as the artifact, its data file or a package's
  weight.bin; a symbolic link in a package) are one line, exit 2, promptly: never a hang;
* fuzz (hypothesis): random edits of an ONNX contract and of a TorchScript archive's records are refused
  or equal to the original, and an edited archive's code is never loaded.

Every case also checks that nothing was judged: no report is written.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xlstm_export.cli import main
from xlstm_export.errors import XlstmExportError
from xlstm_export.graphs.io import IO_KEY
from xlstm_export.targets import TARGETS, swept_kinds

# the kinds whose artifacts the check verifies down to their tensors (the graph targets and TorchScript; an
# ExecuTorch program's tensors sit inside its backend payload: tests/executorch checks its contract)
KINDS = {n: k for n, k in swept_kinds().items() if k.target != "executorch"}

from fixtures import copy_of
from test_reliability import assert_one_error_line

CKPT = "hf"  # the fixture every artifact here is exported from


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def validate(art: Path, ckpt: Path, *extra):
    return invoke("validate", art, "--checkpoint", ckpt, "--steps", 1, "--prompts", 1, "--prompt-len", 4, *extra)


def assert_refused(res, art: Path, *needles: str) -> str:
    line = assert_one_error_line(res, *needles)
    assert not Path(str(art) + ".report").exists()  # nothing was judged
    return line


@pytest.fixture(scope="module")
def exported(exports):
    """``exported(kind, precision, dest) -> Path``: a fresh copy, in folder ``dest``, of the session's export of that
    kind (what ``xlstm-export <kind words> --precision P`` writes: the same registry call)."""
    def get(kind: str, precision: str, dest: Path) -> Path:
        return copy_of(exports(CKPT, kind, precision=precision), dest).path

    return get


# -- reading and writing an artifact's contract, per target ------------------------------------------------
SPEC = ("Data", "com.apple.CoreML", "model.mlmodel")
WEIGHTS = ("Data", "com.apple.CoreML", "weights", "weight.bin")


def rewrite_archive(src: Path, dst: Path, edit) -> None:
    """Copy a TorchScript zip record by record; ``edit(name, bytes) -> bytes | None`` (None drops it)."""
    import torch

    reader = torch._C.PyTorchFileReader(str(src))
    tmp = dst.with_name(dst.name + ".new")
    writer = torch._C.PyTorchFileWriter(str(tmp))
    for name in reader.get_all_records():
        if name in ("byteorder", ".data/serialization_id"):
            continue
        rec = edit(name, reader.get_record(name))
        if rec is not None:
            writer.write_record(name, rec, len(rec))
    writer.write_end_of_file()
    del writer, reader
    os.replace(tmp, dst)


def edit_contract(art: Path, edit) -> None:
    """Change the I/O contract stored in the artifact in place, as a hand with the right tools would."""
    if art.suffix == ".onnx":
        import onnx

        m = onnx.load(str(art), load_external_data=False)
        prop = next(p for p in m.metadata_props if p.key == IO_KEY)
        c = json.loads(prop.value)
        edit(c)
        prop.value = json.dumps(c)
        onnx.save(m, str(art))
    elif art.suffix == ".mlpackage":
        from coremltools.proto import Model_pb2

        spec_path = art.joinpath(*SPEC)
        spec = Model_pb2.Model()
        spec.ParseFromString(spec_path.read_bytes())
        c = json.loads(spec.description.metadata.userDefined[IO_KEY])
        edit(c)
        spec.description.metadata.userDefined[IO_KEY] = json.dumps(c)
        spec_path.write_bytes(spec.SerializeToString())
    else:
        def contract(name, rec):
            if name != f"extra/{IO_KEY}":
                return rec
            c = json.loads(rec)
            edit(c)
            return json.dumps(c).encode()

        rewrite_archive(art, art, contract)


def other_precisions(kind: str, precision: str) -> list[str]:
    return [p for p in KINDS[kind].tolerances if p != precision]


PRECISION_CASES = [(kind, p, lie) for kind in KINDS for p in KINDS[kind].tolerances
                   for lie in other_precisions(kind, p)]


# -- the High class: TorchScript code that is not ours is never loaded ----------------------------------------
EVIL = r'''
import sys
from typing import List, Tuple

import torch
from torch import Tensor

src, dst, victim = sys.argv[1:4]
extra = {"xlstm_export.io": ""}
inner = torch.jit.load(src, _extra_files=extra)


class Evil(torch.nn.Module):
    victim: str

    def __init__(self, inner, victim: str):
        super().__init__()
        self.inner = inner
        self.victim = victim

    def forward(self, input_ids: Tensor) -> Tensor:
        return self.inner(input_ids)

    @torch.jit.export
    def init_states(self, batch_size: int) -> List[Tensor]:
        t = torch.from_file(self.victim, shared=True, size=6, dtype=torch.uint8)  # reads and writes any file
        t.fill_(88)
        st = self.inner.init_states(batch_size)
        st[0] = st[0] + (t[0].float() - 88.0)  # uses the write, so TorchScript keeps it
        return st

    @torch.jit.export
    def forward_with_states(self, input_ids: Tensor, states: List[Tensor]) -> Tuple[Tensor, List[Tensor]]:
        return self.inner.forward_with_states(input_ids, states)


torch.jit.save(torch.jit.script(Evil(inner, victim)), dst, _extra_files=extra)  # the genuine contract
'''


@pytest.fixture
def evil_archive(exported, tmp_path):
    """An xlstm-export archive wrapped in a module whose ``init_states`` overwrites ``victim`` (made in a
    subprocess: scripting it here would not change what is checked, but keeps this process clean)."""
    good = exported("torchscript", "fp32", tmp_path / "good")
    victim = tmp_path / "victim.txt"
    victim.write_text("precious data\n")
    evil = tmp_path / "evil" / "model.pt"
    evil.parent.mkdir()
    script = tmp_path / "make_evil.py"  # torch.jit.script reads the class's source file
    script.write_text(EVIL)
    proc = subprocess.run([sys.executable, str(script), str(good), str(evil), str(victim)], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert victim.read_text() == "precious data\n"
    return evil, victim


def test_torchscript_code_not_ours_is_refused_and_never_runs(evil_archive, checkpoint_factory):
    evil, victim = evil_archive
    res = validate(evil, checkpoint_factory(CKPT))
    line = assert_refused(res, evil, str(evil), "refused", "runs its code", "--trust-artifact", "code/__torch__")
    assert len(line) < 600
    assert victim.read_text() == "precious data\n"  # its init_states never ran


def test_trust_artifact_loads_it_as_asked(evil_archive, checkpoint_factory):
    """Control: the payload is live, and --trust-artifact loads the archive (so the refusal above is the check)."""
    evil, victim = evil_archive
    res = validate(evil, checkpoint_factory(CKPT), "--trust-artifact")
    assert res.exit_code == 0, res.output  # it computes what the real model does...
    assert victim.read_text().startswith("XXXXXX")  # ...and overwrote the file
    report = json.loads((evil.parent / "model.pt.report" / "report.json").read_text())
    assert report["artifact"]["trusted_unchecked"] is True


def _edit_code(name, rec):
    if name == "code/__torch__/xlstm_export/reference/model.py":
        return rec.replace(b"0.5", b"0.6", 1) if b"0.5" in rec else rec + b"\n"
    return rec


def _add_record(name, rec):
    return rec


def _retype_tensor(name, rec):  # data.pkl: one storage declared as another dtype (same bytes)
    return rec.replace(b"FloatStorage", b"IntStorage", 1) if name == "data.pkl" else rec


def _drop_weight(name, rec):
    return None if name == "data/0" else rec


def _shrink_weight(name, rec):
    return rec[:-4] if name == "data/0" else rec


NOT_OURS = {  # how an archive can differ from ours -> words the refusal names
    "code edited": (_edit_code, "reference/model.py"),
    "weight retyped in data.pkl": (_retype_tensor, "data.pkl"),
    "weight record missing": (_drop_weight, "data/0"),
    "weight record of another size": (_shrink_weight, "data/0"),
}


@pytest.mark.parametrize("case", sorted(NOT_OURS) + ["record added", "re-saved by torch.jit.save"])
def test_torchscript_archive_differing_from_ours_is_refused_before_loading(exported, checkpoint_factory,
                                                                            tmp_path, monkeypatch, case):
    import torch

    art = exported("torchscript", "fp32", tmp_path / "a")
    if case == "record added":
        import zipfile

        prefix = zipfile.ZipFile(art).namelist()[0].split("/")[0]
        with zipfile.ZipFile(art, "a") as z:  # the zip writer's own way: code torch would compile on load
            z.writestr(f"{prefix}/code/__torch__/extra.py", "def f(x: int) -> int:\n  return x\n")
        needle = "code/__torch__/extra.py"
    elif case == "re-saved by torch.jit.save":  # the same module through torch's writer: debug records added
        extra = {IO_KEY: ""}
        m = torch.jit.load(str(art), _extra_files=extra)
        torch.jit.save(m, str(art), _extra_files=extra)
        needle = ".debug_pkl"
    else:
        fn, needle = NOT_OURS[case]
        rewrite_archive(art, art, fn)
    loads = []

    def load(*args, **kwargs):
        loads.append(args)
        raise AssertionError("torch.jit.load ran")

    monkeypatch.setattr(torch.jit, "load", load)
    res = validate(art, checkpoint_factory(CKPT))
    assert_refused(res, art, "refused", needle, "--trust-artifact")
    assert loads == []


DIRTY_EMIT = r"""
import sys
from xlstm_export.frontends import load_checkpoint
from xlstm_export.torchscript.emit import TorchScriptOptions, emit, script_model

*others, ckpt, out = sys.argv[1:]
for other in others:  # TorchScript would mangle the class names of what is scripted after these
    script_model(load_checkpoint(other))
emit(load_checkpoint(ckpt), TorchScriptOptions(precision="fp16"), out)
"""


def test_torchscript_exports_pass_the_check_from_any_process(checkpoint_factory, tmp_path):
    """The check relies on exports being the same in every process: an export made in a process that
    scripted other models first is record for record a fresh export, and a fresh ``validate`` process
    (which scripts the expected archive itself) accepts it."""
    import torch

    ckpt = str(checkpoint_factory(CKPT))
    others = [str(checkpoint_factory(n)) for n in ("hybrid", "large")]
    dirty, fresh = tmp_path / "dirty.pt", tmp_path / "fresh.pt"
    runs = [[sys.executable, "-c", DIRTY_EMIT, *others, ckpt, str(dirty)],
            [sys.executable, "-m", "xlstm_export", "torchscript", "--checkpoint", ckpt, "-o", str(fresh),
             "--precision", "fp16", "--no-validate"]]
    for cmd in runs:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-2000:]
    a, b = (torch._C.PyTorchFileReader(str(p)) for p in (dirty, fresh))
    assert a.get_all_records() == b.get_all_records()  # no mangled class names of its own
    assert all(a.get_record(n) == b.get_record(n) for n in a.get_all_records())
    proc = subprocess.run([sys.executable, "-m", "xlstm_export", "validate", str(dirty), "--checkpoint", ckpt,
                           "--steps", "1", "--prompts", "1"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "validation PASS: torchscript fp16" in proc.stdout


# -- the declared precision and target pick the tolerance: they must be the actual tensors' ----------------
@pytest.mark.parametrize("kind,precision,lie", PRECISION_CASES, ids=[f"{k}-{p}-claims-{l}" for k, p, l in PRECISION_CASES])
def test_declared_precision_contradicted_by_the_tensors_is_refused(exported, checkpoint_factory, tmp_path, kind,
                                                                    precision, lie):
    art = exported(kind, precision, tmp_path / "a")
    edit_contract(art, lambda c: c.__setitem__("precision", lie))
    res = validate(art, checkpoint_factory(CKPT))
    line = assert_refused(res, art, lie, "--trust-artifact")
    assert any(w in line for w in ("tensor", "constant", "record", "contract.")), line  # names what contradicts it


def test_fp32_onnx_with_a_scaled_weight_claiming_fp16_is_refused(exported, checkpoint_factory, tmp_path):
    """The issue's instance: an fp32 graph with one weight scaled by 1.1 (max rel ~1.7e-2: outside the fp32
    tolerance, inside fp16's) declaring fp16."""
    import onnx
    from onnx import numpy_helper

    art = exported("onnx", "fp32", tmp_path / "a")
    m = onnx.load(str(art))
    w = next(i for i in m.graph.initializer if i.name == "blocks.1.mlstm.ogate.weight")
    w.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(w) * np.float32(1.1), w.name))
    onnx.save(m, str(art))
    ckpt = checkpoint_factory(CKPT)
    honest = validate(art, ckpt, "--report", tmp_path / "honest")
    assert honest.exit_code == 1 and "onnx fp32" in honest.output  # control: as fp32, it fails
    edit_contract(art, lambda c: c.__setitem__("precision", "fp16"))
    res = validate(art, ckpt)
    assert_refused(res, art, "fp16", "float16", "--trust-artifact")
    lying = validate(art, ckpt, "--trust-artifact", "--report", tmp_path / "lying")  # judged by what it claims
    assert lying.exit_code == 0 and "validation PASS: onnx fp16" in lying.output


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_declared_target_other_than_the_file_is_refused(exported, checkpoint_factory, tmp_path, kind):
    other = {"coreml": "onnx", "onnx": "coreml", "torchscript": "onnx"}[KINDS[kind].target]
    art = exported(kind, KINDS[kind].demo_precision, tmp_path / "a")
    edit_contract(art, lambda c: c.__setitem__("target", other))
    res = validate(art, checkpoint_factory(CKPT))
    assert_refused(res, art, other)


# -- a contract that disagrees with the artifact: one line, exit 2 -------------------------------------------
def _state(i, key, value):
    return lambda c: c["states"][i].__setitem__(key, value)


CONTRACT_EDITS = {
    "logits-vocab-wider": lambda c: c["outputs"][0]["shape"].__setitem__(-1, c["outputs"][0]["shape"][-1] + 3),
    "logits-no-shape": lambda c: c["outputs"][0].__setitem__("shape", []),
    "state-dtype": _state(0, "dtype", "float64"),
    "states-swapped": lambda c: (c["states"][0].__setitem__("input", c["states"][1]["input"]),
                                 c["states"][1].__setitem__("input", c["states"][0]["input"])),
    "batch-zero": lambda c: c["inputs"][0]["shape"].__setitem__(0, 0),
    "ids-dtype": lambda c: c["inputs"][0].__setitem__("dtype", "float32"),
    "unknown-field": lambda c: c.__setitem__("execute", "rm -rf /"),
}
CORE_ML_EDITS = {  # the low parts of split states
    "low-part-scale": lambda c: c["extra_states"][0].__setitem__("scale", 1e-30),
    "low-part-of-another-state": lambda c: c["extra_states"][0].__setitem__("part_of", c["states"][1]["name"]),
    "low-parts-dropped": lambda c: c.__setitem__("extra_states", []),
}
EDIT_CASES = [(k, e) for k in sorted(KINDS) for e in CONTRACT_EDITS] + [
    (k, e) for k in sorted(KINDS) if KINDS[k].target == "coreml" for e in CORE_ML_EDITS]


@pytest.mark.parametrize("kind,edit", EDIT_CASES, ids=[f"{k}-{e}" for k, e in EDIT_CASES])
def test_contract_disagreeing_with_the_artifact_is_one_line_exit_2(exported, checkpoint_factory, tmp_path, kind,
                                                                    edit):
    art = exported(kind, KINDS[kind].demo_precision, tmp_path / "a")
    edit_contract(art, {**CONTRACT_EDITS, **CORE_ML_EDITS}[edit])
    res = validate(art, checkpoint_factory(CKPT))
    assert_refused(res, art, str(art.parent))  # the artifact or its companion (an ONNX prefill graph)


# -- corrupt, truncated and non-regular artifact files -------------------------------------------------------
def _fifo(p: Path) -> None:
    p.unlink()
    os.mkfifo(p)


def _blob_field(offset: int, fmt: str, value: int):
    def edit(p: Path) -> None:
        b = bytearray(p.read_bytes())
        struct.pack_into(fmt, b, 64 + offset, value)  # the first blob's metadata follows the 64-byte header
        p.write_bytes(bytes(b))
    return edit


def _truncate(fraction: float):
    def edit(p: Path) -> None:
        with open(p, "r+b") as fh:
            fh.truncate(int(p.stat().st_size * fraction))
    return edit


def _symlink_to_copy(p: Path) -> None:  # a link that reads outside the package (here: an identical file)
    outside = p.parents[5] / "outside-weight.bin"
    shutil.copy2(p, outside)
    p.unlink()
    p.symlink_to(outside)


BROKEN = {  # name -> (kind, file relative to the artifact or None for the artifact itself, how, words)
    "pt-is-a-fifo": ("torchscript", None, _fifo, "not a regular file"),
    "onnx-is-a-fifo": ("onnx", None, _fifo, "not a regular file"),
    "onnx-data-is-a-fifo": ("onnx-prefill", "model.onnx.data", _fifo, "not a regular file"),
    "onnx-prefill-graph-is-a-fifo": ("onnx-prefill", "model.prefill.onnx", _fifo, "not a regular file"),
    "weight-bin-is-a-fifo": ("coreml", WEIGHTS, _fifo, "not a regular file"),
    "weight-bin-is-a-symlink": ("coreml", WEIGHTS, _symlink_to_copy, "symbolic link"),
    "weight-bin-truncated-in-metadata": ("coreml", WEIGHTS, _truncate(0.0002), "cannot read"),
    "weight-bin-truncated-in-data": ("coreml", WEIGHTS, _truncate(0.5), "cannot read"),
    "weight-bin-empty": ("coreml-prefill", WEIGHTS, _truncate(0.0), "weight.bin"),
    "weight-bin-blob-dtype": ("coreml", WEIGHTS, _blob_field(4, "<I", 7), "cannot read"),
    "weight-bin-blob-size": ("coreml", WEIGHTS, _blob_field(8, "<Q", 2**40), "cannot read"),
    "weight-bin-blob-offset": ("coreml-prefill", WEIGHTS, _blob_field(16, "<Q", 2**36), "cannot read"),
    "spec-truncated": ("coreml", SPEC, _truncate(0.3), "not a readable Core ML package"),
    "manifest-not-json": ("coreml", ("Manifest.json",), lambda p: p.write_text('{"x":'), "not a readable"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_corrupt_or_non_regular_artifact_files_are_one_line_exit_2(exported, checkpoint_factory, tmp_path, case):
    kind, rel, how, needle = BROKEN[case]
    art = exported(kind, KINDS[kind].demo_precision, tmp_path / "a")
    target = art if rel is None else (art.parent / rel if isinstance(rel, str) else art.joinpath(*rel))
    how(target)
    # a subprocess: a blocked read would hang this test process; the bound makes a hang a failure
    try:
        proc = subprocess.run([sys.executable, "-m", "xlstm_export", "validate", str(art), "--checkpoint",
                               str(checkpoint_factory(CKPT)), "--steps", "1", "--prompts", "1"],
                              capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{case}: validate hung")
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert lines[-1].startswith("error: ") and needle in lines[-1], lines[-1]
    assert not Path(str(art) + ".report").exists()


# -- fuzz -----------------------------------------------------------------------------------------------------
FUZZ = max(5, int(os.environ.get("XLSTM_FUZZ_EXAMPLES", "300")) // 10)
JSON = st.recursive(st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.floats(allow_nan=True)
                    | st.text(max_size=12), lambda inner: st.lists(inner, max_size=3)
                    | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=6)


def _paths(v, prefix=()):
    yield prefix
    if isinstance(v, dict):
        for k in sorted(v):
            yield from _paths(v[k], prefix + (k,))
    elif isinstance(v, list):
        for i, x in enumerate(v):
            yield from _paths(x, prefix + (i,))


@pytest.fixture(scope="module")
def fuzz_base(exported, checkpoint_factory, tmp_path_factory):
    from xlstm_export.frontends import load_checkpoint

    d = tmp_path_factory.mktemp("fuzz")
    return (load_checkpoint(checkpoint_factory(CKPT)), exported("onnx-prefill", "fp32", d / "onnx"),
            exported("torchscript", "fp32", d / "ts"))


@settings(max_examples=FUZZ, deadline=None, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_fuzz_onnx_contract_edits_are_refused_or_harmless(fuzz_base, tmp_path_factory, data):
    from xlstm_export.validation import open_artifact

    graph, base, _ = fuzz_base
    import onnx

    original = json.loads(next(p.value for p in onnx.load(str(base), load_external_data=False).metadata_props
                               if p.key == IO_KEY))
    paths = list(_paths(original))[1:]
    edited = copy.deepcopy(original)
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(paths))
        try:
            parent = edited
            for k in path[:-1]:
                parent = parent[k]
            parent[path[-1]] = data.draw(JSON)
        except (KeyError, IndexError, TypeError):  # an earlier edit replaced a container on the way
            continue
    d = tmp_path_factory.mktemp("case")
    for p in base.parent.iterdir():
        shutil.copy2(p, d / p.name)
    art = d / base.name
    edit_contract(art, lambda c: (c.clear(), c.update(edited)))
    try:
        open_artifact(art, graph)
    except XlstmExportError as e:
        assert e.exit_code == 2 and str(e).strip()
        return
    assert json.loads(json.dumps(edited)) == original  # opened: the edit changed nothing


@settings(max_examples=FUZZ, deadline=None, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_fuzz_torchscript_record_edits_never_load_unchecked_code(fuzz_base, tmp_path_factory, data):
    import torch

    from xlstm_export.validation import open_artifact

    graph, _, base = fuzz_base
    names = [n for n in torch._C.PyTorchFileReader(str(base)).get_all_records()
             if not n.startswith("data/") and n not in ("byteorder", ".data/serialization_id")]
    name = data.draw(st.sampled_from(sorted(names)))
    pos = data.draw(st.floats(0, 1))
    new = data.draw(st.binary(min_size=0, max_size=4))
    art = tmp_path_factory.mktemp("case") / "m.pt"

    changed = []

    def edit(n, rec):
        if n != name:
            return rec
        i = int(pos * len(rec))
        out = rec[:i] + new + rec[i + 1:]
        changed.append(out != rec)
        return out

    rewrite_archive(base, art, edit)
    same = changed == [False]
    calls = []
    real = torch.jit.load
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch.jit, "load", lambda *a, **k: calls.append(a) or real(*a, **k))
        try:
            open_artifact(art, graph)
        except XlstmExportError as e:
            assert e.exit_code == 2 and not same and calls == [], (name, str(e))
            return
    assert same and len(calls) == 1  # unchanged bytes: loaded, once
