"""What a target is stays inside its package: generic modules name no target and no artifact suffix, and a
new target is one package plus one registration (proved by a toy target that lives in tests/)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import xlstm_export
from xlstm_export.targets import BUILTIN, KINDS, TARGETS

PACKAGE = Path(xlstm_export.__file__).resolve().parent
# where target knowledge may live: each target's package, and the registration
TARGET_PACKAGES = {m.split(".")[1] for m in BUILTIN}
ALLOWED = {"targets.py"}


def _generic_modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        if rel.parts[0] in TARGET_PACKAGES or str(rel) in ALLOWED:
            continue
        yield rel, path


def _docstring_nodes(tree: ast.AST) -> set:
    """The string constants that are docstrings (documentation, not behaviour)."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = getattr(node, "body", [])
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                out.add(id(body[0].value))
    return out


def _checkpoint_suffixes(tree: ast.AST) -> set:
    """The constants of a ``STATE_DICT_SUFFIXES = (...)`` assignment: the frontends' checkpoint file suffixes
    (upstream's torch.save state dicts), input that happens to share ``.pt`` with TorchScript artifacts."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "STATE_DICT_SUFFIXES"
                                                for t in node.targets):
            out |= {id(c) for c in ast.walk(node.value) if isinstance(c, ast.Constant)}
    return out


def _names_a_target(s: str, names: set, suffix_re: re.Pattern) -> bool:
    return s in names or bool(suffix_re.search(s))


def test_no_generic_module_names_a_target_or_an_artifact_suffix():
    """Outside the target packages and targets.py, no string literal (docstrings aside) is a target's or an
    artifact kind's name, or holds an artifact suffix."""
    names = set(TARGETS) | set(KINDS)
    suffixes = sorted({s for t in TARGETS.values() for s in t.suffixes}, key=len, reverse=True)
    suffix_re = re.compile(r"(?:" + "|".join(re.escape(s) for s in suffixes) + r")(?![A-Za-z0-9_])", re.IGNORECASE)
    found = []
    for rel, path in _generic_modules():
        tree = ast.parse(path.read_text(), str(path))
        docs = _docstring_nodes(tree) | _checkpoint_suffixes(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs \
                    and _names_a_target(node.value, names, suffix_re):
                found.append(f"{rel}:{node.lineno}: {node.value[:80]!r}")
    assert not found, "target knowledge outside the target packages:\n" + "\n".join(found)


def test_the_check_sees_what_it_looks_for():
    """The scan above would catch a literal target name, a suffix inside a message, and not a docstring."""
    names = set(TARGETS) | set(KINDS)
    suffix_re = re.compile(r"(?:\.mlpackage|\.onnx|\.pte|\.pt|\.ts)(?![A-Za-z0-9_])", re.IGNORECASE)
    assert _names_a_target("onnx-scan", names, suffix_re)
    assert _names_a_target("no such artifact (file or .mlpackage directory)", names, suffix_re)
    assert _names_a_target("model.pt", names, suffix_re)
    assert not _names_a_target("model.pth.tar", names, suffix_re) and not _names_a_target("ports", names, suffix_re)
    tree = ast.parse('"""a docstring naming model.onnx"""\nx = "model.onnx"\n')
    docs = _docstring_nodes(tree)
    hits = [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and id(n) not in docs]
    assert hits == ["model.onnx"]


def test_force_replaces_only_archives_of_ours_under_every_torchscript_suffix(tmp_path):
    """Drift fixed: ``.ts`` is a TorchScript suffix, and a user's ``.ts`` that is not our archive is not ours
    (it was: only ``.pt`` was sniffed, so ``--force`` would have replaced any ``.ts``)."""
    import zipfile

    from xlstm_export.outputs import foreign_reason

    target = TARGETS["torchscript"]
    for suffix in target.suffixes:
        theirs = tmp_path / f"theirs{suffix}"
        theirs.write_text("a user's file")
        assert foreign_reason(theirs, target.foreign_reason) == "not a TorchScript archive"
        ours = tmp_path / f"ours{suffix}"
        with zipfile.ZipFile(ours, "w") as z:
            z.writestr("model/extra/xlstm_export.io", "{}")
        assert foreign_reason(ours, target.foreign_reason) is None
