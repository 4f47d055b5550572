"""The ONNX emitter: step and Scan graphs against our reference and upstream, fp16, the Core ML EP
partition (ORT's own usability checker), the LM head split, external data, the file itself, the CLI.

Every graph is exported once per session (``exports`` in tests/conftest.py). Figures are printed with -s.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from xlstm_export.errors import ArtifactError, OutputError, UnsupportedError
from xlstm_export.frontends import load_checkpoint
from xlstm_export.graphs.io import IO_KEY
from xlstm_export.onnx import OnnxOptions, OnnxRunner
from xlstm_export.onnx.emit import emit
from xlstm_export.onnx.builder import COREML_OPS
from xlstm_export.onnx.emit import state_output_name
from xlstm_export.reference import build_model
from xlstm_export.validation import tolerance_for
from xlstm_export.validation.compare import max_rel as rel

FIXTURES = ["hf", "large", "hybrid", "hybrid_slstm_only"]
B = 2
PROMPT = 12
DECODE = 4
FP32_TOL = tolerance_for("onnx", "fp32").max_rel  # 1e-4
FP16_TOL = tolerance_for("onnx", "fp16").max_rel  # 3e-2


@pytest.fixture(scope="module")
def graphs(graph_of):
    return graph_of


@pytest.fixture(scope="module")
def exported(exports):
    """``exported(name, scan=False, precision="fp32", **options) -> Artifact``: batch B, from the session cache."""
    return lambda name, scan=False, precision="fp32", **kw: exports(name, "onnx-scan" if scan else "onnx",
                                                                    batch_size=B, precision=precision, **kw)


@pytest.fixture(scope="module")
def references(graphs):
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = build_model(graphs(name), device="cpu")
        return cache[name]

    return get


def prompt_ids(vocab: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, vocab, size=(B, PROMPT), dtype=np.int64)


def session(runner: OnnxRunner, ref, vocab: int):
    """A prompt then DECODE greedy steps (the reference's picks), states carried between calls in both.

    Returns (max rel logits over the calls, max rel over the final states, all ids fed, artifact logits).
    """
    ids = prompt_ids(vocab)
    st_a = runner.init_states()
    st_r = ref.init_states(B)
    errs, fed, got_all = [], [ids], []
    cur = ids
    for step in range(DECODE + 1):
        got, st_a = runner.run(cur, st_a)
        with torch.no_grad():
            want, st_r = ref.forward_with_states(torch.from_numpy(cur), st_r)
        errs.append(rel(got, want.numpy()))
        got_all.append(got)
        cur = want[:, -1].argmax(-1, keepdim=True).numpy()
        if step < DECODE:
            fed.append(cur)
    state_err = max(rel(a, r.numpy()) for a, r in zip(st_a, st_r))
    return max(errs), state_err, np.concatenate(fed, 1), np.concatenate(got_all, 1)


# -- parity --------------------------------------------------------------------------------------
@pytest.mark.parametrize("scan", [False, True], ids=["step", "scan"])
@pytest.mark.parametrize("name", FIXTURES)
def test_fp32_matches_reference_with_states_carried(exported, references, graphs, name, scan):
    art = exported(name, scan=scan)
    onnx.checker.check_model(str(art.path), full_check=True)
    runner = OnnxRunner(art.path, graphs(name))
    assert runner.max_tokens_per_call == (None if scan else 1)
    err, state_err, _, _ = session(runner, references(name), graphs(name).config.vocab_size)
    print(f"\n[{name} {'scan' if scan else 'step'} fp32] max rel logits {err:.2e}, final states {state_err:.2e}")
    assert err <= FP32_TOL
    assert state_err <= FP32_TOL


@pytest.mark.parametrize("name", ["hf_sharded", "hf_fused", "large_bias", "hybrid_mlstm_only", "hybrid_pt",
                                  "hybrid_cuda_layout"])
def test_every_other_format_step_graph_matches_reference(exported, references, graphs, name):
    """The remaining checkpoint formats / variants (shards, fused weights, biases without out_norm, tied
    weights from a .pt state dict, the cuda sLSTM layout, mLSTM only): the step graph, states carried."""
    runner = OnnxRunner(exported(name).path, graphs(name))
    err, state_err, _, _ = session(runner, references(name), graphs(name).config.vocab_size)
    print(f"\n[{name} step fp32] max rel logits {err:.2e}, final states {state_err:.2e}")
    assert err <= FP32_TOL and state_err <= FP32_TOL


@pytest.mark.parametrize("name", FIXTURES)
def test_matches_upstream_logits(exported, references, graphs, upstream_factory, name):
    """The step graph, fed token by token, against upstream's own full forward over the same tokens."""
    runner = OnnxRunner(exported(name).path, graphs(name))
    _, _, ids, got = session(runner, references(name), graphs(name).config.vocab_size)
    with torch.no_grad():
        out = upstream_factory(name)(torch.from_numpy(ids))
    want = (out.logits if hasattr(out, "logits") else out[0] if isinstance(out, tuple) else out).float().numpy()
    err = rel(got, want)
    print(f"\n[{name} step fp32] vs upstream: max rel logits {err:.2e}")
    assert got.shape == want.shape
    assert err <= FP32_TOL


@pytest.mark.parametrize("scan", [False, True], ids=["step", "scan"])
@pytest.mark.parametrize("name", FIXTURES)
def test_fp16_within_table_tolerance(exported, references, graphs, name, scan):
    art = exported(name, scan=scan, precision="fp16")
    runner = OnnxRunner(art.path, graphs(name))
    assert runner.precision == "fp16"
    err, state_err, _, _ = session(runner, references(name), graphs(name).config.vocab_size)
    print(f"\n[{name} {'scan' if scan else 'step'} fp16] max rel logits {err:.2e}, final states {state_err:.2e}")
    assert err <= FP16_TOL
    # weights are fp16 in the file; the states stay fp32 (the contract says so)
    contract = runner.contract
    assert {s["dtype"] for s in contract["states"]} == {"float32"}
    m = onnx.load(str(art.path), load_external_data=False)
    emb = next(i for i in m.graph.initializer if i.name == "embedding.weight")
    assert emb.data_type == onnx.TensorProto.FLOAT16


# -- Core ML EP ----------------------------------------------------------------------------------
def usability(path: Path) -> dict:
    """ORT's mobile usability checker, its Core ML MLProgram section parsed."""
    res = subprocess.run([sys.executable, "-m", "onnxruntime.tools.check_onnx_model_mobile_usability",
                          "--log_level", "debug", str(path)], capture_output=True, text=True, timeout=300)
    log = res.stdout + res.stderr
    assert res.returncode == 0, log[-2000:]
    section = log[log.index("Checking CoreML MLProgram"):]
    m = re.search(r"(\d+) partitions with a total of (\d+)/(\d+) nodes", section)
    assert m, section[:2000]
    unsupported = re.search(r"Unsupported ops: (.*)", section)
    return {"partitions": int(m.group(1)), "supported": int(m.group(2)), "nodes": int(m.group(3)),
            "unsupported": unsupported.group(1).strip() if unsupported else ""}


@pytest.mark.parametrize("name, precision", [("hf", "fp32"), ("hybrid", "fp32"), ("hybrid", "fp16")])
def test_step_graph_is_one_coreml_partition(exported, name, precision):
    u = usability(exported(name, precision=precision).path)
    share = u["supported"] / u["nodes"]
    print(f"\n[{name} step {precision}] Core ML MLProgram: {u['partitions']} partition, "
          f"{u['supported']}/{u['nodes']} nodes ({share:.1%}); unsupported: {u['unsupported']}")
    assert u["partitions"] == 1
    assert u["supported"] == u["nodes"] - 1  # everything but the embedding lookup
    assert u["unsupported"] == "ai.onnx:Gather"


def static_value_shapes(model: onnx.ModelProto) -> dict:
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    g = inferred.graph
    shapes = {}
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        dims = vi.type.tensor_type.shape.dim
        shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    for init in g.initializer:
        shapes[init.name] = list(init.dims)
    return shapes


@pytest.mark.parametrize("name", FIXTURES)
def test_step_graph_ops_and_static_shapes(exported, name):
    """Past the embedding Gather: only Core ML EP ops, no Neg/Abs/Log, every input static and <= 16384."""
    m = onnx.load(str(exported(name).path))
    nodes = list(m.graph.node)
    assert nodes[0].op_type == "Gather" and nodes[0].name == "embedding"
    ops = {n.op_type for n in nodes[1:]}
    assert ops <= COREML_OPS, ops - COREML_OPS
    assert not ops & {"Neg", "Abs", "Log", "Gather", "Scan", "Loop", "If"}
    shapes = static_value_shapes(m)
    for n in nodes[1:]:
        for i in n.input:
            assert i in shapes, f"{n.name}: input {i} has no inferred shape"
            assert all(d is not None and d <= 16384 for d in shapes[i]), (n.name, i, shapes[i])
            assert len(shapes[i]) <= 5


def test_every_initializer_is_used_and_names_are_plain(exported):
    for art in (exported("hybrid"), exported("hybrid", scan=True, precision="fp16"), exported("hf")):
        m = onnx.load(str(art.path))
        used = set()

        def walk(g):
            for n in g.node:
                used.update(n.input)
                for a in n.attribute:
                    if a.HasField("g"):
                        walk(a.g)

        walk(m.graph)
        unused = [i.name for i in m.graph.initializer if i.name not in used]
        assert not unused, unused
        names = used | {i.name for i in m.graph.initializer} | {n.name for n in m.graph.node}
        odd = sorted(n for n in names if not re.fullmatch(r"[A-Za-z0-9_.]+", n))
        assert not odd, odd  # plain names only (they become Core ML / MIL names)


# -- LM head split -------------------------------------------------------------------------------
def test_lm_head_split_equals_unsplit(exported, graphs):
    whole = OnnxRunner(exported("hf").path, graphs("hf"))
    art = exported("hf", lm_head_block=32)  # vocab 97 -> 4 blocks of <= 32 columns
    split = OnnxRunner(art.path, graphs("hf"))
    m = onnx.load(str(art.path))
    heads = [n for n in m.graph.node if n.op_type == "Gemm" and n.name.startswith("lm_head.")]
    assert len(heads) == 4
    assert m.graph.node[-1].op_type == "Concat" and m.graph.node[-1].output[0] == "logits"
    ids = prompt_ids(97)[:, :5]
    a, sa = whole.run(ids, whole.init_states())
    b, sb = split.run(ids, split.init_states())
    assert rel(b, a) <= 1e-6
    assert all(np.array_equal(x, y) for x, y in zip(sa, sb))


def test_large_vocab_is_split_and_stays_one_partition(tmp_path):
    """vocab 20000 > 16384: the LM head is two Gemms + Concat, one Core ML partition, matches."""
    sys.path.insert(0, str(Path(__file__).parents[1]))
    from fixtures import _hf_model

    d = tmp_path / "hf20k"
    _hf_model(vocab_size=20000).save_pretrained(d)
    graph = load_checkpoint(d)
    path = tmp_path / "step.onnx"
    emit(graph, OnnxOptions(batch_size=1), path)
    m = onnx.load(str(path))
    heads = [n for n in m.graph.node if n.op_type == "Gemm" and n.name.startswith("lm_head.")]
    assert len(heads) == 2
    shapes = static_value_shapes(m)
    for n in m.graph.node[1:]:
        assert all(d <= 16384 for i in n.input for d in shapes[i]), n.name
    u = usability(path)
    print(f"\n[hf vocab 20000 step] Core ML MLProgram: {u['partitions']} partition, {u['supported']}/{u['nodes']}")
    assert u["partitions"] == 1 and u["supported"] == u["nodes"] - 1
    runner = OnnxRunner(path, graph)
    ids = np.array([[1, 19999, 16384, 7]])
    got, _ = runner.run(ids, runner.init_states())
    with torch.no_grad():
        want = build_model(graph, device="cpu")(torch.from_numpy(ids)).numpy()
    assert rel(got, want) <= FP32_TOL


# -- files ---------------------------------------------------------------------------------------
def test_external_data_loads_and_matches(exported, graphs):
    inline = exported("hybrid")
    art = exported("hybrid", external_data=True)
    data = art.path.with_name(art.path.name + ".data")
    assert art.stats["external"] and art.files == (art.path, data) and data.exists()
    assert art.path.stat().st_size < 64 * 1024 < data.stat().st_size
    onnx.checker.check_model(str(art.path), full_check=True)
    m = onnx.load(str(art.path), load_external_data=False)
    ext = [i for i in m.graph.initializer if i.data_location == onnx.TensorProto.EXTERNAL]
    assert ext, "no tensor went to the data file"
    for i in ext:
        info = {e.key: e.value for e in i.external_data}
        assert info["location"] == data.name and int(info["offset"]) % 4096 == 0
    a = OnnxRunner(inline.path, graphs("hybrid"))
    b = OnnxRunner(art.path, graphs("hybrid"))
    ids = prompt_ids(97)[:, :4]
    assert np.array_equal(a.run(ids, a.init_states())[0], b.run(ids, b.init_states())[0])


def test_external_threshold_picks_external(graphs, tmp_path):
    art = emit(graphs("hybrid_slstm_only"), OnnxOptions(external_data_threshold=1000), tmp_path / "m.onnx")
    assert art.stats["external"] and (tmp_path / "m.onnx.data").exists()


def test_bytes_are_protobufs_own_and_reproducible(graphs, tmp_path):
    g = graphs("hybrid")
    for scan in (False, True):
        a = emit(g, OnnxOptions(scan=scan, precision="fp16"), tmp_path / f"a{scan}.onnx")
        b = emit(g, OnnxOptions(scan=scan, precision="fp16"), tmp_path / f"b{scan}.onnx")
        raw = a.path.read_bytes()
        assert raw == b.path.read_bytes()
        assert onnx.load(str(a.path)).SerializeToString() == raw  # the streamed encoding is protobuf's


@pytest.mark.parametrize("scan", [False, True], ids=["step", "scan"])
def test_model_header_and_contract(exported, graphs, scan):
    art = exported("hybrid", scan=scan)
    onnx.checker.check_model(str(art.path), full_check=True)
    m = onnx.load(str(art.path))
    assert m.ir_version <= 13 and m.opset_import[0].version == 20
    assert m.producer_name == "xlstm-export" and m.producer_version
    assert "metadata_props['xlstm_export.io']" in m.doc_string
    meta = {p.key: p.value for p in m.metadata_props}
    import json

    c = json.loads(meta[IO_KEY])
    assert c["target"] == ("onnx-scan" if scan else "onnx")
    names = [s.name for s in graphs("hybrid").state_contract(B)]
    assert [s["input"] for s in c["states"]] == names
    assert [s["output"] for s in c["states"]] == [state_output_name(n) for n in names]
    assert [i.name for i in m.graph.input] == ["input_ids"] + names
    assert [o.name for o in m.graph.output] == ["logits"] + [state_output_name(n) for n in names]
    T = m.graph.input[0].type.tensor_type.shape.dim[1]
    assert (T.dim_param == "T") if scan else (T.dim_value == 1)
    ops = {n.op_type for n in m.graph.node}
    assert ("Scan" in ops) == scan


@pytest.mark.parametrize("name, opset", [("hf", 17), ("hybrid", 20), ("hybrid", 26)])
def test_other_opsets(graphs, references, tmp_path, name, opset):
    """17 is the floor (LayerNormalization); the hybrid fixture's sLSTM FFN is a GELU (opset 20)."""
    g = graphs(name)
    ref = references(name)
    ids = prompt_ids(97)[:, :6]
    with torch.no_grad():
        want = ref(torch.from_numpy(ids)).numpy()
    for scan in (False, True):
        art = emit(g, OnnxOptions(scan=scan, batch_size=B, opset=opset), tmp_path / f"m{scan}.onnx")
        onnx.checker.check_model(str(art.path), full_check=True)
        r = OnnxRunner(art.path, g)
        assert rel(r.run(ids, r.init_states())[0], want) <= FP32_TOL


def test_batch_size_one(graphs, references, tmp_path):
    g = graphs("hf")
    art = emit(g, OnnxOptions(batch_size=1), tmp_path / "b1.onnx")
    r = OnnxRunner(art.path, g)
    assert r.batch_size == 1
    ids = prompt_ids(97)[:1, :3]
    with torch.no_grad():
        want = references("hf")(torch.from_numpy(ids)).numpy()
    assert rel(r.run(ids, r.init_states())[0], want) <= FP32_TOL


# -- interfaces and errors -----------------------------------------------------------------------
@pytest.mark.parametrize("opts, what", [
    (dict(precision="bf16"), "precision"), (dict(opset=16), "opset"), (dict(opset=27), "opset"),
    (dict(batch_size=0), "batch size"), (dict(opset=19), "GELU"),
])
def test_bad_options(graphs, tmp_path, opts, what):
    with pytest.raises(UnsupportedError, match=what):
        emit(graphs("hybrid"), OnnxOptions(**opts), tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()


def test_no_clobber_without_force(graphs, tmp_path):
    p = tmp_path / "m.onnx"
    p.write_bytes(b"keep")
    with pytest.raises(OutputError, match="--force"):
        emit(graphs("hybrid_slstm_only"), OnnxOptions(), p)
    assert p.read_bytes() == b"keep"
    with pytest.raises(OutputError, match="not an artifact of xlstm-export"):  # --force replaces only ours
        emit(graphs("hybrid_slstm_only"), OnnxOptions(force=True), p)
    assert p.read_bytes() == b"keep"
    q = tmp_path / "n.onnx"
    emit(graphs("hybrid"), OnnxOptions(), q)
    emit(graphs("hybrid_slstm_only"), OnnxOptions(force=True), q)
    assert q.read_bytes() != p.read_bytes() and onnx.load(str(q)).producer_name == "xlstm-export"


def test_runner_refuses_another_checkpoint(exported, graphs):
    with pytest.raises(ArtifactError, match="different model"):
        OnnxRunner(exported("hybrid").path, graphs("hybrid_slstm_only"))
    with pytest.raises(ArtifactError, match="batch size"):
        OnnxRunner(exported("hybrid").path, graphs("hybrid"), batch_size=3)


def test_cli_writes_and_validates(checkpoint_factory, tmp_path):
    from click.testing import CliRunner

    from xlstm_export.cli import main

    out = tmp_path / "m.onnx"
    args = ["onnx", "--checkpoint", str(checkpoint_factory("hybrid")), "-o", str(out), "--scan", "--batch-size", "2",
            "--steps", "3", "--report", str(tmp_path / "report")]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    assert "onnx-scan" in res.output and "validation PASS" in res.output
    assert out.exists() and (tmp_path / "report" / "report.json").exists()
    res = CliRunner().invoke(main, args)  # exists, no --force
    assert res.exit_code == 2 and "--force" in res.output
    res = CliRunner().invoke(main, args[:-4] + ["--no-validate", "--force", "--opset", "30"])
    assert res.exit_code == 2


@pytest.mark.parametrize("scan", [False, True], ids=["step", "scan"])
def test_onnx_reference_evaluator_agrees(exported, references, scan):
    """A second ONNX implementation (onnx.reference) runs the same graph to the same logits."""
    from onnx.reference import ReferenceEvaluator

    art = exported("hybrid", scan=scan)
    ids = prompt_ids(97)[:, : 4 if scan else 1]
    feeds = {"input_ids": ids, **{s["input"]: np.zeros(s["shape"], np.float32) for s in art.contract["states"]}}
    got = ReferenceEvaluator(str(art.path)).run(["logits"], feeds)[0]
    with torch.no_grad():
        want = references("hybrid")(torch.from_numpy(ids)).numpy()
    assert rel(got, want) <= FP32_TOL
