"""Core ML target: packages of upstream-made fixtures, read back from disk and executed op by op.

Each package is built once per session (``exports`` in tests/conftest.py, shared with the other modules). Parity runs the SAVED package (``CoreMLRunner`` -> executor over the
program coremltools reads back from disk) against the fp32 reference: a prompt fed one token per call,
then greedy decode steps, states carried across calls.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from xlstm_export.coreml.emit import CoreMLOptions, contract_for, emit
from xlstm_export.coreml.backend import stored_states
from xlstm_export.coreml.policy import POLICIES
from xlstm_export.lowering import core_ml_name
from xlstm_export.coreml.runner import CoreMLRunner, read_contract
from xlstm_export.errors import ArtifactError, OutputError, UnsupportedError
from xlstm_export.frontends import load_checkpoint
from xlstm_export.reference import build_model
from xlstm_export.contract import check_contract
from xlstm_export.validation import tolerance_for
from xlstm_export.validation.compare import max_rel as _rel

FIXTURES = ("hf", "large", "hybrid", "hybrid_slstm_only")
FP16 = tolerance_for("coreml", "fp16")  # the one tolerance table
FP16_MAX_REL = FP16.max_rel
PROMPT_LEN, DECODE_STEPS = 10, 8
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture(scope="module")
def packages(graph_of, exports):
    """name -> (graph, package path, Artifact): the session's export (fp16, batch 1, with its Swift package)."""
    def get(name: str):
        art = exports(name, "coreml", precision="fp16")
        return graph_of(name), art.path, art

    return get


def _compare(graph, runner, prompt: np.ndarray, steps: int):
    """Prompt one token per call, then ``steps`` greedy steps teacher-forced with the reference's tokens.
    Returns per-step rel errors and the fraction of greedy picks that agree."""
    ref = build_model(graph)
    B = prompt.shape[0]
    with torch.no_grad():
        r_logits, r_states = ref.forward_with_states(torch.from_numpy(prompt), ref.init_states(B))
    states = runner.init_states()
    a_last = None
    for t in range(prompt.shape[1]):
        a_last, states = runner.run(prompt[:, t:t + 1], states)
    rels = [_rel(a_last[:, -1], r_logits[:, -1].numpy())]
    agree = [bool((a_last[:, -1].argmax(-1) == r_logits[:, -1].numpy().argmax(-1)).all())]
    nxt = r_logits[:, -1].argmax(-1, keepdim=True)  # (B, 1)
    for _ in range(steps):
        with torch.no_grad():
            r_logits, r_states = ref.forward_with_states(nxt, r_states)
        a_logits, states = runner.run(nxt.numpy(), states)
        rels.append(_rel(a_logits[:, -1], r_logits[:, -1].numpy()))
        agree.append(bool((a_logits[:, -1].argmax(-1) == r_logits[:, -1].numpy().argmax(-1)).all()))
        nxt = r_logits[:, -1].argmax(-1, keepdim=True)
    return rels, float(np.mean(agree)), states, [s.numpy() for s in r_states]


