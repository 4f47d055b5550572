"""The validation framework: comparison figures, tolerance table, reports, the `validate` command's exit
codes, and that a broken artifact fails with a report saying where."""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from xlstm_export.cli import main
from xlstm_export.errors import ArtifactError, ParityError, UnsupportedError
from xlstm_export.graphs.io import IO_KEY
from xlstm_export.torchscript.emit import TorchScriptOptions, emit
from xlstm_export.validation import (
    compare, detect_kind, judge, make_prompts, open_artifact, run_validation, step_metrics,
    tolerance_for, validate_artifact,
)
from xlstm_export.validation.prompts import task_prompts
from xlstm_export.validation.reference_runner import ReferenceRunner


@pytest.fixture(scope="module")
def artifacts(checkpoint_factory, graph_of, exports):
    """name -> (checkpoint, graph, TorchScript artifact path) of two fixtures (the session's exports: read-only,
    so a validation of one names its report folder)."""
    return {name: (checkpoint_factory(name), graph_of(name), exports(name, "torchscript").path)
            for name in ("hf", "hybrid")}


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


# -- figures ---------------------------------------------------------------------------------------
def test_step_metrics_figures():
    ref = np.array([[1.0, -2.0, 4.0], [0.5, 3.0, -1.0]], dtype=np.float32)
    same = step_metrics(ref, ref)
    assert same["max_abs"] == 0 and same["max_rel"] == 0 and same["psnr"] == math.inf
    assert same["cosine"] == pytest.approx(1.0) and same["argmax_agreement"] == 1.0
    art = ref.copy()
    art[0, 0] += 0.4  # row 0 argmax unchanged, max |d| = 0.4, max |ref| = 4
    art[1, 0] += 3.0  # row 1 argmax moves to 0
    m = step_metrics(art, ref)
    assert m["max_abs"] == pytest.approx(3.0) and m["max_rel"] == pytest.approx(0.75)
    mse = (0.4 ** 2 + 3.0 ** 2) / 6
    assert m["psnr"] == pytest.approx(10 * math.log10(16 / mse))
    assert m["argmax_agreement"] == 0.5
    bad = ref.copy()
    bad[0, 1] = np.nan
    assert step_metrics(bad, ref)["nonfinite"] == 1 and step_metrics(bad, ref)["max_rel"] == math.inf


def test_prompts_are_seeded_within_vocab_and_take_extra_first():
    a = make_prompts(97, num=3, length=12, seed=5)
    b = make_prompts(97, num=3, length=12, seed=5)
    assert [p.tolist() for p in a] == [p.tolist() for p in b]
    assert all(p.shape == (12,) and p.min() >= 0 and p.max() < 97 for p in a)
    assert make_prompts(97, num=3, length=12, seed=6)[0].tolist() != a[0].tolist()
    c = make_prompts(97, num=1, length=4, seed=0, extra=[[1, 2, 3]])
    assert c[0].tolist() == [1, 2, 3] and len(c) == 2
    with pytest.raises(ValueError):
        make_prompts(97, extra=[[97]])


def test_tolerance_table():
    assert tolerance_for("torchscript", "fp32").max_rel == 1e-4
    assert tolerance_for("onnx", "fp16").max_rel == 3e-2 and tolerance_for("coreml", "fp16").max_rel == 3e-2
    assert tolerance_for("onnx", "fp16").min_greedy_agreement < 1.0
    with pytest.raises(UnsupportedError, match="known"):
        tolerance_for("torchscript", "int4")


