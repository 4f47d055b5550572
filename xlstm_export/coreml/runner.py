"""Validation runner over a saved ``.mlpackage``.

On macOS with the Core ML framework: the real runtime (``MLModel.predict`` with an ``MLState``).
Elsewhere: :class:`~xlstm_export.coreml.executor.ProgramExecutor`, which reads the package back from disk
and runs its MIL program op by op with coremltools' numpy op semantics.

The package's ``main`` function is a single decode step (``max_tokens_per_call = 1``): ``run`` feeds a
prompt one token per call. A package exported with ``--prefill-chunk T`` also has a ``prefill`` function
of T tokens over the same states (kind ``coreml-prefill``): ``run`` then feeds a prompt as prefill calls
and the remainder as step calls, as an app does. States cross the :class:`~xlstm_export.runner.Runner`
interface as float32 numpy arrays in contract order (the package stores them fp16, so they are rounded on
the way in); the I/O contract in the package's metadata maps each canonical state name to its Core ML
state name. Whether the package is what xlstm-export writes for its declaration is ``verify.py``'s question.
"""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from ._ct import ct as _ct
from ..contract import IO_KEY, parse_contract
from ..errors import ArtifactError, UnsupportedError, first_line
from ..graphs import Graph
from ..runner import ArtifactRunner
from .executor import open_package
from .names import COMPUTE_UNITS, MAIN_FUNCTION, TARGET

BACKENDS = ("auto", "coreml", "executor")


def read_contract(path: Path) -> Tuple[dict, object]:
    """The package's I/O contract (from its user-defined metadata) and its spec."""
    spec = open_package(path).get_spec()
    text = spec.description.metadata.userDefined.get(IO_KEY)
    return parse_contract(text, str(path)), spec


def function_description(spec, function: str = "main"):
    """The feature description (inputs, outputs, states) of one function: the model's own for a
    single-function package, the function's for a multifunction one (None if it has no such function)."""
    desc = spec.description
    if not len(desc.functions):
        return desc if function == "main" else None
    return next((f for f in desc.functions if f.name == function), None)


def coreml_runtime_available() -> bool:
    """True on macOS where coremltools can load models into the Core ML framework."""
    if platform.system() != "Darwin":
        return False
    try:
        from coremltools.libcoremlpython import _MLModelProxy  # noqa: F401
    except ImportError:
        return False
    return True


