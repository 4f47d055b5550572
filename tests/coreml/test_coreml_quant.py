"""Compressed Core ML weights (``--quantize``): constexpr ops written through the per-weight hook, decoded by
coremltools' own decompression in our package executor (Core ML itself needs macOS), the policy deciding
which weights are compressed, validation against the reference on the artifact's own weights, and bad
options refused with one line."""

from __future__ import annotations

import numpy as np
import pytest

from xlstm_export.coreml.emit import CoreMLOptions, emit
from xlstm_export.coreml.runner import CoreMLRunner
from xlstm_export.coreml.verify import open_runner
from xlstm_export.errors import ArtifactError, UnsupportedError
from xlstm_export.coreml.policy import policy_for
from xlstm_export.lowering.inventory import weight_specs
from xlstm_export.lowering.quant import Compression, QuantizedWeight, Scheme, gptq, kmeans_rows, quantize, rtn
from xlstm_export.validation import validate_artifact
from xlstm_export.validation.compressed import WEIGHT_RMS


@pytest.fixture(scope="module")
def packages(graph_of, exports):
    """``packages(name, compression, **options) -> (graph, Artifact)``: the session's export (no Swift package)."""
    return lambda name, comp, **opts: (graph_of(name), exports(name, "coreml", compression=comp, swift=False, **opts))


# int8 is covered by every int4 package too (the policy stores the embedding and the LM head int8)
@pytest.mark.parametrize("name,comp", [
    ("hf", Compression("int4")), ("hybrid", Compression("int4", symmetric=False)), ("large", Compression("lut4"))])
def test_compressed_package_matches_the_reference_on_its_own_weights(packages, name, comp):
    graph, art = packages(name, comp)
    assert art.precision == f"fp16+{comp.scheme}"
    r = validate_artifact(art.path, graph)
    assert r.passed, r.summary_line()
    c = r.report["compression"]
    print(f"\n{name} {comp.scheme}: max rel {r.report['summary']['max_rel']:.2e}, weight rms max {c['max_rms']:.3f} "
          f"mean {c['mean_rms']:.3f}, weight bytes {art.stats['weight_bytes']}")
    assert 0 < c["max_rms"] <= WEIGHT_RMS[comp.scheme]
    assert c["weights"] > 0


def test_decoded_weights_are_the_quantizers(packages):
    graph, art = packages("hf", Compression("int4"))
    runner = open_runner(art.path, graph)
    dense = runner.compressed_weights(graph)
    comp = Compression("int4")
    policy = policy_for("fp16")
    specs = [s for s in weight_specs(graph, policy) if comp.scheme_for(s) is not None]
    assert sorted(dense) == sorted(s.sources[0] for s in specs)
    for s in specs:
        want = quantize(graph, s, comp.scheme_for(s), comp).dequantize()
        got = dense[s.sources[0]].reshape(want.shape)
        # Core ML computes scale * code in fp16: one fp16 rounding of the product
        assert np.max(np.abs(got - want)) <= 1e-3 * np.max(np.abs(want)), s.key


def test_policy_keeps_gates_norms_and_compresses_projections(packages):
    graph, _ = packages("hf", Compression("int4"))
    comp = Compression("int4", keep=("blocks.0.*",))
    decided = {s.key: comp.scheme_for(s) for s in weight_specs(graph, policy_for("fp16"))}
    assert all(v is None for k, v in decided.items() if k.endswith(".gates.weight"))  # input/forget gates
    assert all(v is None for k, v in decided.items() if k.startswith("blocks.0."))  # --keep
    assert decided["embedding.weight"] == Scheme("int8", 32, True)
    assert any(v == Scheme("int4", 32, True) for k, v in decided.items() if k.startswith("blocks.1."))
    assert all(v is None for k, v in decided.items() if "norm" in k)


def test_packages_are_smaller_and_byte_reproducible(packages, checkpoint_factory, tmp_path):
    graph, q4 = packages("hf", Compression("int4"))
    assert q4.stats["weight_bytes"] < 0.5 * graph.num_params * 2  # vs fp16 weights
    again = emit(graph, CoreMLOptions(compression=Compression("int4"), swift=False), tmp_path / "again.mlpackage")
    a = sorted((p.relative_to(q4.path), p.read_bytes()) for p in q4.path.rglob("*") if p.is_file())
    b = sorted((p.relative_to(again.path), p.read_bytes()) for p in again.path.rglob("*") if p.is_file())
    assert a == b


def test_a_contract_claiming_other_compression_is_refused(packages, tmp_path):
    import json
    import shutil

    from xlstm_export.coreml.emit import SPEC_PATH
    from xlstm_export.graphs.io import IO_KEY

    graph, art = packages("hf", Compression("int4"))
    bad = tmp_path / "bad.mlpackage"
    shutil.copytree(art.path, bad)
    from coremltools.proto import Model_pb2

    spec_path = bad.joinpath(*SPEC_PATH)
    spec = Model_pb2.Model()
    spec.ParseFromString(spec_path.read_bytes())
    c = json.loads(spec.description.metadata.userDefined[IO_KEY])
    del c["quantize"]  # a compressed package declaring full-precision weights (the fp16 tolerance's claim)
    spec.description.metadata.userDefined[IO_KEY] = json.dumps(c)
    spec_path.write_bytes(spec.SerializeToString())
    with pytest.raises(ArtifactError, match="compressed"):
        open_runner(bad, graph)


@pytest.mark.parametrize("comp,opts,match", [
    (Compression("int4", block_size=48), {}, "does not divide the input dim"),
    (Compression("int4", method="gptq"), {}, "needs calibration"),
])
def test_bad_options_one_line(graph_of, tmp_path, comp, opts, match):
    graph = graph_of("hf")
    with pytest.raises(UnsupportedError, match=match) as e:
        emit(graph, CoreMLOptions(compression=comp, **opts), tmp_path / "m.mlpackage")
    assert "\n" not in str(e.value)
    assert not (tmp_path / "m.mlpackage").exists()


def test_quantizers_on_correlated_inputs():
    """The clipping search and GPTQ each lower the output error of round-to-nearest (what they are for)."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((64, 128)).astype(np.float32)
    mix = rng.standard_normal((128, 128)) * 0.3 + np.eye(128)
    X = (rng.standard_normal((2048, 128)) @ mix).astype(np.float32) * np.linspace(0.2, 3, 128)
    H = X.T.astype(np.float64) @ X
    s = Scheme("int4", 32, True)

    def err(codes, scale, offset):
        dq = QuantizedWeight(None, s, codes, scale, offset).dequantize()
        return float(np.mean((X @ (dq - w).T) ** 2))

    plain, clipped, g = err(*rtn(w, s, search=False)), err(*rtn(w, s)), err(*gptq(w, H, s))
    print(f"\noutput mse: rtn {plain:.3f}, clipping search {clipped:.3f}, gptq {g:.3f}")
    assert clipped < plain and g < 0.8 * clipped
    idx, lut = kmeans_rows(w, 16)
    assert lut.shape == (64, 16) and idx.max() < 16
    assert np.sqrt(np.mean((np.take_along_axis(lut, idx.astype(int), 1) - w) ** 2)) < 0.15
