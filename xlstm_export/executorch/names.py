"""What the ExecuTorch emitter and runner both name (the target, the backends, the program's methods) and
the import of ExecuTorch both make. The runner imports these from here, never from the emitter."""

from __future__ import annotations

from ..quiet import quiet
from .target import CONTRACT_METHOD  # a constant method: the I/O contract (the declaration reads it too)

TARGET = "executorch"
BACKENDS = ("xnnpack", "coreml")
PRECISION = {"xnnpack": "fp32", "coreml": "fp16"}  # what each backend computes in
STEP_METHOD = "forward"  # the decode step
PREFILL_METHOD = "prefill"  # with --prefill-chunk T: T prompt tokens per call, same states


def import_executorch():
    """``executorch.exir``, imported with the import-time notes of torchao / torch's pytree / coremltools
    (logged as warnings, not about this tool) held back."""
    with quiet():
        import executorch.exir as exir
    return exir


__all__ = ["BACKENDS", "CONTRACT_METHOD", "PRECISION", "PREFILL_METHOD", "STEP_METHOD", "TARGET", "import_executorch"]
