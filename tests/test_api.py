"""The library surface: the top-level Python API, packaging (extras, license), progress, ``--json``, reports
that are not clobbered, the runtime named in every verdict, Core ML metadata flags."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import xlstm_export as xe
from xlstm_export import progress
from xlstm_export.errors import OutputError, UnsupportedError

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "hybrid-copy"


def run_cli(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "xlstm_export", *args], capture_output=True, text=True, **kw)


# -- the Python API ---------------------------------------------------------------------------------
def test_import_is_light_and_exposes_the_api():
    code = ("import sys, xlstm_export as xe; print(sorted(dir(xe))); "
            "print([m for m in ('torch', 'onnx', 'onnxruntime', 'coremltools', 'numpy') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.splitlines()
    names = eval(out[0])  # noqa: S307 (our own printed list)
    for name in ("load_checkpoint", "export", "validate", "Artifact", "Graph", "ValidationResult"):
        assert name in names, name
    assert eval(out[1]) == []  # noqa: S307
    for fn in (xe.load_checkpoint, xe.export, xe.validate):
        assert fn.__doc__ and len(fn.__doc__) > 80, fn.__name__
    import importlib

    for target in ("coreml", "onnx", "torchscript"):
        assert importlib.import_module(f"xlstm_export.{target}.emit").emit.__doc__, target


def test_export_and_validate_from_python(tmp_path):
    graph = xe.load_checkpoint(EXAMPLE)
    assert isinstance(graph, xe.Graph)
    art = xe.export(graph, "onnx", tmp_path / "m.onnx", prefill_chunk=8)
    assert isinstance(art, xe.Artifact) and art.kind == "onnx-prefill" and len(art.files) == 3
    res = xe.validate(art.path, EXAMPLE, report=tmp_path / "report", steps=2)  # a path: task prompts join
    assert isinstance(res, xe.ValidationResult) and res.passed, res.summary_line()
    assert res.report["settings"]["extra_prompts"] > 4  # 4 prefill lengths + the example task's prompts
    assert (tmp_path / "report" / "report.json").is_file()
    with pytest.raises(UnsupportedError, match="unknown target"):
        xe.export(graph, "tflite", tmp_path / "m.tflite")
    with pytest.raises(UnsupportedError, match=r"must end in \.onnx"):
        xe.export(str(EXAMPLE), "onnx", tmp_path / "m.mlpackage")
    assert sorted(xe.targets.TARGETS) == ["coreml", "executorch", "onnx", "torchscript"]


# -- packaging ------------------------------------------------------------------------------------------
def test_core_dependencies_are_small_and_each_target_is_an_extra():
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    core = " ".join(meta["dependencies"])
    for heavy in ("onnx", "onnxruntime", "coremltools", "executorch"):
        assert heavy not in core, heavy
    assert "torch>=" in core and "torch==" not in core
    extras = meta["optional-dependencies"]
    assert any(d.startswith("onnxruntime") for d in extras["onnx"]) and any(d.startswith("onnx>") for d in extras["onnx"])
    assert any(d.startswith("coremltools") for d in extras["coreml"])
    assert (REPO / "LICENSE").read_text().lstrip().startswith("Apache License") and meta["license"] == "Apache-2.0"


BLOCK_EXTRAS = """
import sys
class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"onnx", "onnxruntime", "coremltools"}:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, Blocker())
from xlstm_export.cli import main
main(prog_name="xlstm-export")
"""


@pytest.mark.parametrize("target, suffix, extra", [("onnx", ".onnx", "onnx"), ("coreml", ".mlpackage", "coreml")])
def test_a_missing_extra_is_named_exit_2(tmp_path, target, suffix, extra):
    """As a core-only install (onnx, onnxruntime, coremltools not importable): the command names the extra."""
    res = subprocess.run([sys.executable, "-c", BLOCK_EXTRAS, target, "--checkpoint", str(EXAMPLE), "-o",
                          str(tmp_path / f"m{suffix}")], capture_output=True, text=True)
    assert res.returncode == 2, res.stderr
    assert res.stderr.strip() == (f"error: {target}: needs the '{'onnx' if extra == 'onnx' else 'coremltools'}' "
                                  f"package; install it with pip install 'xlstm-export[{extra}]'")
    assert list(tmp_path.iterdir()) == []


def test_the_core_alone_exports_and_validates_torchscript(tmp_path):
    res = subprocess.run([sys.executable, "-c", BLOCK_EXTRAS, "torchscript", "--checkpoint", str(EXAMPLE), "-o",
                          str(tmp_path / "m.pt")], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "validation PASS: torchscript fp32 on TorchScript (torch" in res.stdout


# -- progress, --json, reports, runtimes ------------------------------------------------------------
def test_progress_notes_reach_a_sink_and_are_silent_otherwise(tmp_path, capsys):
    lines: list = []
    with progress.reporting(lines.append):
        xe.export(str(EXAMPLE), "onnx", tmp_path / "m.onnx")
        xe.validate(tmp_path / "m.onnx", str(EXAMPLE), steps=1)
    text = "\n".join(lines)
    for needle in ("reading checkpoint", "lowering (step) block 1/3", "lowering (step) block 3/3", "writing m.onnx",
                   "writing weights: tensor", "validating onnx: prompt group"):
        assert needle in text, (needle, text)
    assert all(line.startswith("[xlstm-export ") for line in lines)
    xe.export(str(EXAMPLE), "onnx", tmp_path / "m2.onnx")  # no sink: nothing printed
    assert capsys.readouterr().err == ""
    assert progress.stderr_sink(quiet=True) is None


def test_cli_is_quiet_when_stderr_is_not_a_terminal(tmp_path):
    res = run_cli("onnx", "--checkpoint", str(EXAMPLE), "-o", str(tmp_path / "m.onnx"))
    assert res.returncode == 0 and res.stderr == "", res.stderr
    res = run_cli("--quiet", "onnx", "--checkpoint", str(EXAMPLE), "-o", str(tmp_path / "q.onnx"))
    assert res.returncode == 0 and res.stderr == ""


def test_json_output_of_export_and_validate(tmp_path):
    res = run_cli("onnx", "--checkpoint", str(EXAMPLE), "-o", str(tmp_path / "m.onnx"), "--json")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["artifact"]["kind"] == "onnx" and out["artifact"]["files"] == [str(tmp_path / "m.onnx")]
    assert out["validation"]["passed"] is True and out["validation"]["summary"]["max_rel"] <= 1e-4
    assert out["validation"]["artifact"]["runtime"].startswith("ONNX Runtime ")
    res = run_cli("validate", str(tmp_path / "m.onnx"), "--checkpoint", str(EXAMPLE), "--json", "--steps", "1")
    out = json.loads(res.stdout)
    assert res.returncode == 0 and out["passed"] is True and out["report"][0].endswith("report.json")
    res = run_cli("onnx", "--checkpoint", str(EXAMPLE), "-o", str(tmp_path / "n.onnx"), "--json", "--no-validate")
    assert json.loads(res.stdout)["validation"] is None


def test_reports_are_not_clobbered_without_force(tmp_path):
    art = xe.export(str(EXAMPLE), "onnx", tmp_path / "m.onnx")
    report = tmp_path / "m.onnx.report"
    assert run_cli("validate", str(art.path), "--checkpoint", str(EXAMPLE), "--steps", "1").returncode == 0
    before = (report / "report.json").read_bytes()
    res = run_cli("validate", str(art.path), "--checkpoint", str(EXAMPLE), "--steps", "2")
    assert res.returncode == 2 and "already holds a report" in res.stderr and "--force" in res.stderr
    assert (report / "report.json").read_bytes() == before
    res = run_cli("validate", str(art.path), "--checkpoint", str(EXAMPLE), "--steps", "2", "--force")
    assert res.returncode == 0 and (report / "report.json").read_bytes() != before
    # an export with --report into a folder holding one: refused before anything is written
    res = run_cli("onnx", "--checkpoint", str(EXAMPLE), "-o", str(tmp_path / "x.onnx"), "--report", str(report))
    assert res.returncode == 2 and not (tmp_path / "x.onnx").exists()
    with pytest.raises(OutputError, match="already holds a report"):
        xe.validate(art.path, str(EXAMPLE), report=report)


def test_every_verdict_names_its_runtime(exports, tmp_path):
    pkg = exports("hybrid-copy", "coreml")  # the session's export of EXAMPLE (shared with tests/coreml)
    res = xe.validate(pkg.path, str(EXAMPLE), steps=1, report=tmp_path / "r")
    runtime = res.report["artifact"]["runtime"]
    assert "package executor" in runtime and "not the Core ML runtime" in runtime and "coremltools" in runtime
    assert f"on {runtime} vs reference" in res.summary_line()
    assert "run by: xlstm-export package executor" in (tmp_path / "r" / "report.md").read_text()
    assert res.report["reference"]["runtime"].startswith("PyTorch reference (torch ")


def test_coreml_metadata_flags(tmp_path):
    out = tmp_path / "m.mlpackage"
    res = run_cli("coreml", "--checkpoint", str(EXAMPLE), "-o", str(out), "--no-validate", "--author", "Ada",
                  "--license", "MIT", "--version", "2.1", "--description", "copy model")
    assert res.returncode == 0, res.stderr
    from xlstm_export.coreml.runner import read_contract

    _, spec = read_contract(out)
    md = spec.description.metadata
    assert (md.author, md.license, md.versionString, md.shortDescription) == ("Ada", "MIT", "2.1", "copy model")


def test_coreml_license_defaults_to_the_checkpoints_model_card(tmp_path):
    import shutil

    ck = tmp_path / "ck"
    shutil.copytree(EXAMPLE, ck)
    (ck / "README.md").write_text("---\nlicense: apache-2.0\ntags: [xlstm]\n---\n# a model card\n")
    art = xe.export(str(ck), "coreml", tmp_path / "m.mlpackage", swift=False)
    from xlstm_export.coreml.runner import read_contract

    assert read_contract(art.path)[1].description.metadata.license == "apache-2.0"


def test_the_readmes_python_example_runs(tmp_path):
    text = (REPO / "README.md").read_text()
    block = text.split("### From Python", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    code = block.replace('"examples/', f'"{REPO}/examples/')
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "validation PASS: onnx-prefill fp32 on ONNX Runtime" in res.stdout
    assert (tmp_path / "model.onnx.report" / "report.json").is_file()


def test_a_fifo_model_card_is_skipped_not_read(tmp_path):
    import os
    import shutil

    ck = tmp_path / "ck"
    shutil.copytree(EXAMPLE, ck)
    (ck / "README.md").unlink()
    os.mkfifo(ck / "README.md")
    art = xe.export(str(ck), "coreml", tmp_path / "m.mlpackage", swift=False)  # would block reading the FIFO
    from xlstm_export.coreml.runner import read_contract

    assert "Same license as the source checkpoint" in read_contract(art.path)[1].description.metadata.license
