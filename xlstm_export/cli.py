"""The ``xlstm-export`` command line. Heavy imports happen inside commands, so ``--help`` is fast.

Errors: every :class:`~xlstm_export.errors.XlstmExportError` becomes one line ``error: ...`` on stderr
and its ``exit_code`` (2 for bad input) -- never a traceback. That mapping lives in ``run_guarded``;
the ``main`` group applies it to every command, so commands added later get it for free.

Warnings: whatever the libraries write to stderr while a command runs (Python warnings, logging, C
libraries writing to file descriptor 2) is held back (:func:`xlstm_export.quiet.quiet`) and shown after the
command only if it succeeds; a failing command prints its one ``error:`` line and nothing else. Progress lines
(a terminal only) are not held.

Bounds: counts and batch sizes have maxima (``xlstm_export.resources``); a validation's batch is also
checked against the memory available before anything is allocated or written.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Callable, Optional

import click

from .errors import XlstmExportError
from .resources import MAX_BATCH_SIZE, MAX_NEW_TOKENS, MAX_PROMPT_LEN, MAX_PROMPTS, MAX_STEPS

FORMAT_CHOICES = ("hf", "large", "hybrid", "profile")


def run_guarded(fn: Callable[[], Any]) -> Any:
    """Run ``fn``; turn an XlstmExportError into ``error: <one line>`` on stderr + its exit code (the line cut
    to ``errors.MAX_LINE`` characters, keeping its head and its end)."""
    try:
        return fn()
    except XlstmExportError as e:
        from .errors import cut

        msg = cut(str(e)) or type(e).__name__  # one line of at most ~1000 characters, whatever the input was
        click.echo(f"error: {msg}", err=True)
        sys.exit(e.exit_code)


def _keep_held(e: Optional[BaseException]) -> bool:
    """Show what was held back after the command? Yes on success (and on a bug, whose traceback follows);
    no on a reported failure (an XlstmExportError, a usage error, an interrupt): its one line stands alone."""
    if e is None:
        return True
    if isinstance(e, click.exceptions.Exit):
        return e.exit_code == 0
    if isinstance(e, SystemExit):
        return e.code in (0, None)
    return not isinstance(e, (XlstmExportError, click.ClickException, click.exceptions.Abort, KeyboardInterrupt))


class _Group(click.Group):
    def get_command(self, ctx: click.Context, name: str) -> Optional[click.Command]:
        """A command; a target registered after this module was imported gets its export command here."""
        cmd = super().get_command(ctx, name)
        if cmd is None:
            from .targets import TARGETS

            if name in TARGETS:
                cmd = export_command(TARGETS[name])
        return cmd

    def list_commands(self, ctx: click.Context) -> list:
        from .targets import TARGETS

        return sorted(set(super().list_commands(ctx)) | set(TARGETS))

    def invoke(self, ctx: click.Context) -> Any:
        from . import progress
        from .quiet import quiet as held

        quiet = bool((ctx.params or {}).get("quiet"))

        def command() -> Any:  # held inside run_guarded: the error line is printed after stderr is back
            with held(show_after=_keep_held, stdout=False) as terminal, \
                    progress.reporting(progress.stderr_sink(quiet, terminal)):
                return super(_Group, self).invoke(ctx)

        return run_guarded(command)

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra) -> Any:
        """Usage errors (bad option, missing argument) are one ``error:`` line and exit 2, too."""
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.exceptions.UsageError as e:
            where = e.ctx.command_path if e.ctx is not None else "xlstm-export"
            click.echo(f"error: {e.format_message()} (see '{where} --help')", err=True)
            sys.exit(2)
        except click.exceptions.Abort:
            click.echo("error: aborted", err=True)
            sys.exit(130)
        sys.exit(rv if isinstance(rv, int) else 0)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="xlstm-export", prog_name="xlstm-export")
@click.option("-q", "--quiet", is_flag=True, help="No progress lines on stderr (they are shown only when stderr "
              "is a terminal anyway).")
def main(quiet: bool) -> None:
    """Export xLSTM checkpoints (transformers, xlstm_large, xLSTMLMModel) to on-device formats."""


def checkpoint_options(f: Callable) -> Callable:
    """``--checkpoint PATH [--format F]``, shared by commands that read a checkpoint."""
    f = click.option("--format", "fmt", type=click.Choice(FORMAT_CHOICES), default=None,
                     help="Checkpoint format (default: detected from the files present).")(f)
    f = click.option("--revision", default=None,
                     help="With a Hub id: the branch, tag or commit (default: main).")(f)
    f = click.option("--checkpoint", "checkpoint", required=True, type=click.Path(),
                     help="Checkpoint directory (or weights/profile file), or a Hugging Face Hub id org/name "
                          "(its cache; HF_HUB_OFFLINE, HF_TOKEN as set).")(f)
    return f


def _human(n: float, unit: str = "") -> str:
    for suffix in ("", "K", "M", "G", "T"):
        if abs(n) < 1000 or suffix == "T":
            return f"{n:.1f}{suffix}{unit}" if suffix else f"{int(n)}{unit}"
        n /= 1000.0
    return str(n)


def _block_row(i: int, b, states) -> list[str]:
    if b.kind == "mlstm":
        if b.form == "hybrid":
            dims = (f"NH={b.num_heads} DH={b.qk_head_dim} inner={b.inner_dim} K={b.conv_kernel} "
                    f"qkv_bs={b.qkv_blocksize}")
        else:
            dims = f"NH={b.num_heads} DQK={b.qk_head_dim} DV={b.v_head_dim}"
            if b.gate_soft_cap is not None:
                dims += f" cap={b.gate_soft_cap:g}"
        form = b.form
    else:
        dims = f"NH={b.num_heads} DH={b.head_dim} K={b.conv_kernel}"
        form = "hybrid"
    ffn = "-" if b.ffn is None else f"{b.ffn.activation} up={b.ffn.up_dim}"
    n_state = 0
    for s in states:
        k = 1
        for d in s.shape:
            k *= d
        n_state += k
    return [str(i), b.kind, form, ffn, dims, str(n_state)]


def render_table(rows: list[list[str]], markdown: bool = False) -> str:
    """A header row and data rows as aligned text columns (or a Markdown table); shared with the demo."""
    if markdown:
        lines = ["| " + " | ".join(r) + " |" for r in rows]
        lines.insert(1, "|" + "---|" * len(rows[0]))
        return "\n".join(lines)
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


@main.command()
@checkpoint_options
@click.option("--json", "as_json", is_flag=True, help="Print the graph profile as JSON.")
def inspect(checkpoint: str, fmt: str | None, revision: str | None, as_json: bool) -> None:
    """Show a checkpoint's block schedule, state contract and size (reads no tensor data)."""
    from .frontends import load_checkpoint

    graph = load_checkpoint(checkpoint, format=fmt, **({"revision": revision} if revision else {}))
    if as_json:
        click.echo(json.dumps(graph.to_profile(), indent=2))
        return
    cfg = graph.config
    by_block: dict[int, list] = {}
    for s in graph.state_contract(1):
        by_block.setdefault(s.block, []).append(s)
    rows = [["block", "kind", "form", "ffn", "dims", "state elems"]]
    rows += [_block_row(i, b, by_block.get(i, [])) for i, b in enumerate(graph.blocks)]
    click.echo(f"checkpoint: {graph.source}")
    click.echo(f"family: {cfg.family}  vocab: {cfg.vocab_size}  embedding_dim: {cfg.embedding_dim}  "
               f"blocks: {len(graph.blocks)}  out_norm: {cfg.out_norm.kind if cfg.out_norm else 'none'}  "
               f"tied lm_head: {'yes' if cfg.tie_weights else 'no'}"
               + (f"  logit cap: {cfg.output_logit_soft_cap:g}" if cfg.output_logit_soft_cap else ""))
    click.echo(render_table(rows))
    total_state = sum(int(r[5]) for r in rows[1:])
    click.echo(f"state elements per sequence (B=1): {total_state} ({_human(total_state * 4, 'B')} as float32)")
    click.echo(f"parameters: {graph.num_params:,} ({_human(graph.num_params)})  "
               f"weight bytes: {graph.weight_bytes:,} ({_human(graph.weight_bytes, 'B')})")


