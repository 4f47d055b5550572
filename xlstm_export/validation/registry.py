"""Opening an artifact as a runner: its target from the path suffix, the runner from the target registry.

    runner = open_artifact("model.pt", graph)              # -> TorchScriptRunner
    runner = open_artifact("model.onnx", graph, batch_size=2)

Validation imports no target package: ``xlstm_export.targets`` names each target's runner factory
(``(path, graph, **opts) -> Runner``), imported when an artifact of that target is opened. Every
factory reads the artifact's ``xlstm_export.io`` contract and calls
``contract.check_contract(contract, graph, where)`` before running anything.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import ArtifactError
from ..graphs import Graph
from ..runner import Runner


def detect_kind(path: str | os.PathLike) -> str:
    """The target an artifact path belongs to, by suffix (ArtifactError naming the known ones)."""
    from ..targets import target_for_path

    return target_for_path(path).name


def checked_target(path: str | os.PathLike):
    """The target of the artifact at ``path``, once the artifact exists and every file a runner would open
    from it is a regular file (ArtifactError otherwise)."""
    from ..targets import target_for_path

    p = Path(path)
    if not p.exists():
        raise ArtifactError(f"{p}: no such artifact (a file or a package folder)")
    target = target_for_path(p)
    check_regular_files(p, target.files_of(p))
    return target


def open_artifact(path: str | os.PathLike, graph: Graph, trust_artifact: bool = False, **opts) -> Runner:
    """A runner over the artifact at ``path``, checked against ``graph`` (ArtifactError, exit 2, if the
    file is missing, of an unknown kind, or exported from another model).

    The built-in factories also check, before judging it by the tolerance its contract names, that the
    artifact is what xlstm-export writes for what its contract declares (a TorchScript archive record by
    record before ``torch.jit.load`` runs its code; the tensors' dtypes and shapes of the others).
    ``trust_artifact=True`` (``validate --trust-artifact``) skips that: the artifact is then loaded and
    judged as it describes itself."""
    p = Path(path)
    target = checked_target(p)
    if trust_artifact:
        opts = {**opts, "trust_artifact": True}
    return target.open_runner(p, graph, **opts)


def _not_regular(q: Path) -> str | None:
    """What ``q`` is when it is not a regular file (links followed); None when it is one or is absent."""
    import stat

    from ..frontends import file_kind

    try:
        mode = os.stat(q).st_mode
    except FileNotFoundError:
        return None
    except OSError as e:
        return f"unreadable ({e.strerror or e})"
    return None if stat.S_ISREG(mode) else file_kind(mode)


def check_regular_files(p: Path, files) -> None:
    """Every file a runner would open from artifact ``p`` (``files``: its target's ``files_of(p)``: the file
    itself, each file under a package folder, the companions it names by convention) is a regular file. A
    FIFO would hang the runtime that opens it, a device such as ``/dev/zero`` feed it without end; an absent
    companion is the runner's to report."""
    for q in files:
        what = _not_regular(q)
        if what is not None and (q == p or what != "a directory"):  # a sibling directory is not opened
            raise ArtifactError(f"{q}: is {what}, not a regular file; an artifact's files must be regular files "
                                f"(refused without opening it)")
