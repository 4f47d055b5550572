"""xlstm-export: compile xLSTM checkpoints to on-device formats with parity validation.

    import xlstm_export as xe

    graph = xe.load_checkpoint("examples/hf-recall")
    art = xe.export(graph, "coreml", "model.mlpackage", precision="fp16", prefill_chunk=32)
    res = xe.validate(art.path, graph)
    assert res.passed, res.summary_line()

Everything here mirrors a CLI command (``xlstm-export coreml|onnx|torchscript|validate``): see
:mod:`xlstm_export.api`. Importing the package is cheap: torch, onnx and coremltools load only where used.
"""

from typing import Any

__version__ = "0.1.0"

_API = {"load_checkpoint", "export", "validate", "export_and_validate", "generate", "run", "open_for_generation",
        "Generation", "Exported", "Artifact", "Graph"}
_ELSEWHERE = {
    "ValidationResult": "xlstm_export.validation",
    "XlstmExportError": "xlstm_export.errors",
    "progress": "xlstm_export.progress",
}


def __getattr__(name: str) -> Any:  # lazy: ``import xlstm_export`` stays light
    import importlib

    if name in _API:
        return getattr(importlib.import_module("xlstm_export.api"), name)
    if name in _ELSEWHERE:
        module = importlib.import_module(_ELSEWHERE[name])
        return module if module.__name__.endswith(name) else getattr(module, name)
    raise AttributeError(f"module 'xlstm_export' has no attribute {name!r}")


def __dir__() -> list:
    return sorted(["__version__", *_API, *_ELSEWHERE])


__all__ = sorted([*_API, *_ELSEWHERE])