def test_task_prompts_from_the_checkpoints_prompts_file(tmp_path):
    """The held-out prompts are data the checkpoint folder carries (examples/tasks.py writes them, the training
    script calls it); a train_log.json alone adds none: the library runs no task code."""
    import tasks  # examples/tasks.py

    assert task_prompts(tmp_path) == []
    task = {"name": "selective_copying", "seq_len": 16, "vocab_size": 12, "num_tokens_to_copy": 3}
    (tmp_path / "train_log.json").write_text(json.dumps({"task": task, "eval": {"seed": 7}}))
    assert task_prompts(tmp_path) == []
    tasks.write_validation_prompts(tmp_path, task, 7)
    p = task_prompts(tmp_path)
    assert len(p) == 2 and all(len(x) == 16 for x in p) and p == tasks.generate(task, 2, 7)[0].tolist()
    for name in ("hf-recall", "hybrid-copy"):  # the bundled examples: what their training script writes
        ck = Path(__file__).resolve().parents[2] / "examples" / name
        log = json.loads((ck / "train_log.json").read_text())
        assert task_prompts(ck) == tasks.generate(log["task"], 2, log["eval"]["seed"])[0].tolist()


# -- comparison driving runners ----------------------------------------------------------------------
class OneTokenRunner(ReferenceRunner):
    """The reference, taking one token per call (as the ONNX step graph and Core ML do)."""

    kind = "onnx"  # judged with the fp32 ONNX tolerance
    max_tokens_per_call = 1

    def run(self, input_ids, states):
        assert input_ids.shape[1] == 1
        return super().run(input_ids, states)


def test_single_step_runner_is_fed_token_by_token_and_passes(artifacts):
    _, graph, _ = artifacts["hybrid"]
    res = run_validation(OneTokenRunner(graph, batch_size=2), graph, steps=3, num_prompts=3, prompt_len=5,
                         extra_prompts=[[1, 2, 3]])
    r = res.report
    assert r["passed"], r["failures"]
    # 3 seeded prompts of 5 batched 2 + 1 (padded), the extra prompt of 3 alone: all scored once
    assert [p["index"] for p in r["prompts"]] == [0, 1, 2, 3] and len(r["prompts"][0]["ids"]) == 3
    assert all(len(p["steps"]) == 4 and len(p["reference_tokens"]) == 4 for p in r["prompts"])
    # step-by-step vs chunkwise prefill: rounding only
    assert 0 < r["summary"]["max_rel"] < 1e-5
    assert r["parameters"]["tensors"][0]["max_rel"] == 0.0


def test_judge_orders_failures_and_greedy(artifacts):
    _, graph, _ = artifacts["hf"]

    class Noisy(ReferenceRunner):
        kind = "torchscript"

        def run(self, ids, states):
            logits, st = super().run(ids, states)
            if ids.shape[1] == 1:  # decode steps only: the reference's worst token becomes the best
                worst = np.argmin(logits[:, 0], axis=-1)
                logits[np.arange(len(worst)), 0, worst] = logits.max() + 1.0
            return logits, st

    ref = ReferenceRunner(graph, 1)
    cmp = compare(ref, Noisy(graph, 1), graph, make_prompts(graph.config.vocab_size, 2, 6, 0), steps=2)
    fails = judge(cmp, tolerance_for("torchscript", "fp32"))
    assert fails and fails[0]["step"] == 1 and fails[0]["kind"] == "decode"
    assert {f["metric"] for f in fails} >= {"max_rel", "greedy_agreement"}
    assert all(p["greedy_agreement"] == pytest.approx(1 / 3) for p in cmp["prompts"])
    greedy = [f for f in fails if f["metric"] == "greedy_agreement"]
    assert [f["decisive_flips"] for f in greedy] == [[1, 2], [1, 2]]
    assert [p["steps"][0]["max_rel"] for p in cmp["prompts"]] == [0.0, 0.0]  # prefill untouched


# -- the validate command -----------------------------------------------------------------------------
def test_validate_passes_and_writes_reports(artifacts, tmp_path):
    ckpt, _, art = artifacts["hf"]
    res = invoke("validate", art, "--checkpoint", ckpt, "--report", tmp_path / "rep", "--steps", 4)
    assert res.exit_code == 0, res.output
    assert res.output.startswith("validation PASS: torchscript fp32")
    r = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert r["passed"] and r["failures"] == [] and r["settings"]["steps"] == 4
    assert r["summary"]["max_rel"] <= 1e-4 and r["summary"]["greedy_agreeing"] == r["summary"]["greedy_picks"] == 15
    assert "NaN" not in (tmp_path / "rep" / "report.json").read_text()
    md = (tmp_path / "rep" / "report.md").read_text()
    assert md.startswith("# Validation PASS") and "| step | kind | max abs | max rel |" in md
    html = (tmp_path / "rep" / "report.html").read_text()
    svg = html[html.index("<svg"):html.index("</svg>") + 6]
    root = ET.fromstring(svg)
    assert len(root.findall("{http://www.w3.org/2000/svg}polyline")) == 3  # one line per prompt


