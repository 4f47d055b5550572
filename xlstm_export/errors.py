"""One error hierarchy. Only ``cli.py`` turns these into exit codes.

Every message says what is wrong, where (file, tensor or field), expected vs got, and what to do.
"""

from __future__ import annotations


def first_line(e: BaseException) -> str:
    """The first line of a foreign library's error message (its type name when it has none)."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


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