@pytest.mark.parametrize("name", FIXTURES)
def test_package_declares_fp16_states_of_the_contract(packages, name):
    import coremltools as ct
    from coremltools.proto import FeatureTypes_pb2 as ft

    graph, path, art = packages(name)
    model = ct.models.MLModel(str(path), skip_model_load=True)  # loads back with coremltools
    spec = model.get_spec()
    assert spec.WhichOneof("Type") == "mlProgram" and spec.specificationVersion >= 9  # iOS18
    (inp,), (out,) = spec.description.input, spec.description.output
    assert inp.name == "input_ids" and list(inp.type.multiArrayType.shape) == [1, 1]
    assert inp.type.multiArrayType.dataType == ft.ArrayFeatureType.INT32
    assert out.name == "logits" and list(out.type.multiArrayType.shape) == [1, 1, graph.config.vocab_size]
    declared = {s.name: s.type for s in spec.description.state}
    contract = graph.state_contract(1)
    stored = stored_states(graph, 1, POLICIES["fp16"])  # the contract's, + low parts of split states
    assert list(declared) == [cm for _, cm, _, _ in stored]
    assert [cm for _, cm, _, of in stored if of is None] == [core_ml_name(s.name) for s in contract]
    for s in contract:
        t = declared[core_ml_name(s.name)]
        assert t.WhichOneof("Type") == "stateType"
        assert t.stateType.arrayType.dataType == ft.ArrayFeatureType.FLOAT16
        assert tuple(t.stateType.arrayType.shape) == s.shape
    for key, cm, shape, of in stored:  # every stored state: fp16, the shape of the state it is part of
        assert declared[cm].stateType.arrayType.dataType == ft.ArrayFeatureType.FLOAT16
        assert tuple(declared[cm].stateType.arrayType.shape) == shape
    # the saved program reads and writes every state, each write once
    fn = spec.mlProgram.functions["main"]
    ops = fn.block_specializations[fn.opset].operations
    written = [o.inputs["input"].arguments[0].name for o in ops if o.type == "write_state"]
    read = {o.inputs["input"].arguments[0].name for o in ops if o.type == "read_state"}
    assert sorted(written) == sorted(declared) and read == set(declared)
    assert art.stats["op_types"]["write_state"] == len(stored)
    # conservative for the device: every tensor of the step has rank <= 4, and no op beyond the executor's
    from xlstm_export.coreml.executor import ProgramExecutor

    ex = ProgramExecutor(path)
    assert max(len(v.shape) for op in ex.ops for v in op.outputs) <= 4


# ops per decode step of the fp16 packages on main before the shared lowering (one MIL program per target,
# written by hand): the shared lowering must not make the device program longer
OPS_BEFORE = {"hf": 260, "hybrid": 329}


@pytest.mark.parametrize("name", sorted(OPS_BEFORE))
def test_ops_per_step_do_not_grow(packages, name):
    _, _, art = packages(name)
    print(f"\n[{name} fp16] Core ML ops per decode step: {art.stats['ops_per_step']} (before: {OPS_BEFORE[name]})")
    assert art.stats["ops_per_step"] <= OPS_BEFORE[name]


@pytest.mark.parametrize("name", FIXTURES)
def test_metadata_for_xcode(packages, name):
    graph, path, _ = packages(name)
    contract, spec = read_contract(path)
    md = spec.description.metadata
    assert md.author and md.license and md.versionString and md.shortDescription
    assert "com.github.apple.coremltools.conversion_date" not in md.userDefined
    check_contract(contract, graph, str(path))  # the io contract names this checkpoint's model
    assert contract == json.loads(json.dumps(contract_for(graph, CoreMLOptions())))
    assert [s["input"] for s in contract["states"]] == [core_ml_name(s.name) for s in graph.state_contract(1)]
    assert all(s["output"] is None and s["dtype"] == "float16" for s in contract["states"])
    parts = {s["part_of"]: s["input"] for s in contract["extra_states"]}  # low parts of split states
    assert parts == {s.name: core_ml_name(s.name) + "_lo" for s in graph.state_contract(1)
                     if POLICIES["fp16"].storage(s.role).split}
    features = list(spec.description.input) + list(spec.description.output) + list(spec.description.state)
    assert all(f.shortDescription for f in features), [f.name for f in features if not f.shortDescription]


@pytest.mark.parametrize("name", FIXTURES)
def test_saved_package_matches_reference(packages, name):
    graph, path, _ = packages(name)
    runner = CoreMLRunner(path, graph, backend="executor")
    assert runner.max_tokens_per_call == 1 and runner.precision == "fp16"
    prompt = np.random.default_rng(1).integers(0, graph.config.vocab_size, size=(1, PROMPT_LEN))
    rels, agree, states, ref_states = _compare(graph, runner, prompt, DECODE_STEPS)
    assert max(rels) <= FP16_MAX_REL, rels
    assert agree == 1.0
    for a, r, s in zip(states, ref_states, graph.state_contract(1)):
        assert a.shape == r.shape == s.shape
        assert _rel(a, r) < 3e-2, s.name


