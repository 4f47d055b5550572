"""The canonical IR: profile JSON round trip, one-error validation, the state contract, lazy handles."""

from __future__ import annotations

import json

import numpy as np
import pytest

from xlstm_export.errors import CheckpointError, ConfigError
from xlstm_export.frontends import load_checkpoint
from xlstm_export.graphs import (FFNSpec, Graph, MLSTMBlock, ModelConfig, NormSpec, SLSTMBlock, WeightStore,
                                 block_states, config_from_profile, constant, model_weights)

LN = NormSpec(kind="layernorm", eps=1e-5, weight_offset=1.0)
RMS = NormSpec(kind="rmsnorm", eps=1e-6)


def tiny_graph(tie=False) -> Graph:
    cfg = ModelConfig(family="hybrid", vocab_size=11, embedding_dim=8, out_norm=LN, tie_weights=tie)
    blocks = (
        MLSTMBlock(num_heads=2, qk_head_dim=8, v_head_dim=8, norm=LN, head_norm=LN, form="hybrid",
                   qk_scale_on="k", inner_dim=16, conv_kernel=4, qkv_blocksize=4),
        SLSTMBlock(num_heads=2, head_dim=4, norm=LN, head_norm=LN, conv_kernel=0,
                   ffn=FFNSpec(up_dim=16, activation="gelu", norm=LN)),
    )
    rng = np.random.default_rng(0)
    handles = {n: constant(n, rng.standard_normal(s).astype(np.float32)) for n, s in model_weights(cfg, blocks).items()}
    if tie:
        handles["lm_head.weight"] = handles["embedding.weight"].rename("lm_head.weight")
    return Graph(cfg, blocks, WeightStore(handles), source="tiny").validate()


@pytest.mark.parametrize("name", ["hf", "large_bias", "hybrid", "hybrid_slstm_only", "hybrid_pt"])
def test_profile_json_round_trip(checkpoint_factory, name):
    g = load_checkpoint(checkpoint_factory(name))
    prof = json.loads(json.dumps(g.to_profile()))  # informational keys are ignored when read back
    cfg, blocks = config_from_profile(prof)
    assert cfg == g.config and blocks == g.blocks


def test_validate_lists_every_problem_at_once():
    g = tiny_graph()
    h = dict(g.weights)
    del h["blocks.0.mlstm.skip.weight"]
    h["blocks.1.slstm.igate.recurrent"] = constant("blocks.1.slstm.igate.recurrent", np.zeros((2, 4, 5), np.float32))
    h["blocks.9.nothing"] = constant("blocks.9.nothing", np.zeros(1, np.float32))
    with pytest.raises(CheckpointError) as e:
        Graph(g.config, g.blocks, WeightStore(h), source="x").validate()
    msg = str(e.value)
    assert "missing 1: blocks.0.mlstm.skip.weight" in msg
    assert "misshaped 1: blocks.1.slstm.igate.recurrent: expected [2, 4, 4], got [2, 4, 5]" in msg
    assert "unexpected 1: blocks.9.nothing" in msg


def test_state_contract_shapes():
    g = tiny_graph()
    st = {s.name: s.shape for s in g.state_contract(3)}
    assert st == {
        "blocks.0.mlstm.c": (3, 2, 8, 8), "blocks.0.mlstm.n": (3, 2, 8, 1), "blocks.0.mlstm.m": (3, 2, 1, 1),
        "blocks.0.mlstm.conv": (3, 4, 16), "blocks.1.slstm.state": (4, 3, 8),
    }
    large = MLSTMBlock(num_heads=2, qk_head_dim=4, v_head_dim=8, norm=RMS, head_norm=RMS)
    assert [s.shape for s in block_states(0, large, 1)] == [(1, 2, 4, 8), (1, 2, 4), (1, 2, 1)]


def test_tied_weights_count_once():
    a, b = tiny_graph(False), tiny_graph(True)
    assert a.num_params - b.num_params == 11 * 8
    assert b.weight_bytes == 4 * b.num_params


def test_lazy_transforms_compose_without_loading():
    calls = []
    base = np.arange(24, dtype=np.float32).reshape(4, 6)
    from xlstm_export.graphs import WeightHandle

    h = WeightHandle("w", (4, 6), "float32", "src", lambda: calls.append(1) or base)
    r = h.rows("r", 1, 3).transpose("t", (1, 0)).reshape("s", (3, 4))
    assert r.shape == (3, 4) and calls == []
    np.testing.assert_array_equal(r.load(), base[1:3].T.reshape(3, 4))
    assert calls == [1]
    bad = WeightHandle("w", (4, 5), "float32", "file.safetensors:w", lambda: base)
    with pytest.raises(CheckpointError, match="file.safetensors:w: tensor 'w' has shape"):
        bad.load()


@pytest.mark.parametrize("edit,needle", [
    (lambda p: p.update(extra=1), "unknown field"),
    (lambda p: p.update(format="v0"), "field 'format'"),
    (lambda p: p["blocks"][0].update(num_heads="2"), "num_heads"),
    (lambda p: p["blocks"][0].update(kind="gru"), "kind"),
    (lambda p: p.update(blocks=[]), "empty"),
    (lambda p: p["blocks"][1].update(head_dim=5), "must equal embedding_dim"),
    (lambda p: p["blocks"][1]["ffn"].update(activation="tanh"), "activation"),
])
def test_profile_errors(edit, needle):
    prof = tiny_graph().to_profile(informational=False)
    edit(prof)
    with pytest.raises(ConfigError, match=needle):
        config_from_profile(prof)
