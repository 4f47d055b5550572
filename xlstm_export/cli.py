"""The ``xlstm-export`` command line. Heavy imports happen inside commands, so ``--help`` is fast.

Errors: every :class:`~xlstm_export.errors.XlstmExportError` becomes one line ``error: ...`` on stderr
and its ``exit_code`` (2 for bad input) -- never a traceback. That mapping lives in ``run_guarded``;
the ``main`` group applies it to every command, so commands added later get it for free.
"""

from __future__ import annotations

import json
import sys
from typing import Any, Callable

import click

from .errors import XlstmExportError

FORMAT_CHOICES = ("hf", "large", "hybrid", "profile")


def run_guarded(fn: Callable[[], Any]) -> Any:
    """Run ``fn``; turn an XlstmExportError into ``error: <one line>`` on stderr + its exit code."""
    try:
        return fn()
    except XlstmExportError as e:
        msg = " ".join(str(e).split()) or type(e).__name__
        click.echo(f"error: {msg}", err=True)
        sys.exit(e.exit_code)


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        return run_guarded(lambda: super(_Group, self).invoke(ctx))

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
def main() -> None:
    """Export xLSTM checkpoints (transformers, xlstm_large, xLSTMLMModel) to on-device formats."""


def checkpoint_options(f: Callable) -> Callable:
    """``--checkpoint PATH [--format F]``, shared by commands that read a checkpoint."""
    f = click.option("--format", "fmt", type=click.Choice(FORMAT_CHOICES), default=None,
                     help="Checkpoint format (default: detected from the files present).")(f)
    f = click.option("--checkpoint", "checkpoint", required=True, type=click.Path(),
                     help="Checkpoint directory (or weights/profile file).")(f)
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


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


@main.command()
@checkpoint_options
@click.option("--json", "as_json", is_flag=True, help="Print the graph profile as JSON.")
def inspect(checkpoint: str, fmt: str | None, as_json: bool) -> None:
    """Show a checkpoint's block schedule, state contract and size (reads no tensor data)."""
    from .frontends import load_checkpoint

    graph = load_checkpoint(checkpoint, format=fmt)
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
    click.echo(_table(rows))
    total_state = sum(int(r[5]) for r in rows[1:])
    click.echo(f"state elements per sequence (B=1): {total_state} ({_human(total_state * 4, 'B')} as float32)")
    click.echo(f"parameters: {graph.num_params:,} ({_human(graph.num_params)})  "
               f"weight bytes: {graph.weight_bytes:,} ({_human(graph.weight_bytes, 'B')})")


@main.command()
@checkpoint_options
@click.option("--prompt-ids", required=True, help="Comma-separated token ids, e.g. 1,2,3.")
@click.option("--max-new-tokens", type=click.IntRange(min=0), default=16, show_default=True)
@click.option("--device", type=click.Choice(("auto", "cpu", "cuda", "mps")), default="auto", show_default=True,
              help="Where the reference runs (auto: mps, then cuda, then cpu).")
@click.option("--dtype", type=click.Choice(("float32", "bfloat16", "float16")), default="float32",
              show_default=True, help="Weight precision of the reference (cell math stays fp32).")
@click.option("--json", "as_json", is_flag=True, help='Print {"tokens": [...]} (the new tokens only).')
def generate(checkpoint: str, fmt: str | None, prompt_ids: str, max_new_tokens: int, device: str, dtype: str,
             as_json: bool) -> None:
    """Greedy continuation of a prompt with the PyTorch reference model."""
    from .errors import ConfigError

    try:
        ids = [int(t) for t in prompt_ids.replace(" ", "").split(",") if t != ""]
    except ValueError:
        raise ConfigError(f"--prompt-ids: expected comma-separated integers, got {prompt_ids!r}") from None
    if not ids:
        raise ConfigError("--prompt-ids: expected at least one token id, got none")
    import torch

    from .frontends import load_checkpoint
    from .reference import build_model, resolve_device

    graph = load_checkpoint(checkpoint, format=fmt)
    V = graph.config.vocab_size
    bad = [t for t in ids if not 0 <= t < V]
    if bad:
        raise ConfigError(f"--prompt-ids: token ids must be in [0, {V}) for this checkpoint, got {bad}")
    dev = resolve_device(device)
    model = build_model(graph, device=dev, dtype=dtype)
    with torch.no_grad():
        new = model.generate_greedy(torch.tensor([ids], dtype=torch.long, device=dev), max_new_tokens)
    tokens = new[0].tolist()
    if as_json:
        click.echo(json.dumps({"tokens": tokens}))
    else:
        click.echo(f"prompt: {ids}\nnew tokens ({dev}): {tokens}")