OTHER_FORMATS = ("hf_sharded", "hf_fused", "hf_tied", "large_bias", "hybrid_mlstm_only", "hybrid_pt",
                 "hybrid_cuda_layout", "profile")


@pytest.mark.parametrize("name", OTHER_FORMATS)
def test_every_checkpoint_format_exports(graph_of, exports, name):
    """Every format the frontends read (and its variants: shards, fused gates, tied/bias/no out-norm,
    .pt, cuda sLSTM layout, our profile) gives a package that loads back and matches the reference."""
    graph = graph_of(name)
    path = exports(name, "coreml").path
    runner = CoreMLRunner(path, graph, backend="executor")
    prompt = np.random.default_rng(4).integers(0, graph.config.vocab_size, size=(1, 6))
    rels, agree, _, _ = _compare(graph, runner, prompt, 3)
    assert max(rels) <= FP16_MAX_REL and agree == 1.0, rels


def test_states_are_the_reference_contract(packages):
    """States handed in from the reference (rounded to fp16) continue the sequence: same layout, same meaning."""
    graph, path, _ = packages("hybrid")
    ref = build_model(graph)
    ids = np.random.default_rng(2).integers(0, graph.config.vocab_size, size=(1, 12))
    with torch.no_grad():
        _, mid = ref.forward_with_states(torch.from_numpy(ids[:, :11]), ref.init_states(1))
        want, _ = ref.forward_with_states(torch.from_numpy(ids[:, 11:]), mid)
    runner = CoreMLRunner(path, graph, backend="executor")
    got, _ = runner.run(ids[:, 11:], [s.numpy() for s in mid])
    assert _rel(got, want.numpy()) < 1e-2


def test_states_carry_across_calls(packages):
    graph, path, _ = packages("hf")
    runner = CoreMLRunner(path, graph, backend="executor")
    ids = np.array([[5, 17, 3, 5]])
    zero = runner.init_states()
    a, s1 = runner.run(ids[:, :1], zero)
    b, s2 = runner.run(ids[:, :1], s1)  # same token, the context differs
    assert not np.allclose(a, b)
    assert all(np.abs(x).max() > 0 for x in s1) and any(not np.array_equal(x, y) for x, y in zip(s1, s2))
    again, _ = runner.run(ids[:, :1], zero)  # zeros are the empty context again
    np.testing.assert_array_equal(again, a)
    whole, s_whole = runner.run(ids, zero)  # several tokens in one call == one per call
    parts, s = [], zero
    for t in range(ids.shape[1]):
        lg, s = runner.run(ids[:, t:t + 1], s)
        parts.append(lg)
    np.testing.assert_array_equal(whole, np.concatenate(parts, axis=1))
    for x, y in zip(s_whole, s):
        np.testing.assert_array_equal(x, y)


def test_executor_reads_the_package_from_disk(packages, tmp_path):
    graph, path, _ = packages("large")
    copy = tmp_path / "copy.mlpackage"
    shutil.copytree(path, copy)
    ids = np.array([[1, 2, 3]])
    good, _ = CoreMLRunner(copy, graph, backend="executor").run(ids, CoreMLRunner(copy, graph).init_states())
    _, spec = read_contract(copy)
    fn = spec.mlProgram.functions["main"]
    const = next(o for o in fn.block_specializations[fn.opset].operations
                 if o.type == "const" and o.outputs[0].name == "lm_head_weight")
    offset = const.attributes["val"].blobFileValue.offset  # its blob: 64 bytes of metadata, then the data
    weights = copy / "Data" / "com.apple.CoreML" / "weights" / "weight.bin"
    raw = bytearray(weights.read_bytes())
    raw[offset + 64: offset + 64 + 2048] = bytes(2048)  # zero the first 1024 fp16 values of lm_head
    weights.write_bytes(bytes(raw))
    bad, _ = CoreMLRunner(copy, graph, backend="executor").run(ids, CoreMLRunner(copy, graph).init_states())
    assert not np.allclose(good, bad)


