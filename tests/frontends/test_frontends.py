"""Frontends: every format loads to the right schedule, canonical tensors equal upstream's weights
(through upstream's own accessors), the state contract matches upstream's step()/cache, graph
building reads no tensor data, and the sLSTM vanilla/cuda layouts load identically."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from xlstm_export.cli import main
from xlstm_export.errors import CheckpointError, ConfigError, UnsupportedError
from xlstm_export.frontends import load_checkpoint, load_weight
from xlstm_export.frontends.profile import save_profile_checkpoint
from xlstm_export.frontends.safetensors_io import open_safetensors, read_header

SCHEDULES = {
    "hf": [("mlstm", True)] * 2,
    "hf_sharded": [("mlstm", True)] * 2,
    "hf_fused": [("mlstm", True)] * 2,
    "large": [("mlstm", True)] * 2,
    "large_bias": [("mlstm", True)] * 2,
    "hybrid": [("mlstm", False), ("slstm", True), ("mlstm", False)],
    "hybrid_cuda_layout": [("mlstm", False), ("slstm", True), ("mlstm", False)],
    "hybrid_pt": [("mlstm", False), ("slstm", True), ("mlstm", False)],
    "hybrid_slstm_only": [("slstm", True)] * 2,
    "hybrid_mlstm_only": [("mlstm", False)] * 2,
}
FORMAT_OF = {"hf": "hf", "large": "large", "hybrid": "hybrid"}


def inspect_json(path, *extra) -> dict:
    res = CliRunner().invoke(main, ["inspect", "--checkpoint", str(path), "--json", *extra])
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_inspect_json_schedule(checkpoint_factory, name):
    prof = inspect_json(checkpoint_factory(name))
    got = [(b["kind"], b["ffn"] is not None) for b in prof["blocks"]]
    assert got == SCHEDULES[name]
    for b in prof["blocks"]:
        if b["kind"] == "slstm":
            assert b["ffn"]["activation"] == ("silu" if name == "hybrid_slstm_only" else "gelu")
    assert prof["family"] == ("hybrid" if name.startswith("hybrid") else "large")
    # --format forces the same reader
    fmt = next(v for k, v in FORMAT_OF.items() if name.startswith(k))
    assert inspect_json(checkpoint_factory(name), "--format", fmt)["blocks"] == prof["blocks"]


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_param_count_matches_upstream(checkpoint_factory, upstream_factory, name):
    g = load_checkpoint(checkpoint_factory(name))
    model = upstream_factory(name)
    assert g.num_params == sum(p.numel() for p in model.parameters())


def test_plain_inspect_table(checkpoint_factory):
    res = CliRunner().invoke(main, ["inspect", "--checkpoint", str(checkpoint_factory("hybrid"))])
    assert res.exit_code == 0, res.output
    assert "slstm" in res.stdout and "parameters: 106,320" in res.stdout
    lines = res.stdout.splitlines()
    header = next(i for i, ln in enumerate(lines) if ln.startswith("block"))
    assert [ln.split()[1] for ln in lines[header + 2: header + 5]] == ["mlstm", "slstm", "mlstm"]


# -- canonical tensors vs upstream's own parameters ---------------------------------------------
def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().float().numpy()


def expected_canonical_large(model, prefix_emb: str) -> dict:
    sd = dict(model.state_dict())
    for k in [k for k in sd if ".qkv_opreact." in k or ".ifgate_preact." in k or ".proj_up_gate_z." in k]:
        # split fused weights the way upstream's forward does (torch.tensor_split)
        lay = model.backbone.blocks[int(k.split(".")[2])]
        v = sd.pop(k)
        if ".qkv_opreact." in k:
            qk, vd = lay.mlstm_layer.qk_dim, lay.mlstm_layer.v_dim
            for n, part in zip(("q", "k", "v", "ogate_preact"), torch.tensor_split(v, (qk, 2 * qk, 2 * qk + vd))):
                sd[k.replace("qkv_opreact", n)] = part
        elif ".ifgate_preact." in k:
            for n, part in zip("if", torch.tensor_split(v, (lay.config.num_heads,))):
                sd[k.replace("ifgate_preact", f"{n}gate_preact")] = part
        else:
            for n, part in zip(("proj_up_gate", "proj_up"), torch.tensor_split(v, (lay.ffn.up_proj_dim,))):
                sd[k.replace("proj_up_gate_z", n)] = part
    out = {"embedding.weight": sd[prefix_emb], "lm_head.weight": sd["lm_head.weight"]}
    if "backbone.out_norm.weight" in sd:
        out["out_norm.weight"] = sd["backbone.out_norm.weight"]
    for k, v in sd.items():
        if not k.startswith("backbone.blocks."):
            continue
        i, rest = k.split(".", 3)[2], k.split(".", 3)[3]
        ren = {"norm_mlstm": "norm", "norm_ffn": "ffn_norm", "mlstm_layer.multihead_norm": "mlstm.head_norm",
               "mlstm_layer.out_proj": "mlstm.out_proj", "mlstm_layer.q": "mlstm.q", "mlstm_layer.k": "mlstm.k",
               "mlstm_layer.v": "mlstm.v", "mlstm_layer.ogate_preact": "mlstm.ogate",
               "mlstm_layer.igate_preact": "mlstm.igate", "mlstm_layer.fgate_preact": "mlstm.fgate",
               "ffn.proj_up_gate": "ffn.gate", "ffn.proj_up": "ffn.up", "ffn.proj_down": "ffn.down"}
        mod, wb = rest.rsplit(".", 1)
        out[f"blocks.{i}.{ren[mod]}.{wb}"] = v
    return {k: _np(v) for k, v in out.items()}


def expected_canonical_hybrid(model) -> dict:
    """Derived through upstream's module objects and its own int2ext accessors (ParameterProxy)."""
    from xlstm.blocks.slstm.block import sLSTMBlock

    out = {"embedding.weight": model.token_embedding.weight, "lm_head.weight": model.lm_head.weight}
    stack = model.xlstm_block_stack
    if hasattr(stack.post_blocks_norm, "weight"):
        out["out_norm.weight"] = stack.post_blocks_norm.weight
    for i, blk in enumerate(stack.blocks):
        p = f"blocks.{i}"
        out[f"{p}.norm.weight"] = blk.xlstm_norm.weight
        lay = blk.xlstm
        if isinstance(blk, sLSTMBlock):
            E = lay.config.embedding_dim
            NH, DH = lay.config.num_heads, E // lay.config.num_heads
            out[f"{p}.slstm.conv.weight"] = lay.conv1d.conv.weight[:, 0, :].T
            out[f"{p}.slstm.conv.bias"] = lay.conv1d.conv.bias
            # the layer computes i, f, z, o = fgate(x), igate(x), zgate(x), ogate(x)
            for g, mod in zip("ifzo", (lay.fgate, lay.igate, lay.zgate, lay.ogate)):
                out[f"{p}.slstm.{g}gate.weight"] = mod.weight
            R = lay.slstm_cell.recurrent_kernel.clone()  # external (NH, DH_in, 4, DH_out)
            b = lay.slstm_cell.bias.clone()  # external (NH, 4, DH)
            assert tuple(R.shape) == (NH, DH, 4, DH)
            for gi, g in enumerate("ifzo"):
                out[f"{p}.slstm.{g}gate.recurrent"] = R[:, :, gi, :].transpose(1, 2)
                out[f"{p}.slstm.{g}gate.bias"] = b[:, gi, :].reshape(E)
            out[f"{p}.slstm.head_norm.weight"] = lay.group_norm.weight
        else:
            inner = lay.config._inner_embedding_dim
            out[f"{p}.mlstm.up_x.weight"] = lay.proj_up.weight[:inner]
            out[f"{p}.mlstm.up_z.weight"] = lay.proj_up.weight[inner:]
            out[f"{p}.mlstm.conv.weight"] = lay.conv1d.conv.weight[:, 0, :].T
            out[f"{p}.mlstm.conv.bias"] = lay.conv1d.conv.bias
            for n in "qkv":
                out[f"{p}.mlstm.{n}.weight"] = getattr(lay, f"{n}_proj").weight
            for g in "if":
                out[f"{p}.mlstm.{g}gate.weight"] = getattr(lay.mlstm_cell, f"{g}gate").weight
                out[f"{p}.mlstm.{g}gate.bias"] = getattr(lay.mlstm_cell, f"{g}gate").bias
            out[f"{p}.mlstm.head_norm.weight"] = lay.mlstm_cell.outnorm.weight
            out[f"{p}.mlstm.skip.weight"] = lay.learnable_skip
            out[f"{p}.mlstm.out_proj.weight"] = lay.proj_down.weight
        if blk.ffn is not None:
            U = blk.ffn.config._proj_up_dim
            out[f"{p}.ffn_norm.weight"] = blk.ffn_norm.weight
            out[f"{p}.ffn.gate.weight"] = blk.ffn.proj_up.weight[:U]
            out[f"{p}.ffn.up.weight"] = blk.ffn.proj_up.weight[U:]
            out[f"{p}.ffn.down.weight"] = blk.ffn.proj_down.weight
    return {k: _np(v) for k, v in out.items()}


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_canonical_tensors_equal_upstream(checkpoint_factory, upstream_factory, name):
    g = load_checkpoint(checkpoint_factory(name))
    model = upstream_factory(name)
    if name.startswith("hybrid"):
        want = expected_canonical_hybrid(model)
    else:
        want = expected_canonical_large(model, "backbone.embeddings.weight" if name.startswith("hf")
                                        else "embedding.weight")
    assert set(want) == set(g.weights)
    for n, arr in want.items():
        got = load_weight(g.weights[n])
        assert got.dtype == np.float32 and got.flags.c_contiguous
        np.testing.assert_array_equal(got, arr, err_msg=n)