def test_validate_default_report_dir(artifacts, tmp_path):
    ckpt, graph, _ = artifacts["hybrid"]
    art = emit(graph, TorchScriptOptions(precision="fp16"), tmp_path / "m.pt").path
    res = invoke("validate", art, "--checkpoint", ckpt, "--steps", 2, "--prompts", 1)
    assert res.exit_code == 0, res.output
    assert "torchscript fp16" in res.output
    r = json.loads((tmp_path / "m.pt.report" / "report.json").read_text())
    assert r["tolerance"]["precision"] == "fp16" and r["summary"]["max_rel"] > 0


@pytest.fixture(scope="module")
def broken(artifacts, tmp_path_factory):
    """The hybrid artifact with one weight perturbed (block 1's sLSTM input weights), saved as TorchScript
    and canonicalised as the emitter does: only a weight differs from an export, so it passes the check
    that its code is xlstm-export's and is judged by the tolerance."""
    from xlstm_export.torchscript.emit import canonical_archive

    ckpt, graph, art = artifacts["hybrid"]
    extra = {IO_KEY: ""}
    m = torch.jit.load(str(art), _extra_files=extra)
    with torch.no_grad():
        p = dict(m.named_parameters())["blocks.1.w_in"]
        p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(0)))
    d = tmp_path_factory.mktemp("broken")
    torch.jit.save(m, str(d / "raw.pt"), _extra_files=extra)
    canonical_archive(d / "raw.pt", d / "broken.pt")
    return ckpt, graph, d / "broken.pt"


def test_broken_artifact_fails_with_exit_1_and_says_where(broken, tmp_path):
    ckpt, _, art = broken
    res = CliRunner().invoke(main, ["validate", str(art), "--checkpoint", str(ckpt), "--report",
                                    str(tmp_path / "rep")])
    assert res.exit_code == 1, res.output
    assert "validation FAIL" in res.output
    err = res.output  # CliRunner mixes stderr in
    assert "blocks.1.w_in" in err and "blocks.1.slstm" in err and "prompt 0, prefill" in err
    r = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert not r["passed"] and r["failures"]
    loc = r["localisation"]
    assert loc["differing_parameters"][0]["name"] == "blocks.1.w_in"
    assert [t["name"] for t in loc["differing_parameters"]] == ["blocks.1.w_in"]
    # block 0 (mLSTM) is untouched: the first state that diverges is block 1's
    assert loc["first_diverging_state"]["block"] == 1
    assert all(s["after_prefill"]["max_rel"] < 1e-5 for s in r["states"] if s["block"] == 0)
    assert loc["first_failure"]["step"] == 0 and loc["first_failure"]["prompt"] == 0
    md = (tmp_path / "rep" / "report.md").read_text()
    assert md.startswith("# Validation FAIL") and "## Where" in md and "blocks.1.w_in" in md


def test_broken_artifact_raises_parity_error_from_the_api(broken):
    _, graph, art = broken
    res = validate_artifact(art, graph, steps=1, num_prompts=1)
    assert not res.passed
    with pytest.raises(ParityError, match="blocks.1.w_in"):
        res.raise_if_failed()


