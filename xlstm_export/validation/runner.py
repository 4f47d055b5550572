"""What every validation runner provides: the one interface the comparison drives.

A runner wraps one artifact (or the reference) at a fixed batch size. States are numpy float32 arrays
in the graph's state-contract order (``graph.state_contract``), zeros being the empty context.
``max_tokens_per_call`` is 1 for single-step artifacts (ONNX step graph, Core ML): the comparison
then feeds a prompt one token at a time.

Optional: ``parameters() -> dict[str, np.ndarray]`` (weights by name, float32). When both the reference's
runner and an artifact's have it (the TorchScript runner does), a failed validation names the weights
that differ. Optional: ``prefill`` (a :class:`PrefillPlan`) for artifacts with a prefill graph/function: the runner
takes any number of tokens, in prefill chunks and step calls. ``open_artifact`` factories in
``registry.py`` build runners; each checks the artifact's
``xlstm_export.io`` contract against the graph first (``contract.check_contract``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional, Protocol, Tuple

import numpy as np


class Runner(Protocol):
    kind: str  # "reference", "torchscript", "onnx", "onnx-scan", "onnx-prefill", "coreml", "coreml-prefill"
    precision: str  # "fp32" | "fp16" | ...
    runtime: str  # what executes it, with its version: "ONNX Runtime 1.31.1 (CPUExecutionProvider)"
    batch_size: int
    max_tokens_per_call: Optional[int]

    def init_states(self) -> List[np.ndarray]:
        """Zero states, contract order, float32."""
        ...

    def run(self, input_ids: np.ndarray, states: List[np.ndarray]) -> Tuple[np.ndarray, List[np.ndarray]]:
        """input_ids (B, T) int64 -> logits (B, T, V) float32, new states (float32, contract order)."""
        ...


@dataclass(frozen=True)
class PrefillPlan:
    """How an artifact with a prefill graph/function takes a prompt: ``floor(L / chunk)`` prefill calls of
    ``chunk`` tokens, then ``L mod chunk`` step calls (the step path). Read from the contract's
    ``"prefill"`` entry (:func:`prefill_plan`). Runners with one expose ``prefill`` (this plan),
    ``calls(L)`` and ``logit_positions(L)``; the comparison reports figures per call of the prompt."""

    chunk: int
    last_logits_only: bool
    where: str  # the companion file (ONNX) or function (Core ML)

    def calls(self, length: int) -> List[Tuple[int, int, str]]:
        """``(start, stop, via)`` of each call for a prompt of ``length`` tokens; via "prefill" | "step"."""
        full = length // self.chunk * self.chunk
        out = [(s, s + self.chunk, "prefill") for s in range(0, full, self.chunk)]
        return out + [(t, t + 1, "step") for t in range(full, length)]

    def logit_positions(self, length: int) -> np.ndarray:
        """Positions whose logits the artifact returns (all, unless the prefill returns only its last)."""
        if not self.last_logits_only:
            return np.arange(length)
        return np.array([stop - 1 if via == "prefill" else start for start, stop, via in self.calls(length)],
                        dtype=np.int64)

    def run(self, input_ids: np.ndarray, states: List[np.ndarray], vocab: int,
            prefill: Callable[[np.ndarray, List[np.ndarray]], Tuple[np.ndarray, List[np.ndarray]]],
            step: Callable[[np.ndarray, List[np.ndarray]], Tuple[np.ndarray, List[np.ndarray]]]
            ) -> Tuple[np.ndarray, List[np.ndarray]]:
        """Run a prompt through ``prefill`` and ``step`` calls; logits (B, L, V), NaN at positions the
        artifact does not return (only with ``last_logits_only``: see ``logit_positions``)."""
        B, L = input_ids.shape
        logits = np.full((B, L, vocab), np.nan, dtype=np.float32)
        for start, stop, via in self.calls(L):
            lg, states = (prefill if via == "prefill" else step)(input_ids[:, start:stop], states)
            logits[:, stop - lg.shape[1]:stop] = lg
        return logits, states


class PrefillCalls:
    """``calls(L)`` and ``logit_positions(L)`` of a runner whose ``prefill`` plan may be None (a step-only
    artifact: one call per token, every position's logits)."""

    prefill: Optional[PrefillPlan] = None

    def calls(self, length: int) -> Optional[List[Tuple[int, int, str]]]:
        return self.prefill.calls(length) if self.prefill is not None else None

    def logit_positions(self, length: int) -> np.ndarray:
        return self.prefill.logit_positions(length) if self.prefill is not None else np.arange(length)


def prefill_plan(contract: dict, where: str) -> Optional[PrefillPlan]:
    """The contract's ``"prefill"`` entry, checked (artifacts are untrusted input): None when absent."""
    from ..errors import ArtifactError

    p = contract.get("prefill")
    if p is None:
        return None
    chunk = p.get("chunk") if isinstance(p, dict) else None
    last = p.get("last_logits_only", False) if isinstance(p, dict) else None
    target = (p.get("path") or p.get("function")) if isinstance(p, dict) else None
    if (isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1 or not isinstance(last, bool)
            or not isinstance(target, str) or not target or "/" in target or "\\" in target
            or target in (".", "..")):
        raise ArtifactError(f"{where}: the contract's 'prefill' entry must be {{'chunk': positive int, "
                            f"'last_logits_only': bool, 'path' or 'function': a plain name}}, got {str(p)[:120]}")
    return PrefillPlan(chunk, last, target)