def test_export_is_byte_reproducible(packages, checkpoint_factory, tmp_path):
    graph, path, _ = packages("hybrid")
    again = tmp_path / "again.mlpackage"
    emit(load_checkpoint(checkpoint_factory("hybrid")), CoreMLOptions(precision="fp16"), again)
    files = sorted(p.relative_to(path) for p in path.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    assert len(files) == 3  # Manifest.json, model.mlmodel, weight.bin
    for f in files:
        assert (path / f).read_bytes() == (again / f).read_bytes(), f
    manifest = json.loads((path / "Manifest.json").read_text())
    assert manifest["rootModelIdentifier"] in manifest["itemInfoEntries"]


def test_swift_snippet_names_the_package_features(packages):
    graph, path, art = packages("hybrid")
    swift = path.with_name(path.stem + "-swift")
    assert art.files == (path, swift) and (swift / "Package.swift").is_file()
    from xlstm_export.coreml.swift import module_name

    mod = module_name(path.name)
    text = (swift / "Sources" / mod / f"{mod}.swift").read_text()  # the adapter (Core/ is the shared core)
    _, spec = read_contract(path)
    for f in list(spec.description.input) + list(spec.description.output) + list(spec.description.state):
        assert f'"{f.name}"' in text or f" {f.name} " in text, f.name
    for needle in ("import CoreML", "makeState()", "prediction(from: input, using: state)",
                   '"input_ids"', '"logits"'):
        assert needle in text, needle


def test_batch_and_fp32_package(checkpoint_factory, tmp_path):
    graph = load_checkpoint(checkpoint_factory("large"))
    path = tmp_path / "b2.mlpackage"
    art = emit(graph, CoreMLOptions(precision="fp32", batch_size=2, swift=False), path)
    assert art.files == (path,) and not path.with_name(path.stem + "-swift").exists()
    runner = CoreMLRunner(path, graph, backend="executor")
    assert runner.batch_size == 2 and runner.precision == "fp32"
    prompt = np.random.default_rng(3).integers(0, graph.config.vocab_size, size=(2, 6))
    rels, agree, _, _ = _compare(graph, runner, prompt, 4)
    assert max(rels) < 5e-3 and agree == 1.0  # fp32 compute; only the fp16 state storage rounds
    with pytest.raises(UnsupportedError, match="batch size 2"):
        CoreMLRunner(path, graph, batch_size=1)


def test_output_is_atomic_and_options_are_checked(packages, checkpoint_factory, tmp_path):
    graph, path, _ = packages("hf")
    with pytest.raises(OutputError, match="already exists"):
        emit(graph, CoreMLOptions(), path)
    with pytest.raises(UnsupportedError, match="precision"):
        emit(graph, CoreMLOptions(precision="int4"), tmp_path / "x.mlpackage")
    with pytest.raises(UnsupportedError, match="batch size"):
        emit(graph, CoreMLOptions(batch_size=0), tmp_path / "x.mlpackage")
    with pytest.raises(UnsupportedError, match=".mlpackage"):
        emit(graph, CoreMLOptions(), tmp_path / "x.mlmodel")
    assert not list(tmp_path.iterdir())
    other = load_checkpoint(checkpoint_factory("large"))
    with pytest.raises(ArtifactError, match="different model"):
        CoreMLRunner(path, other)


def _task_batch(ckpt: Path, n_tokens: int, count: int):
    """``count`` rows of held-out task sequences (the example's eval seed), each ``n_tokens`` long (short task
    sequences back to back), with their targets (-100 where nothing is scored)."""
    import tasks  # examples/tasks.py

    info = json.loads((ckpt / "train_log.json").read_text())
    t, seed = info["task"], int(info["eval"]["seed"])
    per = max(1, n_tokens // t["seq_len"])
    ids, tgt = tasks.generate(t, count * per, seed)
    return ids.reshape(count, per * t["seq_len"])[:, :n_tokens], tgt.reshape(count, per * t["seq_len"])[:, :n_tokens]


@pytest.mark.parametrize("example", ["hf-recall", "hybrid-copy"])
def test_trained_example_greedy_agreement_over_64_tokens(example, graph_of, exports):
    """The trained examples, on held-out task sequences of 64 tokens fed one token per call: at every position
    the task scores, the package's greedy pick is the reference's (and the right answer); at every other
    position too, except where the reference's own top two are within the fp16 tie margin."""
    ckpt = EXAMPLES / example
    if not (ckpt / "train_log.json").exists():
        pytest.skip(f"{ckpt} is not trained yet (examples/train_examples.py)")
    graph = graph_of(example)
    runner = CoreMLRunner(exports(example, "coreml", precision="fp16").path, graph, backend="executor")
    ids, targets = _task_batch(ckpt, 64, 4)
    with torch.no_grad():
        ref = build_model(graph)(torch.from_numpy(ids)).numpy()  # (4, 64, V)
    for row in range(ids.shape[0]):
        states, got = runner.init_states(), []
        for t in range(ids.shape[1]):
            lg, states = runner.run(ids[row:row + 1, t:t + 1], states)
            got.append(lg[0, 0])
        got = np.stack(got)  # (64, V)
        r = ref[row]
        assert _rel(got, r) <= FP16_MAX_REL
        picks, want = got.argmax(-1), r.argmax(-1)
        scored = targets[row] != -100
        assert scored.sum() > 0
        np.testing.assert_array_equal(picks[scored], want[scored])
        assert (want[scored] == targets[row][scored]).mean() >= 0.9  # the example does its task
        top2 = np.sort(r, -1)[:, -2:]
        near_tie = (top2[:, 1] - top2[:, 0]) <= FP16.tie_margin * np.abs(r).max(-1)
        assert np.all((picks == want) | near_tie), np.where(picks != want)


def test_cli_coreml_exports_and_validates(checkpoint_factory, tmp_path):
    from click.testing import CliRunner

    from xlstm_export.cli import main

    ckpt = str(checkpoint_factory("hybrid_slstm_only"))
    out = tmp_path / "m.mlpackage"
    res = CliRunner().invoke(main, ["coreml", "--checkpoint", ckpt, "-o", str(out), "--steps", "3",
                                    "--compute-units", "cpu_and_gpu", "--report", str(tmp_path / "report")])
    assert res.exit_code == 0, res.output
    assert "wrote" in res.output and "validation PASS: coreml fp16" in res.output
    assert out.is_dir() and (tmp_path / "m-swift" / "Package.swift").is_file() and (tmp_path / "report" / "report.json").is_file()
    _, spec = read_contract(out)
    assert spec.description.metadata.userDefined["xlstm_export.compute_units"] == "cpu_and_gpu"
    again = CliRunner().invoke(main, ["coreml", "--checkpoint", ckpt, "-o", str(out), "--no-validate"])
    assert again.exit_code == 2 and "already exists" in again.output


def _synthetic_large_checkpoint(d: Path, blocks: int = 6, E: int = 1024, V: int = 1024) -> Path:
    """An L-family profile checkpoint of many medium tensors, written one tensor at a time (seeded noise)."""
    from xlstm_export.frontends.profile import save_profile_checkpoint
    from xlstm_export.graphs import FFNSpec, Graph, MLSTMBlock, ModelConfig, NormSpec, WeightHandle, WeightStore
    from xlstm_export.graphs.names import model_weights

    rms = NormSpec(kind="rmsnorm", eps=1e-6)
    blk = MLSTMBlock(num_heads=4, qk_head_dim=E // 8, v_head_dim=E // 4, norm=rms,
                     head_norm=NormSpec(kind="layernorm", eps=1e-6), form="large", gate_soft_cap=15.0,
                     ffn=FFNSpec(up_dim=2752, activation="silu", norm=rms))
    cfg = ModelConfig(family="large", vocab_size=V, embedding_dim=E, out_norm=rms, output_logit_soft_cap=30.0)
    handles = {}
    for i, (name, shape) in enumerate(model_weights(cfg, (blk,) * blocks).items()):
        def loader(shape=shape, seed=i):
            return (np.random.default_rng(seed).standard_normal(shape, dtype=np.float32) * 0.02)
        handles[name] = WeightHandle(name, tuple(shape), "float32", "<synthetic>", loader)
    save_profile_checkpoint(Graph(cfg, (blk,) * blocks, WeightStore(handles)), d)
    return d


@pytest.mark.slow
def test_export_memory_is_about_one_copy_of_the_weights(tmp_path):
    """Peak RSS of an export (fresh process) minus its RSS before: the package's weights (held once, as the
    program's constants) + one tensor's float32 transient + small fixed overhead, not a second copy."""
    sys.path.insert(0, str(EXAMPLES.parent / "benchmarks"))
    from coreml_precision import export_memory

    ckpt = _synthetic_large_checkpoint(tmp_path / "big")
    r = export_memory(str(ckpt), str(tmp_path / "big.mlpackage"))
    w, largest = r["package_weight_bytes"], r["largest_tensor_fp32_bytes"]
    assert r["checkpoint_bytes"] > 250e6 and 0.49 < w / r["checkpoint_bytes"] < 0.52  # fp16 package, fp32 ckpt
    assert r["export_bytes"] < w + 2 * largest + 48e6, r  # a second copy of the weights would add >= 150 MB


def test_macos_runtime_path_with_a_stand_in_for_core_ml(packages, monkeypatch):
    """The runner's Core ML branch (make_state / write_state / predict(state=) / read_state), driven by a
    stand-in for coremltools' MLModel that runs the same package with the executor: same figures as the
    executor branch, states written once per context (not per call), split states joined."""
    import coremltools as ct

    from xlstm_export.coreml.executor import ProgramExecutor

    writes = []

    class State:
        def __init__(self, ex):
            self.values = {n: v.copy() for n, v in ex.states.items()}

        def write_state(self, name, value):
            assert value.dtype == np.float16
            writes.append(name)
            self.values[name] = value.copy()

        def read_state(self, name):
            return self.values[name].copy()

    class Model:
        def __init__(self, path):
            self.ex = ProgramExecutor(path)

        def make_state(self):
            self.ex.reset_states()
            return State(self.ex)

        def predict(self, feed, state):
            self.ex.states = dict(state.values)
            out = self.ex.predict(feed)
            state.values = dict(self.ex.states)
            return out

    graph, path, _ = packages("hybrid")
    real = ct.models.MLModel  # still used (skip_model_load=True) to read specs and by the executor

    def model(path, compute_units=None, **kw):
        return real(path, **kw) if kw.get("skip_model_load") else Model(path)

    monkeypatch.setattr(ct.models, "MLModel", model)
    mac = CoreMLRunner(path, graph, backend="coreml")
    lin = CoreMLRunner(path, graph, backend="executor")
    ids = np.random.default_rng(5).integers(0, graph.config.vocab_size, size=(1, 5))
    s_mac, s_lin = mac.init_states(), lin.init_states()
    for t in range(ids.shape[1]):
        a, s_mac = mac.run(ids[:, t:t + 1], s_mac)
        b, s_lin = lin.run(ids[:, t:t + 1], s_lin)
        np.testing.assert_array_equal(a, b)
    for x, y in zip(s_mac, s_lin):
        np.testing.assert_array_equal(x, y)
    n_buffers = len(mac.core_ml_names) + len(mac.low_parts)
    assert len(writes) == n_buffers  # one fresh context written once; later calls reuse the MLState