def text_options(f: Callable) -> Callable:
    """The prompt, stopping and sampling options ``generate`` and ``run`` share."""
    for opt in reversed([
        click.option("--prompt", "prompt", default=None, help="Prompt text, encoded with the tokenizer.json the "
                     "checkpoint (generate) or artifact (run) carries."),
        click.option("--prompt-ids", default=None, help="Comma-separated token ids, e.g. 1,2,3 (instead of --prompt)."),
        click.option("--max-new-tokens", type=click.IntRange(min=0, max=MAX_NEW_TOKENS), default=16, show_default=True),
        click.option("--ignore-eos", is_flag=True, help="Do not stop at the EOS token(s) of the generation config."),
        click.option("--temperature", type=click.FloatRange(min=0, max=1e4), default=0.0, show_default=True,
                     help="0: greedy (argmax); else sampling at this temperature."),
        click.option("--top-k", type=click.IntRange(min=0, max=1 << 30), default=0, show_default=True,
                     help="Sample among the k most likely tokens only (0: off)."),
        click.option("--top-p", type=click.FloatRange(min=0, max=1, min_open=True), default=1.0, show_default=True,
                     help="Sample among the most likely tokens whose probability reaches p (1: off)."),
        click.option("--seed", type=click.IntRange(min=0, max=2**63 - 1), default=0, show_default=True,
                     help="Seed of the sampler (same seed, same tokens)."),
        click.option("--stream", is_flag=True, help="Print the text as it is generated."),
        click.option("--json", "as_json", is_flag=True,
                     help='Print {"prompt_ids", "tokens" (the new ones), "text", "stop"} as JSON.'),
    ]):
        f = opt(f)
    return f


