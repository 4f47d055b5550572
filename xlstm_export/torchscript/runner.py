"""Validation runner over a saved TorchScript artifact (``torch.jit.load``; no xlstm_export code runs in it).

``torch.jit.load`` runs the archive's code, so the runner first checks (``trust.check_archive``, reading
records only) that the archive is, but for its weight values, what xlstm-export writes for its contract;
``trust_artifact=True`` (``validate --trust-artifact``) skips that check for an archive the caller trusts.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np

from ..errors import ArtifactError, first_line
from ..graphs import Graph
from ..quiet import quiet
from ..validation.contract import IO_KEY, check_contract, contract_batch_size, parse_contract, state_slots
from ..validation.reference_runner import TorchModuleRunner

_SLOT = re.compile(r"^states\[(\d+)\]$")


class TorchScriptRunner(TorchModuleRunner):
    kind = "torchscript"
    runtime_name = "TorchScript"

    def __init__(self, path: str | Path, graph: Graph, batch_size: Optional[int] = None, device: str = "cpu",
                 trust_artifact: bool = False):
        import torch

        from ..reference import resolve_device
        from .trust import check_archive

        path = Path(path)
        where = str(path)
        device = resolve_device(device)  # UnsupportedError for a device torch lacks, before reading anything
        if not trust_artifact:
            check_archive(path, graph)  # before torch.jit.load runs any of its code
        self.trusted = bool(trust_artifact)
        extra = {IO_KEY: ""}
        try:
            with quiet():  # torch.jit is deprecated (a warning), still supported
                module = torch.jit.load(str(path), map_location=device, _extra_files=extra)
        except (RuntimeError, ValueError, OSError) as e:
            first = first_line(e)
            raise ArtifactError(f"{path}: not a loadable TorchScript archive ({first})") from None
        missing = [m for m in ("init_states", "forward_with_states") if not hasattr(module, m)]
        if missing:
            raise ArtifactError(f"{path}: the TorchScript module has no {' / '.join(missing)} method; it was not "
                                f"written by xlstm-export (re-export it with this tool)")
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
        try:
            module_states = super().init_states()
        except RuntimeError as e:
            raise ArtifactError(f"{where}: the TorchScript module's init_states fails ({first_line(e)})") from None
        want = [s.name for s in graph.state_contract(self.batch_size)]
        shapes = [tuple(s.shape) for s in graph.state_contract(self.batch_size)]
        got = [tuple(module_states[j].shape) if j < len(module_states) else None for j in self._perm]
        if len(module_states) != len(slots) or got != shapes:
            raise ArtifactError(f"{where}: the module's init_states gives {len(module_states)} states "
                                f"{[tuple(x.shape) for x in module_states]}; its contract maps {want} to shapes "
                                f"{shapes}")

    def init_states(self) -> List[np.ndarray]:
        return self._from_module(super().init_states())

    def run(self, input_ids: np.ndarray, states: List[np.ndarray]) -> Tuple[np.ndarray, List[np.ndarray]]:
        ids = self._check(input_ids, states)  # contract order, as init_states gives them
        ordered: List[np.ndarray] = list(states)
        for i, j in enumerate(self._perm):
            ordered[j] = states[i]
        try:
            logits, new = self._forward(ids, ordered)
        except RuntimeError as e:  # torch.jit's errors: the archive's code does not run on checked inputs
            raise ArtifactError(f"{self.path}: the TorchScript module fails to run ({first_line(e)})") from None
        return logits, self._from_module(new)

    def _from_module(self, states: List[np.ndarray]) -> List[np.ndarray]:
        return [states[j] for j in self._perm]
