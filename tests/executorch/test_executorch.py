"""The ExecuTorch target: ``.pte`` programs lowered to XNNPACK, executed here by ``executorch.runtime``, on every
checkpoint format; the prefill method; the Core ML delegate (built here, run only on macOS); bad options.
Each export spends 20-60 s in XNNPACK lowering, so every program is exported once per session and shared with
the other modules (``exports`` in tests/conftest.py).
The CLI export (quiet, one line per result) is tested on a quantized program in test_executorch_quantize.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("executorch", reason="the executorch extra is not installed")

import xlstm_export as xe  # noqa: E402
from xlstm_export.errors import ArtifactError, ConfigError, RuntimeUnavailable, UnsupportedError  # noqa: E402
from xlstm_export.executorch.runner import ExecuTorchRunner  # noqa: E402
from xlstm_export.validation import tolerance_for  # noqa: E402
from xlstm_export.validation import validate_artifact  # noqa: E402


T = 4  # the prefill chunk: prompts of 1, 3, 4, 17 tokens cover prefill-only, step-only and mixed calls;
# small, because the prefill method's lowering (the unrolled sLSTM above all) is most of an export's time
FP32 = tolerance_for("executorch", "fp32").max_rel  # 1e-4
# every checkpoint format -> (the program validated against it, its prefill chunk). profile is the hybrid
# fixture saved in our profile format (one graph, checked below): a program is a function of the graph, so it
# is exported once (the session cache, conftest.py) and validated against each format's graph. (hybrid_pt is
# another model: tied weights.) The prefill method is validated on the hybrid program (mLSTM chunkwise and
# sLSTM prefill, hybrid and profile rows); the hf program is the step alone, the one the parity matrix
# validates too (tests/lowering/test_parity_matrix.py: one export for both).
FORMATS = {"hf": ("hf", None), "large": ("large", None), "hybrid": ("hybrid", T), "hybrid_pt": ("hybrid_pt", None),
           "profile": ("hybrid", T)}


@pytest.fixture(scope="module")
def programs(graph_of, exports):
    """``programs(name, prefill_chunk=None, **options) -> (graph, Artifact)``: from the session's export cache."""
    return lambda name, prefill_chunk=None, **opts: (graph_of(name), exports(name, "executorch",
                                                                              prefill_chunk=prefill_chunk, **opts))


def _same_graph(a, b) -> bool:
    from xlstm_export.frontends import load_weight

    return (a.to_profile(informational=False) == b.to_profile(informational=False) and set(a.weights) == set(b.weights)
            and all(np.array_equal(load_weight(a.weights[n]), load_weight(b.weights[n])) for n in a.weights))


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_pte_matches_the_reference_on_every_format(programs, graph_of, name):
    source, chunk = FORMATS[name]
    _, art = programs(source, prefill_chunk=chunk)
    graph = graph_of(name)
    if source != name:
        assert _same_graph(graph, graph_of(source))  # what makes the shared program this format's program
    res = validate_artifact(art.path, graph, steps=4, num_prompts=2, prompt_len=6)
    r = res.report
    print(f"\n[{name} executorch xnnpack fp32{' + prefill %d' % chunk if chunk else ''}] max rel "
          f"{r['summary']['max_rel']:.2e}, greedy {r['summary']['greedy_agreeing']}/{r['summary']['greedy_picks']}, "
          f"{art.stats['bytes']} B (weights {art.stats['weight_bytes']} B); run by {r['artifact']['runtime']}")
    assert res.passed, res.summary_line()
    assert r["summary"]["max_rel"] <= FP32
    assert r["summary"]["greedy_agreeing"] == r["summary"]["greedy_picks"]  # greedy equal
    assert r["artifact"]["kind"] == ("executorch-prefill" if chunk else "executorch")
    if chunk:
        assert r["settings"]["prefill_prompt_lengths"] == [1, T - 1, T, 3 * T + 5]
        vias = {c["via"] for p in r["prompts"] for c in p["steps"][0]["calls"]}
        assert vias == {"prefill", "step"}


def test_prefill_method_leaves_the_states_the_step_leaves(programs):
    graph, art = programs("hybrid", prefill_chunk=T)
    runner = ExecuTorchRunner(art.path, graph)
    ids = np.random.default_rng(4).integers(0, graph.config.vocab_size, (1, T))
    pre_logits, pre_states = runner._call_prefill(ids, runner.init_states())
    states, logits = runner.init_states(), []
    for t in range(T):
        lg, states = runner._call(ids[:, t:t + 1], states)
        logits.append(lg)
    assert np.abs(pre_logits - np.concatenate(logits, 1)).max() <= 1e-4 * np.abs(pre_logits).max()
    for a, b in zip(pre_states, states):
        assert np.abs(a - b).max() <= 1e-4 * max(np.abs(b).max(), 1e-6)


def test_the_contract_travels_inside_the_program(programs, graph_of):
    graph, art = programs("hybrid", prefill_chunk=T)
    runner = ExecuTorchRunner(art.path, graph)
    assert runner.contract["prefill"] == {"function": "prefill", "chunk": T, "last_logits_only": False}
    assert runner.contract["backend"] == "xnnpack" and runner.runtime.startswith("ExecuTorch ")
    other = graph_of("hf")
    with pytest.raises(ArtifactError, match="different model"):
        ExecuTorchRunner(art.path, other)


