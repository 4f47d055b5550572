"""What every validation runner provides: the one interface the comparison drives.

A runner wraps one artifact (or the reference) at a fixed batch size. States are numpy float32 arrays
in the graph's state-contract order (``graph.state_contract``), zeros being the empty context.
``max_tokens_per_call`` is 1 for single-step artifacts (ONNX step graph, Core ML): the comparison
then feeds a prompt one token at a time.

Optional: ``parameters() -> dict[str, np.ndarray]`` (weights by name, float32). When both the reference's
runner and an artifact's have it (the TorchScript runner does), a failed validation names the weights
that differ. ``open_artifact`` factories in ``registry.py`` build runners; each checks the artifact's
``xlstm_export.io`` contract against the graph first (``contract.check_contract``).
"""

from __future__ import annotations

from typing import List, Optional, Protocol, Tuple

import numpy as np


class Runner(Protocol):
    kind: str  # "reference", "torchscript", "onnx", "onnx-scan", "coreml"
    precision: str  # "fp32" | "fp16" | ...
    batch_size: int
    max_tokens_per_call: Optional[int]

    def init_states(self) -> List[np.ndarray]:
        """Zero states, contract order, float32."""
        ...

    def run(self, input_ids: np.ndarray, states: List[np.ndarray]) -> Tuple[np.ndarray, List[np.ndarray]]:
        """input_ids (B, T) int64 -> logits (B, T, V) float32, new states (float32, contract order)."""
        ...
