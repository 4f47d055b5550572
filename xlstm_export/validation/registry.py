"""Opening an artifact as a runner: its target from the path suffix, the runner from the target registry.

    runner = open_artifact("model.pt", graph)              # -> TorchScriptRunner
    runner = open_artifact("model.onnx", graph, batch_size=2)

Validation imports no target package: ``xlstm_export.targets`` names each target's runner factory
(``(path, graph, **opts) -> Runner``), imported when an artifact of that target is opened. Every
factory reads the artifact's ``xlstm_export.io`` contract and calls
``validation.contract.check_contract(contract, graph, where)`` before running anything.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import ArtifactError
from ..graphs import Graph
from .runner import Runner


def detect_kind(path: str | os.PathLike) -> str:
    """The target an artifact path belongs to, by suffix (ArtifactError naming the known ones)."""
    from ..targets import target_for_path

    return target_for_path(path).name


def open_artifact(path: str | os.PathLike, graph: Graph, **opts) -> Runner:
    """A runner over the artifact at ``path``, checked against ``graph`` (ArtifactError, exit 2, if the
    file is missing, of an unknown kind, or exported from another model)."""
    from ..targets import target_for_path

    p = Path(path)
    if not p.exists():
        raise ArtifactError(f"{p}: no such artifact (file or .mlpackage directory)")
    return target_for_path(p).open_runner(p, graph, **opts)
