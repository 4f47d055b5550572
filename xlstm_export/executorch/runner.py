"""Validation runner over a ``.pte``, executed by the ExecuTorch runtime (``executorch.runtime``).

Reads the I/O contract from the program's constant method ``xlstm_export_io``, checks it against the
graph, then runs ``forward`` one token per call, or, for a program with a ``prefill`` method, a prompt as
prefill chunks + step calls (kind ``executorch-prefill``). A program lowered to the Core ML delegate runs
only where Core ML does (macOS): elsewhere opening it is a :class:`~xlstm_export.errors.RuntimeUnavailable` error.
Whether the contract is what xlstm-export writes for what it declares is ``verify.py``'s question.
"""

from __future__ import annotations

import platform
from pathlib import Path
from typing import List, Tuple

import numpy as np

from ..contract import parse_contract
from ..errors import ArtifactError, RuntimeUnavailable, UnsupportedError, first_line
from ..graphs import Graph
from ..quiet import quiet
from ..runner import ArtifactRunner
from .names import CONTRACT_METHOD, STEP_METHOD, TARGET, import_executorch


class ExecuTorchRunner(ArtifactRunner):
    """The Runner protocol (``xlstm_export/runner.py``) over a ``.pte`` file."""

    kind = TARGET
    noun = "program"
    batch_error = (UnsupportedError, "{where}: the program was exported for batch size {have}; got {asked} "
                                     "(re-export with --batch-size {asked})")

    def _open(self) -> dict:
        import_executorch()
        with quiet():  # its pybindings warn that the API is experimental
            from executorch.runtime import Runtime

        where = self.where
        if not self.path.is_file():
            raise ArtifactError(f"{where}: no such ExecuTorch program (a regular .pte file)")
        try:
            with quiet():  # the C++ runtime's CPU-probe notes on file descriptor 2
                self.program = Runtime.get().load_program(self.path)
                text = self.program.load_method(CONTRACT_METHOD).execute([])
        except Exception as e:  # the runtime raises RuntimeError/ValueError of its own for foreign files
            raise ArtifactError(f"{where}: the ExecuTorch runtime cannot load it or has no {CONTRACT_METHOD!r} "
                                f"method ({first_line(e)})") from None
        return parse_contract(text[0] if isinstance(text, (list, tuple)) and text else None, where)

    def _start(self) -> None:
        from importlib.metadata import version

        where = self.where
        want = [(f"inputs[{i + 1}]", f"outputs[{i + 1}]") for i in range(len(self.slots))]
        if [(s.input, s.output) for s in self.slots] != want:
            raise ArtifactError(f"{where}: the contract's states must enter and leave as inputs[1..] / "
                                f"outputs[1..] in contract order")
        self.backend = str(self.contract.get("backend", "xnnpack"))
        if self.backend == "coreml" and platform.system() != "Darwin":
            raise RuntimeUnavailable(f"{where}: a Core ML-delegated ExecuTorch program runs only on macOS (the Core "
                                     f"ML delegate); validate it there")
        try:
            with quiet():
                self._forward = self.program.load_method(STEP_METHOD)
                self._prefill = self.program.load_method(self.prefill.where) if self.prefill else None
        except Exception as e:  # the runtime's own errors (a method the program lacks, a delegate missing here)
            raise ArtifactError(f"{where}: the ExecuTorch runtime cannot load its methods ({first_line(e)})") from None
        self.runtime = f"ExecuTorch {version('executorch')} runtime ({self.backend} delegate)"

    def _call(self, ids: np.ndarray, states: List[np.ndarray]) -> Tuple[np.ndarray, List[np.ndarray]]:
        return self._execute(self._forward, ids, states)

    def _call_prefill(self, ids: np.ndarray, states: List[np.ndarray]) -> Tuple[np.ndarray, List[np.ndarray]]:
        return self._execute(self._prefill, ids, states)

    def _execute(self, method, ids: np.ndarray, states: List[np.ndarray]) -> Tuple[np.ndarray, List[np.ndarray]]:
        import torch

        args = [torch.from_numpy(np.ascontiguousarray(ids, dtype=np.int64))]
        args += [torch.from_numpy(np.ascontiguousarray(s, dtype=np.float32)) for s in states]
        try:
            out = method.execute(args)
        except Exception as e:  # the runtime's own errors: a program that does not run as declared
            raise ArtifactError(f"{self.path}: the ExecuTorch runtime cannot run it ({first_line(e)})") from None
        if len(out) != 1 + len(states):
            raise ArtifactError(f"{self.path}: the program returned {len(out)} outputs, the contract says "
                                f"{1 + len(states)}")
        return out[0].float().numpy(), [o.float().numpy() for o in out[1:]]

    def quantized_reference(self, graph: Graph):
        """For a quantized program (8da8w / 8da4w): the eager module it was exported from, rebuilt from
        ``graph``'s weights and the contract's quantization record (which :func:`verify` checks is what
        xlstm-export writes): the reference whose weights *and* run-time activation quantization are the
        program's. None for an fp32 / fp16 program."""
        q = self.contract.get("quantization")  # written with a quantization scheme only (emit.contract_for)
        if not isinstance(q, dict):
            return None
        from ..reference import build_model
        from ..runner import TorchModuleRunner
        from .quantize import quantize_model

        model = build_model(graph, device="cpu").eval()
        with quiet():  # torchao's deprecations
            quantize_model(graph, model, self.precision, q.get("group_size"), list(q.get("weights", [])))
        runner = TorchModuleRunner(model, self.batch_size)
        runner.runtime = f"PyTorch eager, weights and activations quantized {self.precision} (torchao)"
        return runner


__all__ = ["ExecuTorchRunner", "contract_of"]


def contract_of(path: Path) -> dict:
    """The program's I/O contract (its constant method, run by the ExecuTorch runtime)."""
    return ExecuTorchRunner(path, None).contract
