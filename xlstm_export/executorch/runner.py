"""Validation runner over a ``.pte``, executed by the ExecuTorch runtime (``executorch.runtime``).

Reads the I/O contract from the program's constant method ``xlstm_export_io``, checks it against the
graph, then runs ``forward`` one token per call, or, for a program with a ``prefill`` method, a prompt as
prefill chunks + step calls (kind ``executorch-prefill``). A program lowered to the Core ML delegate runs
only where Core ML does (macOS): elsewhere opening it is a :class:`~xlstm_export.errors.RuntimeUnavailable` error.
"""

from __future__ import annotations

import platform
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np

from ..errors import ArtifactError, RuntimeUnavailable, UnsupportedError, first_line
from ..graphs import Graph
from ..quiet import quiet
from ..validation.contract import check_contract, check_run_args, contract_batch_size, parse_contract, state_slots
from ..validation.runner import PrefillCalls, PrefillPlan, prefill_plan
from .emit import CONTRACT_METHOD, TARGET


class ExecuTorchRunner(PrefillCalls):
    """The Runner protocol (``validation/runner.py``) over a ``.pte`` file."""

    kind = TARGET
    max_tokens_per_call: Optional[int] = 1

    def __init__(self, path: str | Path, graph: Optional[Graph] = None, batch_size: Optional[int] = None):
        from importlib.metadata import version

        from .emit import import_executorch

        import_executorch()
        with quiet():  # its pybindings warn that the API is experimental
            from executorch.runtime import Runtime

        self.path = Path(path)
        where = str(self.path)
        if not self.path.is_file():
            raise ArtifactError(f"{where}: no such ExecuTorch program (a regular .pte file)")
        try:
            with quiet():  # the C++ runtime's CPU-probe notes on file descriptor 2
                self.program = Runtime.get().load_program(self.path)
                text = self.program.load_method(CONTRACT_METHOD).execute([])
        except Exception as e:  # the runtime raises RuntimeError/ValueError of its own for foreign files
            raise ArtifactError(f"{where}: the ExecuTorch runtime cannot load it or has no {CONTRACT_METHOD!r} "
                                f"method ({first_line(e)})") from None
        self.contract = parse_contract(text[0] if isinstance(text, (list, tuple)) and text else None, where)
        if graph is not None:
            check_contract(self.contract, graph, where)
            slots = state_slots(self.contract, graph, where)
            self.state_shapes = [tuple(s.shape) for s in slots]
            want = [(f"inputs[{i + 1}]", f"outputs[{i + 1}]") for i in range(len(slots))]
            if [(s.input, s.output) for s in slots] != want:
                raise ArtifactError(f"{where}: the contract's states must enter and leave as inputs[1..] / "
                                    f"outputs[1..] in contract order")
        else:
            self.state_shapes = [tuple(s["shape"]) for s in self.contract["states"]]
        self.batch_size = contract_batch_size(self.contract, where)
        if batch_size is not None and int(batch_size) != self.batch_size:
            raise UnsupportedError(f"{where}: the program was exported for batch size {self.batch_size}; got "
                                   f"{batch_size} (re-export with --batch-size {batch_size})")
        self.precision = str(self.contract.get("precision", "fp32"))
        self.backend = str(self.contract.get("backend", "xnnpack"))
        logits = next((o for o in self.contract["outputs"] if o["name"] == "logits"), None)
        v = logits["shape"][-1] if logits is not None and logits["shape"] else None
        if not isinstance(v, int) or v <= 0:
            raise ArtifactError(f"{where}: the contract must declare output 'logits' (B, 1, V), got {logits!r}")
        self.vocab_size = v
        if self.backend == "coreml" and platform.system() != "Darwin":
            raise RuntimeUnavailable(f"{where}: a Core ML-delegated ExecuTorch program runs only on macOS (the Core "
                                     f"ML delegate); validate it there")
        self.prefill: Optional[PrefillPlan] = prefill_plan(self.contract, where)
        try:
            with quiet():
                self._forward = self.program.load_method("forward")
                self._prefill = self.program.load_method(self.prefill.where) if self.prefill else None
        except Exception as e:  # the runtime's own errors (a method the program lacks, a delegate missing here)
            raise ArtifactError(f"{where}: the ExecuTorch runtime cannot load its methods ({first_line(e)})") from None
        if self.prefill is not None:
            self.kind = f"{TARGET}-prefill"
            self.max_tokens_per_call = None
        self.runtime = f"ExecuTorch {version('executorch')} runtime ({self.backend} delegate)"

    def init_states(self) -> List[np.ndarray]:
        return [np.zeros(s, dtype=np.float32) for s in self.state_shapes]

    def _call(self, method, ids: np.ndarray, states: List[np.ndarray]) -> Tuple[np.ndarray, List[np.ndarray]]:
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
        from ..validation.reference_runner import TorchModuleRunner
        from .quantize import quantize_model

        model = build_model(graph, device="cpu").eval()
        with quiet():  # torchao's deprecations
            quantize_model(graph, model, self.precision, q.get("group_size"), list(q.get("weights", [])))
        runner = TorchModuleRunner(model, self.batch_size)
        runner.runtime = f"PyTorch eager, weights and activations quantized {self.precision} (torchao)"
        return runner

    def run(self, input_ids: np.ndarray, states: List[np.ndarray]) -> Tuple[np.ndarray, List[np.ndarray]]:
        ids = check_run_args(str(self.path), self.batch_size, input_ids, states, self.state_shapes, self.vocab_size)
        if self.prefill is not None:
            return self.prefill.run(ids, states, self.vocab_size, lambda x, st: self._call(self._prefill, x, st),
                                    lambda x, st: self._call(self._forward, x, st))
        logits = []
        for t in range(ids.shape[1]):
            lg, states = self._call(self._forward, ids[:, t:t + 1], states)
            logits.append(lg)
        return np.concatenate(logits, axis=1), states


