"""The Core ML ``prefill`` function (``--prefill-chunk T``): one multifunction package, ``main`` (the decode
step) and ``prefill`` (T tokens), sharing states and weights. The saved package is read back and run op by op
by our executor (Core ML itself needs macOS): parity on every checkpoint format at prompt lengths that are and
are not multiples of T, weights stored once, ops per token, the Swift snippet. Figures are printed with -s."""

from __future__ import annotations

import numpy as np
import pytest

from xlstm_export.coreml.emit import WEIGHTS_PATH, CoreMLOptions, emit
from xlstm_export.coreml.executor import ProgramExecutor
from xlstm_export.coreml.runner import CoreMLRunner, function_description, read_contract
from xlstm_export.errors import UnsupportedError
from xlstm_export.targets import KINDS
from xlstm_export.validation import tolerance_for
from xlstm_export.validation import validate_artifact
from xlstm_export.validation.compare import max_rel

T = 8
FP16 = tolerance_for("coreml-prefill", "fp16").max_rel
FP32 = tolerance_for("coreml-prefill", "fp32").max_rel
FORMATS = ["hf", "large", "hybrid", "hybrid_pt", "profile"]  # profile: our JSON profile + canonical safetensors, of the hybrid fixture


@pytest.fixture(scope="module")
def packages(graph_of, exports):
    """``packages(name, **options) -> (graph, Artifact)``: the session's export with the prefill function (T), the
    ``coreml-prefill`` kind (as the parity matrix and the reliability tests ask for it)."""
    assert KINDS["coreml-prefill"].fixed == {"prefill_chunk": T}
    return lambda name, **opts: (graph_of(name), exports(name, "coreml-prefill", **opts))


@pytest.mark.parametrize("name", FORMATS)
def test_prefill_function_matches_the_reference(packages, name):
    graph, art = packages(name)
    res = validate_artifact(art.path, graph, steps=3, num_prompts=1, prompt_len=5)
    r = res.report
    assert r["artifact"]["kind"] == "coreml-prefill"
    assert r["settings"]["prefill_prompt_lengths"] == [1, T - 1, T, 3 * T + 5]
    pre = [c["max_rel"] for p in r["prompts"] for c in p["steps"][0]["calls"] if c["via"] == "prefill"]
    print(f"\n[{name} coreml prefill T={T} fp16, package executor] max rel {r['summary']['max_rel']:.2e} "
          f"(prefill calls {max(pre):.2e}), greedy {r['summary']['greedy_agreeing']}/{r['summary']['greedy_picks']}; "
          f"ops per token: decode {art.stats['ops_per_step']}, prefill {art.stats['prefill_ops_per_token']}")
    assert len(pre) == 1 + 3  # the T-token prompt: 1 call; 3T+5: 3 calls; the remainders went through main
    assert res.passed, res.summary_line()
    assert r["summary"]["max_rel"] <= FP16 and max(pre) <= FP16
    assert art.stats["prefill_ops_per_token"] < art.stats["ops_per_step"]


def test_fp32_prefill_function(packages):
    graph, art = packages("hybrid", precision="fp32")
    res = validate_artifact(art.path, graph, steps=2, num_prompts=1, prompt_len=5)
    print(f"\n[hybrid coreml prefill fp32, package executor] max rel {res.report['summary']['max_rel']:.2e}")
    assert res.passed and res.report["summary"]["max_rel"] <= FP32, res.summary_line()


def test_one_package_two_functions_weights_once(packages, exports):
    graph, art = packages("hf")
    contract, spec = read_contract(art.path)
    assert spec.description.defaultFunctionName == "main"
    assert [f.name for f in spec.description.functions] == ["main", "prefill"]
    main, pre = function_description(spec, "main"), function_description(spec, "prefill")
    assert [f.name for f in main.state] == [f.name for f in pre.state]
    ids = next(f for f in pre.input if f.name == "input_ids")
    assert list(ids.type.multiArrayType.shape) == [1, T]
    assert contract["prefill"] == {"function": "prefill", "chunk": T, "last_logits_only": False}
    # weight.bin holds each weight once: as large as a step-only package's
    alone = exports("hf", "coreml")
    both = art.path.joinpath(*WEIGHTS_PATH, "weight.bin").stat().st_size
    one = alone.path.joinpath(*WEIGHTS_PATH, "weight.bin").stat().st_size
    print(f"\n[hf] weight.bin: step-only {one} B, step + prefill {both} B")
    assert both <= one * 1.01 + 4096


def test_executor_runs_the_prefill_function_on_the_shared_states(packages):
    """One ``prefill`` call leaves the states T ``main`` calls leave (fp16 storage: within fp16 rounding)."""
    graph, art = packages("hybrid")
    runner = CoreMLRunner(art.path, graph, backend="executor")
    ex = runner._executor
    assert isinstance(ex, ProgramExecutor) and sorted(ex.functions) == ["main", "prefill"]
    ids = np.random.default_rng(5).integers(0, graph.config.vocab_size, (1, T)).astype(np.int32)
    out = ex.predict({"input_ids": ids}, "prefill")["logits"]
    after_prefill = runner._read_states()  # contract states, split ones joined (high + low / scale)
    ex.reset_states()
    steps = [ex.predict({"input_ids": ids[:, t:t + 1]})["logits"] for t in range(T)]
    assert out.shape == (1, T, graph.config.vocab_size)
    assert max_rel(out, np.concatenate(steps, 1)) <= 1e-2
    for name, a, b in zip(runner.state_names, runner._read_states(), after_prefill):
        assert max_rel(a, b) <= 1e-2, name


def test_last_logits_only_package(packages):
    graph, art = packages("hf", last_logits_only=True, swift=True)
    _, spec = read_contract(art.path)
    logits = next(f for f in function_description(spec, "prefill").output if f.name == "logits")
    assert list(logits.type.multiArrayType.shape) == [1, 1, graph.config.vocab_size]
    runner = CoreMLRunner(art.path, graph, backend="executor")
    assert runner.logit_positions(T + 2).tolist() == [T - 1, T, T + 1]
    res = validate_artifact(art.path, graph, steps=2, num_prompts=1, prompt_len=5)
    assert res.passed, res.summary_line()
    swift = _adapter(art)
    for needle in ('functionName = "prefill"', f"static let prefillChunk = {T}", "func prefill(",
                   "prefillModel.prediction(from: input, using: state)", f"logits float32 (1, 1, {graph.config.vocab_size})"):
        assert needle in swift, needle


def _adapter(art) -> str:
    """The generated Core ML adapter of an export's Swift package (Sources/<Module>/<Module>.swift)."""
    from xlstm_export.coreml.swift import module_name

    mod = module_name(art.path.name)
    return (art.files[1] / "Sources" / mod / f"{mod}.swift").read_text()


def test_step_only_swift_package_has_no_prefill(exports):
    art = exports("hf", "coreml")
    swift = _adapter(art)
    assert "static let prefillChunk = 0" in swift and "functionName" not in swift and "func prefill(" not in swift


@pytest.mark.parametrize("opts, match", [({"prefill_chunk": 0}, "positive integer"),
                                         ({"prefill_chunk": 2000}, "exceeds 1024"),
                                         ({"prefill_chunk": 64}, "context_length 32"),
                                         ({"last_logits_only": True}, "add --prefill-chunk")])
def test_bad_prefill_options_are_refused_before_writing(graph_of, tmp_path, opts, match):
    graph = graph_of("hybrid")
    with pytest.raises(UnsupportedError, match=match):
        emit(graph, CoreMLOptions(**opts), tmp_path / "m.mlpackage")
    assert list(tmp_path.iterdir()) == []
