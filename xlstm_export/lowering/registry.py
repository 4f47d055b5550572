"""The lowering registry, keyed by (block kind, form, mode).

    @LOWERINGS.register("mlstm", "large", "step")
    def lower_mlstm_large_step(ops, index, block, x, states): ...

    LOWERINGS.get(block, "step")       # the function for this block spec in this mode

A duplicate registration raises; a missing one names what is registered. ``REQUIRED`` lists every
(kind, form) a graph can hold; a target that declares a mode must find a lowering for each of them
(``tests/lowering/test_parity_matrix.py`` checks every cell).
"""

from __future__ import annotations

from typing import Callable, Dict, List, Tuple

from ..errors import RegistryError
from ..graphs import BlockSpec

Key = Tuple[str, str, str]
KINDS: Tuple[Tuple[str, str], ...] = (("mlstm", "large"), ("mlstm", "hybrid"), ("slstm", "vanilla"))
MODES = ("step", "prefill")  # one token per call; a chunk of T tokens (chunkwise mLSTM, unrolled sLSTM)


def kind_form(block: BlockSpec) -> Tuple[str, str]:
    """(kind, form) of a block spec: ("mlstm", "large" | "hybrid") or ("slstm", "vanilla")."""
    return (block.kind, getattr(block, "form", "vanilla"))


class LoweringRegistry:
    def __init__(self) -> None:
        self._fns: Dict[Key, Callable] = {}

    def register(self, kind: str, form: str, mode: str) -> Callable[[Callable], Callable]:
        if (kind, form) not in KINDS:
            raise RegistryError(f"lowering: unknown block kind {kind}/{form}; known: {KINDS}")
        if mode not in MODES:
            raise RegistryError(f"lowering: unknown mode {mode!r}; known: {MODES}")

        def deco(fn: Callable) -> Callable:
            key = (kind, form, mode)
            if key in self._fns:
                raise RegistryError(f"lowering: {key} is already registered ({self._fns[key].__qualname__})")
            self._fns[key] = fn
            return fn

        return deco

    def get(self, block: BlockSpec, mode: str) -> Callable:
        key = (*kind_form(block), mode)
        try:
            return self._fns[key]
        except KeyError:
            raise RegistryError(f"lowering: nothing registered for {key}; registered: {self.keys()}") from None

    def keys(self) -> List[Key]:
        return sorted(self._fns)


LOWERINGS = LoweringRegistry()
