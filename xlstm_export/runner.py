"""What every runner is (the interface validation, ``run`` and the benchmarks drive) and the one skeleton
the target runners are built on.

    Runner             the protocol: kind, precision, runtime, batch_size, max_tokens_per_call, init_states, run
    BaseRunner         the token loop. ``run`` checks its arguments (``contract.check_run_args``: the same
                       UnsupportedError in every target), then feeds the input through the target's one
                       hook, ``_call(ids, states) -> (logits, states)``: one token per call (a step-only
                       artifact), all at once (one that takes any length), or a prefill plan's chunk calls
                       (``_call_prefill``) and step calls
    ArtifactRunner     + the contract: the target opens its artifact and returns the parsed contract
                       (``_open``); the base checks it against the checkpoint's graph, maps its state slots,
                       reads batch size, vocabulary, precision and prefill plan; the target then checks the
                       artifact against it and starts its runtime (``_start``)
    TorchModuleRunner  a BaseRunner over a module with the reference model's interface (the reference,
                       a loaded TorchScript archive, the eager module of a quantized ExecuTorch program)

and the verify skeleton every target's ``verify`` ends in: the target reads the options its artifact's
contract declares and rebuilds what xlstm-export writes for them; :func:`verify_written` compares the
contract, then each :class:`Holding` (what the artifact holds, by name, against what xlstm-export writes)
and refuses with one line naming the first difference. :func:`open_verified` is every target's registry
factory (open, then verify unless the caller trusts the artifact).

States cross the interface as numpy float32 arrays in the graph's state-contract order
(``graph.state_contract``), zeros being the empty context. Optional runner methods: ``parameters() ->
dict[str, np.ndarray]`` (weights by name: a failed validation names the weights that differ),
``compressed_weights(graph)`` (an artifact's compressed weights, decoded), ``prefill`` (a
:class:`~xlstm_export.contract.PrefillPlan`) with ``calls(L)`` and ``logit_positions(L)``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Protocol, Tuple

import numpy as np

from .contract import (TRUST_HINT, PrefillPlan, StateSlot, check_contract, check_contract_is, check_run_args,
                       contract_batch_size, contract_vocab_size, judged_precision, prefill_plan, state_slots)
from .errors import ArtifactError, UnsupportedError, first_line
from .graphs import Graph

class Runner(Protocol):
    kind: str  # "reference", "torchscript", "onnx", "onnx-scan", "onnx-prefill", "coreml", "coreml-prefill", ...
    precision: str  # "fp32" | "fp16" | "fp16+int4" | ...
    runtime: str  # what executes it, with its version: "ONNX Runtime 1.31.1 (CPUExecutionProvider)"
    batch_size: int
    max_tokens_per_call: Optional[int]  # 1: fed one token per call (the comparison then steps a prompt)

    def init_states(self) -> List[np.ndarray]:
        """Zero states, contract order, float32."""
        ...

    def run(self, input_ids: np.ndarray, states: List[np.ndarray]) -> Tuple[np.ndarray, List[np.ndarray]]:
        """input_ids (B, T) int64 -> logits (B, T, V) float32, new states (float32, contract order)."""
        ...


class BaseRunner(ABC):
    """The :class:`Runner` protocol's checks and token loop over a target's call hook."""

    kind: str = "artifact"
    precision: str = "fp32"
    runtime: str = ""
    batch_size: int = 1
    max_tokens_per_call: Optional[int] = 1  # None: any number of tokens per call
    vocab_size: Optional[int] = None
    prefill: Optional[PrefillPlan] = None
    state_shapes: List[tuple]

    @property
    @abstractmethod
    def where(self) -> str:
        """What a bad ``run`` call's error names (the artifact's path)."""

    @abstractmethod
    def _call(self, ids: np.ndarray, states: List[np.ndarray]) -> Tuple[np.ndarray, List[np.ndarray]]:
        """One call of the artifact's step (or sequence) function on checked ids (B, t) int64: logits
        (B, t, V) float32 and the new states (whatever ``_enter`` made of them)."""

    def _call_prefill(self, ids: np.ndarray, states: List[np.ndarray]) -> Tuple[np.ndarray, List[np.ndarray]]:
        """One call of the prefill function/graph on a chunk: logits (B, chunk | 1, V), new states."""
        raise UnsupportedError(f"{self.where}: has no prefill function")

    def _enter(self, states: List[np.ndarray]) -> List[np.ndarray]:
        """The states as the calls take them (Core ML: loaded into the runtime's state)."""
        return states

    def _leave(self, states: List[np.ndarray]) -> List[np.ndarray]:
        """The states after the calls, float32 in contract order (Core ML: read back from the runtime)."""
        return states

    def init_states(self) -> List[np.ndarray]:
        return [np.zeros(shape, dtype=np.float32) for shape in self.state_shapes]

    def calls(self, length: int) -> Optional[List[Tuple[int, int, str]]]:
        """The prefill plan's calls for a prompt of ``length`` tokens (None without a plan)."""
        return self.prefill.calls(length) if self.prefill is not None else None

    def logit_positions(self, length: int) -> np.ndarray:
        """Positions whose logits ``run`` returns (all, unless a prefill returns only its last)."""
        return self.prefill.logit_positions(length) if self.prefill is not None else np.arange(length)

    def run(self, input_ids: np.ndarray, states: List[np.ndarray]) -> Tuple[np.ndarray, List[np.ndarray]]:
        """input_ids (B, T) integers -> logits (B, T, V) float32, new states (float32, contract order). With
        a prefill plan that returns a chunk's last logits only, the other positions are NaN
        (``logit_positions``)."""
        ids = check_run_args(self.where, self.batch_size, input_ids, states, self.state_shapes, self.vocab_size)
        st = self._enter(list(states))
        B, L = ids.shape
        if self.prefill is None and (self.max_tokens_per_call is None or self.max_tokens_per_call >= L):
            logits, st = self._call(ids, st)
            return logits, self._leave(st)
        if self.prefill is not None:
            calls = self.prefill.calls(L)
        else:
            k = self.max_tokens_per_call
            calls = [(s, min(s + k, L), "step") for s in range(0, L, k)]
        logits = None
        for start, stop, via in calls:
            lg, st = (self._call_prefill if via == "prefill" else self._call)(ids[:, start:stop], st)
            if logits is None:
                logits = np.full((B, L, lg.shape[-1]), np.nan, dtype=np.float32)
            logits[:, stop - lg.shape[1]:stop] = lg
        return logits, self._leave(st)


class ArtifactRunner(BaseRunner):
    """A runner over an artifact file that carries an ``xlstm_export.io`` contract.

    ``__init__`` is the template: ``_open`` (the target reads the artifact: returns its parsed contract),
    :meth:`_read_contract` (here), ``_start`` (the target checks its artifact against the contract and
    opens its runtime session). A contract with a prefill plan makes the runner ``<kind>-prefill``, taking
    any number of tokens per call."""

    needs_vocab = True  # the contract must declare the logits' vocabulary axis
    noun = "artifact"  # how verify's refusals call the file: "graph", "package", "program"
    # a batch size other than the contract's: the error and its message ({where}, {have}, {asked})
    batch_error: Tuple[type, str] = (UnsupportedError, "{where}: exported for batch size {have}; got {asked}")
    trusted = False

    def __init__(self, path: str | Path, graph: Optional[Graph] = None, batch_size: Optional[int] = None):
        self.path = Path(path)
        self._read_contract(self._open(), graph, batch_size)
        self._start()
        if self.prefill is not None:
            self.kind, self.max_tokens_per_call = f"{self.kind}-prefill", None

    @property
    def where(self) -> str:
        return str(self.path)

    @abstractmethod
    def _open(self) -> dict:
        """Read the artifact at ``self.path`` (ArtifactError if it cannot be): its parsed contract."""

    @abstractmethod
    def _start(self) -> None:
        """Check the artifact against ``self.contract`` (names, functions, states) and open its runtime."""

    def _read_contract(self, contract: dict, graph: Optional[Graph], batch_size: Optional[int]) -> None:
        """The checks every runner makes of its contract: the checkpoint's profile (``graph``: else the
        contract describes itself), state slots, batch size, vocabulary, judged precision, prefill plan."""
        where = str(self.path)
        self.contract = contract
        if graph is not None:
            check_contract(contract, graph, where)
            self.slots: List[StateSlot] = state_slots(contract, graph, where)
        else:
            self.slots = [StateSlot(s["name"], tuple(s["shape"]), s["dtype"], s["input"], s["output"])
                          for s in contract["states"]]
        self.state_shapes = [tuple(s.shape) for s in self.slots]
        self.batch_size = contract_batch_size(contract, where)
        if batch_size is not None and batch_size != self.batch_size:
            error, message = self.batch_error
            raise error(message.format(where=where, have=self.batch_size, asked=batch_size))
        self.precision = judged_precision(contract) if contract.get("precision") else "fp32"
        self.vocab_size = contract_vocab_size(contract)
        if self.vocab_size is None and self.needs_vocab:
            logits = next((o for o in contract["outputs"] if o["name"] == "logits"), None)
            raise ArtifactError(f"{where}: the contract must declare output 'logits' of shape (B, 1, V), got "
                                f"{logits!r}")
        self.prefill = prefill_plan(contract, where)

    def _release(self) -> None:
        """Drop what only verification needed (parsed files) once the runner is opened."""


class TorchModuleRunner(BaseRunner):
    """A runner over a module with ``init_states(batch_size)`` and ``forward_with_states(input_ids,
    states)`` (eager or scripted), taking any number of tokens per call; ``parameters()`` gives its weights."""

    kind = "torch"
    runtime_name = "PyTorch eager"
    precision = "fp32"
    max_tokens_per_call: Optional[int] = None

    def __init__(self, module, batch_size: int, device: str = "cpu"):
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise UnsupportedError(f"{self.kind} runner: batch size must be a positive integer, got {batch_size!r}")
        self.module = module
        self.batch_size = int(batch_size)
        self.device = device
        import torch

        self.runtime = f"{self.runtime_name} (torch {torch.__version__}, {device})"
        self._state_shapes: Optional[List[tuple]] = None
        v = getattr(module, "vocab_size", None)
        self.vocab_size = v if isinstance(v, int) and v > 0 else None

    @property
    def where(self) -> str:
        return f"{self.kind} runner"

    @property
    def state_shapes(self) -> List[tuple]:
        if self._state_shapes is None:
            self._state_shapes = [tuple(s.shape) for s in self.init_states()]
        return self._state_shapes

    @state_shapes.setter
    def state_shapes(self, shapes: List[tuple]) -> None:
        self._state_shapes = list(shapes)

    def init_states(self) -> List[np.ndarray]:
        import torch

        with torch.inference_mode():
            return [s.float().cpu().numpy() for s in self.module.init_states(self.batch_size)]

    def _call(self, ids: np.ndarray, states: List[np.ndarray]) -> Tuple[np.ndarray, List[np.ndarray]]:
        return self._forward(ids, states)

    def _forward(self, input_ids: np.ndarray, states: List[np.ndarray]) -> Tuple[np.ndarray, List[np.ndarray]]:
        """The module's ``forward_with_states`` on checked arguments (states in the module's order)."""
        import torch

        ids = torch.from_numpy(np.ascontiguousarray(input_ids, dtype=np.int64)).to(self.device)
        st = [torch.from_numpy(np.ascontiguousarray(s, dtype=np.float32)).to(self.device) for s in states]
        with torch.inference_mode():
            logits, new = self.module.forward_with_states(ids, st)
        return logits.float().cpu().numpy(), [s.float().cpu().numpy() for s in new]

    def parameters(self) -> Dict[str, np.ndarray]:
        """Every weight, by the module's own attribute path (``blocks.1.w_in``), as float32."""
        return {k: v.detach().float().cpu().numpy() for k, v in self.module.state_dict().items()}


# -- the verify skeleton ---------------------------------------------------------------------------------
class _Absent:
    def __repr__(self) -> str:
        return "ABSENT"


ABSENT: Any = _Absent()  # the side of a Holding that lacks a name


@dataclass(frozen=True)
class Holding:
    """One part of an artifact compared by name: what the artifact holds (``got``: name -> e.g. (dtype,
    shape)) against what xlstm-export writes for the options its contract declares (``want``).

    ``describe(name, got, want, others)`` is the line a difference reads as (:data:`ABSENT` for the side
    that lacks the name; ``others``: how many further names differ the same way). ``first`` orders the
    kinds of difference ("wrong": both hold it, differently; "extra": only the artifact; "missing": only
    xlstm-export): the first name of the first kind found is named, the first in ``order`` when ``first``
    is empty. ``extra_allowed``: names only the artifact holds are not differences."""

    got: Mapping[Any, Any]
    want: Mapping[Any, Any]
    describe: Callable[[Any, Any, Any, int], str]
    first: Tuple[str, ...] = ()
    extra_allowed: bool = False
    order: Callable[[Iterable[Any]], List[Any]] = sorted

    def difference(self) -> Optional[str]:
        def case(n) -> str:
            return "extra" if n not in self.want else "missing" if n not in self.got else "wrong"

        names = [n for n in self.order(set(self.got) | set(self.want))
                 if self.got.get(n, ABSENT) != self.want.get(n, ABSENT)
                 and not (self.extra_allowed and n not in self.want)]
        if not names:
            return None
        rank = {c: i for i, c in enumerate(self.first)}
        name = min(names, key=lambda n: rank.get(case(n), len(rank)))  # the first in order of its kind
        others = sum(1 for n in names if case(n) == case(name)) - 1
        return self.describe(name, self.got.get(name, ABSENT), self.want.get(name, ABSENT), others)


def first_difference(holdings: Iterable[Holding]) -> Optional[str]:
    """The first difference of the first holding that has one. ``holdings`` may be a generator: a later
    part is read only when the earlier ones match (a record's bytes only once its size matches)."""
    for h in holdings:
        why = h.difference()
        if why is not None:
            return why
    return None


def verify_written(where: str, what: str, noun: str, contract: dict, expected: dict,
                   holdings: Iterable[Holding] = ()) -> None:
    """The verify skeleton: raise ArtifactError unless the artifact at ``where`` is what xlstm-export
    writes for ``what`` (its declaration: the options its contract declares): its contract is ``expected``
    (``contract.check_contract_is``), then every holding matches. The declared precision picks the
    tolerance, so it must be the precision of the artifact's actual tensors."""
    check_contract_is(contract, expected, where, what)
    why = first_difference(holdings)
    if why is not None:
        raise ArtifactError(f"{where}: not the {noun} xlstm-export writes for {what}: {why}; its tolerance is "
                            f"chosen by that declaration (re-export it, or {TRUST_HINT})")


def declared_compression(contract: dict, where: str):
    """The weight compression (``lowering.quant.Compression``) the contract declares, or None;
    ArtifactError naming the field if it is not one xlstm-export writes."""
    q = contract.get("quantize")
    if q is None:
        return None
    from .lowering.quant import Compression

    try:
        return Compression.from_json(q)
    except UnsupportedError as e:
        raise ArtifactError(f"{where}: its contract's {first_line(e)} ({TRUST_HINT})") from None


def open_verified(cls: Callable[..., ArtifactRunner], verify: Callable[[ArtifactRunner, Graph], None],
                  path: str | Path, graph: Graph, trust_artifact: bool = False, **opts) -> ArtifactRunner:
    """A target's registry factory: the runner over ``path`` checked against ``graph``'s contract and,
    unless ``trust_artifact``, checked to be what xlstm-export writes for what its contract declares
    (``verify``)."""
    runner = cls(path, graph, **opts)
    runner.trusted = bool(trust_artifact)
    if not trust_artifact:
        verify(runner, graph)
    runner._release()
    return runner


__all__ = ["ABSENT", "ArtifactRunner", "BaseRunner", "Holding", "Runner", "TorchModuleRunner", "declared_compression",
           "first_difference", "open_verified", "verify_written"]
