"""The I/O contract every artifact carries under the key ``xlstm_export.io``.

    {"format": "xlstm-export-io/1",
     "inputs":  [{"name", "shape", "dtype"}...],      # input_ids first
     "outputs": [{"name", "shape", "dtype"}...],      # logits first
     "states":  [{"name", "shape", "dtype", "input", "output"}...],
     "profile": <the inspect JSON>}

``name`` of a state is its canonical contract name; ``input`` / ``output`` say where it enters and
leaves this artifact (Core ML: ``input`` is the state's name there and ``output`` is null).
A state of zeros is the empty context. ``None`` in a shape is a dynamic axis.
"""

from __future__ import annotations

import json
from typing import Callable, Optional, Sequence

from .graph import Graph

IO_FORMAT = "xlstm-export-io/1"
IO_KEY = "xlstm_export.io"


def io_contract(
    graph: Graph,
    *,
    batch_size: int,
    seq_len: Optional[int],
    ids_dtype: str,
    logits_dtype: str,
    state_dtype: str,
    state_input: Callable[[str], str],
    state_output: Callable[[str], Optional[str]],
    target: str,
    precision: str,
    extra_inputs: Sequence[dict] = (),
) -> dict:
    B, T, V = batch_size, seq_len, graph.config.vocab_size
    states = [
        {"name": s.name, "shape": list(s.shape), "dtype": state_dtype,
         "input": state_input(s.name), "output": state_output(s.name)}
        for s in graph.state_contract(batch_size)
    ]
    return {
        "format": IO_FORMAT,
        "target": target,
        "precision": precision,
        "inputs": [{"name": "input_ids", "shape": [B, T], "dtype": ids_dtype}, *extra_inputs],
        "outputs": [{"name": "logits", "shape": [B, T, V], "dtype": logits_dtype}],
        "states": states,
        "profile": graph.to_profile(informational=False),
    }


def dumps(contract: dict) -> str:
    """Canonical JSON (sorted keys, no spaces): byte-identical for identical contracts."""
    return json.dumps(contract, sort_keys=True, separators=(",", ":"))
