"""The lowering's data: registry keys and errors, precision policies, the per-weight hook, typed states."""

from __future__ import annotations

import numpy as np
import pytest

from xlstm_export import lowering, targets
from xlstm_export.errors import RegistryError, UnsupportedError
from xlstm_export.frontends import load_checkpoint, load_weight
from xlstm_export.lowering import LOWERINGS, WeightSpec, block_states, prepare_weight
from xlstm_export.lowering.precision import ROLES, STATE_ROLES


def test_registry_is_keyed_by_kind_form_mode_and_names_what_is_registered(checkpoint_factory):
    assert LOWERINGS.keys() == sorted((*k, m) for k in lowering.KINDS for m in lowering.MODES)
    with pytest.raises(RegistryError, match="already registered"):
        LOWERINGS.register("slstm", "vanilla", "step")(lambda *a: None)
    with pytest.raises(RegistryError, match="unknown mode"):
        LOWERINGS.register("slstm", "vanilla", "scan")
    with pytest.raises(RegistryError, match=r"registered: \[\('mlstm'"):
        LOWERINGS.get(load_checkpoint(checkpoint_factory("hybrid")).blocks[1], "bogus")


def test_policies_give_every_role_and_state_role_a_dtype():
    from xlstm_export.coreml.policy import POLICIES as COREML
    from xlstm_export.onnx.policy import policy_for as onnx_policy

    lowered = {name: t.precision_policies() for name, t in targets.TARGETS.items() if any(k.modes for k in t.kinds)}
    assert set(lowered) == {"coreml", "onnx"}
    for target, policies in lowered.items():
        for name, p in policies.items():
            assert p.target == target and p.name == name
            assert all(p.dtype(r) in ("fp16", "fp32") for r in ROLES)
            assert all(p.storage(r).dtype in ("fp16", "fp32") for r in STATE_ROLES)
        t = targets.TARGETS[target]  # the CLI offers exactly the policies of lowered targets
        offered = next(o.choices for o in t.options if o.dest == "precision")
        assert set(offered) == set(policies), target
        assert set(offered) == {p for k in t.kinds for p in k.tolerances}, target
    assert COREML["fp16"].split_roles() == ("c", "n", "m", "slstm")
    assert all(COREML[p].storage(r).dtype == "fp16" for p in ("fp16", "fp32") for r in STATE_ROLES)
    with pytest.raises(UnsupportedError, match="precision must be one of"):
        onnx_policy("bf16")
    with pytest.raises(UnsupportedError, match="unknown role"):
        onnx_policy("fp32").dtype("logit")


def test_weight_hook_layouts(checkpoint_factory):
    g = load_checkpoint(checkpoint_factory("hybrid"))
    names = [f"blocks.1.slstm.{x}gate.weight" for x in "if"]
    spec = WeightSpec.headwise(g, "w", tuple(names))
    got = prepare_weight(g, spec, "fp32")
    want = np.concatenate([load_weight(g.weights[n]).transpose(0, 2, 1) for n in names], axis=2)
    assert got.shape == spec.shape and np.array_equal(got, want)
    rows = WeightSpec.stacked_rows(g, "gates", ("blocks.0.mlstm.igate.weight", "blocks.0.mlstm.fgate.weight"), "linear")
    assert prepare_weight(g, rows, "fp16").dtype == np.float16 and prepare_weight(g, rows, "fp16").shape == rows.shape
    norm = WeightSpec.tensor(g, "blocks.0.norm.weight", "norm", "norm", offset=1.0)
    assert np.array_equal(prepare_weight(g, norm, "fp32"), load_weight(g.weights["blocks.0.norm.weight"]) + 1)
    with pytest.raises(UnsupportedError, match="unknown dtype"):
        prepare_weight(g, norm, "bf16")


def test_tied_weights_are_one_identity(checkpoint_factory):
    from xlstm_export.graphs import Graph

    g = load_checkpoint(checkpoint_factory("hf"))
    weights = dict(g.weights.items())
    weights["lm_head.weight"] = weights["embedding.weight"]
    tied = Graph(g.config, g.blocks, type(g.weights)(weights))
    emb, head = lowering.model.vocab_weights(tied)
    assert emb.identity(tied, "fp16") == head.identity(tied, "fp16")
    assert emb.identity(g, "fp16") != lowering.model.vocab_weights(g)[1].identity(g, "fp16")


def test_typed_states_come_from_the_contract(checkpoint_factory):
    g = load_checkpoint(checkpoint_factory("hybrid"))
    st = block_states(g, 2)
    contract = {s.name: s for s in g.state_contract(2)}
    for i, (block, s) in enumerate(zip(g.blocks, st)):
        if block.kind == "mlstm":
            assert isinstance(s, lowering.MLSTMStates) and s.c == contract[f"blocks.{i}.mlstm.c"]
            assert s.n.shape[-1] == 1 and s.m.shape == (2, block.num_heads, 1, 1)
        else:
            assert isinstance(s, lowering.SLSTMStates) and s.state.shape[0] == 4


def test_the_cli_prefill_limit_is_the_lowerings():
    """target.py restates the limit so that importing it loads no numpy; the two must agree."""
    from xlstm_export.target import MAX_PREFILL_CHUNK

    assert MAX_PREFILL_CHUNK == lowering.MAX_PREFILL_CHUNK
