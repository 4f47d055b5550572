"""One cache of ExecuTorch programs for every ExecuTorch test of the session: a ``.pte`` export spends most of
its time in XNNPACK lowering (~20-60 s here for a 2-block fixture), so each distinct program is exported
once, by whichever test asks first, and shared."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = {"hf-recall": REPO / "examples" / "hf-recall", "hybrid-copy": REPO / "examples" / "hybrid-copy"}


@pytest.fixture(scope="session")
def et_graph(checkpoint_factory, tmp_path_factory):
    """``et_graph(name)``: the graph of a test fixture (``tests/fixtures.py``) or a bundled trained example."""
    from fixtures import load_graph
    from xlstm_export.frontends import load_checkpoint

    root = tmp_path_factory.mktemp("et-graphs")
    cache: dict = {}

    def get(name: str):
        if name not in cache:
            cache[name] = load_checkpoint(EXAMPLES[name]) if name in EXAMPLES else load_graph(checkpoint_factory,
                                                                                               name, root)
        return cache[name]

    return get


@pytest.fixture(scope="session")
def et_programs(et_graph, tmp_path_factory):
    """``et_programs(name, **options) -> (graph, Artifact)``: the program exported once per session."""
    import xlstm_export as xe

    root = tmp_path_factory.mktemp("et-programs")
    cache: dict = {}

    def get(name: str, **opts):
        opts = {k: v for k, v in opts.items() if v is not None}
        key = (name, tuple(sorted(opts.items())))
        if key not in cache:
            graph = et_graph(name)
            cache[key] = (graph, xe.export(graph, "executorch", root / f"{name}-{len(cache)}.pte", **opts))
        return cache[key]

    return get
