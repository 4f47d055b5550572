"""Compressed weights in ONNX graphs (``--quantize int8|int4``, ``quantize_format`` matmulnbits | qdq).

Each export of the tiny ``hf`` fixture (hidden 128, vocab 97; the LM head split in row blocks of 64 to
cover the split) is run in ONNX Runtime and checked three ways: the weights the runner decodes from the
initializers (our numpy code) equal ``quantize(...).dequantize()``; the compressed weights are exactly
the ones the policy names; the logits equal our reference built on those dense weights, within the fp32
tolerance (what the graph computes is what it stores). Figures are printed with -s.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from xlstm_export.errors import ArtifactError, UnsupportedError
from xlstm_export.frontends import load_checkpoint
from xlstm_export.graphs.io import IO_KEY
from xlstm_export.graphs.weights import WeightStore, constant
from xlstm_export.onnx.policy import policy_for
from xlstm_export.lowering.inventory import weight_specs
from xlstm_export.lowering.quant import Compression, quantize, weight_use
from xlstm_export.onnx.emit import OnnxOptions, emit
from xlstm_export.onnx.builder import pack_nibbles, unpack_nibbles
from xlstm_export.onnx.verify import open_runner
from xlstm_export.reference import build_model
from xlstm_export.validation import tolerance_for
from xlstm_export.validation.compare import max_rel as rel

B = 2
HEAD_BLOCK = 64  # vocab 97 -> LM head blocks of 64 + 33 rows
FP32_TOL = tolerance_for("onnx", "fp32").max_rel
FP16_TOL = tolerance_for("onnx", "fp16").max_rel
CASES = [("matmulnbits", "int8", True), ("matmulnbits", "int4", True), ("matmulnbits", "int4", False),
         ("qdq", "int8", True), ("qdq", "int4", True), ("qdq", "int4", False)]
IDS = [f"{f}-{s}{'' if sym else '-asym'}" for f, s, sym in CASES]


@pytest.fixture(scope="module")
def graph(graph_of):
    return graph_of("hf")


@pytest.fixture(scope="module")
def exported(exports):
    """``exported(fmt, scheme, symmetric, **options) -> (Artifact, Compression)``: from the session cache."""
    def get(fmt, scheme, symmetric, **kw):
        comp = Compression(scheme, 32, symmetric)
        opts = dict(batch_size=B, lm_head_block=HEAD_BLOCK, compression=comp, quantize_format=fmt)
        return exports("hf", "onnx", **{**opts, **kw}), comp

    return get


def expected_dense(graph, comp) -> dict:
    """Canonical name -> ``quantize(...).dequantize()`` of each weight the policy compresses (unsplit; the
    embedding and LM head from their own specs, as a tied pair is compressed twice)."""
    from xlstm_export.lowering.model import vocab_weights

    out = {}
    for spec in [*weight_specs(graph, policy_for("fp32"), B), *vocab_weights(graph)]:
        scheme = comp.scheme_for(spec)
        if scheme is not None:
            out[spec.sources[0]] = quantize(graph, spec, scheme, comp).dequantize()
    return out


def reference_on(graph, dense: dict):
    handles = dict(graph.weights.items())
    for name, arr in dense.items():
        handles[name] = constant(name, arr)
    return build_model(dataclasses.replace(graph, weights=WeightStore(handles)), device="cpu")


def run_session(runner, ref, vocab: int, prompt: int = 9, decode: int = 3):
    """A prompt then greedy decode steps, states carried in both; the max rel error of the logits."""
    ids = np.random.default_rng(0).integers(0, vocab, size=(B, prompt), dtype=np.int64)
    st_a, st_r, errs, cur = runner.init_states(), ref.init_states(B), [], ids
    for _ in range(decode + 1):
        got, st_a = runner.run(cur, st_a)
        with torch.no_grad():
            want, st_r = ref.forward_with_states(torch.from_numpy(cur), st_r)
        errs.append(rel(got, want.numpy()))
        cur = want[:, -1].argmax(-1, keepdim=True).numpy()
    return max(errs)


@pytest.mark.parametrize("fmt, scheme, symmetric", CASES, ids=IDS)
def test_decoded_weights_and_logits(exported, graph, fmt, scheme, symmetric):
    art, comp = exported(fmt, scheme, symmetric)
    runner = open_runner(art.path, graph)  # verify: the compressed nodes are the policy's
    assert runner.precision == art.precision == f"fp32+{scheme}"
    dense = runner.compressed_weights(graph)
    want = expected_dense(graph, comp)
    assert sorted(dense) == sorted(want)
    for name, arr in want.items():
        assert dense[name].dtype == np.float32 and dense[name].shape == arr.shape
        np.testing.assert_array_equal(dense[name], arr, err_msg=name)
    err = run_session(runner, reference_on(graph, dense), graph.config.vocab_size)
    nodes = [n.op_type for n in onnx.load(str(art.path), load_external_data=False).graph.node]
    print(f"\n[hf {fmt} {comp.label()}{'' if symmetric else ' asym'}] {len(dense)} weights compressed, "
          f"{art.stats['weight_bytes']} B of weights; max rel logits vs the reference on the decoded weights "
          f"{err:.2e}; {nodes.count('MatMulNBits')} MatMulNBits, {nodes.count('DequantizeLinear')} DequantizeLinear")
    assert err <= FP32_TOL


def test_the_policy_decides_which_weights_are_compressed(exported, graph):
    art, comp = exported("matmulnbits", "int4", True)
    dense = open_runner(art.path, graph).compressed_weights(graph)
    specs = weight_specs(graph, policy_for("fp32"), B)
    uses = {s.sources[0]: weight_use(s) for s in specs}
    assert {uses[n] for n in dense} == {"linear", "lm_head", "embedding"}
    kept = {s.key for s in specs if weight_use(s) == "gates"}  # the stacked input/forget gate projections
    assert kept and not kept & set(dense)
    m = onnx.load(str(art.path), load_external_data=False)
    inits = {i.name: i for i in m.graph.initializer}
    assert inits["embedding.weight.codes"].data_type == onnx.TensorProto.INT8
    assert [i for i in inits if i.startswith("lm_head.weight.")] == [
        "lm_head.weight.0.codes", "lm_head.weight.0.scales", "lm_head.weight.1.codes", "lm_head.weight.1.scales"]
    for name in kept:
        assert inits[name].data_type == onnx.TensorProto.FLOAT


def test_int4_is_packed_two_per_byte_as_onnx_reads_it(exported, graph):
    """Our writer's INT4 / UINT4 initializers decode with onnx's own reader to our codes."""
    from onnx import numpy_helper

    for symmetric in (True, False):
        art, comp = exported("qdq", "int4", symmetric)
        m = onnx.load(str(art.path))
        t = next(i for i in m.graph.initializer if i.name == "blocks.0.mlstm.q.weight.codes")
        assert t.data_type == (onnx.TensorProto.INT4 if symmetric else onnx.TensorProto.UINT4)
        assert len(t.raw_data) == int(np.prod(t.dims)) // 2
        spec = next(s for s in weight_specs(graph, policy_for("fp32"), B) if s.key == t.name[:-6])
        q = quantize(graph, spec, comp.scheme_for(spec), comp)
        np.testing.assert_array_equal(numpy_helper.to_array(t).astype(np.int16), q.codes.T.astype(np.int16))
    v = np.array([-8, 7, -1, 0, 3], dtype=np.int8)
    np.testing.assert_array_equal(unpack_nibbles(pack_nibbles(v), 5, True), v)
    assert pack_nibbles(np.array([1, 2], dtype=np.uint8)).tolist() == [0x21]  # element 0 in the low nibble


def test_prefill_and_step_share_the_compressed_weights(exported, graph):
    art, comp = exported("matmulnbits", "int4", False, prefill_chunk=4)
    step = art.path  # the files also name the text files the checkpoint carries (generation_config.json)
    pre = next(f for f in art.files if f.name.endswith(".prefill.onnx"))
    data = next(f for f in art.files if f.name.endswith(".onnx.data"))
    assert art.stats["prefill_shared_bytes"] == art.stats["external_bytes"] > 0
    refs = []
    for f in (step, pre):
        m = onnx.load(str(f), load_external_data=False)
        refs.append({i.name: tuple((e.key, e.value) for e in i.external_data) for i in m.graph.initializer
                     if i.name.endswith(".codes") and i.external_data})
    assert refs[0] and refs[0] == refs[1]  # the same bytes of the one data file
    runner = open_runner(step, graph)
    assert runner.kind == "onnx-prefill"
    dense = runner.compressed_weights(graph)
    err = run_session(runner, reference_on(graph, dense), graph.config.vocab_size)
    print(f"\n[hf prefill T=4 + step, int4 asym] data {data.stat().st_size} B; max rel logits {err:.2e}")
    assert err <= FP32_TOL


@pytest.mark.parametrize("fmt", ["matmulnbits", "qdq"])
def test_scan_graph_carries_the_compressed_weights(exported, graph, fmt):
    art, comp = exported(fmt, "int4", True, scan=True)
    runner = open_runner(art.path, graph)
    err = run_session(runner, reference_on(graph, runner.compressed_weights(graph)), graph.config.vocab_size)
    print(f"\n[hf scan {fmt} int4] max rel logits {err:.2e}")
    assert err <= FP32_TOL


@pytest.mark.parametrize("name, fmt, scheme", [("hybrid", "matmulnbits", "int4"), ("hybrid", "qdq", "int8"),
                                               ("hybrid_pt", "qdq", "int4")])
def test_hybrid_with_slstm_blocks(checkpoint_factory, tmp_path, name, fmt, scheme):
    """mLSTM + sLSTM blocks (headwise weights kept, FFN projections compressed), block 16; ``hybrid_pt``
    ties the LM head to the embedding: two compressed weights (int8 table, the head in the scheme)."""
    graph = load_checkpoint(checkpoint_factory(name))
    comp = Compression(scheme, 16, False)
    art = emit(graph, OnnxOptions(batch_size=B, compression=comp, quantize_format=fmt), tmp_path / "h.onnx")
    runner = open_runner(art.path, graph)
    dense = runner.compressed_weights(graph)
    want = expected_dense(graph, comp)
    assert sorted(dense) == sorted(want) and len(want) > 4 and {"embedding.weight", "lm_head.weight"} <= set(dense)
    for name, arr in want.items():
        np.testing.assert_array_equal(dense[name], arr, err_msg=name)
    err = run_session(runner, reference_on(graph, dense), graph.config.vocab_size)
    print(f"\n[{name} {fmt} {comp.label()}] {len(dense)} weights compressed; max rel logits {err:.2e}")
    assert err <= FP32_TOL


def test_fp16_with_int4(exported, graph):
    art, comp = exported("matmulnbits", "int4", True, precision="fp16")
    runner = open_runner(art.path, graph)
    assert runner.precision == "fp16+int4"
    m = onnx.load(str(art.path), load_external_data=False)
    assert next(i for i in m.graph.initializer if i.name == "lm_head.weight.0.scales").data_type == \
        onnx.TensorProto.FLOAT16
    err = run_session(runner, reference_on(graph, runner.compressed_weights(graph)), graph.config.vocab_size)
    print(f"\n[hf step fp16 + int4] max rel logits {err:.2e}")
    assert err <= FP16_TOL


def test_qdq_graph_opset_and_core_ml_share(exported, graph):
    """The qdq form raises the opset to 21 (blocked DequantizeLinear); ORT's checker: one Core ML
    partition, only DequantizeLinear and the embedding's Gathers left out."""
    art, _ = exported("qdq", "int4", True)
    m = onnx.load(str(art.path), load_external_data=False)
    assert next(o.version for o in m.opset_import if o.domain == "") == 21 and m.ir_version <= 13
    mnb, _ = exported("matmulnbits", "int4", True)
    m2 = onnx.load(str(mnb.path), load_external_data=False)
    assert {(o.domain, o.version) for o in m2.opset_import} == {("", 20), ("com.microsoft", 1)}
    res = subprocess.run([sys.executable, "-m", "onnxruntime.tools.check_onnx_model_mobile_usability",
                          "--log_level", "debug", str(art.path)], capture_output=True, text=True, timeout=300)
    section = (res.stdout + res.stderr).split("Checking CoreML MLProgram", 1)[-1]
    import re

    got = re.search(r"(\d+) partitions with a total of (\d+)/(\d+) nodes", section)
    unsupported = re.search(r"Unsupported ops: (.*)", section).group(1).strip()
    print(f"\n[hf qdq int4] Core ML MLProgram: {got.group(1)} partition(s), {got.group(2)}/{got.group(3)} nodes; "
          f"unsupported: {unsupported}")
    assert got.group(1) == "1" and unsupported == "ai.onnx:DequantizeLinear,ai.onnx:Gather"