def _ids_option(prompt_ids: Optional[str]) -> Optional[list]:
    from .errors import ConfigError

    if prompt_ids is None:
        return None
    try:
        return [int(t) for t in prompt_ids.replace(" ", "").split(",") if t != ""]
    except ValueError:
        raise ConfigError(f"--prompt-ids: expected comma-separated integers, got {prompt_ids!r}") from None


def _print_generation(gen, *, stream: bool, as_json: bool, header: str) -> None:
    if as_json:
        click.echo(json.dumps(gen.to_json()))
    elif stream:
        click.echo("")  # the pieces were printed as they came
    elif gen.text is not None:
        click.echo(gen.text)
    else:
        click.echo(f"prompt: {gen.prompt_ids}\nnew tokens ({header}): {gen.tokens}")


def _on_text(stream: bool, as_json: bool):
    return (lambda piece: click.echo(piece, nl=False)) if stream and not as_json else None


@main.command()
@checkpoint_options
@text_options
@click.option("--device", type=click.Choice(("auto", "cpu", "cuda", "mps")), default="auto", show_default=True,
              help="Where the reference runs (auto: mps, then cuda, then cpu).")
@click.option("--dtype", type=click.Choice(("float32", "bfloat16", "float16")), default="float32",
              show_default=True, help="Weight precision of the reference (cell math stays fp32).")
