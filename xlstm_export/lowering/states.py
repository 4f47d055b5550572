"""Typed per-block states, built from the one state contract (``graph.state_contract``).

A lowering receives e.g. ``MLSTMStates(c, n, m, conv)`` -- each a :class:`~xlstm_export.graphs.StateSpec`
(canonical name, role, shape) -- and reads or writes them through ``ops.read_state`` /
``ops.write_state``; it never indexes a list of states by position.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Union

from ..errors import UnsupportedError
from ..graphs import Graph, StateSpec


@dataclass(frozen=True)
class MLSTMStates:
    c: StateSpec  # (B, NH, DQK, DV)
    n: StateSpec  # (B, NH, DQK) large / (B, NH, DQK, 1) hybrid
    m: StateSpec  # (B, NH, 1) large / (B, NH, 1, 1) hybrid
    conv: Optional[StateSpec] = None  # (B, K, inner), hybrid with a conv


@dataclass(frozen=True)
class SLSTMStates:
    state: StateSpec  # (4, B, E): rows y, c, n, m
    conv: Optional[StateSpec] = None  # (B, K, E) with a conv


BlockStates = Union[MLSTMStates, SLSTMStates]


def block_states(graph: Graph, batch_size: int) -> List[BlockStates]:
    """Every block's typed states, in block order."""
    by_block: Dict[int, Dict[str, StateSpec]] = {}
    for s in graph.state_contract(batch_size):
        by_block.setdefault(s.block, {})[s.role] = s
    out: List[BlockStates] = []
    for i, block in enumerate(graph.blocks):
        roles = by_block.get(i, {})
        try:
            if block.kind == "mlstm":
                out.append(MLSTMStates(c=roles["c"], n=roles["n"], m=roles["m"], conv=roles.get("conv")))
            else:
                out.append(SLSTMStates(state=roles["slstm"], conv=roles.get("conv")))
        except KeyError as e:
            raise UnsupportedError(f"block {i} ({block.kind}): the state contract has no {e.args[0]!r} state; "
                                   f"it has {sorted(roles)}") from None
    return out
