"""Lowering registries: one function per block kind per target, registered by kind.

    LOWERINGS = Registry("onnx")
    @LOWERINGS.register("slstm")
    def lower_slstm(ctx, index, block, x): ...

A duplicate registration raises; a missing one names what is registered. ``block_key`` gives the key
of a block spec: "mlstm/large", "mlstm/hybrid" or "slstm"; ``BLOCK_KEYS`` lists every key a target
must cover (the parity matrix test checks each target registers all of them).
"""

from __future__ import annotations

from typing import Callable, Dict, Generic, TypeVar

from .errors import RegistryError
from .graphs import BlockSpec, MLSTMBlock

F = TypeVar("F", bound=Callable)

BLOCK_KEYS = ("mlstm/large", "mlstm/hybrid", "slstm")


def block_key(block: BlockSpec) -> str:
    if isinstance(block, MLSTMBlock):
        return f"mlstm/{block.form}"
    return "slstm"


class Registry(Generic[F]):
    def __init__(self, target: str):
        self.target = target
        self._fns: Dict[str, F] = {}

    def register(self, key: str) -> Callable[[F], F]:
        if key not in BLOCK_KEYS:
            raise RegistryError(f"{self.target}: unknown block kind {key!r}; known: {BLOCK_KEYS}")

        def deco(fn: F) -> F:
            if key in self._fns:
                raise RegistryError(f"{self.target}: a lowering for {key!r} is already registered "
                                    f"({self._fns[key].__qualname__})")
            self._fns[key] = fn
            return fn

        return deco

    def __getitem__(self, block: BlockSpec) -> F:
        key = block_key(block)
        try:
            return self._fns[key]
        except KeyError:
            raise RegistryError(f"{self.target}: no lowering registered for block kind {key!r}; "
                                f"registered: {sorted(self._fns)}") from None

    def keys(self) -> list[str]:
        return sorted(self._fns)