def test_verify_refuses_a_contract_that_misstates_the_compression(exported, graph, tmp_path):
    art, comp = exported("matmulnbits", "int4", True)
    m = onnx.load(str(art.path))
    prop = next(p for p in m.metadata_props if p.key == IO_KEY)
    for change in ({"quantize_format": "qdq"}, {"quantize": {**comp.to_json(), "keep": ["*.ffn.*"]}},
                   {"quantize": None, "quantize_format": None}):
        io = {**json.loads(prop.value), **change}
        io = {k: v for k, v in io.items() if v is not None}
        prop.value = json.dumps(io)
        path = tmp_path / f"edited{len(change)}-{sorted(change)[0]}.onnx"
        onnx.save(m, str(path))
        with pytest.raises(ArtifactError, match="not the graph xlstm-export writes") as e:
            open_runner(path, graph)
        assert "\n" not in str(e.value)


@pytest.mark.parametrize("scheme, block, fmt, match", [
    ("lut4", 32, "matmulnbits", "Core ML only"),
    ("lut6", 32, "qdq", "Core ML only"),
    ("int4", 24, "qdq", "does not divide the input dim 128"),
    ("int4", 8, "matmulnbits", "power of two >= 16"),
    ("int8", 32, "int3", "--quantize-format must be one of"),
])
def test_bad_option_combinations_are_one_line_before_writing(graph, tmp_path, scheme, block, fmt, match):
    path = tmp_path / "model.onnx"
    with pytest.raises(UnsupportedError, match=match) as e:
        emit(graph, OnnxOptions(compression=Compression(scheme, block), quantize_format=fmt), path)
    assert "\n" not in str(e.value) and e.value.exit_code == 2
    assert not path.exists() and not list(tmp_path.iterdir())
