"""The TorchScript target's declaration: options, its artifact kind and tolerances, how to recognise an
archive we wrote (``.pt``, or ``.ts`` as some tools name them). Imports no heavy library."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Optional

from ..target import Option, Target, kind
from ..tolerances import BF16, FP16, FP32

NAME = "torchscript"
SUFFIXES = (".pt", ".ts")


class TorchScriptTarget(Target):
    def recognise(self, path: Path, is_dir: bool) -> Optional[str]:
        from ..graphs.io import IO_KEY  # (here: importing graphs loads numpy, which --help need not)

        if is_dir:
            return "a directory"
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except (zipfile.BadZipFile, ValueError, EOFError):
            return "not a TorchScript archive"
        if not any(n.endswith("/extra/" + IO_KEY) for n in names):
            return "a zip archive without xlstm-export's I/O contract"
        return None


TARGET = TorchScriptTarget(
    NAME, "Export a scripted module: forward, init_states, forward_with_states, generate_greedy.",
    SUFFIXES,
    (Option("--precision", "precision", "Weight precision; states and cell math stay fp32.", "fp32",
            choices=("fp32", "fp16", "bf16")),
     Option("--batch-size", "batch_size", "Batch size recorded in the I/O contract (the module itself takes any).", 1,
            min=1)),
    (kind(NAME, NAME, {"fp32": FP32, "fp16": FP16, "bf16": BF16}, (), "fp32", "model.pt"),),
    "xlstm_export.torchscript.emit:TorchScriptOptions", builder="xlstm_export.torchscript.emit:build",
    runner="xlstm_export.torchscript.trust:open_runner", contract_reader="xlstm_export.torchscript.trust:read_contract",
    runs_code=True)
