"""Validation runner over a saved TorchScript artifact (``torch.jit.load``; no xlstm_export code runs in it)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np

from ..errors import ArtifactError, first_line
from ..graphs import Graph
from ..validation.contract import IO_KEY, check_contract, contract_batch_size, parse_contract, state_slots
from ..validation.reference_runner import TorchModuleRunner

_SLOT = re.compile(r"^states\[(\d+)\]$")


class TorchScriptRunner(TorchModuleRunner):
    kind = "torchscript"

    def __init__(self, path: str | Path, graph: Graph, batch_size: Optional[int] = None, device: str = "cpu"):
        import torch

        path = Path(path)
        where = str(path)
        extra = {IO_KEY: ""}
        try:
            module = torch.jit.load(str(path), map_location=device, _extra_files=extra)
        except (RuntimeError, ValueError, OSError) as e:
            first = first_line(e)
            raise ArtifactError(f"{path}: not a loadable TorchScript archive ({first})") from None
        self.contract = parse_contract(extra[IO_KEY], where)
        check_contract(self.contract, graph, where)
        slots = state_slots(self.contract, graph, where)
        self._perm: List[int] = []  # contract position -> index in the module's states list
        for s in slots:
            m = _SLOT.match(str(s.input))
            if m is None or s.output != s.input:
                raise ArtifactError(f"{where}: state {s.name}: expected input/output 'states[i]', "
                                    f"got {s.input!r}/{s.output!r}")
            self._perm.append(int(m.group(1)))
        if sorted(self._perm) != list(range(len(slots))):
            raise ArtifactError(f"{where}: the contract's state indices {self._perm} are not a permutation")
        super().__init__(module, batch_size or contract_batch_size(self.contract, where), device)
        self.path = path
        self.precision = str(self.contract.get("precision", "fp32"))

    def init_states(self) -> List[np.ndarray]:
        return self._from_module(super().init_states())

    def run(self, input_ids: np.ndarray, states: List[np.ndarray]) -> Tuple[np.ndarray, List[np.ndarray]]:
        ordered: List[np.ndarray] = [states[0]] * len(states)
        for i, j in enumerate(self._perm):
            ordered[j] = states[i]
        logits, new = super().run(input_ids, ordered)
        return logits, self._from_module(new)

    def _from_module(self, states: List[np.ndarray]) -> List[np.ndarray]:
        return [states[j] for j in self._perm]