class CoreMLRunner(ArtifactRunner):
    """The Runner protocol (``xlstm_export/runner.py``) over a ``.mlpackage``: states live in the runtime
    (an ``MLState``, or the executor's) between the calls of one ``run``."""

    kind = TARGET
    noun = "package"
    batch_error = (UnsupportedError, "{where}: the package was exported for batch size {have} (Core ML states "
                                     "have a fixed shape); got batch size {asked}")

    def compressed_weights(self, graph: Graph) -> Dict[str, np.ndarray]:
        """The dense weights of the package's compressed weights (:func:`compressed_weights`)."""
        return compressed_weights(self, graph)

    def __init__(self, path: str | Path, graph: Optional[Graph] = None, batch_size: Optional[int] = None,
                 backend: str = "auto", compute_units: Optional[str] = None):
        if backend not in BACKENDS:
            raise UnsupportedError(f"coreml runner: backend must be one of {BACKENDS}, got {backend!r}")
        if compute_units is not None and compute_units not in COMPUTE_UNITS:
            raise UnsupportedError(f"coreml runner: compute units must be one of {COMPUTE_UNITS}, "
                                   f"got {compute_units!r}")
        self.backend, self.compute_units = backend, compute_units
        super().__init__(path, graph, batch_size)

    def _open(self) -> dict:
        contract, self.spec = read_contract(self.path)
        return contract

    def _start(self) -> None:
        where, spec = self.where, self.spec
        self.state_names = [s.name for s in self.slots]
        self.core_ml_names = [str(s.input) for s in self.slots]
        # low parts of split states (stabilizer m stored as fp16 high + fp16 low): contract name -> Core ML name
        self.low_parts = {s["part_of"]: str(s["input"]) for s in self.contract.get("extra_states", [])}
        self.low_scale = {s["part_of"]: float(s.get("scale", 1.0)) for s in self.contract.get("extra_states", [])}
        main = function_description(spec, MAIN_FUNCTION)
        if main is None:
            raise ArtifactError(f"{where}: the package has no 'main' function (has "
                                f"{[f.name for f in spec.description.functions]})")
        declared = {f.name for f in main.state}
        missing = [n for n in self.core_ml_names + list(self.low_parts.values()) if n not in declared]
        if missing:
            raise ArtifactError(f"{where}: the contract names states {missing} that the package does not declare "
                                f"(declared: {sorted(declared)})")
        unknown = sorted(set(self.low_parts) - set(self.state_names))
        if unknown:
            raise ArtifactError(f"{where}: the contract's extra_states are low parts of {unknown}, which are not "
                                f"its states")
        io = [f.name for f in main.input], [f.name for f in main.output]
        if "input_ids" not in io[0] or "logits" not in io[1]:
            raise ArtifactError(f"{where}: the package must have input 'input_ids' and output 'logits', has "
                                f"inputs {io[0]} and outputs {io[1]}")
        if self.prefill is not None:
            self._check_prefill(spec, declared)
        backend = self.backend
        if backend == "auto":
            backend = "coreml" if coreml_runtime_available() else "executor"
        self.backend = backend
        units = self.compute_units or spec.description.metadata.userDefined.get("xlstm_export.compute_units", "all")
        if backend == "coreml":
            ct = _ct()

            if units not in COMPUTE_UNITS:
                raise ArtifactError(f"{where}: metadata xlstm_export.compute_units must be one of {COMPUTE_UNITS}, "
                                    f"got {units!r}")
            cu = {"all": ct.ComputeUnit.ALL, "cpu_and_gpu": ct.ComputeUnit.CPU_AND_GPU,
                  "cpu_only": ct.ComputeUnit.CPU_ONLY, "cpu_and_ne": ct.ComputeUnit.CPU_AND_NE}[units]
            try:
                self._model = ct.models.MLModel(str(self.path), compute_units=cu)
                # one MLState serves every function of the package (the states are the same)
                self._prefill_model = None if self.prefill is None else ct.models.MLModel(
                    str(self.path), compute_units=cu, function_name=self.prefill.where)
            except Exception as e:  # coremltools raises bare Exceptions for packages Core ML cannot load
                raise ArtifactError(f"{where}: Core ML cannot load it ({first_line(e)})") from None
            self._state = None
            self._last: Optional[List[np.ndarray]] = None
        else:
            from .executor import ProgramExecutor

            self._executor = ProgramExecutor(self.path)
        self.compute_units = units
        version = _ct().__version__
        self.runtime = (f"Core ML runtime (macOS {platform.mac_ver()[0]}, compute units {units}; coremltools {version})"
                        if backend == "coreml" else
                        f"xlstm-export package executor on coremltools {version} op semantics (not the Core ML "
                        f"runtime, which needs macOS)")

    def _check_prefill(self, spec, declared: set) -> None:
        plan, where = self.prefill, self.where
        fn = function_description(spec, plan.where)
        ids = next((f for f in fn.input if f.name == "input_ids"), None) if fn is not None else None
        shape = list(ids.type.multiArrayType.shape) if ids is not None else None
        if fn is None or shape != [self.batch_size, plan.chunk] or {f.name for f in fn.state} != declared:
            raise ArtifactError(f"{where}: the contract names a prefill function {plan.where!r} of {plan.chunk} tokens; "
                                f"the package has no such function with input_ids {[self.batch_size, plan.chunk]} "
                                f"and the step's states")

    # -- the call hooks: states stay in the executor / MLState between the calls of one run ----------
    def _enter(self, states: List[np.ndarray]) -> List[np.ndarray]:
        self._load_states(states)
        return []

    def _call(self, ids: np.ndarray, states: List[np.ndarray]) -> Tuple[np.ndarray, List[np.ndarray]]:
        return self._logits(ids, False), states

    def _call_prefill(self, ids: np.ndarray, states: List[np.ndarray]) -> Tuple[np.ndarray, List[np.ndarray]]:
        return self._logits(ids, True), states

    def _leave(self, states: List[np.ndarray]) -> List[np.ndarray]:
        return self._read_states()

    def _logits(self, ids: np.ndarray, prefill: bool) -> np.ndarray:
        """One prediction of ``main`` (one token) or ``prefill`` (a chunk): logits (B, n, V) float32."""
        n = 1 if not prefill or self.prefill.last_logits_only else ids.shape[1]
        out = self._predict({"input_ids": ids.astype(np.int32)}, prefill)
        if np.size(out) != self.batch_size * n * self.vocab_size:
            raise ArtifactError(f"{self.path}: the package's logits have shape {np.shape(out)}, the contract says "
                                f"({self.batch_size}, {n}, {self.vocab_size})")
        return out.astype(np.float32).reshape(self.batch_size, n, self.vocab_size)

    # -- backends ---------------------------------------------------------------------------
    def _stored(self, states: List[np.ndarray]):
        """Contract states (float32) -> (Core ML name, fp16 value) of every stored state."""
        for canonical, name, value in zip(self.state_names, self.core_ml_names, states):
            v = np.asarray(value, dtype=np.float32)
            hi = v.astype(np.float16)
            yield name, hi
            if canonical in self.low_parts:
                yield self.low_parts[canonical], ((v - hi.astype(np.float32)) * self.low_scale[canonical]).astype(np.float16)

    def _load_states(self, states: List[np.ndarray]) -> None:
        if self.backend == "executor":
            for name, value in self._stored(states):
                self._executor.set_state(name, value)
            return
        if self._state is not None and self._last is not None and all(a is b for a, b in zip(states, self._last)):
            return  # the states we returned last time: the MLState already holds them
        self._state = self._model.make_state()
        for name, value in self._stored(states):
            self._state.write_state(name, np.ascontiguousarray(value))

    def _predict(self, feed, prefill: bool = False) -> np.ndarray:
        if self.backend == "executor":
            return self._executor.predict(feed, self.prefill.where if prefill else MAIN_FUNCTION)["logits"]
        model = self._prefill_model if prefill else self._model
        return np.asarray(model.predict(feed, state=self._state)["logits"])

    def _read_states(self) -> List[np.ndarray]:
        read = self._executor.get_state if self.backend == "executor" else self._state.read_state
        out = []
        for canonical, name, shape in zip(self.state_names, self.core_ml_names, self.state_shapes):
            v = np.asarray(read(name), dtype=np.float32)
            if canonical in self.low_parts:
                v = v + np.asarray(read(self.low_parts[canonical]), dtype=np.float32) / self.low_scale[canonical]
            out.append(v.reshape(shape))
        if self.backend != "executor":
            self._last = out
        return out


