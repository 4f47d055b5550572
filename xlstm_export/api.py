"""The Python API: what the CLI does, as functions returning typed results.

    import xlstm_export as xe

    graph = xe.load_checkpoint("path/to/checkpoint")               # Graph: blocks, states, lazy weights
    art = xe.export(graph, "onnx", "model.onnx", prefill_chunk=64)  # Artifact: path, files, contract, stats
    res = xe.validate(art.path, graph, report="model.onnx.report")  # ValidationResult: passed, report
    print(res.summary_line())

The targets and their options: ``xlstm_export.targets.TARGETS`` (what ``xlstm-export <target> --help``
shows). ``checkpoint`` arguments take a path (format detected, or ``format=``) or an already loaded ``Graph``.
Errors are :class:`~xlstm_export.errors.XlstmExportError` subclasses whose ``exit_code`` is what the CLI
exits with (2: bad input, 1: outside tolerance). Every check the CLI makes is made here, before any work: count
limits (``xlstm_export.resources``: ``max_new_tokens``, ``steps``, ``prompts``, a target's integer options...),
the report folder, and the memory a validation at the asked batch needs; the CLI parses its flags and calls
these functions.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import List, Optional, Sequence, Union

from .graphs import Graph
from .outputs import Artifact
from .resources import (MAX_BATCH_SIZE, MAX_HELDOUT_TOKENS, MAX_NEW_TOKENS, MAX_PROMPT_LEN, MAX_PROMPTS, MAX_SEED,
                        MAX_STEPS, MAX_TEMPERATURE, MAX_TOP_K, OPTION_MAX, check_range)

Checkpoint = Union[str, os.PathLike, Graph]


def load_checkpoint(path: str | os.PathLike, format: Optional[str] = None, revision: Optional[str] = None) -> Graph:
    """Read a checkpoint's config and tensor headers into a validated :class:`Graph` (no tensor data is
    read until a weight is used), with its tokenizer and generation files (``graph.text``). ``format``:
    ``hf``, ``large``, ``hybrid`` or ``profile`` (default: detected from the files present). ``path`` may be
    a Hugging Face Hub id ``org/name`` (at ``revision``), resolved through huggingface_hub's cache
    (``HF_HUB_OFFLINE``, ``HF_TOKEN`` as set)."""
    from .frontends import load_checkpoint as _load

    return _load(path, format=format, **({"revision": revision} if revision is not None else {}))


def _graph(checkpoint: Checkpoint, format: Optional[str], revision: Optional[str] = None) -> Graph:
    return checkpoint if isinstance(checkpoint, Graph) else load_checkpoint(checkpoint, format, revision)


def check_target_options(target, options: dict) -> None:
    """The integer options of ``target`` (a :class:`~xlstm_export.targets.Target`) within the ranges its
    registration (and ``resources.OPTION_MAX``) declares, as the CLI's ``--batch-size``, ``--prefill-chunk``...
    are: a ConfigError naming the flag otherwise. Options it does not declare are the emitter's to judge."""
    for opt in target.options:
        if opt.dest in options and not (opt.is_flag or opt.choices or opt.text):
            check_range(opt.flag, options[opt.dest], opt.min,
                        opt.max if opt.max is not None else OPTION_MAX.get(opt.dest), optional=True)


def export(checkpoint: Checkpoint, target: str, output: str | os.PathLike, *, format: Optional[str] = None,
           force: bool = False, **options) -> Artifact:
    """Export ``checkpoint`` to ``target`` at ``output`` and return the :class:`Artifact` (path, every file
    written, I/O contract, the emitter's figures). ``options`` are the target's (the fields of its options
    dataclass, named like the CLI flags: ``precision="fp16"``, ``batch_size=2``, ``prefill_chunk=64``,
    ``scan=True``...). An existing output is replaced only with ``force``; nothing is written on error."""
    from pathlib import Path

    from .targets import target_named

    t = target_named(target)
    t.check_path(Path(output))  # before reading the checkpoint
    check_target_options(t, options)
    return t.emit(_graph(checkpoint, format), output, force=force, **options)