def test_validate_exit_2_on_bad_input(artifacts, tmp_path):
    ckpt_hf, _, art_hf = artifacts["hf"]
    ckpt_hy, graph_hy, art_hy = artifacts["hybrid"]
    res = invoke("validate", tmp_path / "missing.pt", "--checkpoint", ckpt_hf)
    assert res.exit_code == 2 and "no such artifact" in res.output
    res = invoke("validate", art_hf, "--checkpoint", ckpt_hy)  # an artifact of another checkpoint
    assert res.exit_code == 2 and "different model" in res.output and "profile.family" in res.output
    assert not Path(str(art_hf) + ".report").exists()  # nothing judged, nothing written
    (tmp_path / "x.bin").write_bytes(b"0")
    res = invoke("validate", tmp_path / "x.bin", "--checkpoint", ckpt_hf)
    assert res.exit_code == 2 and "unknown artifact kind" in res.output
    (tmp_path / "junk.pt").write_bytes(b"not a zip")
    res = invoke("validate", tmp_path / "junk.pt", "--checkpoint", ckpt_hf)
    assert res.exit_code == 2 and "not a loadable TorchScript" in res.output
    # a TorchScript module without the I/O contract
    from xlstm_export.torchscript import script_model

    torch.jit.save(script_model(graph_hy), str(tmp_path / "bare.pt"))
    res = invoke("validate", tmp_path / "bare.pt", "--checkpoint", ckpt_hy)
    assert res.exit_code == 2 and IO_KEY in res.output


class FakeTarget:
    """A target whose runner is the reference (what validation needs of a target: open_runner)."""

    def open_runner(self, path, graph, **opts):
        return ReferenceRunner(graph, **opts)


def test_registry_detects_kind_and_takes_a_new_runner(artifacts, monkeypatch, tmp_path):
    _, graph, art = artifacts["hf"]
    assert detect_kind("a.pt") == "torchscript" and detect_kind("m.mlpackage") == "coreml"
    assert detect_kind("m.onnx") == "onnx"
    with pytest.raises(ArtifactError):
        detect_kind("m.gguf")
    # what a target adds: one registration (its suffix and runner among the rest)
    from xlstm_export import targets

    fake = type("Fake", (FakeTarget, targets.Target), {})("fake", "a fake target", (".ref",), (), (), lambda: None)
    monkeypatch.setitem(targets.TARGETS, "fake", fake)
    (tmp_path / "m.ref").write_bytes(b"")
    runner = open_artifact(tmp_path / "m.ref", graph, batch_size=2)
    assert runner.batch_size == 2 and runner.kind == "reference"
    assert open_artifact(art, graph).kind == "torchscript"


# -- export commands validate by default --------------------------------------------------------------
def test_torchscript_command_validates_by_default(checkpoint_factory, tmp_path):
    ckpt = checkpoint_factory("hybrid_slstm_only")
    res = invoke("torchscript", "--checkpoint", ckpt, "-o", tmp_path / "m.pt", "--steps", 2,
                 "--report", tmp_path / "rep")
    assert res.exit_code == 0, res.output
    lines = res.output.strip().splitlines()
    assert lines[0].startswith("wrote ") and lines[1].startswith("validation PASS: torchscript fp32")
    assert (tmp_path / "rep" / "report.html").exists()
    res = invoke("torchscript", "--checkpoint", ckpt, "-o", tmp_path / "m.pt")
    assert res.exit_code == 2 and "already exists" in res.output
    res = invoke("torchscript", "--checkpoint", ckpt, "-o", tmp_path / "n.pt", "--no-validate", "--precision", "bf16")
    assert res.exit_code == 0 and "validation" not in res.output


def test_greedy_flip_on_a_near_tie_is_not_counted():
    tol = tolerance_for("torchscript", "fp16")

    def cmp_with(margins):
        steps = [{"step": i, "kind": "decode", "max_rel": 0.0, "cosine": 1.0} for i in range(len(margins))]
        return {"prompts": [{"index": 0, "steps": steps, "pick_margins": margins}]}

    assert judge(cmp_with([0.0, tol.tie_margin / 2, 0.0]), tol) == []  # 2/3 raw, but the flip is a tie
    fails = judge(cmp_with([0.0, tol.tie_margin * 2, 0.0]), tol)
    assert [(f["metric"], f["decisive_flips"]) for f in fails] == [("greedy_agreement", [1])]
