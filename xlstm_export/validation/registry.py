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


def open_artifact(path: str | os.PathLike, graph: Graph, trust_artifact: bool = False, **opts) -> Runner:
    """A runner over the artifact at ``path``, checked against ``graph`` (ArtifactError, exit 2, if the
    file is missing, of an unknown kind, or exported from another model).

    The built-in factories also check, before judging it by the tolerance its contract names, that the
    artifact is what xlstm-export writes for what its contract declares (a TorchScript archive record by
    record before ``torch.jit.load`` runs its code; the tensors' dtypes and shapes of the others).
    ``trust_artifact=True`` (``validate --trust-artifact``) skips that: the artifact is then loaded and
    judged as it describes itself."""
    from ..targets import target_for_path

    p = Path(path)
    if not p.exists():
        raise ArtifactError(f"{p}: no such artifact (file or .mlpackage directory)")
    target = target_for_path(p)
    if not (p.is_dir() or p.is_file()):  # a FIFO would block the reader, a device never end
        raise ArtifactError(f"{p}: not a regular file or a directory (a FIFO, socket or device); an artifact is "
                            f"a file or an .mlpackage directory")
    if trust_artifact:
        opts = {**opts, "trust_artifact": True}
    return target.open_runner(p, graph, **opts)