def validate(artifact: str | os.PathLike, checkpoint: Checkpoint, *, format: Optional[str] = None,
             report: Optional[str | os.PathLike] = None, force: bool = False, steps: int = 10, prompts: int = 3,
             prompt_len: int = 12, seed: int = 0, batch_size: Optional[int] = None,
             extra_prompts: Optional[Sequence[Sequence[int]]] = None, trust_artifact: bool = False,
             heldout: Optional[str | os.PathLike | Sequence[int]] = None, heldout_tokens: int = 1024,
             revision: Optional[str] = None):
    """Compare the artifact at ``artifact`` with the reference model of ``checkpoint``: each prompt's
    prefill, then ``steps`` greedy decode steps fed the reference's tokens. Returns a
    :class:`~xlstm_export.validation.ValidationResult` (``passed``, ``report`` dict, ``summary_line()``,
    ``raise_if_failed()``); it does not raise on parity. ``report``: a folder for report.json/.md/.html
    (an existing report is replaced only with ``force``). ``extra_prompts`` default to the held-out prompts
    of the checkpoint folder's ``validation_prompts.json`` (the bundled examples carry their task's). Before
    anything is read: the counts' ranges (``steps`` <= ``resources.MAX_STEPS``, ...) and the report folder;
    before the artifact is opened: the memory a validation at ``batch_size`` (default 1) needs against what
    this machine has available (ConfigError, one line, naming both). The artifact must be what
    xlstm-export writes for what its I/O contract declares (checked first: a TorchScript archive record by
    record before its code is loaded and run, the others' tensor dtypes and shapes against the declared
    precision, which picks the tolerance); ``trust_artifact=True`` skips that check, for artifacts you
    trust (it then loads and runs a TorchScript archive's code, whatever it does). ``heldout``: a text
    file (tokenized with the checkpoint's tokenizer.json), a ``.ids`` file or token ids: the report adds
    perplexity and top-1 agreement against the full-precision reference on its first ``heldout_tokens``."""
    from .validation.report import check_report_dir

    check_range("--steps", steps, 0, MAX_STEPS)
    check_range("--prompts", prompts, 1, MAX_PROMPTS)
    check_range("--prompt-len", prompt_len, 1, MAX_PROMPT_LEN)
    check_range("--batch-size", batch_size, 1, MAX_BATCH_SIZE, optional=True)
    check_range("--heldout-tokens", heldout_tokens, 2, MAX_HELDOUT_TOKENS)
    if report is not None:
        check_report_dir(report, force)  # before reading anything
    graph = _graph(checkpoint, format, revision)
    if extra_prompts is None and not isinstance(checkpoint, Graph):
        from .validation.prompts import task_prompts

        extra_prompts = task_prompts(graph.source)
    return _validate(artifact, graph, report=report, force=force, steps=steps, prompts=prompts,
                     prompt_len=prompt_len, seed=seed, batch_size=batch_size, extra_prompts=extra_prompts or [],
                     trust_artifact=trust_artifact, heldout=heldout, heldout_tokens=heldout_tokens)


def _validate(artifact, graph: Graph, *, report, force: bool, steps: int, prompts: int = 3, prompt_len: int = 12,
              seed: int = 0, batch_size: Optional[int] = None, extra_prompts: Sequence[Sequence[int]] = (),
              trust_artifact: bool = False, heldout=None, heldout_tokens: int = 1024):
    """:func:`validate` once its arguments and the report folder are checked and the graph is loaded."""
    from .resources import check_validation_memory
    from .validation import validate_artifact

    check_validation_memory(graph, batch_size or 1, max([prompt_len, *map(len, extra_prompts)]))  # before opening
    if isinstance(heldout, (str, os.PathLike)):
        from .compress import calibration_ids

        heldout = calibration_ids(graph, str(heldout), "--heldout", minimum=2, limit=heldout_tokens)
    elif heldout is not None:
        heldout = list(heldout)[:heldout_tokens]
    return validate_artifact(artifact, graph, batch_size=batch_size, steps=steps, num_prompts=prompts,
                             prompt_len=prompt_len, seed=seed, extra_prompts=extra_prompts, report_dir=report,
                             force=force, trust_artifact=trust_artifact, heldout=heldout, report_checked=True)


def open_for_generation(artifact: str | os.PathLike, *, checkpoint: Optional[Checkpoint] = None,
                        format: Optional[str] = None, revision: Optional[str] = None, trust_artifact: bool = False):
    """``(runner, text)`` for generating with the artifact at ``artifact`` (what ``xlstm-export run`` does):
    its runner from the target registry and its tokenizer / special ids (``text``: None when its contract
    names none). With ``checkpoint`` the artifact is checked against it as ``validate`` checks (unless
    ``trust_artifact``). Without one, the artifact's own contract profile is the graph; a target whose
    artifacts carry code (TorchScript) is then run only with ``trust_artifact`` -- its record-by-record check
    needs the checkpoint -- while graph and program artifacts (ONNX, Core ML, ExecuTorch) are interpreted by
    their runtimes and run after the contract checks every runner makes."""
    from pathlib import Path

    from .errors import ArtifactError
    from .text.files import artifact_text
    from .validation.registry import checked_target

    p = Path(artifact)
    target = checked_target(p)
    if checkpoint is not None:
        graph = checkpoint if isinstance(checkpoint, Graph) else load_checkpoint(checkpoint, format, revision)
        trusted = trust_artifact
    else:
        if target.runs_code and not trust_artifact:
            raise ArtifactError(f"{p}: loading a {target.name} artifact runs its code; pass --checkpoint PATH (the "
                                f"artifact is then checked record by record against what xlstm-export writes for it) "
                                f"or --trust-artifact if you trust where it came from")
        graph = None  # the artifact's contract describes it (the runner opens it once and checks the contract)
        trusted = True  # nothing to judge: the runtime interprets the artifact; its contract is checked on open
    runner = target.open_runner(p, graph, trust_artifact=trusted)
    vocab = getattr(runner, "vocab_size", None) or (graph.config.vocab_size if graph is not None else None)
    text = artifact_text(p, runner.contract, vocab, lambda names: target.text_paths(p, names))
    return runner, text


