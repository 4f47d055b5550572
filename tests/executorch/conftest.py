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

    def key(name: str, opts: dict) -> tuple:
        return name, tuple(sorted((k, v) for k, v in opts.items() if v is not None))

    def get(name: str, **opts):
        k = key(name, opts)
        if k not in cache:
            graph = et_graph(name)
            cache[k] = (graph, xe.export(graph, "executorch", root / f"{name}-{len(cache)}.pte", **opts))
        return cache[k]

    def adopt(name: str, path: Path, **opts):
        """A program exported elsewhere (the CLI test's) serves later asks for these options; returns the
        cached program's path when there already is one."""
        k = key(name, opts)
        if k in cache:
            return cache[k][1].path
        from xlstm_export.executorch.verify import open_runner
        from xlstm_export.outputs import Artifact

        graph = et_graph(name)
        c = open_runner(path, graph).contract  # checked: what xlstm-export writes for these options
        cache[k] = (graph, Artifact(path, "executorch", c["precision"], c, (path,), {"bytes": path.stat().st_size}))
        return None

    get.adopt = adopt
    return get
