"""Opening an artifact as a runner: its kind from the path, one factory per kind, imported lazily.

    runner = open_artifact("model.pt", graph)              # -> TorchScriptRunner
    runner = open_artifact("model.onnx", graph, batch_size=2)

A target adds its runner with one entry in ``FACTORIES`` (and its suffix in ``SUFFIXES``): a function
``(path, graph, **opts) -> Runner`` that imports its module inside, so importing this module costs
nothing. Every factory must read the artifact's ``xlstm_export.io`` contract and call
``validation.contract.check_contract(contract, graph, where)`` before running anything.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Dict

from ..errors import ArtifactError, UnsupportedError
from ..graphs import Graph
from .runner import Runner

Factory = Callable[..., Runner]

# path suffix -> artifact kind
SUFFIXES: Dict[str, str] = {
    ".pt": "torchscript",
    ".ts": "torchscript",
    ".onnx": "onnx",
    ".mlpackage": "coreml",
}


def _torchscript(path: Path, graph: Graph, **opts) -> Runner:
    from ..torchscript.runner import TorchScriptRunner

    return TorchScriptRunner(path, graph, **opts)


def _onnx(path: Path, graph: Graph, **opts) -> Runner:
    from ..onnx.runner import open_runner  # the ONNX target's factory (step and Scan graphs)

    return open_runner(path, graph, **opts)


def _coreml(path: Path, graph: Graph, **opts) -> Runner:
    from ..coreml.runner import open_runner  # the Core ML target's factory

    return open_runner(path, graph, **opts)


# artifact kind -> factory
FACTORIES: Dict[str, Factory] = {
    "torchscript": _torchscript,
    "onnx": _onnx,
    "coreml": _coreml,
}


def detect_kind(path: str | os.PathLike) -> str:
    p = Path(path)
    kind = SUFFIXES.get(p.suffix.lower())
    if kind is None:
        known = ", ".join(f"{s} ({k})" for s, k in SUFFIXES.items())
        raise ArtifactError(f"{p}: unknown artifact kind from its suffix {p.suffix or '(none)'!r}; "
                            f"expected one of {known}")
    return kind


def open_artifact(path: str | os.PathLike, graph: Graph, **opts) -> Runner:
    """A runner over the artifact at ``path``, checked against ``graph`` (ArtifactError, exit 2, if the
    file is missing, of an unknown kind, or exported from another model)."""
    p = Path(path)
    if not p.exists():
        raise ArtifactError(f"{p}: no such artifact (file or .mlpackage directory)")
    kind = detect_kind(p)
    try:
        return FACTORIES[kind](p, graph, **opts)
    except ModuleNotFoundError as e:
        if e.name and e.name.startswith("xlstm_export."):
            raise UnsupportedError(f"{p}: no validation runner for {kind} artifacts in this build "
                                f"({e.name} is missing)") from None
        raise