@dataclass(frozen=True)
class Generation:
    """What :func:`generate` and :func:`run` return: the prompt's ids, the new tokens (an EOS that stopped
    it is the last one), their text (None without a tokenizer) and why it stopped ("eos" or "length")."""

    prompt_ids: List[int]
    tokens: List[int]
    text: Optional[str]
    stop: str

    def to_json(self) -> dict:
        return {"prompt_ids": self.prompt_ids, "tokens": self.tokens, "text": self.text, "stop": self.stop}


def _generation(step, tokenizer, eos, vocab: int, where: str, prompt, prompt_ids, max_new_tokens: int,
                ignore_eos: bool, sampling, on_token, on_text=None) -> Generation:
    from .errors import ConfigError
    from .text.generation import generate_tokens
    from .text.tokenizer import decode, encode

    if (prompt is None) == (prompt_ids is None):
        raise ConfigError("give the prompt as text (--prompt) or as token ids (--prompt-ids), one of them")
    if prompt is not None:
        if tokenizer is None:
            raise ConfigError(f"--prompt: {where} carries no tokenizer.json (it takes token ids only); use "
                              f"--prompt-ids, or export from a checkpoint that has a tokenizer.json")
        ids = encode(tokenizer, prompt, vocab, where)
    else:
        ids = [int(i) for i in prompt_ids]
        if not ids:
            raise ConfigError("--prompt-ids: expected at least one token id, got none")
        bad = [t for t in ids if not 0 <= t < vocab]
        if bad:
            raise ConfigError(f"--prompt-ids: token ids must be in [0, {vocab}) for this model, got {bad[:8]}")
    callback = on_token
    if on_text is not None:  # text as it comes: pieces of the decoded continuation (ids without a tokenizer)
        from .text.tokenizer import TextStream

        streamer = TextStream(tokenizer) if tokenizer is not None else None

        def callback(tok: int) -> None:
            if on_token is not None:
                on_token(tok)
            piece = streamer.push(tok) if streamer is not None else f"{tok} "
            if piece:
                on_text(piece)

    tokens, stop = generate_tokens(step(), ids, max_new_tokens, sampling, () if ignore_eos else eos, callback)
    if on_text is not None and streamer is not None:
        rest = streamer.flush()
        if rest:
            on_text(rest)
    return Generation(ids, tokens, decode(tokenizer, tokens) if tokenizer is not None else None, stop)


def _sampling(temperature: float, top_k: int, top_p: float, seed: int, max_new_tokens: int):
    """The sampling settings, every count and number within the CLI's ranges (checked before any work)."""
    from .text.generation import Sampling

    check_range("--max-new-tokens", max_new_tokens, 0, MAX_NEW_TOKENS)
    check_range("--temperature", temperature, 0, MAX_TEMPERATURE, integer=False)
    check_range("--top-k", top_k, 0, MAX_TOP_K)
    check_range("--top-p", top_p, 0, 1, integer=False, min_open=True)
    check_range("--seed", seed, 0, MAX_SEED)
    return Sampling(temperature=float(temperature), top_k=int(top_k), top_p=float(top_p), seed=int(seed))


def generate(checkpoint: Checkpoint, prompt: Optional[str] = None, *, prompt_ids: Optional[Sequence[int]] = None,
             max_new_tokens: int = 16, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, seed: int = 0,
             ignore_eos: bool = False, device: str = "cpu", dtype: str = "float32", format: Optional[str] = None,
             revision: Optional[str] = None, on_token=None, on_text=None) -> Generation:
    """Continue ``prompt`` (text, encoded with the checkpoint's tokenizer.json) or ``prompt_ids`` with the
    PyTorch reference model of ``checkpoint``: greedy (``temperature=0``) or sampled, until an EOS id of its
    generation config (unless ``ignore_eos``) or ``max_new_tokens``. ``on_token(id)`` sees each new token,
    ``on_text(piece)`` the text it adds (its id and a space without a tokenizer). Counts beyond the CLI's
    ranges (``max_new_tokens`` <= ``resources.MAX_NEW_TOKENS``, ...) are a ConfigError before any work."""
    from .reference import build_model
    from .frontends.text import load_tokenizer
    from .text.generation import reference_step

    sampling = _sampling(temperature, top_k, top_p, seed, max_new_tokens)
    graph = checkpoint if isinstance(checkpoint, Graph) else load_checkpoint(checkpoint, format, revision)
    text = graph.text
    tokenizer = None
    if text is not None and text.has_tokenizer:
        tokenizer = load_tokenizer(dict(text.files)["tokenizer.json"], f"{graph.source}/tokenizer.json")
    model = build_model(graph, device=device, dtype=dtype)
    return _generation(lambda: reference_step(model, device), tokenizer, text.eos_token_ids if text else (),
                       graph.config.vocab_size, f"checkpoint {graph.source}", prompt, prompt_ids, max_new_tokens,
                       ignore_eos, sampling, on_token, on_text)


