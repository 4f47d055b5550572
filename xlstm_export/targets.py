"""The target registry: every export target, registered once; the CLI, validation, the API, the benchmarks
and the tests iterate it. What a target is (:class:`~xlstm_export.target.Target`) is in ``target.py``;
each target package declares its own in its ``target.py``.

    TARGETS["onnx"]                         # a Target: name, suffixes, options, kinds, behaviour
    artifact_kind("onnx-scan")              # an artifact kind: the target plus the options selecting it
    target_for_path("model.mlpackage")      # by suffix (what ``validate`` and ``run`` open an artifact with)

Adding a target is its package plus one line in :data:`BUILTIN` (or one :func:`register` call, e.g. from
a plugin or a test). Importing this module loads the targets' declarations, which import no heavy library.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Dict

from .errors import ArtifactError, RegistryError, UnsupportedError
from .target import Kind, Target

# The built-in targets: each package's ``target.py`` declares ``TARGET``.
BUILTIN = ("xlstm_export.coreml.target", "xlstm_export.onnx.target", "xlstm_export.executorch.target",
           "xlstm_export.torchscript.target")

TARGETS: Dict[str, Target] = {}
KINDS: Dict[str, Kind] = {}


def register(target: Target) -> Target:
    """Add ``target`` (and its artifact kinds) to the registry; a name, suffix or kind already registered
    raises :class:`RegistryError`."""
    if target.name in TARGETS:
        raise RegistryError(f"target {target.name!r} is already registered")
    for s in target.suffixes:
        owner = next((t.name for t in TARGETS.values() if s in t.suffixes), None)
        if owner:
            raise RegistryError(f"target {target.name!r}: suffix {s!r} already belongs to {owner!r}")
    for k in target.kinds:
        if k.name in KINDS:
            raise RegistryError(f"artifact kind {k.name!r} is already registered")
        if k.target != target.name:
            raise RegistryError(f"artifact kind {k.name!r} names target {k.target!r}, registered by {target.name!r}")
    TARGETS[target.name] = target
    KINDS.update({k.name: k for k in target.kinds})
    return target


def unregister(name: str) -> None:
    """Remove a registered target and its kinds (a test's toy target, after the test)."""
    target = TARGETS.pop(name)
    for k in target.kinds:
        KINDS.pop(k.name, None)


def swept_kinds() -> Dict[str, Kind]:
    """The kinds the demo, the parity matrix and the reliability sweep export (``Kind.sweep``)."""
    return {n: k for n, k in KINDS.items() if k.sweep}


def artifact_kind(name: str) -> Kind:
    try:
        return KINDS[name]
    except KeyError:
        raise UnsupportedError(f"unknown artifact kind {name!r}; registered: {sorted(KINDS)}") from None


def target_named(name: str) -> Target:
    try:
        return TARGETS[name]
    except KeyError:
        raise UnsupportedError(f"unknown target {name!r}; known: {sorted(TARGETS)}") from None


def target_for_path(path: str | os.PathLike) -> Target:
    """The target whose artifacts carry ``path``'s suffix (ArtifactError naming the known ones)."""
    p = Path(path)
    for t in TARGETS.values():
        if t.claims(p):
            return t
    known = ", ".join(f"{s} ({t.name})" for t in TARGETS.values() for s in t.suffixes)
    raise ArtifactError(f"{p}: unknown artifact kind from its suffix {p.suffix or '(none)'!r}; expected one of {known}")


def target_of_kind(kind: str) -> Target:
    """The target that writes artifact kind ``kind`` (a contract's ``"target"`` entry)."""
    return TARGETS[artifact_kind(kind).target]


for _module in BUILTIN:
    register(importlib.import_module(_module).TARGET)

__all__ = ["Kind", "Target", "TARGETS", "KINDS", "BUILTIN", "register", "unregister", "artifact_kind",
           "target_named", "target_for_path", "target_of_kind", "swept_kinds"]
