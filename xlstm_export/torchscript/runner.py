"""Validation runner over a saved TorchScript artifact (``torch.jit.load``; no xlstm_export code runs in it).

``torch.jit.load`` runs the archive's code, so an archive is opened through ``trust.open_runner``, which
first checks (``trust.check_archive``, reading records only) that it is, but for its weight values, what
xlstm-export writes for its contract; ``trust_artifact=True`` (``validate --trust-artifact``) skips that
check for an archive the caller trusts. Constructing a :class:`TorchScriptRunner` directly is saying the
archive was checked or is trusted (``checked=True``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np

from ..contract import parse_contract
from ..errors import ArtifactError, UnsupportedError, first_line
from ..graphs import Graph
from ..graphs.io import IO_KEY
from ..quiet import quiet
from ..runner import ArtifactRunner, TorchModuleRunner
from .names import TARGET

_SLOT = re.compile(r"^states\[(\d+)\]$")


class TorchScriptRunner(TorchModuleRunner, ArtifactRunner):
    """The scripted module (any number of tokens per call) behind the contract's checks; its states are
    the module's, permuted into contract order."""

    kind = TARGET
    runtime_name = "TorchScript"
    noun = "archive"
    needs_vocab = False  # the module's own vocab_size attribute bounds the token ids

    def __init__(self, path: str | Path, graph: Graph, batch_size: Optional[int] = None, device: str = "cpu", *,
                 checked: bool):
        from ..reference import resolve_device

        if not checked:
            raise UnsupportedError(f"{path}: loading a TorchScript archive runs its code; open it with "
                                   f"xlstm_export.torchscript.trust.open_runner, which checks it first")
        self._device = resolve_device(device)  # UnsupportedError for a device torch lacks, before reading anything
        self._batch = batch_size  # the module takes any batch size: the contract's unless one is asked for
        self._graph = graph
        ArtifactRunner.__init__(self, path, graph, None)

    def _open(self) -> dict:
        import torch

        path = self.path
        extra = {IO_KEY: ""}
        try:
            with quiet():  # torch.jit is deprecated (a warning), still supported
                module = torch.jit.load(str(path), map_location=self._device, _extra_files=extra)
        except (RuntimeError, ValueError, OSError) as e:
            raise ArtifactError(f"{path}: not a loadable TorchScript archive ({first_line(e)})") from None
        missing = [m for m in ("init_states", "forward_with_states") if not hasattr(module, m)]
        if missing:
            raise ArtifactError(f"{path}: the TorchScript module has no {' / '.join(missing)} method; it was not "
                                f"written by xlstm-export (re-export it with this tool)")
        self._module = module
        return parse_contract(extra[IO_KEY], str(path))

    def _start(self) -> None:
        where = str(self.path)
        self._perm: List[int] = []  # contract position -> index in the module's states list
        for s in self.slots:
            m = _SLOT.match(str(s.input))
            if m is None or s.output != s.input:
                raise ArtifactError(f"{where}: state {s.name}: expected input/output 'states[i]', "
                                    f"got {s.input!r}/{s.output!r}")
            self._perm.append(int(m.group(1)))
        if sorted(self._perm) != list(range(len(self.slots))):
            raise ArtifactError(f"{where}: the contract's state indices {self._perm} are not a permutation")
        TorchModuleRunner.__init__(self, self._module, self._batch or self.batch_size, self._device)
        try:
            module_states = TorchModuleRunner.init_states(self)
        except RuntimeError as e:
            raise ArtifactError(f"{where}: the TorchScript module's init_states fails ({first_line(e)})") from None
        specs = self._graph.state_contract(self.batch_size)  # at the batch size asked for
        want, shapes = [s.name for s in specs], [tuple(s.shape) for s in specs]
        got = [tuple(module_states[j].shape) if j < len(module_states) else None for j in self._perm]
        if len(module_states) != len(self.slots) or got != shapes:
            raise ArtifactError(f"{where}: the module's init_states gives {len(module_states)} states "
                                f"{[tuple(x.shape) for x in module_states]}; its contract maps {want} to shapes "
                                f"{shapes}")

    def init_states(self) -> List[np.ndarray]:
        return self._from_module(TorchModuleRunner.init_states(self))

    def _call(self, ids: np.ndarray, states: List[np.ndarray]) -> Tuple[np.ndarray, List[np.ndarray]]:
        ordered: List[np.ndarray] = list(states)  # contract order, as init_states gives them
        for i, j in enumerate(self._perm):
            ordered[j] = states[i]
        try:
            logits, new = self._forward(ids, ordered)
        except RuntimeError as e:  # torch.jit's errors: the archive's code does not run on checked inputs
            raise ArtifactError(f"{self.path}: the TorchScript module fails to run ({first_line(e)})") from None
        return logits, self._from_module(new)

    def _from_module(self, states: List[np.ndarray]) -> List[np.ndarray]:
        return [states[j] for j in self._perm]


__all__ = ["TorchScriptRunner"]
