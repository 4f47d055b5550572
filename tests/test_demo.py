"""`make demo` in small: one bundled example, the ONNX step target (``--quick``), in-process.

The demo is example code (``examples/demo.py``, imported with ``examples/`` on sys.path: conftest.py); the full
demo (every example x every target) is ``make demo``, the whole matrix ``make demo-all``; neither is part of
``make test``.
"""

from __future__ import annotations

import json

import pytest

import demo  # examples/demo.py


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "demo-out"
    rc = demo.main(["--quick", "--out", str(out)])
    return rc, out


def test_quick_demo_passes_and_writes_its_table(quick_run, capsys):
    rc, out = quick_run
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["passed"] is True
    (row,) = summary["rows"]
    assert (row["example"], row["target"]) == ("hf-recall", "onnx")
    assert row["validation"] == "PASS" and row["error"] == ""
    assert row["max_rel"] <= row["tolerance"] == 1e-4
    assert row["greedy_picks"] > 0 and row["greedy_agreeing"] == row["greedy_picks"]
    assert row["size_bytes"] > 0 and row["export_seconds"] > 0
    assert (out / "hf-recall" / "onnx" / "model.onnx").is_file()
    assert {p.name for p in (out / "hf-recall" / "onnx" / "report").iterdir()} >= {"report.json", "report.md"}
    # the trained example solves its task; the single-step artifact, fed one token per call, as well
    head = summary["examples"]["hf-recall"]
    assert head["reference_accuracy"] >= 0.5
    assert abs(row["task_accuracy"] - head["reference_accuracy"]) <= demo.ACCURACY_SLACK
    assert row["task_calls"] == 8 * head["task"]["seq_len"]
    md = (out / "summary.md").read_text()
    assert "| hf-recall | onnx | demo-out/hf-recall/onnx/model.onnx |" in md


def test_rerun_replaces_its_own_output_but_not_a_foreign_folder(quick_run, tmp_path, capsys):
    _, out = quick_run
    demo.prepare_out(out, force=False)  # the demo's own folder: accepted again
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("x")
    rc = demo.main(["--quick", "--out", str(foreign)])
    assert rc == 2
    assert "did not make" in capsys.readouterr().err
    assert (foreign / "keep.txt").read_text() == "x"


def test_make_demo_and_make_demo_all_settings(monkeypatch, tmp_path, capsys):
    """`make demo`: every example x every swept kind once (the language model's slow ExecuTorch program left to
    `make demo-all`), fewer held-out sequences and tokens; `make demo-all` (--all): the compressed variants too,
    on the full counts; kinds named with --targets all run."""
    seen = []

    def fake_run_demo(out, examples, targets, samples, steps, examples_dir, force, everything, lm_tokens, skip):
        seen.append(dict(examples=list(examples), targets=list(targets), samples=samples, everything=everything,
                         lm_tokens=lm_tokens, skip=skip))
        return {"passed": True, "seconds": 0.0, "table": "", "rows": [], "examples": {}, "skipped": []}

    monkeypatch.setattr(demo, "run_demo", fake_run_demo)
    assert demo.main(["--out", str(tmp_path / "d")]) == 0
    assert demo.main(["--out", str(tmp_path / "d"), "--all"]) == 0
    assert demo.main(["--out", str(tmp_path / "d"), "--targets", "executorch", "--examples", "pylm"]) == 0
    default, everything, named = seen
    assert default == dict(examples=list(demo.EXAMPLES), targets=list(demo.SWEPT), samples=demo.DEFAULT_SAMPLES,
                           everything=False, lm_tokens=demo.DEFAULT_LM_TOKENS, skip=None)
    assert everything == dict(default, samples=demo.ALL_SAMPLES, lm_tokens=demo.ALL_LM_TOKENS, everything=True)
    assert named["skip"] == {} and named["targets"] == ["executorch"]
    assert demo.DEFAULT_SAMPLES < demo.ALL_SAMPLES and demo.DEFAULT_LM_TOKENS < demo.ALL_LM_TOKENS
    for example, kinds in demo.SLOW.items():  # what make demo leaves out, make demo-all runs
        assert example in demo.EXAMPLES and set(kinds) <= set(demo.SWEPT)
    for kind, schemes in {**demo.LM_VARIANTS, **demo.TASK_VARIANTS}.items():
        assert kind in demo.SWEPT and all(q in demo.LM_PPL_RATIO and q in demo.LM_MIN_TOP1 for q in schemes)
    with pytest.raises(SystemExit) as e:  # bad arguments: exit status 2, nothing run
        demo.main(["--out", str(tmp_path / "d"), "--targets", "tflite"])
    assert e.value.code == 2 and len(seen) == 3
