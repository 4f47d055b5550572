"""One error hierarchy. Only ``cli.py`` turns these into exit codes.

Every message says what is wrong, where (file, tensor or field), expected vs got, and what to do.
"""

from __future__ import annotations

import reprlib

# the longest ``error:`` line the CLI prints: a few terminal lines. A weight mismatch that lists four problems
# with their checkpoint and canonical names takes ~600 characters, all of them useful, so not less.
MAX_LINE = 1000
_TAIL = 150  # a cut line keeps its end too: that is where "expected ..." and what to do usually are


def cut(text: str, limit: int = MAX_LINE) -> str:
    """``text`` on one line (whitespace runs collapsed) and at most about ``limit`` characters: a longer one
    keeps its head and its last ``_TAIL`` characters and says how much was cut in between."""
    text = " ".join(str(text).split())
    if len(text) <= limit:
        return text
    tail = min(_TAIL, limit // 4)
    head = max(limit - tail - 35, 1)
    return f"{text[:head]} ...[{len(text) - head - tail} characters cut]... {text[-tail:]}"


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxtuple, _REPR.maxdict, _REPR.maxset = 2, 5, 5, 5, 5
_REPR.maxfrozenset = _REPR.maxdeque = _REPR.maxarray = 5
_REPR.maxstring, _REPR.maxlong, _REPR.maxother = 80, 40, 80


def short(value: object, limit: int = 120) -> str:
    """A bounded ``repr`` of a value taken from the input, for messages: nested, shared (YAML aliases) or
    self-referencing containers, long strings and huge integers cost little time and few characters."""
    try:
        text = _REPR.repr(value)
    except Exception:  # a repr that fails: say what it is
        text = f"<{type(value).__name__}>"
    return cut(text, limit)


def first_line(e: BaseException) -> str:
    """The first line of a foreign library's error message (its type name when it has none), cut short."""
    text = str(e).strip()
    return cut(text.splitlines()[0], 300) if text else type(e).__name__


class XlstmExportError(Exception):
    """Base class. ``exit_code`` is what the CLI exits with."""

    exit_code = 2


class CheckpointError(XlstmExportError):
    """A checkpoint (files, config or tensors) is missing, malformed or inconsistent."""


class ConfigError(CheckpointError):
    """A config or profile field is missing, of the wrong type, or inconsistent with others."""


class UnsupportedError(XlstmExportError):
    """Valid input that this tool does not (yet) handle."""


class OutputError(XlstmExportError):
    """The output path cannot be written (exists without --force, parent missing, ...)."""


class ArtifactError(XlstmExportError):
    """An exported artifact is missing, unreadable, of an unknown kind, lacks its I/O contract, or was
    exported from a different checkpoint than the one it is checked against."""


class ParityError(XlstmExportError):
    """An artifact's outputs are outside the tolerance against the reference."""

    exit_code = 1


class RegistryError(XlstmExportError):
    """A lowering or runner registry is used wrongly (duplicate or missing registration)."""

    exit_code = 1


class RuntimeUnavailable(UnsupportedError):
    """A valid artifact whose runtime does not exist on this machine (a Core ML-delegated ExecuTorch program off
    macOS). Export commands then report validation as skipped; ``validate`` exits 2 with the line."""
