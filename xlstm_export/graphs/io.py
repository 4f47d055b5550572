"""The I/O contract every artifact carries under the key ``xlstm_export.io``.

    {"format": "xlstm-export-io/1",
     "inputs":  [{"name", "shape", "dtype"}...],      # input_ids first
     "outputs": [{"name", "shape", "dtype"}...],      # logits first
     "states":  [{"name", "shape", "dtype", "input", "output"}...],
     "profile": <the inspect JSON>,
     "text": {"files": [{"name", "bytes", "sha256"}...], "tokenizer", "bos_token_id", "eos_token_id": [...],
              "pad_token_id"}}                      # only when the checkpoint has tokenizer/generation files

``name`` of a state is its canonical contract name; ``input`` / ``output`` say where it enters and
leaves this artifact (Core ML: ``input`` is the state's name there and ``output`` is null).
A state of zeros is the empty context. ``None`` in a shape is a dynamic axis.

Artifacts hold no file-system path: the contract's profile is the path-free one
(``to_profile(informational=False)``), and where an artifact names its source for people (Core ML's
description and license text) it says :func:`source_id` -- the model family and a hash of that profile --
never the checkpoint's folder. The same checkpoint in any folder gives the same artifact bytes.
"""

from __future__ import annotations

import hashlib
import json
from typing import Callable, Optional, Sequence

from .graph import Graph
from .text import contract_entry

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
    contract = {
        "format": IO_FORMAT,
        "target": target,
        "precision": precision,
        "inputs": [{"name": "input_ids", "shape": [B, T], "dtype": ids_dtype}, *extra_inputs],
        "outputs": [{"name": "logits", "shape": [B, T, V], "dtype": logits_dtype}],
        "states": states,
        "profile": graph.to_profile(informational=False),
    }
    if graph.text is not None:  # the tokenizer and generation files travel with the artifact
        contract["text"] = contract_entry(graph.text)
    return contract


def profile_digest(graph: Graph) -> str:
    """sha256 of the canonical, path-free profile (config + block schedule) of ``graph``: the same for a
    checkpoint wherever it lies and in whichever format it was read."""
    return hashlib.sha256(dumps(graph.to_profile(informational=False)).encode()).hexdigest()


def source_id(graph: Graph) -> str:
    """How an artifact names the checkpoint it was exported from, without a path:
    ``"xLSTM hybrid checkpoint, profile sha256:1a2b3c4d5e6f"``."""
    return f"xLSTM {graph.config.family} checkpoint, profile sha256:{profile_digest(graph)[:12]}"


def dumps(contract: dict) -> str:
    """Canonical JSON (sorted keys, no spaces): byte-identical for identical contracts."""
    return json.dumps(contract, sort_keys=True, separators=(",", ":"))