def verify(runner: ExecuTorchRunner, graph: Graph) -> None:
    """Raise ArtifactError unless the program's contract is what xlstm-export writes for the options it
    declares (backend, batch size, prefill chunk, quantization): the declared precision, which picks the
    tolerance, must be the backend's or, on XNNPACK, a quantization scheme whose declaration (group size,
    kept patterns, quantized weight names) is what those options give for this checkpoint. The program's
    tensors sit inside the backend's payload (XNNPACK, Core ML) and are not compared; a ``.pte`` holds
    operators, not Python, so running it runs no code of the file's own."""
    from ..validation.contract import check_contract_is, declared_precision
    from .emit import BACKENDS, PRECISION, ExecuTorchOptions, contract_for
    from .quantize import DEFAULT_KEEP, SCHEMES

    c, where = runner.contract, str(runner.path)
    backend = c.get("backend")
    if backend not in BACKENDS:
        raise ArtifactError(f"{where}: its contract declares backend {str(backend)[:40]!r}; xlstm-export writes "
                            f"{', '.join(BACKENDS)}")
    offered = (PRECISION[backend],) + (tuple(s for s in SCHEMES if s != "none") if backend == "xnnpack" else ())
    precision = declared_precision(c, where, TARGET, offered)
    quant = {}
    if precision != PRECISION[backend]:
        q = c.get("quantization")
        if not isinstance(q, dict) or not isinstance(q.get("keep"), list) or not all(isinstance(p, str) for p in q["keep"]):
            raise ArtifactError(f"{where}: its contract declares precision {precision} without the quantization "
                                f"record xlstm-export writes with it (re-export it)")
        keep = None if q["keep"] == list(DEFAULT_KEEP) else (",".join(q["keep"]) or "none")
        quant = {"quantize": precision, "group_size": q.get("group_size"), "keep": keep}
    plan_ = runner.prefill
    options = ExecuTorchOptions(backend=backend, batch_size=runner.batch_size,
                                prefill_chunk=plan_.chunk if plan_ else None, **quant)
    try:
        expected = contract_for(graph, options)
    except UnsupportedError as e:  # a declared group size / keep list xlstm-export would refuse
        raise ArtifactError(f"{where}: its contract declares quantization options xlstm-export refuses for this "
                            f"checkpoint ({first_line(e)[:200]})") from None
    check_contract_is(c, expected, where,
                      f"its declaration ({backend}, batch {runner.batch_size}"
                      + (f", prefill chunk {plan_.chunk}" if plan_ else "")
                      + (f", {precision}" if quant else "") + ")")


def open_runner(path: str | Path, graph: Graph, trust_artifact: bool = False, **opts) -> ExecuTorchRunner:
    """The validation registry's factory for ``.pte`` artifacts: checked against ``graph``'s contract and,
    unless ``trust_artifact``, against what xlstm-export writes for what the contract declares (:func:`verify`)."""
    runner = ExecuTorchRunner(path, graph, **opts)
    if not trust_artifact:
        verify(runner, graph)
    return runner


__all__ = ["ExecuTorchRunner", "open_runner", "verify"]


def contract_of(path: Path) -> dict:
    """The program's I/O contract (its constant method, run by the ExecuTorch runtime)."""
    return ExecuTorchRunner(path, None).contract
