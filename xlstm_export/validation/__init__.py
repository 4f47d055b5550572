"""Validation: runners per artifact kind, the comparison against the reference, one tolerance table,
reports (JSON, Markdown, HTML).

    from xlstm_export.validation import validate_artifact
    result = validate_artifact("model.pt", graph, report_dir="model.pt.report")
    result.raise_if_failed()

A target's runner is named where the target is registered (``xlstm_export/targets.py``).
Heavy libraries (torch, onnxruntime, coremltools) are imported only by the runners that need them.
"""

from .compare import compare, judge, localise, make_prompts, step_metrics, where_line
from .registry import detect_kind, open_artifact
from ..runner import Runner
from ..tolerances import Tolerance
from .tolerance import tolerance_for, tolerances
from .validate import ValidationResult, run_validation, validate_artifact

__all__ = [
    "compare", "judge", "localise", "make_prompts", "step_metrics", "where_line", "detect_kind", "open_artifact",
    "Runner",
    "tolerances", "Tolerance", "tolerance_for", "ValidationResult", "run_validation", "validate_artifact",
]