def compressed_weights(runner: "CoreMLRunner", graph: Graph) -> Dict[str, np.ndarray]:
    """Canonical weight name -> the dense float32 weight the package computes with, for each weight its
    contract declares compressed: coremltools' own decompression of the package's constexpr ops (data
    read from weight.bin; nothing of the program runs)."""
    from ..lowering import core_ml_name
    from ..lowering.quant import Compression, compressed_weights_of, split_sources
    from .policy import policy_for
    from .executor import load_program

    q = runner.contract.get("quantize")
    if q is None:
        return {}
    comp = Compression.from_json(q)
    policy = policy_for(str(runner.contract.get("precision")))
    prog = runner._executor.prog if getattr(runner, "_executor", None) is not None else load_program(runner.path)[0]
    ops = {op.name: op for op in prog.functions[MAIN_FUNCTION].operations if op.op_type.startswith("constexpr_")}
    out: Dict[str, np.ndarray] = {}
    for spec, _, owner in compressed_weights_of(graph, policy, comp, runner.batch_size):
        op = ops.get(core_ml_name(owner.key))
        if op is None:
            raise ArtifactError(f"{runner.path}: no compressed weight {core_ml_name(owner.key)!r} in the package")
        arr = np.asarray(op.materialized_val_inference(), dtype=np.float32)
        if arr.shape != tuple(spec.shape):
            raise ArtifactError(f"{runner.path}: compressed weight {op.name} decodes to {list(arr.shape)}, "
                                f"xlstm-export writes {list(spec.shape)}")
        out.update(split_sources(graph, spec, arr))
    return out


__all__ = ["BACKENDS", "CoreMLRunner", "compressed_weights", "contract_of", "coreml_runtime_available",
           "function_description", "read_contract"]


def contract_of(path: Path) -> dict:
    """The package's I/O contract, read from its spec (nothing is run)."""
    return read_contract(Path(path))[0]