def generate(checkpoint: str, fmt: str | None, revision: str | None, prompt: str | None, prompt_ids: str | None,
             max_new_tokens: int, ignore_eos: bool, temperature: float, top_k: int, top_p: float, seed: int,
             stream: bool, as_json: bool, device: str, dtype: str) -> None:
    """Continue a prompt (text or ids) with the PyTorch reference model: greedy or sampled, up to EOS or
    --max-new-tokens. Prints the new text (the new ids for a checkpoint without a tokenizer)."""
    from . import api, progress
    from .errors import UnsupportedError, first_line
    from .reference import resolve_device

    graph = api.load_checkpoint(checkpoint, format=fmt, revision=revision)
    ids = _ids_option(prompt_ids)
    dev = resolve_device(device)
    opts = dict(prompt_ids=ids, max_new_tokens=max_new_tokens, ignore_eos=ignore_eos, temperature=temperature,
                top_k=top_k, top_p=top_p, seed=seed, dtype=dtype, on_text=_on_text(stream, as_json))
    try:
        gen = api.generate(graph, prompt, device=dev, **opts)
    except (RuntimeError, NotImplementedError, AssertionError) as e:  # a device torch lists but cannot use
        if dev == "cpu":
            raise
        if device != "auto":
            raise UnsupportedError(f"reference: device {dev!r} cannot run this model ({first_line(e)[:160]}); "
                                   f"use --device cpu") from None
        progress.note(f"device {dev} failed ({first_line(e)[:160]}); generating on cpu")
        dev = "cpu"
        gen = api.generate(graph, prompt, device=dev, **opts)
    _print_generation(gen, stream=stream, as_json=as_json, header=dev)


from .text import REFERENCE_CHUNK as GENERATE_CHUNK  # noqa: E402  (prompt tokens per reference call; no numpy)


def _generate(model, ids: list, max_new_tokens: int, device: str) -> list:
    """Greedy continuation of ``ids`` without EOS stop (what ``model.generate_greedy`` computes), through the
    shared generation loop: the prompt in chunks of GENERATE_CHUNK tokens, a progress note per new token."""
    from .text.generation import Sampling, generate_tokens, reference_step

    return generate_tokens(reference_step(model, device), ids, max_new_tokens, Sampling())[0]


@main.command()
@click.argument("artifact", type=click.Path())
@text_options
@click.option("--checkpoint", "checkpoint", default=None, type=click.Path(),
              help="Also check the artifact against this checkpoint (as validate does) before running it.")
@click.option("--format", "fmt", type=click.Choice(FORMAT_CHOICES), default=None,
              help="Format of --checkpoint (default: detected).")
@click.option("--revision", default=None, help="Revision of a Hub --checkpoint id.")
@click.option("--trust-artifact", is_flag=True,
              help="Run the artifact without checking it is what xlstm-export writes. Loading a TorchScript archive "
                   "runs its code: without this flag an archive is checked record by record first. Only for "
                   "artifacts you trust.")
def run(artifact: str, prompt: str | None, prompt_ids: str | None, max_new_tokens: int, ignore_eos: bool,
        temperature: float, top_k: int, top_p: float, seed: int, stream: bool, as_json: bool,
        checkpoint: str | None, fmt: str | None, revision: str | None, trust_artifact: bool) -> None:
    """Continue a prompt with ARTIFACT itself (ONNX, Core ML, TorchScript, ExecuTorch), through its runtime
    and with the tokenizer it carries; greedy tokens equal generate's."""
    from . import api

    gen = api.run(artifact, prompt, prompt_ids=_ids_option(prompt_ids), max_new_tokens=max_new_tokens,
                  temperature=temperature, top_k=top_k, top_p=top_p, seed=seed, ignore_eos=ignore_eos,
                  checkpoint=checkpoint, format=fmt, revision=revision, trust_artifact=trust_artifact,
                  on_text=_on_text(stream, as_json))
    _print_generation(gen, stream=stream, as_json=as_json, header=f"artifact {artifact}")


