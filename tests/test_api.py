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
from xlstm_export import progress, resources
from xlstm_export.errors import ConfigError, OutputError, UnsupportedError

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


# -- the API makes every check the CLI makes (the CLI parses flags and calls it) ----------------------------
NO_CKPT = "no-such-checkpoint"  # never read: each check below comes before the checkpoint or artifact is
BOUNDED_CALLS = [  # (call, flag, the message's range): the CLI's option ranges (tests/test_cli_bounds.py)
    (lambda d: xe.generate(d / NO_CKPT, prompt_ids=[1], max_new_tokens=10 ** 7), "--max-new-tokens",
     f"0<=x<={resources.MAX_NEW_TOKENS}"),
    (lambda d: xe.run(d / "m.onnx", prompt_ids=[1], max_new_tokens=10 ** 7), "--max-new-tokens",
     f"0<=x<={resources.MAX_NEW_TOKENS}"),
    (lambda d: xe.run(d / "m.onnx", prompt_ids=[1], max_new_tokens=-1), "--max-new-tokens", "0<=x<="),
    (lambda d: xe.generate(d / NO_CKPT, prompt_ids=[1], top_k=2 ** 31), "--top-k", f"0<=x<={resources.MAX_TOP_K}"),
    (lambda d: xe.generate(d / NO_CKPT, prompt_ids=[1], temperature=1e5), "--temperature",
     f"<=x<={resources.MAX_TEMPERATURE}"),
    (lambda d: xe.generate(d / NO_CKPT, prompt_ids=[1], top_p=0.0), "--top-p", "0<x<=1"),
    (lambda d: xe.run(d / "m.onnx", prompt_ids=[1], seed=-1), "--seed", f"0<=x<={resources.MAX_SEED}"),
    (lambda d: xe.validate(d / "m.onnx", d / NO_CKPT, steps=10 ** 5), "--steps", f"0<=x<={resources.MAX_STEPS}"),
    (lambda d: xe.validate(d / "m.onnx", d / NO_CKPT, prompts=10 ** 6), "--prompts",
     f"1<=x<={resources.MAX_PROMPTS}"),
    (lambda d: xe.validate(d / "m.onnx", d / NO_CKPT, prompts=0), "--prompts", "1<=x<="),
    (lambda d: xe.validate(d / "m.onnx", d / NO_CKPT, prompt_len=10 ** 7), "--prompt-len",
     f"1<=x<={resources.MAX_PROMPT_LEN}"),
    (lambda d: xe.validate(d / "m.onnx", d / NO_CKPT, batch_size=10 ** 9), "--batch-size",
     f"1<=x<={resources.MAX_BATCH_SIZE}"),
    (lambda d: xe.validate(d / "m.onnx", d / NO_CKPT, heldout_tokens=1), "--heldout-tokens",
     f"2<=x<={resources.MAX_HELDOUT_TOKENS}"),
    (lambda d: xe.validate(d / "m.onnx", d / NO_CKPT, steps=2.5), "--steps", "expected an integer"),
    (lambda d: xe.export(d / NO_CKPT, "onnx", d / "out" / "m.onnx", batch_size=3 * 10 ** 9), "--batch-size",
     f"1<=x<={resources.MAX_BATCH_SIZE}"),
    (lambda d: xe.export(d / NO_CKPT, "coreml", d / "out" / "m.mlpackage", batch_size=0), "--batch-size", "1<=x<="),
    (lambda d: xe.export(d / NO_CKPT, "onnx", d / "out" / "m.onnx", prefill_chunk=10 ** 6), "--prefill-chunk",
     "1<=x<=1024"),
    (lambda d: xe.export(d / NO_CKPT, "onnx", d / "out" / "m.onnx", opset=99), "--opset", "17<=x<=26"),
    (lambda d: xe.export_and_validate(d / NO_CKPT, "torchscript", d / "out" / "m.pt", steps=10 ** 5), "--steps",
     f"0<=x<={resources.MAX_STEPS}"),
    (lambda d: xe.export_and_validate(d / NO_CKPT, "onnx", d / "out" / "m.onnx", batch_size=3 * 10 ** 9),
     "--batch-size", f"1<=x<={resources.MAX_BATCH_SIZE}"),
]


@pytest.mark.parametrize("call, flag, bounds", BOUNDED_CALLS, ids=[f"{i}{f}" for i, (_, f, _) in enumerate(BOUNDED_CALLS)])
def test_the_api_refuses_what_the_cli_refuses_before_any_work(tmp_path, call, flag, bounds):
    """Was: only the CLI's click ranges bounded the counts; xe.run(..., max_new_tokens=10**7) ran. Now the API
    refuses it, one line naming the flag and its range, before the checkpoint or artifact is read (neither
    exists here) and before anything is written."""
    (tmp_path / "out").mkdir()
    with pytest.raises(ConfigError) as e:
        call(tmp_path)
    line = str(e.value)
    assert "\n" not in line and len(line) < 200 and line.startswith(f"{flag}: ") and bounds in line, line
    assert list((tmp_path / "out").iterdir()) == []


