"""What the ExecuTorch emitter and runner both name (the target, the backends, the program's methods) and
the import of ExecuTorch both make. The runner imports these from here, never from the emitter."""

from __future__ import annotations

import warnings

TARGET = "executorch"
BACKENDS = ("xnnpack", "coreml")
PRECISION = {"xnnpack": "fp32", "coreml": "fp16"}  # what each backend computes in
CONTRACT_METHOD = "xlstm_export_io"  # a constant method: the I/O contract
STEP_METHOD = "forward"  # the decode step
PREFILL_METHOD = "prefill"  # with --prefill-chunk T: T prompt tokens per call, same states


def import_executorch():
    """``executorch.exir``, imported with the import-time notes of torchao / torch's pytree (logged as
    warnings, not about this tool) held back."""
    import logging

    noisy = [logging.getLogger(n) for n in ("torch.utils._pytree", "torchao", "coremltools")]
    levels = [lg.level for lg in noisy]
    for lg in noisy:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import executorch.exir as exir
    finally:
        for lg, level in zip(noisy, levels):
            lg.setLevel(level)
    return exir


__all__ = ["BACKENDS", "CONTRACT_METHOD", "PRECISION", "PREFILL_METHOD", "STEP_METHOD", "TARGET", "import_executorch"]
