"""The ONNX prefill graph (``--prefill-chunk T``): parity on every checkpoint format at prompt lengths that
are and are not multiples of T, the last-logits-only variant, weights stored once with the step graph's,
the Core ML EP partition, and the runner's call plan. Figures are printed with -s."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from xlstm_export.errors import ArtifactError, UnsupportedError
from xlstm_export.onnx import OnnxOptions, OnnxRunner
from xlstm_export.onnx.emit import emit
from xlstm_export.onnx.emit import prefill_path_for
from xlstm_export.validation import tolerance_for
from xlstm_export.validation import validate_artifact
from xlstm_export.validation.compare import max_rel
from xlstm_export.validation.reference_runner import ReferenceRunner

from test_onnx import usability

T = 8
FP32_TOL = tolerance_for("onnx-prefill", "fp32").max_rel  # 1e-4, the bound
# every checkpoint format: transformers, xlstm's xLSTM-Large, xlstm's hybrid xLSTMLMModel (safetensors and .pt)
FORMATS = ["hf", "large", "large_bias", "hybrid", "hybrid_pt", "profile"]  # profile: our JSON profile + canonical safetensors, of the hybrid fixture


@pytest.fixture(scope="module")
def exported(graph_of, exports):
    """``exported(name, **options) -> (graph, Artifact)``: with the prefill graph (T), from the session cache."""
    return lambda name, **opts: (graph_of(name), exports(name, "onnx", **{"prefill_chunk": T, **opts}))


@pytest.mark.parametrize("name", FORMATS)
def test_prefill_matches_the_reference_on_every_format(exported, name):
    graph, art = exported(name)
    res = validate_artifact(art.path, graph, steps=3, num_prompts=1, prompt_len=5)
    r = res.report
    lengths = sorted(len(p["ids"]) for p in r["prompts"])
    assert r["settings"]["prefill_prompt_lengths"] == [1, T - 1, T, 3 * T + 5]
    assert {1, T - 1, T, 3 * T + 5} <= set(lengths)
    assert r["artifact"]["kind"] == "onnx-prefill"
    long = next(p for p in r["prompts"] if len(p["ids"]) == 3 * T + 5)
    calls = long["steps"][0]["calls"]
    assert [c["via"] for c in calls] == ["prefill"] * 3 + ["step"] * 5
    worst_prefill = max(c["max_rel"] for p in r["prompts"] for c in p["steps"][0]["calls"] if c["via"] == "prefill")
    print(f"\n[{name} onnx prefill T={T} fp32] max rel {r['summary']['max_rel']:.2e} (prefill calls "
          f"{worst_prefill:.2e}), greedy {r['summary']['greedy_agreeing']}/{r['summary']['greedy_picks']}")
    assert res.passed, res.summary_line()
    assert r["summary"]["max_rel"] <= FP32_TOL and worst_prefill <= FP32_TOL


def test_prefill_states_equal_the_step_graphs(exported):
    """One prefill call leaves the states T step calls leave (the same contract, the same recurrence)."""
    graph, art = exported("hybrid")
    runner = OnnxRunner(art.path, graph)
    ids = np.random.default_rng(3).integers(0, graph.config.vocab_size, (1, T))
    pre_logits, pre_states = runner._call_prefill(ids, runner.init_states())
    states, logits = runner.init_states(), []
    for t in range(T):
        lg, states = runner._call(ids[:, t:t + 1], states)
        logits.append(lg)
    assert max_rel(pre_logits, np.concatenate(logits, 1)) <= 1e-5
    for a, b in zip(pre_states, states):
        assert max_rel(a, b) <= 1e-5


def test_last_logits_only(exported):
    graph, art = exported("hf", last_logits_only=True)
    m = onnx.load(str(art.files[1]), load_external_data=False)
    logits = next(o for o in m.graph.output if o.name == "logits")
    assert [d.dim_value for d in logits.type.tensor_type.shape.dim] == [1, 1, graph.config.vocab_size]
    runner = OnnxRunner(art.path, graph)
    assert runner.logit_positions(3 * T + 2).tolist() == [T - 1, 2 * T - 1, 3 * T - 1, 3 * T, 3 * T + 1]
    ids = np.random.default_rng(0).integers(0, graph.config.vocab_size, (1, 2 * T + 1))
    out, _ = runner.run(ids, runner.init_states())
    ref, _ = ReferenceRunner(graph, 1).run(ids, ReferenceRunner(graph, 1).init_states())
    pos = runner.logit_positions(ids.shape[1])
    assert np.isnan(out[0, 0]).all() and not np.isnan(out[:, pos]).any()
    assert max_rel(out[:, pos], ref[:, pos]) <= FP32_TOL
    res = validate_artifact(art.path, graph, steps=2, num_prompts=1, prompt_len=5)
    assert res.passed, res.summary_line()


def test_weights_are_written_once_for_both_graphs(exported):
    graph, art = exported("hf")
    step, pre, data = art.files[:3]  # then the checkpoint's generation_config.json beside them
    assert pre == prefill_path_for(step) and data.name == "model.onnx.data"
    weights = art.stats["weight_bytes"]
    print(f"\n[hf step + prefill] data {data.stat().st_size} B for {weights} B of weights; step file "
          f"{step.stat().st_size} B, prefill file {pre.stat().st_size} B; prefill reuses "
          f"{art.stats['prefill_shared_bytes']} B, {art.stats['prefill_inline_bytes']} B inline")
    assert art.stats["prefill_shared_bytes"] == art.stats["external_bytes"]
    assert data.stat().st_size < weights + 4096 * art.stats["tensors"]  # once, with 4 KiB alignment
    assert pre.stat().st_size < weights / 4  # nodes, the T x T constants, small tensors: no weights
    for f in (step, pre):  # both graphs point into the one data file
        locations = {e.value for i in onnx.load(str(f), load_external_data=False).graph.initializer
                     for e in i.external_data if e.key == "location"}
        assert locations == {data.name}


@pytest.mark.parametrize("name", ["hf", "hybrid"])
def test_prefill_graph_is_one_coreml_partition(exported, name):
    _, art = exported(name)
    u = usability(art.files[1])
    share = u["supported"] / u["nodes"]
    print(f"\n[{name} prefill T={T}] Core ML MLProgram: {u['partitions']} partition, {u['supported']}/{u['nodes']} "
          f"nodes ({share:.1%}); unsupported: {u['unsupported']}")
    assert u["partitions"] == 1 and u["supported"] == u["nodes"] - 1 and u["unsupported"] == "ai.onnx:Gather"


def test_batch_of_two(exported):
    graph, art = exported("hybrid", batch_size=2)
    res = validate_artifact(art.path, graph, steps=2, num_prompts=2, prompt_len=5)
    assert res.passed and res.report["summary"]["max_rel"] <= FP32_TOL, res.summary_line()


def test_fp16_prefill(exported):
    graph, art = exported("hybrid", precision="fp16")
    res = validate_artifact(art.path, graph, steps=2, num_prompts=1, prompt_len=5)
    assert res.passed, res.summary_line()


@pytest.mark.parametrize("chunk, match", [(0, "positive integer"), (-3, "positive integer"), (2.5, "positive integer"),
                                          (True, "positive integer"), (5000, "exceeds 1024"),
                                          (33, "context_length 32")])
def test_bad_chunks_are_refused_before_writing(graph_of, tmp_path, chunk, match):
    graph = graph_of("hybrid")  # context_length 32
    with pytest.raises(UnsupportedError, match=match):
        emit(graph, OnnxOptions(prefill_chunk=chunk), tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []


def test_prefill_with_scan_or_last_only_without_chunk_is_refused(graph_of, tmp_path):
    graph = graph_of("hf")
    with pytest.raises(UnsupportedError, match="choose one"):
        emit(graph, OnnxOptions(prefill_chunk=4, scan=True), tmp_path / "m.onnx")
    with pytest.raises(UnsupportedError, match="add --prefill-chunk"):
        emit(graph, OnnxOptions(last_logits_only=True), tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []


def test_a_missing_or_foreign_prefill_companion_is_an_artifact_error(exported, checkpoint_factory, tmp_path):
    graph, art = exported("hf")
    step, pre, data = art.files[:3]  # then the checkpoint's generation_config.json beside them
    import shutil

    d = tmp_path / "copy"
    d.mkdir()
    shutil.copy(step, d / step.name)
    shutil.copy(data, d / data.name)
    with pytest.raises(ArtifactError, match="prefill graph .* is missing"):
        OnnxRunner(d / step.name, graph)
    # the prefill graph of another chunk size under the expected name
    _, other = exported("hf", last_logits_only=True)
    shutil.copy(other.files[1], d / pre.name)
    with pytest.raises(ArtifactError, match="not the prefill graph"):
        OnnxRunner(d / step.name, graph)
    # opening the prefill file opens its step graph
    assert OnnxRunner(pre, graph).path == step
