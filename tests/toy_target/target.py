"""The toy target's declaration, build and runner (see the package doc)."""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

import numpy as np

from xlstm_export.errors import ArtifactError
from xlstm_export.graphs.io import dumps, io_contract
from xlstm_export.graphs.weights import WeightStore, constant
from xlstm_export.target import BATCH, Build, Target, kind
from xlstm_export.tolerances import REFERENCE

NAME = "npz"
CONTRACT = "__xlstm_export_io__"  # the array holding the contract's JSON bytes


@dataclass(frozen=True)
class NpzOptions:
    batch_size: int = 1
    force: bool = False


def read(path: Path) -> tuple:
    """(contract, weights) of an ``.npz`` artifact, read without pickle (untrusted input)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise ArtifactError(f"{path}: not an npz archive ({e})") from None
    if CONTRACT not in arrays:
        raise ArtifactError(f"{path}: no {CONTRACT!r} array; not written by the toy target")
    return json.loads(arrays.pop(CONTRACT).tobytes().decode()), arrays


class NpzTarget(Target):
    def recognise(self, path: Path, is_dir: bool) -> Optional[str]:
        if is_dir:
            return "a directory"
        try:
            read(path)
        except ArtifactError as e:
            return str(e)
        return None

    def build(self, graph, options: NpzOptions, out: Path) -> Build:
        contract = io_contract(graph, batch_size=options.batch_size, seq_len=None, ids_dtype="int64",
                               logits_dtype="float32", state_dtype="float32", state_input=lambda n: n,
                               state_output=lambda n: n, target=NAME, precision="fp32")
        arrays = {name: graph.weights[name].load().astype(np.float32) for name in graph.weights}

        def write(tmps):
            with open(tmps[0], "wb") as f:
                np.savez(f, **arrays, **{CONTRACT: np.frombuffer(dumps(contract).encode(), dtype=np.uint8)})
            return {"arrays": len(arrays)}

        return Build((out,), contract, NAME, "fp32", write)

    def contract_of(self, path: Path) -> dict:
        return read(Path(path))[0]

    def open_runner(self, path: Path, graph, trust_artifact: bool = False, **opts):
        from xlstm_export.contract import check_contract
        from xlstm_export.validation.reference_runner import ReferenceRunner

        contract, arrays = read(Path(path))
        if graph is None:  # ``run`` without a checkpoint: the artifact's own contract profile
            graph = self.contract_graph(path)
        check_contract(contract, graph, str(path))
        weights = WeightStore({n: constant(n, a, source=f"{path}:{n}") for n, a in arrays.items()})
        runner = ReferenceRunner(replace(graph, weights=weights), batch_size=opts.get("batch_size") or 1)
        runner.kind, runner.precision, runner.contract, runner.path = NAME, "fp32", contract, Path(path)
        runner.runtime = "PyTorch reference over the npz's arrays"
        return runner


TARGET = NpzTarget(NAME, "Export the weights as float32 arrays in an .npz (a toy target from the tests).", (".npz",),
                   (BATCH,), (kind(NAME, NAME, {"fp32": REFERENCE}, (), "fp32", "model.npz"),),
                   lambda: NpzOptions)
