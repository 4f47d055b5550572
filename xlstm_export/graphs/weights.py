"""Lazy weights: a handle is (name, shape, dtype, loader); nothing is read until ``load()``.

Transforms (slice, transpose, reshape, cast) compose as new handles over the same loader, so a
frontend can describe "rows 0..inner of proj_up, as float32" without touching the data.
``load()`` always returns a C-contiguous numpy array; floats of any stored precision come back as
float32 unless the caller asks for the stored precision with ``load(keep_dtype=True)``
(bfloat16 has no numpy dtype and is always widened).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator, Mapping

import numpy as np

from ..errors import CheckpointError

Loader = Callable[[], np.ndarray]

FLOAT_DTYPES = ("float32", "float16", "bfloat16", "float64")


@dataclass(frozen=True)
class WeightHandle:
    """One tensor of a checkpoint, not yet read.

    ``source`` names where it lives (file and tensor name), for error messages.
    """

    name: str
    shape: tuple[int, ...]
    dtype: str
    source: str
    loader: Loader = field(repr=False, compare=False)

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def nbytes(self) -> int:
        return self.numel * _itemsize(self.dtype)

    def load(self, keep_dtype: bool = False) -> np.ndarray:
        arr = self.loader()
        if tuple(arr.shape) != self.shape:
            raise CheckpointError(
                f"{self.source}: tensor {self.name!r} has shape {tuple(arr.shape)} on disk, "
                f"expected {self.shape}"
            )
        if not keep_dtype and arr.dtype.kind == "f" and arr.dtype != np.float32:
            arr = arr.astype(np.float32)
        return np.ascontiguousarray(arr)

    # -- lazy transforms -------------------------------------------------------------------
    def derive(self, name: str, shape: tuple[int, ...], fn: Callable[[np.ndarray], np.ndarray]) -> "WeightHandle":
        parent = self

        def loader() -> np.ndarray:
            return fn(parent.load(keep_dtype=True))

        return WeightHandle(name, tuple(int(d) for d in shape), self.dtype, self.source, loader)

    def rename(self, name: str) -> "WeightHandle":
        return WeightHandle(name, self.shape, self.dtype, self.source, self.loader)

    def rows(self, name: str, start: int, stop: int) -> "WeightHandle":
        """Slice of the first axis: ``w[start:stop]``."""
        return self.derive(name, (stop - start,) + self.shape[1:], lambda a: a[start:stop])

    def reshape(self, name: str, shape: tuple[int, ...]) -> "WeightHandle":
        return self.derive(name, shape, lambda a: a.reshape(shape))

    def transpose(self, name: str, axes: tuple[int, ...]) -> "WeightHandle":
        shape = tuple(self.shape[a] for a in axes)
        return self.derive(name, shape, lambda a: np.transpose(a, axes))


def _itemsize(dtype: str) -> int:
    return {"float64": 8, "int64": 8, "float32": 4, "int32": 4, "float16": 2, "bfloat16": 2,
            "int16": 2, "int8": 1, "uint8": 1, "bool": 1}.get(dtype, 4)


def constant(name: str, value: np.ndarray, source: str = "<generated>") -> WeightHandle:
    """A handle over an in-memory array (used by tests and by the profile writer)."""
    arr = np.asarray(value)
    dtype = "float32" if arr.dtype == np.float32 else str(arr.dtype)
    return WeightHandle(name, tuple(arr.shape), dtype, source, lambda: arr)


class WeightStore(Mapping[str, WeightHandle]):
    """Canonical name -> handle. Immutable once built."""

    def __init__(self, handles: Mapping[str, WeightHandle]):
        self._handles = dict(handles)

    def __getitem__(self, name: str) -> WeightHandle:
        try:
            return self._handles[name]
        except KeyError:
            raise CheckpointError(f"weight {name!r} is not in the checkpoint's weight store") from None

    def __contains__(self, name: object) -> bool:  # Mapping's default relies on KeyError
        return name in self._handles

    def get(self, name: str, default=None):
        return self._handles.get(name, default)

    def __iter__(self) -> Iterator[str]:
        return iter(self._handles)

    def __len__(self) -> int:
        return len(self._handles)

    def load(self, name: str) -> np.ndarray:
        return self[name].load()

    @property
    def nbytes(self) -> int:
        return sum(h.nbytes for h in _unique(self._handles.values()))

    @property
    def numel(self) -> int:
        return sum(h.numel for h in _unique(self._handles.values()))


def _unique(handles) -> list[WeightHandle]:
    """Tied weights share one loader: count them once."""
    seen: dict[int, WeightHandle] = {}
    for h in handles:
        seen.setdefault(id(h.loader), h)
    return list(seen.values())
