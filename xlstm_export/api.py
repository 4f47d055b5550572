"""The Python API: what the CLI does, as functions returning typed results.

    import xlstm_export as xe

    graph = xe.load_checkpoint("path/to/checkpoint")               # Graph: blocks, states, lazy weights
    art = xe.export(graph, "onnx", "model.onnx", prefill_chunk=64)  # Artifact: path, files, contract, stats
    res = xe.validate(art.path, graph, report="model.onnx.report")  # ValidationResult: passed, report
    print(res.summary_line())

The targets and their options: ``xlstm_export.targets.TARGETS`` (what ``xlstm-export <target> --help``
shows). ``checkpoint`` arguments take a path (format detected, or ``format=``) or an already loaded ``Graph``.
Errors are :class:`~xlstm_export.errors.XlstmExportError` subclasses whose ``exit_code`` is what the CLI
exits with (2: bad input, 1: outside tolerance).
"""

from __future__ import annotations

import os
from typing import Optional, Sequence, Union

from .graphs import Graph
from .outputs import Artifact

Checkpoint = Union[str, os.PathLike, Graph]


def load_checkpoint(path: str | os.PathLike, format: Optional[str] = None) -> Graph:
    """Read a checkpoint's config and tensor headers into a validated :class:`Graph` (no tensor data is
    read until a weight is used). ``format``: ``hf``, ``large``, ``hybrid`` or ``profile`` (default: detected
    from the files present)."""
    from .frontends import load_checkpoint as _load

    return _load(path, format=format)


def _graph(checkpoint: Checkpoint, format: Optional[str]) -> Graph:
    return checkpoint if isinstance(checkpoint, Graph) else load_checkpoint(checkpoint, format)


def export(checkpoint: Checkpoint, target: str, output: str | os.PathLike, *, format: Optional[str] = None,
           force: bool = False, **options) -> Artifact:
    """Export ``checkpoint`` to ``target`` at ``output`` and return the :class:`Artifact` (path, every file
    written, I/O contract, the emitter's figures). ``options`` are the target's (the fields of its options
    dataclass, named like the CLI flags: ``precision="fp16"``, ``batch_size=2``, ``prefill_chunk=64``,
    ``scan=True``...). An existing output is replaced only with ``force``; nothing is written on error."""
    from .errors import UnsupportedError
    from .targets import TARGETS, check_suffix

    if target not in TARGETS:
        raise UnsupportedError(f"unknown target {target!r}; known: {sorted(TARGETS)}")
    check_suffix(target, output)  # before reading the checkpoint
    return TARGETS[target].emit(_graph(checkpoint, format), output, force=force, **options)


def validate(artifact: str | os.PathLike, checkpoint: Checkpoint, *, format: Optional[str] = None,
             report: Optional[str | os.PathLike] = None, force: bool = False, steps: int = 10, prompts: int = 3,
             prompt_len: int = 12, seed: int = 0, batch_size: Optional[int] = None,
             extra_prompts: Optional[Sequence[Sequence[int]]] = None, trust_artifact: bool = False,
             heldout: Optional[str | os.PathLike | Sequence[int]] = None, heldout_tokens: int = 1024):
    """Compare the artifact at ``artifact`` with the reference model of ``checkpoint``: each prompt's
    prefill, then ``steps`` greedy decode steps fed the reference's tokens. Returns a
    :class:`~xlstm_export.validation.ValidationResult` (``passed``, ``report`` dict, ``summary_line()``,
    ``raise_if_failed()``); it does not raise on parity. ``report``: a folder for report.json/.md/.html
    (an existing report is replaced only with ``force``). ``extra_prompts`` default to the example task's
    held-out sequences when the checkpoint folder has a ``train_log.json``. The artifact must be what
    xlstm-export writes for what its I/O contract declares (checked first: a TorchScript archive record by
    record before its code is loaded and run, the others' tensor dtypes and shapes against the declared
    precision, which picks the tolerance); ``trust_artifact=True`` skips that check, for artifacts you
    trust (it then loads and runs a TorchScript archive's code, whatever it does). ``heldout``: a text
    file (tokenized with the checkpoint's tokenizer.json), a ``.ids`` file or token ids: the report adds
    perplexity and top-1 agreement against the full-precision reference on its first ``heldout_tokens``."""
    from .validation import validate_artifact
    from .validation.prompts import task_prompts

    graph = _graph(checkpoint, format)
    if extra_prompts is None:
        extra_prompts = task_prompts(checkpoint) if not isinstance(checkpoint, Graph) else []
    if isinstance(heldout, (str, os.PathLike)):
        from .compress import calibration_ids

        heldout = calibration_ids(graph, str(heldout), "--heldout", minimum=2, limit=heldout_tokens)
    elif heldout is not None:
        heldout = list(heldout)[:heldout_tokens]
    return validate_artifact(artifact, graph, batch_size=batch_size, steps=steps, num_prompts=prompts,
                             prompt_len=prompt_len, seed=seed, extra_prompts=extra_prompts, report_dir=report,
                             force=force, trust_artifact=trust_artifact, heldout=heldout)


__all__ = ["load_checkpoint", "export", "validate", "Artifact", "Graph"]
