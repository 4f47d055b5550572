"""Quantized ExecuTorch programs (``--quantize 8da8w|8da4w``, XNNPACK): the CLI export, reproducibility,
validation against the quantized module they were exported from (and that it fails for a program quantized
otherwise), task accuracy on the bundled trained examples, which weights stay fp32, bad options, and the
contract check. (Quality on text, perplexity and top-1 against the full-precision reference: test_pylm_text.py.)

Programs come from the session's export cache (``exports`` in tests/conftest.py): hf-recall 8da8w and 8da4w,
hybrid-copy 8da8w (the step; quantized prefill methods are the same quantized layers, and lowering the hybrid
prefill costs ~60 s), and one CLI export (a fresh process) that the other hf-recall 8da8w tests then use."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("executorch", reason="the executorch extra is not installed")

import xlstm_export as xe  # noqa: E402
from xlstm_export.errors import ArtifactError, UnsupportedError  # noqa: E402
from xlstm_export.executorch.emit import ExecuTorchOptions, contract_for  # noqa: E402
from xlstm_export.executorch.quantize import DEFAULT_KEEP, candidates, quantize_model  # noqa: E402
from xlstm_export.executorch.runner import ExecuTorchRunner  # noqa: E402
from xlstm_export.executorch.verify import open_runner  # noqa: E402
from xlstm_export.tolerances import FP16, FP32, INT8  # noqa: E402
from xlstm_export.validation import tolerance_for  # noqa: E402
from xlstm_export.validation import validate_artifact  # noqa: E402

EXAMPLES = {n: Path(__file__).resolve().parents[2] / "examples" / n for n in ("hf-recall", "hybrid-copy")}

T = 4  # prefill chunk (as in test_executorch.py)
ACCURACY_SLACK = 0.02  # the demo's: a program's task accuracy may trail the reference's by at most this


@pytest.fixture(scope="module")
def programs(graph_of, exports):
    """``programs(name, **options) -> (graph, Artifact)``; ``programs.adopt(name, path, **options)``."""
    def get(name: str, **opts):
        return graph_of(name), exports(name, "executorch", **opts)

    get.adopt = lambda name, path, **opts: exports.adopt(name, "executorch", path, **opts)
    return get


def test_quantized_programs_are_judged_by_int8_rounding_against_their_module():
    for kind in ("executorch", "executorch-prefill"):
        assert tolerance_for(kind, "8da8w") is INT8 and tolerance_for(kind, "8da4w") is INT8
        assert tolerance_for(kind, "fp32") is FP32 and tolerance_for(kind, "fp16") is FP16
    assert tolerance_for("onnx", "fp32") is FP32 and tolerance_for("coreml", "fp16") is FP16  # others unchanged
    with pytest.raises(UnsupportedError, match="no tolerance"):
        tolerance_for("onnx", "8da4w")


def test_cli_quantized_export_is_quiet_and_passes(programs, tmp_path_factory):
    """The CLI prints two lines (the artifact, the verdict under the int8 tolerance) and nothing on stderr. Its
    program then serves the other 8da8w tests (one export fewer); one exported earlier in this session must
    be the same bytes (reproducible across processes)."""
    out = tmp_path_factory.mktemp("et-cli") / "m.pte"
    res = subprocess.run([sys.executable, "-m", "xlstm_export", "executorch", "--checkpoint", str(EXAMPLES["hf-recall"]),
                          "-o", str(out), "--quantize", "8da8w"], capture_output=True, text=True)
    assert res.returncode == 0 and res.stderr == "", res.stderr
    lines = res.stdout.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("wrote ") and "(executorch, 8da8w," in lines[0]
    assert lines[1].startswith("validation PASS: executorch 8da8w on ExecuTorch"), lines[1]
    earlier = programs.adopt("hf-recall", out, quantize="8da8w")
    if earlier is not None:
        assert out.read_bytes() == earlier.read_bytes()


def test_quantization_is_deterministic(graph_of):
    """Two quantizations of the same weights are bit-identical (HQQ scales included): with lowering's own
    determinism (the reliability sweep's reproducibility test), what makes quantized programs byte-reproducible."""
    import torch

    from xlstm_export.executorch.quantize import plan
    from xlstm_export.reference import build_model

    graph = graph_of("hf")
    names = plan(graph, "8da4w", 32, None)
    qs, threads = [], torch.get_num_threads()
    try:
        for n in (1, 2):  # also across thread counts
            torch.set_num_threads(n)
            m = build_model(graph, device="cpu")
            quantize_model(graph, m, "8da4w", 32, names)
            qs.append([(t.qdata.numpy().tobytes(), t.scale.numpy().tobytes()) for t in
                       (mod.weight for mod in m.modules() if hasattr(getattr(mod, "weight", None), "qdata"))])
    finally:
        torch.set_num_threads(threads)
    assert len(qs[0]) == len(names) and qs[0] == qs[1]


@pytest.mark.parametrize("scheme", ["8da8w", "8da4w"])
def test_quantized_program_passes_against_the_module_it_was_exported_from(programs, scheme):
    """validate judges a quantized program against the eager module holding the same quantized weights and
    quantizing activations the same way (by the int8 entry: int8 activation rounding is what differs), and
    says so in the report's compression section; measured 4.4e-6 (8da4w) and 2.4e-3 (8da8w) of max |logit|."""
    graph, art = programs("hf-recall", quantize=scheme)
    res = validate_artifact(art.path, graph, steps=6, num_prompts=3, prompt_len=8)
    r = res.report
    print(f"\n[hf-recall executorch {scheme}] {res.summary_line()}, {art.stats['bytes']} B")
    assert r["artifact"]["precision"] == scheme and _judged_by(r, INT8)
    assert r["summary"]["max_rel"] <= 1e-2
    assert res.passed, res.summary_line()
    assert r["compression"]["scheme"] == scheme and f"quantized {scheme} (torchao)" in r["compression"]["reference"]
    assert r["reference"]["runtime"] == r["compression"]["reference"]


def test_a_program_of_other_weights_fails_validation(programs):
    """The judgement can fail: the program against a checkpoint whose FFN up projection of block 0 is
    negated (same names and shapes, so its contract checks) is far outside the int8 entry."""
    from xlstm_export.frontends import load_weight
    from xlstm_export.validation.compressed import with_weights

    graph, art = programs("hf-recall", quantize="8da8w")
    name = "blocks.0.ffn.up.weight"
    other = with_weights(graph, {name: -load_weight(graph.weights[name]).astype(np.float32)})
    res = validate_artifact(art.path, other, steps=2, num_prompts=1, prompt_len=8)
    print(f"\n[hf-recall 8da8w vs other weights] {res.summary_line()}")
    assert not res.passed and res.report["summary"]["max_rel"] > 2 * INT8.max_rel, res.summary_line()


def _judged_by(report: dict, tol) -> bool:
    return all(report["tolerance"][k] == v for k, v in tol.to_json().items())


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float((np.abs(a - b).max(-1) / np.abs(b).max(-1)).max())


@pytest.mark.parametrize("name, scheme, chunk, bound", [("hybrid-copy", "8da8w", None, 1e-3)])
def test_program_computes_the_quantized_module(programs, name, scheme, chunk, bound):
    """The lowering is faithful on the hybrid (sLSTM, conv) example: the .pte agrees with the eager module
    holding the same quantized weights (measured 5.7e-7 of max |logit|) over a full forward, and differs from
    the fp32 reference by the quantization (>= 10x the bound)."""
    import torch

    from xlstm_export.reference import build_model

    graph, art = programs(name, quantize=scheme, prefill_chunk=chunk)
    runner = ExecuTorchRunner(art.path, graph)
    model = runner.quantized_reference(graph).module  # what validation judges it against
    ref = build_model(graph, device="cpu")
    ids = np.random.default_rng(3).integers(0, graph.config.vocab_size, (1, 3 * T + 5))
    with torch.no_grad():
        want = model(torch.from_numpy(ids)).numpy()
        fp32 = ref(torch.from_numpy(ids)).numpy()
    got, _ = runner.run(ids, runner.init_states())  # prefill calls + steps when the program has prefill
    print(f"\n[{name} {scheme}] .pte vs quantized module {_rel(got, want):.2e}, vs fp32 reference {_rel(got, fp32):.2e}")
    assert _rel(got, want) <= bound
    assert _rel(got, fp32) >= 10 * bound


@pytest.mark.parametrize("name, scheme, chunk", [("hf-recall", "8da4w", None), ("hybrid-copy", "8da8w", None)])
def test_quantized_programs_keep_the_task_accuracy(programs, name, scheme, chunk):
    import tasks  # examples/tasks.py and demo.py
    from demo import artifact_accuracy, example_task, reference_accuracy

    graph, art = programs(name, quantize=scheme, prefill_chunk=chunk)
    info = example_task(EXAMPLES[name])
    ids, targets = tasks.generate(info["task"], 64, info["eval_seed"])
    want = reference_accuracy(graph, ids, targets)
    got, _ = artifact_accuracy(ExecuTorchRunner(art.path, graph), ids, targets, lambda s: None)
    print(f"\n[{name} {scheme}] task accuracy {got:.4f} (reference {want:.4f})")
    assert want >= 0.9 and got >= want - ACCURACY_SLACK


def test_default_keeps_the_gate_projections_and_the_head_fp32(graph_of):
    for name in ("hf", "hybrid"):
        graph = graph_of(name)
        chosen = contract_for(graph, ExecuTorchOptions(quantize="8da4w"))["quantization"]
        every = contract_for(graph, ExecuTorchOptions(quantize="8da4w", keep="none"))["quantization"]
        gates = {n for n in candidates(graph) if ".igate." in n or ".fgate." in n}
        assert chosen["keep"] == list(DEFAULT_KEEP) and chosen["group_size"] == 32
        assert gates and not gates & set(chosen["weights"]) and "lm_head.weight" not in chosen["weights"]
        assert set(every["weights"]) == set(candidates(graph)) == set(chosen["weights"]) | gates | {"lm_head.weight"}
        assert "embedding.weight" not in every["weights"] and not any(".conv." in n for n in every["weights"])
        writers = sorted(n for n in chosen["weights"] if n.endswith((".out_proj.weight", ".ffn.down.weight")))
        assert writers and chosen["int8_weights"] == writers  # 8da4w: the residual-stream writers in int8
        eight = contract_for(graph, ExecuTorchOptions(quantize="8da8w"))["quantization"]
        assert eight["int8_weights"] == eight["weights"] == chosen["weights"]
        only_ffn = contract_for(graph, ExecuTorchOptions(quantize="8da8w", keep="blocks.*.mlstm.*,lm_head.*"))
        assert only_ffn["quantization"]["weights"] and all(".ffn." in n for n in only_ffn["quantization"]["weights"])


@pytest.mark.parametrize("opts, match", [
    ({"quantize": "8da4w", "group_size": 48}, "positive multiple of 32"),
    ({"quantize": "8da4w", "group_size": 256}, "does not divide the input dim 128 of blocks.0.ffn.gate.weight"),
    ({"quantize": "8da8w", "group_size": 32}, "per output channel"),
    ({"quantize": "8da4w", "backend": "coreml"}, "coreml backend does not take it"),
    ({"group_size": 32}, "applies to --quantize 8da4w"),
    ({"keep": "lm_head.*"}, "applies to a quantized export"),
    ({"quantize": "8da4w", "keep": "blocks.*.mlstm.qq.*"}, "matches no weight"),
    ({"quantize": "8da4w", "keep": "*"}, "nothing to quantize"),
    ({"quantize": "8da4w", "keep": "lm_head.*,"}, "comma-separated"),
    ({"quantize": "int4"}, "must be one of none, 8da8w, 8da4w"),
    ({"quantize": "8da4w", "precision": "fp32"}, "makes an 8da4w program"),
])
def test_bad_quantize_options_are_refused_before_writing(graph_of, tmp_path, opts, match):
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(UnsupportedError, match=match):
        xe.export(graph_of("hf"), "executorch", out / "m.pte", **opts)
    assert list(out.iterdir()) == []


def test_bad_quantize_option_on_the_cli_is_one_line_exit_2(tmp_path):
    res = subprocess.run([sys.executable, "-m", "xlstm_export", "executorch", "--checkpoint", str(EXAMPLES["hf-recall"]),
                          "-o", str(tmp_path / "m.pte"), "--quantize", "8da4w", "--group-size", "256", "--keep", "none"],
                         capture_output=True, text=True)
    assert res.returncode == 2 and res.stdout == "" and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert "does not divide the input dim" in res.stderr and not (tmp_path / "m.pte").exists()


@pytest.mark.parametrize("old, new", [(b'"precision":"8da8w"', b'"precision":"8da4w"'),
                                      (b'"group_size":null', b'"group_size":1024'),
                                      (b'"keep":["*.igate.*","*.fgate.*","lm_head.*"]', b'"keep":["*.igate.*","*.fgate.*","*.ogate.*"]')])
def test_a_quantized_contract_that_is_not_ours_is_refused_unless_trusted(programs, tmp_path, old, new):
    graph, art = programs("hf-recall", quantize="8da8w")
    data = art.path.read_bytes()
    assert data.count(old) == 1
    lie = tmp_path / "lie.pte"
    lie.write_bytes(data.replace(old, new))
    with pytest.raises(ArtifactError, match="precision|quantization|contract"):
        open_runner(lie, graph)
    open_runner(lie, graph, trust_artifact=True)  # as it describes itself
    assert open_runner(art.path, graph).precision == "8da8w"
