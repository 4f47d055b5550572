"""The parity matrix: every block kind x every artifact kind (each built from the lowering modes it
declares: ``step``, or ``step`` + ``prefill``), exported from an upstream-made checkpoint holding that block
kind and validated against the reference (the one tolerance table; an artifact with a prefill graph or
function is validated on prompts of 1, T-1, T and 3T+5 tokens). A missing lowering or a missing target registration fails its cell; the matrix itself is derived
from the registries, so a new block kind, target or mode adds cells without touching this file. Artifacts come
from the session's export cache (tests/conftest.py), shared with the target modules that test the same export.
"""

from __future__ import annotations

import itertools

import pytest

from xlstm_export import lowering, targets
from xlstm_export.validation import validate_artifact

# the fixture holding each block kind (tests/fixtures.py: made by transformers / xlstm)
FIXTURE_OF = {("mlstm", "large"): "hf", ("mlstm", "hybrid"): "hybrid_mlstm_only",
              ("slstm", "vanilla"): "hybrid_slstm_only"}


def cells():
    for block_kind, kind in itertools.product(lowering.KINDS, sorted(targets.swept_kinds())):
        yield block_kind, kind, "+".join(targets.KINDS[kind].modes) or "reference"


def test_every_block_kind_has_a_fixture_and_every_mode_is_known():
    assert set(FIXTURE_OF) == set(lowering.KINDS)
    assert {m for k in targets.KINDS.values() for m in k.modes} <= set(lowering.MODES)


@pytest.mark.parametrize("block_kind, kind, mode", list(cells()),
                         ids=[f"{b[0]}-{b[1]}-{k}-{m}" for b, k, m in cells()])
def test_cell(graph_of, exports, block_kind, kind, mode):
    graph = graph_of(FIXTURE_OF[block_kind])
    assert block_kind in {lowering.kind_form(b) for b in graph.blocks}
    if mode != "reference":  # built by the shared lowering: each mode must be registered
        for block in graph.blocks:
            for m in mode.split("+"):
                lowering.LOWERINGS.get(block, m)
    k = targets.KINDS[kind]
    art = exports(FIXTURE_OF[block_kind], kind, precision=k.demo_precision)
    res = validate_artifact(art.path, graph, steps=4, num_prompts=2, prompt_len=6)
    s = res.report["summary"]
    print(f"\n[{block_kind[0]}/{block_kind[1]} x {kind} ({k.demo_precision}) x {mode}] max rel {s['max_rel']:.2e}, "
          f"greedy {s['greedy_agreeing']}/{s['greedy_picks']}")
    assert res.passed, res.summary_line()