def validate_options(f: Callable) -> Callable:
    """``--validate/--no-validate --report DIR --steps N`` for export commands (validate by default)."""
    f = click.option("--steps", type=click.IntRange(min=0, max=MAX_STEPS), default=10, show_default=True,
                     help="Greedy decode steps after the prefill, per prompt.")(f)
    f = click.option("--report", "report_dir", type=click.Path(file_okay=False), default=None,
                     help="Write report.json/.md/.html of the validation here.")(f)
    f = click.option("--validate/--no-validate", "do_validate", default=True, show_default=True,
                     help="Compare the artifact with the reference after writing it (exit 1 outside tolerance).")(f)
    return f


@main.command()
@click.argument("artifact", type=click.Path())
@checkpoint_options
@click.option("--report", "report_dir", type=click.Path(file_okay=False), default=None,
              help="Folder for report.json/.md/.html (default: ARTIFACT.report next to the artifact).")
@click.option("--steps", type=click.IntRange(min=0, max=MAX_STEPS), default=10, show_default=True,
              help="Greedy decode steps after the prefill, per prompt.")
@click.option("--prompts", "num_prompts", type=click.IntRange(min=1, max=MAX_PROMPTS), default=3, show_default=True,
              help="Seeded random prompts (plus the example task's, when the checkpoint has a train_log.json).")
@click.option("--prompt-len", type=click.IntRange(min=1, max=MAX_PROMPT_LEN), default=12, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1, max=MAX_BATCH_SIZE), default=None,
              help="Batch size to run at (default: the artifact's); checked against the memory available.")
@click.option("--force", is_flag=True, help="Replace an existing report.")
@click.option("--trust-artifact", is_flag=True,
              help="Skip the check that ARTIFACT is what xlstm-export writes for what its I/O contract declares. "
                   "Loading a TorchScript archive runs its code: without this flag only archives whose code is "
                   "xlstm-export's are loaded. Only for artifacts you trust.")
@click.option("--heldout", type=click.Path(dir_okay=False), default=None,
              help="Held-out text (tokenized with the checkpoint's tokenizer.json) or a .ids file: the report adds "
                   "perplexity and top-1 agreement against the full-precision reference (what compressed weights "
                   "are judged by).")