def run(artifact: str | os.PathLike, prompt: Optional[str] = None, *, prompt_ids: Optional[Sequence[int]] = None,
        max_new_tokens: int = 16, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, seed: int = 0,
        ignore_eos: bool = False, checkpoint: Optional[Checkpoint] = None, format: Optional[str] = None,
        revision: Optional[str] = None, trust_artifact: bool = False, on_token=None, on_text=None) -> Generation:
    """:func:`generate` driven by the exported artifact itself, through its runner and with the tokenizer it
    carries (:func:`open_for_generation` says which artifacts need ``checkpoint`` or ``trust_artifact``)."""
    from .text.generation import runner_step

    sampling = _sampling(temperature, top_k, top_p, seed, max_new_tokens)  # before the artifact is opened
    runner, text = open_for_generation(artifact, checkpoint=checkpoint, format=format, revision=revision,
                                       trust_artifact=trust_artifact)
    v = getattr(runner, "vocab_size", None)
    vocab = v if isinstance(v, int) and v > 0 else int(runner.contract["profile"]["vocab_size"])
    return _generation(lambda: runner_step(runner), text.tokenizer if text else None,
                       text.eos_token_ids if text else (), vocab, f"artifact {artifact}", prompt, prompt_ids,
                       max_new_tokens, ignore_eos, sampling, on_token, on_text)


@dataclass(frozen=True)
class Exported:
    """What :func:`export_and_validate` returns: the artifact, its validation (None when not asked for or
    skipped) and why it was skipped (a valid artifact this machine's runtimes cannot run), or None."""

    artifact: Artifact
    validation: Optional[object] = None  # a validation.ValidationResult
    validation_skipped: Optional[str] = None


def export_and_validate(checkpoint: Checkpoint, target: str, output: str | os.PathLike, *,
                        format: Optional[str] = None, revision: Optional[str] = None, force: bool = False,
                        validate: bool = True, report: Optional[str | os.PathLike] = None, steps: int = 10,
                        on_artifact=None, **options) -> Exported:
    """What ``xlstm-export <target>`` does: :func:`export`, then (``validate``) compare the artifact with the
    reference on the seeded prompts (``steps`` greedy steps each; report in ``report``). Every check comes
    before anything is written: the output suffix, the option ranges, the report folder, and the memory a
    validation at the artifact's batch needs (ConfigError naming both figures). ``on_artifact(artifact)``
    sees the artifact as soon as it is written, before the validation runs. Does not raise on parity: call
    ``result.validation.raise_if_failed()``; a runtime this machine lacks skips the validation
    (``validation_skipped`` says why)."""
    from pathlib import Path

    from .errors import RuntimeUnavailable
    from .targets import target_named

    t = target_named(target)
    t.check_path(Path(output))  # before any work
    check_target_options(t, options)
    if validate:
        from .resources import check_validation_memory
        from .validation.report import check_report_dir
        from .validation.validate import DEFAULT_PROMPT_LEN

        check_range("--steps", steps, 0, MAX_STEPS)
        if report is not None:
            check_report_dir(report, force)
    graph = _graph(checkpoint, format, revision)
    if validate:  # before writing anything: a batch that cannot be validated here is refused first
        T = options.get("prefill_chunk") or 0
        check_validation_memory(graph, int(options.get("batch_size") or 1), max(DEFAULT_PROMPT_LEN, 3 * T + 5),
                                hint=" or --no-validate")
    art = export(graph, target, output, force=force, **options)
    if on_artifact is not None:
        on_artifact(art)
    if not validate:
        return Exported(art)
    try:
        result = _validate(art.path, graph, report=report, force=force, steps=steps)
    except RuntimeUnavailable as e:  # a valid artifact this machine cannot run: say so, do not fail
        return Exported(art, None, f"validation skipped: {e}")
    return Exported(art, result)


__all__ = ["load_checkpoint", "export", "validate", "export_and_validate", "generate", "run", "open_for_generation",
           "Generation", "Exported", "Artifact", "Graph"]
