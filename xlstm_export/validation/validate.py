"""Validate an artifact against the reference of its checkpoint: collect, write the report, then judge.

    result = validate_artifact("model.pt", graph, report_dir="model.pt.report")
    print(result.summary_line())
    result.raise_if_failed()          # ParityError (exit 1) naming where it goes wrong

Export commands and ``xlstm_export.validate`` (``api.py``) call :func:`validate_artifact`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np

from ..errors import ConfigError, ParityError
from ..graphs import Graph
from .compare import fmt, compare, judge, localise, make_prompts, where_line
from .registry import open_artifact
from .report import REPORT_FORMAT, check_report_dir, write_report
from ..runner import Runner
from .tolerance import tolerance_for
from .compressed import base_precision, is_compressed, judge_weights, scheme_of, weight_errors, with_weights

DEFAULT_STEPS = 10
DEFAULT_PROMPTS = 3
DEFAULT_PROMPT_LEN = 12


@dataclass
class ValidationResult:
    report: dict
    paths: List[Path] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.report["passed"])

    def summary_line(self) -> str:
        r, s, t = self.report, self.report["summary"], self.report["tolerance"]
        a = r["artifact"]
        n = len(r["prompts"])
        line = (f"validation {'PASS' if self.passed else 'FAIL'}: {a['kind']} {a['precision']} on "
                f"{a.get('runtime', 'unknown')} vs reference, "
                f"{n} prompt{'s' if n != 1 else ''} x (prefill + {r['settings']['steps']} steps): "
                f"max rel {fmt(s['max_rel'])} (tol {t['max_rel']:g}), min cosine {s['min_cosine']:.6f}, "
                f"greedy {s['greedy_agreeing']}/{s['greedy_picks']}")
        c = r.get("compression")
        if c is not None and "max_rms" not in c:  # activations quantized too: the module it came from
            line += f"; reference: {c['reference']}"
        elif c is not None:
            line += (f"; reference on the artifact's decoded {c['scheme']} weights, which are within rms "
                     f"{fmt(c['max_rms'])} of the checkpoint's (limit {c['rms_bound']:g})")
        if r.get("text") is not None:
            from .text import metrics_line

            line += "; " + metrics_line(r["text"])
        if self.paths:
            line += f"; report {self.paths[0].parent}"
        return line

    def raise_if_failed(self) -> None:
        if not self.passed:
            where = f" (report: {self.paths[1]})" if len(self.paths) > 1 else ""
            raise ParityError(f"{self.report['artifact']['path']}: outside the "
                              f"{self.report['tolerance']['target']}/{self.report['tolerance']['precision']} "
                              f"tolerance: {where_line(self.report['localisation'])}{where}")


def run_validation(artifact: Runner, graph: Graph, *, steps: int = DEFAULT_STEPS,
                   num_prompts: int = DEFAULT_PROMPTS, prompt_len: int = DEFAULT_PROMPT_LEN, seed: int = 0,
                   extra_prompts: Sequence[Sequence[int]] = (), report_dir: Optional[str | os.PathLike] = None,
                   artifact_path: str = "", reference: Optional[Runner] = None, force: bool = False,
                   heldout: Optional[Sequence[int]] = None, report_checked: bool = False) -> ValidationResult:
    """Compare ``artifact`` (an open runner) with the reference of ``graph``; write the report if asked
    (into ``report_dir``; an existing report there is replaced only with ``force``, checked first unless the
    caller did: ``report_checked``)."""
    from .reference_runner import ReferenceRunner

    if steps < 0 or num_prompts < 0 or prompt_len < 1 or (num_prompts == 0 and not extra_prompts):
        raise ConfigError(f"validation needs steps >= 0, prompt_len >= 1 and at least one prompt; got steps "
                          f"{steps}, prompt_len {prompt_len}, {num_prompts} prompts + {len(extra_prompts)} extra")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"validation: seed must be a non-negative integer (numpy seeds the prompts with it), "
                          f"got {seed!r}")
    if report_dir is not None and not report_checked:
        check_report_dir(report_dir, force)
    tol = tolerance_for(artifact.kind, artifact.precision)
    compression, weight_fails = None, []
    if is_compressed(artifact.precision) and hasattr(artifact, "compressed_weights"):
        # the artifact against the reference on the artifact's own (decoded) weights, at the base
        # precision's tolerance; the weights against the checkpoint's (validation/compressed.py)
        dense = artifact.compressed_weights(graph)
        compression, weight_fails = judge_weights(weight_errors(graph, dense), scheme_of(artifact.precision))
        compression["reference"] = "the reference model on the artifact's own decoded weights"
        tol = tolerance_for(artifact.kind, base_precision(artifact.precision))
        if reference is None:
            reference = ReferenceRunner(with_weights(graph, dense), artifact.batch_size)
        del dense
    elif getattr(artifact, "quantized_reference", None) is not None and reference is None:
        # activations quantized at run time too (ExecuTorch 8da8w / 8da4w): against the eager module it
        # was exported from; its weights sit in the backend's payload, so question 2 is not asked
        own = artifact.quantized_reference(graph)
        if own is not None:
            reference = own
            compression = {"scheme": artifact.precision, "reference": own.runtime}
    reference = reference or ReferenceRunner(graph, artifact.batch_size)
    plan = getattr(artifact, "prefill", None)
    prefill_lengths: List[int] = []
    if plan is not None:  # prompts that are and are not multiples of the chunk: the remainder takes the step path
        T = plan.chunk
        prefill_lengths = sorted({1, T - 1, T, 3 * T + 5} - {0})
        rng = np.random.default_rng(seed + 1)
        extra_prompts = [*extra_prompts, *(rng.integers(0, graph.config.vocab_size, n).tolist()
                                           for n in prefill_lengths)]
    prompts = make_prompts(graph.config.vocab_size, num_prompts, prompt_len, seed, extra_prompts)
    cmp = compare(reference, artifact, graph, prompts, steps)
    fails = judge(cmp, tol) + weight_fails
    report = {
        "format": REPORT_FORMAT,
        "passed": not fails,
        "artifact": {"path": str(artifact_path), "kind": artifact.kind, "precision": artifact.precision,
                     "runtime": getattr(artifact, "runtime", "unknown"), "batch_size": artifact.batch_size,
                     "max_tokens_per_call": artifact.max_tokens_per_call,
                     "trusted_unchecked": bool(getattr(artifact, "trusted", False))},
        "reference": {"runtime": getattr(reference, "runtime", "unknown")},
        "checkpoint": graph.source,
        "settings": {"steps": steps, "num_prompts": num_prompts, "prompt_len": prompt_len, "seed": seed,
                     "extra_prompts": len(extra_prompts), "teacher_forcing": True,
                     "prefill_chunk": None if plan is None else plan.chunk, "prefill_prompt_lengths": prefill_lengths},
        "tolerance": {"target": artifact.kind, "precision": artifact.precision, **tol.to_json()},
        "summary": cmp["summary"],
        "failures": fails,
        "localisation": localise(cmp, fails, tol),
        "prompts": cmp["prompts"],
        "states": cmp["states"],
        "parameters": cmp["parameters"],
    }
    if compression is not None:
        report["compression"] = compression
    if heldout is not None:  # against the full-precision reference, whatever the artifact's weights
        from .text import text_metrics

        full = ReferenceRunner(graph, artifact.batch_size) if compression is not None else reference
        report["text"] = text_metrics(artifact, full, np.asarray(heldout))
    paths = write_report(report, report_dir, force) if report_dir is not None else []
    return ValidationResult(report, paths)


def validate_artifact(path: str | os.PathLike, graph: Graph, *, batch_size: Optional[int] = None,
                      trust_artifact: bool = False, report_checked: bool = False, **kwargs) -> ValidationResult:
    """Open the artifact at ``path`` (kind from its suffix), check its contract against ``graph``, compare.

    ``kwargs`` go to :func:`run_validation` (steps, num_prompts, prompt_len, seed, extra_prompts,
    report_dir, force; the report folder is checked before the artifact is opened unless the caller did:
    ``report_checked``). Raises ArtifactError (exit 2) for a missing/foreign artifact, or one that is not
    what xlstm-export writes for what its contract declares (``open_artifact``; ``trust_artifact`` skips
    that check, and so loads a TorchScript archive's code unchecked); never raises on parity: call
    ``raise_if_failed()`` after using the report.
    """
    opts = {} if batch_size is None else {"batch_size": batch_size}
    if kwargs.get("report_dir") is not None and not report_checked:  # before opening (a package takes a while)
        check_report_dir(kwargs["report_dir"], kwargs.get("force", False))
    runner = open_artifact(path, graph, trust_artifact=trust_artifact, **opts)
    return run_validation(runner, graph, artifact_path=str(path), report_checked=True, **kwargs)