@click.option("--heldout-tokens", type=click.IntRange(min=2, max=65536), default=1024, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the verdict and figures as JSON (the report's summary).")
def validate(artifact: str, checkpoint: str, fmt: str | None, revision: str | None, report_dir: str | None, steps: int,
             num_prompts: int, prompt_len: int, seed: int, batch_size: int | None, force: bool,
             trust_artifact: bool, heldout: str | None, heldout_tokens: int, as_json: bool) -> None:
    """Compare ARTIFACT with the reference model of its checkpoint: prefill + greedy decode on several
    prompts. Exit 0 within tolerance, 1 outside it (after writing the report), 2 on bad input (including
    an artifact that is not what xlstm-export writes for what it declares, unless --trust-artifact)."""
    from pathlib import Path

    from . import api

    path = Path(artifact)
    report = Path(report_dir) if report_dir else path.with_name(path.name + ".report")
    from .validation.report import check_report_dir

    check_report_dir(report, force)  # before reading anything
    from .resources import check_validation_memory
    from .validation.prompts import task_prompts

    graph = api.load_checkpoint(checkpoint, format=fmt, revision=revision)
    extra = task_prompts(graph.source)
    check_validation_memory(graph, batch_size or 1, max([prompt_len, *map(len, extra)]))  # before opening
    result = api.validate(path, graph, report=report, force=force, steps=steps, prompts=num_prompts,
                          prompt_len=prompt_len, seed=seed, batch_size=batch_size, extra_prompts=extra,
                          trust_artifact=trust_artifact, heldout=heldout, heldout_tokens=heldout_tokens)
    click.echo(json.dumps(validation_json(result)) if as_json else result.summary_line())
    result.raise_if_failed()


def validation_json(result) -> dict:
    """What ``--json`` prints of a validation: the verdict, the artifact and its runtime, the summary
    figures, the tolerance, where a failure starts, and the report's files."""
    r = result.report
    return {"passed": result.passed, "artifact": r["artifact"], "reference": r.get("reference"),
            "summary": r["summary"], "tolerance": r["tolerance"], "localisation": r["localisation"],
            "settings": r["settings"], "report": [str(p) for p in result.paths],
            "compression": r.get("compression"), "text": r.get("text")}


def artifact_json(art) -> dict:
    return {"path": str(art.path), "kind": art.kind, "precision": art.precision,
            "files": [str(f) for f in art.files], "stats": art.stats}


_CLI_MAX = {"batch_size": MAX_BATCH_SIZE}  # maxima of target options that the registry leaves open


def _click_option(opt) -> Callable:
    """The click option of a target's :class:`~xlstm_export.targets.Option`."""
    if opt.is_flag:
        return click.option(opt.flag, opt.dest, is_flag=True, default=bool(opt.default), help=opt.help)
    if opt.choices:
        kind = click.Choice(opt.choices)
    elif opt.text:
        kind = click.STRING
    else:
        kind = click.IntRange(min=opt.min, max=opt.max if opt.max is not None else _CLI_MAX.get(opt.dest))
    return click.option(opt.flag, opt.dest, type=kind, default=opt.default, show_default=True, help=opt.help)


def export_command(target) -> click.Command:
    """The ``xlstm-export <target>`` command, made from the target's registration."""

    def command(checkpoint: str, fmt: str | None, revision: str | None, out: str, force: bool, do_validate: bool, report_dir: str | None,
                steps: int, as_json: bool, **options: Any) -> None:
        from . import api
        from .outputs import describe_artifact

        target.check_path(Path(out))  # before any work
        if report_dir is not None and do_validate:
            from .validation.report import check_report_dir

            check_report_dir(report_dir, force)
        graph = api.load_checkpoint(checkpoint, format=fmt, revision=revision)
        if do_validate:  # before writing anything: a batch that cannot be validated here is refused first
            from .resources import check_validation_memory
            from .validation.validate import DEFAULT_PROMPT_LEN

            T = options.get("prefill_chunk") or 0
            check_validation_memory(graph, int(options.get("batch_size") or 1), max(DEFAULT_PROMPT_LEN, 3 * T + 5),
                                    hint=" or --no-validate")
        art = api.export(graph, target.name, out, force=force, **options)
        if not as_json:
            click.echo(describe_artifact(art))
        result, skipped = None, None
        if do_validate:
            from .errors import RuntimeUnavailable

            try:
                result = api.validate(art.path, graph, report=report_dir, force=force, steps=steps,
                                      extra_prompts=[])
            except RuntimeUnavailable as e:  # a valid artifact this machine cannot run: say so, do not fail
                skipped = f"validation skipped: {e}"
            if not as_json:
                click.echo(result.summary_line() if result is not None else skipped)
        if as_json:
            click.echo(json.dumps({"artifact": artifact_json(art), "text": art.contract.get("text"),
                                   "validation_skipped": skipped,
                                   "validation": None if result is None else validation_json(result)}, default=str))
        if result is not None:
            result.raise_if_failed()

    command.__doc__ = target.summary
    for opt in reversed(target.options):
        command = _click_option(opt)(command)
    command = click.option("--json", "as_json", is_flag=True,
                           help="Print the artifact (files, contract kind, figures) and the validation as JSON.")(command)
    command = click.option("--force", is_flag=True, help="Replace an existing output (and report).")(command)
    command = click.option("-o", "--output", "out", required=True, type=click.Path(),
                           help=f"The artifact to write ({' or '.join(target.suffixes)}).")(command)
    command = validate_options(checkpoint_options(command))
    return main.command(target.name)(command)


def _register_export_commands() -> None:
    from .targets import TARGETS

    for target in TARGETS.values():
        export_command(target)


_register_export_commands()


if __name__ == "__main__":  # pragma: no cover
    main(prog_name="xlstm-export")