def test_slstm_vanilla_and_cuda_layouts_load_identically(checkpoint_factory):
    a = load_checkpoint(checkpoint_factory("hybrid"))
    b = load_checkpoint(checkpoint_factory("hybrid_cuda_layout"))
    hdr = read_header(checkpoint_factory("hybrid_cuda_layout") / "model.safetensors")[0]
    assert hdr["xlstm_block_stack.blocks.1.xlstm.slstm_cell._recurrent_kernel_"]["shape"] == (4, 16, 64)
    assert set(a.weights) == set(b.weights)
    for n in a.weights:
        np.testing.assert_array_equal(a.weights[n].load(), b.weights[n].load(), err_msg=n)
    # the recurrent kernels are not trivially symmetric, so the layouts really differ on disk
    assert not np.allclose(a.weights["blocks.1.slstm.igate.recurrent"].load(),
                           a.weights["blocks.1.slstm.fgate.recurrent"].load())


def test_slstm_layout_mismatch_is_named(checkpoint_factory, tmp_path):
    import yaml

    d = tmp_path / "ck"
    shutil.copytree(checkpoint_factory("hybrid_cuda_layout"), d)
    cfg = yaml.safe_load((d / "config.yaml").read_text())
    cfg["slstm_block"]["slstm"]["backend"] = "vanilla"
    (d / "config.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(CheckpointError, match=r"_recurrent_kernel_.*cuda.*layout"):
        load_checkpoint(d)


def test_slstm_numpy_step_matches_upstream(checkpoint_factory, upstream_factory):
    """One sLSTM step written from the canonical tensors alone reproduces upstream's layer.step on a
    non-zero state: proves the gate swap, the R layout (out, in) and the bias layout."""
    for name in ("hybrid", "hybrid_cuda_layout"):
        g = load_checkpoint(checkpoint_factory(name))
        model = upstream_factory(name)
        blk = model.xlstm_block_stack.blocks[1]
        lay = blk.xlstm
        B, E, NH = 2, 64, 4
        DH = E // NH
        gen = torch.Generator().manual_seed(7)
        x1, x2 = torch.randn(2, B, 1, E, generator=gen)
        with torch.no_grad():
            _, st = lay.step(x1)
            want, _ = lay.step(x2, conv_state=(st["conv_state"][0].clone(),), slstm_state=st["slstm_state"].clone())
        W = {n: g.weights[f"blocks.1.slstm.{n}"].load() for n in
             [f"{q}gate.{k}" for q in "ifzo" for k in ("weight", "recurrent", "bias")]
             + ["conv.weight", "conv.bias", "head_norm.weight"]}
        ring = np.concatenate([st["conv_state"][0].numpy()[:, 1:], x2.numpy()], axis=1)  # (B, K, E)
        xc = (ring * W["conv.weight"][None]).sum(1) + W["conv.bias"]
        xc = xc / (1 + np.exp(-xc))
        xr = x2.numpy()[:, 0]
        y, c, n, m = st["slstm_state"].numpy()
        raw = {}
        for q in "ifzo":
            src = xc if q in "if" else xr
            wx = np.einsum("bhd,hod->bho", src.reshape(B, NH, DH), W[f"{q}gate.weight"])
            ry = np.einsum("bhi,hoi->bho", y.reshape(B, NH, DH), W[f"{q}gate.recurrent"])
            raw[q] = (wx + ry).reshape(B, E) + W[f"{q}gate.bias"]
        logf = m + np.log(1 / (1 + np.exp(-raw["f"])))
        m_new = np.maximum(raw["i"], logf)
        ig, fg = np.exp(raw["i"] - m_new), np.exp(logf - m_new)
        c_new = fg * c + ig * np.tanh(raw["z"])
        n_new = fg * n + ig
        h = (1 / (1 + np.exp(-raw["o"]))) * c_new / n_new
        hh = h.reshape(B, NH, DH)
        hn = (hh - hh.mean(-1, keepdims=True)) / np.sqrt(hh.var(-1, keepdims=True) + 1e-5)
        out = hn.reshape(B, E) * (1 + W["head_norm.weight"])
        np.testing.assert_allclose(out, want.numpy()[:, 0], rtol=1e-4, atol=1e-5, err_msg=name)


# -- the state contract vs upstream's own states -------------------------------------------------
def _contract_shapes(g, B):
    out = {}
    for s in g.state_contract(B):
        out.setdefault(s.block, {})[s.role] = tuple(s.shape)
    return out


@pytest.mark.parametrize("name", ["hf", "hf_sharded", "hf_fused"])
def test_state_contract_matches_hf_cache(checkpoint_factory, upstream_factory, name):
    g = load_checkpoint(checkpoint_factory(name))
    model = upstream_factory(name)
    B = 2
    with torch.no_grad():
        out = model(torch.ones(B, 3, dtype=torch.long), use_cache=True)
    contract = _contract_shapes(g, B)
    cache = out.cache_params.rnn_state
    assert len(cache) == len(contract)
    for i, (c, n, m) in cache.items():
        assert contract[i] == {"c": tuple(c.shape), "n": tuple(n.shape), "m": tuple(m.shape)}


@pytest.mark.parametrize("name", ["large", "large_bias"])
def test_state_contract_matches_xlstm_large(checkpoint_factory, upstream_factory, name):
    g = load_checkpoint(checkpoint_factory(name))
    model = upstream_factory(name)
    B = 2
    with torch.no_grad():
        _, state = model(torch.ones(B, 3, dtype=torch.long))
    contract = _contract_shapes(g, B)
    assert len(state) == len(contract)
    for i, (c, n, m) in state.items():
        assert contract[i] == {"c": tuple(c.shape), "n": tuple(n.shape), "m": tuple(m.shape)}


@pytest.mark.parametrize("name", ["hybrid", "hybrid_slstm_only", "hybrid_mlstm_only", "hybrid_pt",
                                  "hybrid_cuda_layout"])
def test_state_contract_matches_hybrid_step(checkpoint_factory, upstream_factory, name):
    g = load_checkpoint(checkpoint_factory(name))
    model = upstream_factory(name)
    B = 2
    with torch.no_grad():
        _, state = model.step(torch.ones(B, 1, dtype=torch.long))
    contract = _contract_shapes(g, B)
    assert len(state) == len(contract)
    for i, b in enumerate(g.blocks):
        st = state[f"block_{i}"]
        if b.kind == "mlstm":
            c, n, m = st["mlstm_state"]
            want = {"c": c.shape, "n": n.shape, "m": m.shape, "conv": st["conv_state"][0].shape}
        else:
            want = {"conv": st["conv_state"][0].shape, "slstm": st["slstm_state"].shape}
        assert contract[i] == {k: tuple(v) for k, v in want.items()}, i


# -- laziness ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["hf", "hf_sharded", "large", "hybrid", "hybrid_cuda_layout"])
def test_building_a_graph_reads_no_tensor_data(checkpoint_factory, monkeypatch, name):
    from xlstm_export.frontends import safetensors_io
    from xlstm_export.graphs import weights as wmod

    calls = []
    real_read = safetensors_io.read_span
    monkeypatch.setattr(safetensors_io, "read_span", lambda *a, **k: calls.append(("read", a[1])) or real_read(*a, **k))
    real_load = wmod.WeightHandle.load
    monkeypatch.setattr(wmod.WeightHandle, "load",
                        lambda self, *a, **k: calls.append(("load", self.name)) or real_load(self, *a, **k))
    g = load_checkpoint(checkpoint_factory(name))
    g.to_profile()
    CliRunner().invoke(main, ["inspect", "--checkpoint", str(checkpoint_factory(name))])
    assert calls == []
    g.weights["embedding.weight"].load()  # and loading reads that one tensor's bytes
    assert calls and calls[-1][0] == "read" and "embedding" in calls[-1][1]


def test_torch_state_dict_graph_is_lazy_and_tied(checkpoint_factory):
    g = load_checkpoint(checkpoint_factory("hybrid_pt"))
    assert g.config.tie_weights
    assert g.weights["lm_head.weight"].loader is g.weights["embedding.weight"].loader
    np.testing.assert_array_equal(g.weights["lm_head.weight"].load(), g.weights["embedding.weight"].load())


# -- other formats and details ---------------------------------------------------------------------
def test_hf_tied_embeddings(checkpoint_factory, tmp_path):
    """A transformers checkpoint saved without lm_head and tie_word_embeddings=True (what a tying
    transformers writes) reuses the embedding handle."""
    from safetensors.numpy import save_file

    d = tmp_path / "tied"
    shutil.copytree(checkpoint_factory("hf"), d)
    sd = {k: h.load() for k, h in open_safetensors(d / "model.safetensors").items() if k != "lm_head.weight"}
    save_file(sd, str(d / "model.safetensors"))
    cfg = json.loads((d / "config.json").read_text())
    cfg["tie_word_embeddings"] = True
    (d / "config.json").write_text(json.dumps(cfg))
    g = load_checkpoint(d)
    assert g.config.tie_weights
    assert g.weights["lm_head.weight"].loader is g.weights["embedding.weight"].loader
    assert g.num_params == load_checkpoint(checkpoint_factory("hf")).num_params - 97 * 128


def test_hf_fused_equals_single(checkpoint_factory):
    a, b = load_checkpoint(checkpoint_factory("hf")), load_checkpoint(checkpoint_factory("hf_fused"))
    assert a.blocks == b.blocks and set(a.weights) == set(b.weights)
    for n in a.weights:
        np.testing.assert_array_equal(a.weights[n].load(), b.weights[n].load(), err_msg=n)


def test_hf_qk_dim_rounding_mismatch_is_unsupported(checkpoint_factory, tmp_path):
    d = tmp_path / "odd"
    shutil.copytree(checkpoint_factory("hf"), d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["hidden_size"] = cfg["embedding_dim"] = 96  # int(96*0.5)=48 but the cache rounds to 64
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UnsupportedError, match="round-up-to-64"):
        load_checkpoint(d)


@pytest.mark.parametrize("name", ["hf", "hybrid", "hybrid_pt", "hybrid_cuda_layout", "large_bias"])
def test_profile_round_trip(checkpoint_factory, tmp_path, name):
    g = load_checkpoint(checkpoint_factory(name))
    out = save_profile_checkpoint(g, tmp_path / "prof")
    assert sorted(p.name for p in out.iterdir()) == ["model.safetensors", "profile.json"]
    g2 = load_checkpoint(out)
    assert g2.config == g.config and g2.blocks == g.blocks
    assert g2.to_profile(informational=False) == g.to_profile(informational=False)
    assert g2.num_params == g.num_params
    for n in g.weights:
        np.testing.assert_array_equal(g2.weights[n].load(), g.weights[n].load(), err_msg=n)
    # explicit files work too, and an existing profile is not clobbered
    assert load_checkpoint(out / "profile.json").blocks == g.blocks
    from xlstm_export.errors import OutputError

    with pytest.raises(OutputError, match="already holds"):
        save_profile_checkpoint(g, out)
    save_profile_checkpoint(g, out, force=True)


def test_bf16_is_widened_exactly_and_round_trips(tmp_path, checkpoint_factory):
    from safetensors.torch import save_file

    t = torch.randn(5, 7, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    save_file({"w": t}, str(tmp_path / "x.safetensors"))
    h = open_safetensors(tmp_path / "x.safetensors")["w"]
    assert h.dtype == "bfloat16" and h.nbytes == 70
    np.testing.assert_array_equal(h.load(), t.float().numpy())
    # a bf16 graph written as a profile stays bf16 on disk, bit-exact
    g = load_checkpoint(checkpoint_factory("hybrid"))
    from xlstm_export.graphs import Graph, WeightStore

    handles = {}
    for n, hh in g.weights.items():
        arr = torch.from_numpy(hh.load()).to(torch.bfloat16)
        save_file({"t": arr}, str(tmp_path / f"{n}.safetensors"))
        handles[n] = open_safetensors(tmp_path / f"{n}.safetensors")["t"].rename(n)
    gb = Graph(g.config, g.blocks, WeightStore(handles), source="bf16")
    out = save_profile_checkpoint(gb, tmp_path / "p")
    hdr = read_header(out / "model.safetensors")[0]
    assert {e["dtype"] for e in hdr.values()} == {"BF16"}
    g2 = load_checkpoint(out)
    for n in handles:
        np.testing.assert_array_equal(g2.weights[n].load(), handles[n].load(), err_msg=n)


def test_check_finite_names_the_tensor(tmp_path):
    from safetensors.numpy import save_file

    save_file({"bad": np.array([1.0, np.nan, np.inf], np.float32)}, str(tmp_path / "x.safetensors"))
    h = open_safetensors(tmp_path / "x.safetensors")["bad"]
    with pytest.raises(CheckpointError, match=r"x\.safetensors:bad.*'bad' has 2 non-finite"):
        load_weight(h)


def test_hybrid_config_schema_equals_upstream_dataclasses():
    """Our strict field lists are upstream's dataclass fields (xlstm 2.0.6), nested ones too."""
    from xlstm import FeedForwardConfig, mLSTMBlockConfig, mLSTMLayerConfig, sLSTMBlockConfig, sLSTMLayerConfig
    from xlstm import xLSTMLMModelConfig

    from xlstm_export.frontends import hybrid

    for ours, theirs in ((hybrid.MODEL_FIELDS, xLSTMLMModelConfig), (hybrid.MLSTM_BLOCK_FIELDS, mLSTMBlockConfig),
                         (hybrid.SLSTM_BLOCK_FIELDS, sLSTMBlockConfig), (hybrid.MLSTM_LAYER_FIELDS, mLSTMLayerConfig),
                         (hybrid.SLSTM_LAYER_FIELDS, sLSTMLayerConfig), (hybrid.FFN_FIELDS, FeedForwardConfig)):
        assert set(ours) == {f.name for f in dataclasses.fields(theirs)}, theirs.__name__


def test_large_config_fields_equal_upstream():
    from xlstm.xlstm_large.model import xLSTMLargeConfig

    from xlstm_export.frontends.xlstm_large import LARGE_FIELDS

    assert set(LARGE_FIELDS) == {f.name for f in dataclasses.fields(xLSTMLargeConfig)}


@pytest.mark.parametrize("where,patch", [
    ("top", {"not_a_field": 1}),
    ("mlstm", {"mlstm_block": {"mlstm": {"num_heads": 4, "typo_heads": 2}}}),
    ("slstm", {"slstm_block": {"slstm": {"backend": "vanilla", "bogus": 1}, "feedforward": None}}),
    ("ffn", {"slstm_block": {"slstm": {}, "feedforward": {"act_fn": "gelu", "extra": True}}}),
])
def test_unknown_hybrid_field_is_a_config_error_like_dacite_strict(checkpoint_factory, tmp_path, where, patch):
    import yaml
    from dacite import Config, from_dict
    from dacite.exceptions import DaciteError
    from xlstm import xLSTMLMModelConfig

    cfg = yaml.safe_load((checkpoint_factory("hybrid") / "config.yaml").read_text())
    cfg.update(patch)
    with pytest.raises(DaciteError):  # upstream's own loader refuses it too
        from_dict(xLSTMLMModelConfig, cfg, config=Config(strict=True))
    d = tmp_path / "ck"
    shutil.copytree(checkpoint_factory("hybrid"), d)
    (d / "config.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError, match="unknown field"):
        load_checkpoint(d)


def test_format_detection_errors(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        load_checkpoint(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="empty"):
        load_checkpoint(tmp_path / "empty")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "config.json").write_text('{"model_type": "llama"}')
    with pytest.raises(CheckpointError, match="no recognisable checkpoint"):
        load_checkpoint(tmp_path / "junk")