def test_the_cli_and_the_api_share_the_ranges():
    """The CLI's option ranges (for --help and usage errors) are the API's: the same constants."""
    import click

    from xlstm_export.cli import main

    def rng(command: str, flag: str):
        (opt,) = [p for p in main.commands[command].params if flag in p.opts]
        return opt.type.min, opt.type.max

    assert rng("generate", "--max-new-tokens") == (0, resources.MAX_NEW_TOKENS)
    assert rng("run", "--top-k") == (0, resources.MAX_TOP_K) and rng("run", "--seed") == (0, resources.MAX_SEED)
    assert rng("validate", "--steps") == (0, resources.MAX_STEPS) and rng("onnx", "--steps") == (0, resources.MAX_STEPS)
    assert rng("validate", "--prompts") == (1, resources.MAX_PROMPTS)
    assert rng("validate", "--heldout-tokens") == (2, resources.MAX_HELDOUT_TOKENS)
    for target in xe.targets.TARGETS:
        assert rng(target, "--batch-size") == (1, resources.MAX_BATCH_SIZE), target
    assert isinstance(main.commands["generate"].params[0].type, (click.types.ParamType,))


def test_the_api_checks_the_report_folder_before_reading_anything(tmp_path):
    """Was: only `xlstm-export validate` checked the report folder before loading the checkpoint."""
    report = tmp_path / "rep"
    report.mkdir()
    (report / "report.json").write_text("{}")
    with pytest.raises(OutputError, match="already holds a report"):  # the checkpoint does not exist: not read
        xe.validate(tmp_path / "m.onnx", tmp_path / NO_CKPT, report=report)
    with pytest.raises(OutputError, match="already holds a report"):
        xe.export_and_validate(EXAMPLE, "onnx", tmp_path / "m.onnx", report=report)
    assert not (tmp_path / "m.onnx").exists()


def test_the_api_checks_memory_before_opening_or_writing(tmp_path, monkeypatch):
    """Was: only the CLI compared a validation's batch with the memory available. Now xe.validate does before the
    artifact is opened (it does not exist here), and xe.export_and_validate before anything is written; the
    message names both figures, as the CLI's (tests/test_cli_bounds.py)."""
    monkeypatch.setattr(resources, "available_memory", lambda: 8 * 1024 ** 2)
    graph = xe.load_checkpoint(EXAMPLE)
    per_seq, _ = resources.validation_bytes(graph, 64, 64)  # the example's validation_prompts are 64 tokens
    with pytest.raises(ConfigError, match="--batch-size 64: validating needs about") as e:
        xe.validate(tmp_path / "m.onnx", EXAMPLE, batch_size=64)
    assert resources.human_bytes(per_seq) in str(e.value) and "8.0 MB available" in str(e.value)
    with pytest.raises(ConfigError, match="--batch-size 64: validating needs about .* or --no-validate"):
        xe.export_and_validate(EXAMPLE, "onnx", tmp_path / "m.onnx", batch_size=64)
    assert not (tmp_path / "m.onnx").exists()
    done = xe.export_and_validate(EXAMPLE, "onnx", tmp_path / "m.onnx", batch_size=64, validate=False)
    assert done.validation is None and done.artifact.path == tmp_path / "m.onnx" and done.artifact.path.is_file()


def test_export_and_validate_is_the_export_command(tmp_path, monkeypatch):
    """The export command is export_and_validate: the artifact is seen before its validation runs, the figures
    are the command's; the CLI reaches it (and validate's) rather than checking on its own."""
    seen = []
    done = xe.export_and_validate(EXAMPLE, "onnx", tmp_path / "m.onnx", steps=2, report=tmp_path / "r",
                                  on_artifact=seen.append)
    assert seen == [done.artifact] and done.validation_skipped is None
    assert done.validation.passed and done.validation.report["summary"]["max_rel"] <= 1e-4
    assert (tmp_path / "r" / "report.json").is_file()
    from click.testing import CliRunner

    from xlstm_export import api
    from xlstm_export.cli import main

    def refuse(*args, **kw):
        raise ConfigError(f"reached the API with {sorted(kw)}")

    monkeypatch.setattr(api, "export_and_validate", refuse)
    monkeypatch.setattr(api, "validate", refuse)
    for argv in (["onnx", "--checkpoint", EXAMPLE, "-o", tmp_path / "x.onnx"],
                 ["validate", tmp_path / "m.onnx", "--checkpoint", EXAMPLE]):
        res = CliRunner().invoke(main, [str(a) for a in argv])
        assert res.exit_code == 2 and res.stderr.startswith("error: reached the API with "), res.output


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