def validate_options(f: Callable) -> Callable:
    """``--validate/--no-validate --report DIR --steps N`` for export commands (validate by default)."""
    f = click.option("--steps", type=click.IntRange(min=0), default=10, show_default=True,
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
@click.option("--steps", type=click.IntRange(min=0), default=10, show_default=True,
              help="Greedy decode steps after the prefill, per prompt.")
@click.option("--prompts", "num_prompts", type=click.IntRange(min=1), default=3, show_default=True,
              help="Seeded random prompts (plus the example task's, when the checkpoint has a train_log.json).")
@click.option("--prompt-len", type=click.IntRange(min=1), default=12, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="Batch size to run at (default: the artifact's).")
def validate(artifact: str, checkpoint: str, fmt: str | None, report_dir: str | None, steps: int,
             num_prompts: int, prompt_len: int, seed: int, batch_size: int | None) -> None:
    """Compare ARTIFACT with the reference model of its checkpoint: prefill + greedy decode on several
    prompts. Exit 0 within tolerance, 1 outside it (after writing the report), 2 on bad input."""
    from pathlib import Path

    from .frontends import load_checkpoint
    from .validation import validate_artifact
    from .validation.prompts import task_prompts

    graph = load_checkpoint(checkpoint, format=fmt)
    path = Path(artifact)
    result = validate_artifact(path, graph, batch_size=batch_size, steps=steps, num_prompts=num_prompts,
                               prompt_len=prompt_len, seed=seed, extra_prompts=task_prompts(checkpoint),
                               report_dir=report_dir or path.with_name(path.name + ".report"))
    click.echo(result.summary_line())
    result.raise_if_failed()


@main.command()
@checkpoint_options
@click.option("-o", "--output", "out", required=True, type=click.Path(dir_okay=False),
              help="The TorchScript file to write (.pt).")
@click.option("--precision", type=click.Choice(("fp32", "fp16", "bf16")), default="fp32", show_default=True,
              help="Weight precision; states and cell math stay fp32.")
@click.option("--batch-size", type=click.IntRange(min=1), default=1, show_default=True,
              help="Batch size recorded in the I/O contract (the module itself takes any).")
@click.option("--force", is_flag=True, help="Replace an existing output.")
@validate_options
def torchscript(checkpoint: str, fmt: str | None, out: str, precision: str, batch_size: int, force: bool,
                do_validate: bool, report_dir: str | None, steps: int) -> None:
    """Export a scripted module: forward, init_states, forward_with_states, generate_greedy."""
    from .frontends import load_checkpoint
    from .torchscript import TorchScriptOptions, emit

    graph = load_checkpoint(checkpoint, format=fmt)
    art = emit(graph, TorchScriptOptions(precision=precision, batch_size=batch_size, force=force), out)
    click.echo(f"wrote {art.path} (torchscript, {precision}, {len(art.contract['states'])} states)")
    if do_validate:
        from .validation import validate_export

        validate_export(art.path, graph, echo=click.echo, steps=steps, report_dir=report_dir)


@main.command("onnx")
@checkpoint_options
@click.option("-o", "--output", "out", required=True, type=click.Path(dir_okay=False),
              help="The ONNX file to write (.onnx; weights of 2 GB or more go to OUTPUT.data beside it).")
@click.option("--scan", is_flag=True,
              help="The Scan sequence graph (input_ids (B, T), T dynamic) instead of the one-token decode step.")
@click.option("--batch-size", type=click.IntRange(min=1), default=1, show_default=True,
              help="Static batch size of the graph.")
@click.option("--precision", type=click.Choice(("fp32", "fp16")), default="fp32", show_default=True,
              help="Weights and activations; the recurrent cells and states stay fp32.")
@click.option("--opset", type=click.IntRange(min=13, max=26), default=18, show_default=True,
              help="ONNX opset (ORT 1.31 loads <= 26).")
@click.option("--force", is_flag=True, help="Replace an existing output.")
@validate_options
def onnx_command(checkpoint: str, fmt: str | None, out: str, scan: bool, batch_size: int, precision: str,
                 opset: int, force: bool, do_validate: bool, report_dir: str | None, steps: int) -> None:
    """Export an ONNX graph for ONNX Runtime: the decode step (Core ML EP: one partition) or --scan."""
    from .frontends import load_checkpoint
    from .onnx import OnnxOptions, emit

    graph = load_checkpoint(checkpoint, format=fmt)
    art = emit(graph, OnnxOptions(scan=scan, batch_size=batch_size, precision=precision, opset=opset,
                                  force=force), out)
    extra = f" + {art.files[1].name}" if len(art.files) > 1 else ""
    click.echo(f"wrote {art.path}{extra} ({art.kind}, {precision}, batch {batch_size}, opset {opset}, "
               f"{art.stats['nodes']} nodes, {len(art.contract['states'])} states, {art.stats['seconds']:.1f}s)")
    if do_validate:
        from .validation import validate_export

        validate_export(art.path, graph, echo=click.echo, steps=steps, report_dir=report_dir)


@main.command()
@checkpoint_options
@click.option("-o", "--output", "out", required=True, type=click.Path(),
              help="The Core ML package to write (.mlpackage); the Swift snippet goes next to it (.swift).")
@click.option("--precision", type=click.Choice(("fp16", "fp32")), default="fp16", show_default=True,
              help="fp16: fp16 weights and matmuls, fp32 residual stream and cell math; fp32: all fp32. "
                   "States are fp16 either way (Core ML).")
@click.option("--batch-size", type=click.IntRange(min=1), default=1, show_default=True,
              help="Fixed batch size (Core ML states have a fixed shape).")
@click.option("--compute-units", type=click.Choice(("all", "cpu_and_gpu", "cpu_only", "cpu_and_ne")),
              default="all", show_default=True,
              help="Recorded in the package metadata; what validation on macOS runs on.")
@click.option("--force", is_flag=True, help="Replace an existing output.")
@validate_options
def coreml(checkpoint: str, fmt: str | None, out: str, precision: str, batch_size: int, compute_units: str,
           force: bool, do_validate: bool, report_dir: str | None, steps: int) -> None:
    """Export a stateful Core ML decode step (.mlpackage, iOS 18 / macOS 15) and its Swift snippet."""
    from .coreml import CoreMLOptions, emit
    from .frontends import load_checkpoint

    graph = load_checkpoint(checkpoint, format=fmt)
    art = emit(graph, CoreMLOptions(precision=precision, batch_size=batch_size, compute_units=compute_units,
                                    force=force), out)
    n_states, n_extra = len(art.contract["states"]), len(art.contract.get("extra_states", []))
    click.echo(f"wrote {art.path} (coreml, {precision}, batch {batch_size}, {n_states} states in "
               f"{n_states + n_extra} fp16 buffers, {art.stats['ops_per_step']} ops per step)"
               + "".join(f" and {f}" for f in art.files[1:]))
    if do_validate:
        from .validation import validate_export

        validate_export(art.path, graph, echo=click.echo, steps=steps, report_dir=report_dir)


if __name__ == "__main__":  # pragma: no cover
    main(prog_name="xlstm-export")