def test_not_a_program_is_an_artifact_error(tmp_path, graph_of):
    graph = graph_of("hf")
    bad = tmp_path / "x.pte"
    bad.write_bytes(b"\x00" * 64)
    with pytest.raises(ArtifactError, match="cannot load it"):
        ExecuTorchRunner(bad, graph)


def test_coreml_delegate_builds_here_and_runs_only_on_macos(checkpoint_factory, graph_of, tmp_path):
    ck = checkpoint_factory("hybrid_mlstm_only")
    out = tmp_path / "m.pte"
    res = subprocess.run([sys.executable, "-m", "xlstm_export", "executorch", "--checkpoint", str(ck), "-o", str(out),
                          "--backend", "coreml"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "(executorch, fp16," in res.stdout and "validation skipped:" in res.stdout and "only on macOS" in res.stdout
    assert res.stderr == ""
    res = subprocess.run([sys.executable, "-m", "xlstm_export", "validate", str(out), "--checkpoint", str(ck)],
                         capture_output=True, text=True)
    assert res.returncode == 2 and res.stderr.strip().endswith("validate it there"), res.stderr
    graph = graph_of("hybrid_mlstm_only")
    with pytest.raises(RuntimeUnavailable):
        ExecuTorchRunner(out, graph)


@pytest.mark.parametrize("opts, match", [({"backend": "vulkan"}, "backend must be one of"),
                                         ({"precision": "fp16"}, "xnnpack backend computes in fp32"),
                                         ({"batch_size": 0}, r"--batch-size: 0 is not in the range 1<="),
                                         ({"prefill_chunk": 64}, "context_length 32")])
def test_bad_options_are_refused_before_writing(graph_of, tmp_path, opts, match):
    graph = graph_of("hybrid")
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises((UnsupportedError, ConfigError), match=match):  # the API's option ranges: ConfigError
        xe.export(graph, "executorch", out / "m.pte", **opts)
    assert list(out.iterdir()) == []


def test_force_replaces_our_program_but_not_a_foreign_pte(tmp_path):
    from xlstm_export.outputs import foreign_reason
    from xlstm_export.targets import TARGETS

    ours = tmp_path / "ours.pte"
    ours.write_bytes(b"<\x00\x00\x00ET12" + b"\x00" * 100 + b"xlstm_export_io" + b"\x00" * 10)
    theirs = tmp_path / "theirs.pte"
    theirs.write_bytes(b"<\x00\x00\x00ET12" + b"\x00" * 200)
    target = TARGETS["executorch"]
    assert foreign_reason(ours, target.foreign_reason) is None
    assert foreign_reason(theirs, target.foreign_reason) == "not an ExecuTorch program written by xlstm-export"


def test_a_contract_claiming_another_precision_is_refused_unless_trusted(programs, tmp_path):
    """The declared precision picks the tolerance: an XNNPACK (fp32) program claiming fp16 is refused."""
    import shutil

    from xlstm_export.executorch.verify import open_runner

    graph, art = programs("hf")
    data = art.path.read_bytes()
    assert data.count(b'"precision":"fp32"') == 1
    lie = tmp_path / "lie.pte"
    lie.write_bytes(data.replace(b'"precision":"fp32"', b'"precision":"fp16"'))
    with pytest.raises(ArtifactError, match="precision"):
        open_runner(lie, graph)
    assert open_runner(lie, graph, trust_artifact=True).precision == "fp16"  # as it describes itself
    shutil.copy(art.path, tmp_path / "ok.pte")
    assert open_runner(tmp_path / "ok.pte", graph).precision == "fp32"


def test_the_step_runs_in_one_xnnpack_partition(programs):
    """passes.py keeps view-like ops and norm means inside XNNPACK, the log-sigmoid is traced in elementary
    ops (kernels.elementary_logsigmoid) and q.n is a matmul: the hf fixture's step is 1 delegate call and
    the embedding lookup outside it (was 18 calls around 34 portable ops, then 5 around log1p/full/sum)."""
    from xlstm_export.executorch.passes import delegation

    _, art = programs("hf")
    d = delegation(art.path.read_bytes())
    print(f"\n[hf step] {d}")
    assert d == {"delegate_calls": 1, "portable_ops": {"aten::embedding.out": 1}}


@pytest.mark.parametrize("name, groups", [("hf", 4), ("hybrid", 5), ("large", 4)])
def test_fused_linears_compute_the_reference(graph_of, name, groups):
    """fuse.py (applied to fp32 XNNPACK programs before torch.export): each group of linear layers that read
    one tensor becomes one op on stacked rows, and the model's logits stay the reference's to fp32 rounding
    (the same dot products; measured <= 1e-6 of max |logit|)."""
    import torch

    from xlstm_export.executorch.fuse import Stacked, fuse_shared_input_linears
    from xlstm_export.reference import build_model

    graph = graph_of(name)
    ref, fused = build_model(graph, device="cpu").eval(), build_model(graph, device="cpu").eval()
    assert fuse_shared_input_linears(fused) == groups
    assert sum(isinstance(m, Stacked) for m in fused.modules()) == groups
    ids = torch.from_numpy(np.random.default_rng(0).integers(0, graph.config.vocab_size, (1, 9)))
    with torch.no_grad():
        a, b = ref(ids).numpy(), fused(ids).numpy()
    assert float(np.abs(a - b).max() / np.abs(a).max()) <= 1e-5
