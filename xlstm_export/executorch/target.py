"""The ExecuTorch target's declaration: options, artifact kinds and their tolerances, how to recognise a
``.pte`` we wrote. Imports no heavy library; the emitter and runner load when used."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from ..target import BATCH, DEMO_PREFILL_CHUNK, MAX_PREFILL_CHUNK, Option, Target, kind
from ..tolerances import FP16, FP32, INT8

NAME = "executorch"
SUFFIX = ".pte"
CONTRACT_METHOD = "xlstm_export_io"  # the constant method holding the I/O contract

# Quantized programs (precision = the scheme) are judged against the eager module they were exported from:
# the same quantized weights, activations quantized to int8 per token the same way (validation/validate.py).
# What still differs is int8 activation rounding: where an activation sits within fp32 rounding of an int8
# step, summation order (and the reference's chunkwise prefill against the program's calls) tips it one
# step, and the tipped steps compound over blocks and tokens. Measured against their modules: hf-recall
# 8da4w 4.4e-6 and 8da8w 2.4e-3 of max |logit|; the trained LM (pylm), step programs 8da4w 1.1e-2 and 8da8w
# 1.0e-2, prefill programs with prompts up to 197 tokens 3.5e-2 (8da4w all-int4) and 2.4e-2 (8da8w; min
# cosine 0.99984): within the int8 entry for either scheme.
TOLERANCES = {"fp32": FP32, "fp16": FP16, "8da8w": INT8, "8da4w": INT8}


def is_our_program(p: Path, chunk: int = 1 << 20) -> bool:
    """An ExecuTorch program (flatbuffer identifier ``ET..`` at byte 4) holding our contract method."""
    mark = CONTRACT_METHOD.encode()
    try:
        with open(p, "rb") as f:
            if f.read(8)[4:6] != b"ET":
                return False
            tail = b""
            while True:  # the method names sit in the program's header tables: the first chunk in practice
                block = f.read(chunk)
                if not block:
                    return False
                if mark in tail + block:
                    return True
                tail = block[-len(mark):]
    except OSError:
        return False


class ExecuTorchTarget(Target):
    def recognise(self, path: Path, is_dir: bool) -> Optional[str]:
        if is_dir:
            return "a directory"
        return None if is_our_program(path) else "not an ExecuTorch program written by xlstm-export"


TARGET = ExecuTorchTarget(
    NAME, "Export an ExecuTorch program (.pte): the decode step (and --prefill-chunk T) lowered to XNNPACK or "
    "the Core ML delegate.",
    (SUFFIX,),
    (Option("--backend", "backend", "xnnpack: CPU (Android, iOS, Linux, macOS), fp32, runs here; coreml: the Core ML "
            "delegate (iOS 18 / macOS 15), fp16, runs only on macOS.", "xnnpack", choices=("xnnpack", "coreml")),
     BATCH,
     Option("--prefill-chunk", "prefill_chunk", "Also a 'prefill' method of T prompt tokens per call (the reference's "
            "chunkwise form), same states; prompts run as floor(L/T) prefill calls + L mod T steps.", None, min=1,
            max=MAX_PREFILL_CHUNK),
     Option("--quantize", "quantize", "XNNPACK only: linear weights int8 per channel (8da8w) or int4 in groups "
            "(8da4w; each block's out_proj and ffn.down int8), activations int8 per token at run time (torchao); "
            "states and cell math stay fp32.", "none",
            choices=("none", "8da8w", "8da4w")),
     Option("--group-size", "group_size", "8da4w: input channels per int4 group (default 32; XNNPACK needs a "
            "multiple of 32 that divides each quantized weight's input dim).", None, min=1, max=1 << 20),
     Option("--keep", "keep", "With --quantize: comma-separated patterns (fnmatch, canonical weight names as "
            "'inspect' shows them) of linear weights kept fp32, replacing the default '*.igate.*,*.fgate.*,"
            "lm_head.*' (the exponential gates' projections and the LM head); 'none' quantizes them all.",
            text=True)),
    # executorch-prefill (the prefill method) is not swept: each .pte export spends ~30 s in XNNPACK
    # lowering; tests/executorch covers it.
    (kind(NAME, NAME, TOLERANCES, (), "fp32", "model.pte"),
     kind(f"{NAME}-prefill", NAME, TOLERANCES, (), "fp32", "model.prefill.pte", prefill_chunk=DEMO_PREFILL_CHUNK,
          sweep=False)),
    "xlstm_export.executorch.emit:ExecuTorchOptions", builder="xlstm_export.executorch.emit:build",
    runner="xlstm_export.executorch.verify:open_runner", contract_reader="xlstm_export.executorch.runner:contract_of",
    requires=("executorch",), extra="executorch")
