"""SplitMix64, the seeded generator of sampling, the same in Python and in the Swift core
(``xlstm_export/swift/Core/SplitMix64.swift``), so the same logits and seed pick the same tokens in both.

    state = (state + 0x9E3779B97F4A7C15) mod 2^64      (the first output comes after one increment)
    z = state
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) mod 2^64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) mod 2^64
    output z ^ (z >> 31)

``next_unit()`` is a float in [0, 1): the output's top 53 bits times 2^-53, ``(next() >> 11) * 2**-53``, exact.
The seed is the first state, taken mod 2^64 (so -1 is 2^64 - 1).
"""

from __future__ import annotations

MASK = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15


class SplitMix64:
    __slots__ = ("state",)

    def __init__(self, seed: int = 0):
        self.state = int(seed) & MASK

    def next(self) -> int:
        self.state = (self.state + GOLDEN) & MASK
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
        return z ^ (z >> 31)

    def next_unit(self) -> float:
        return (self.next() >> 11) * (2.0 ** -53)


__all__ = ["SplitMix64"]
