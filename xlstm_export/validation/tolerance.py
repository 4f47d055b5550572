"""The tolerance an artifact is judged by: the shared entries of ``tolerances.py`` as each registered
target's artifact kinds name them, per precision."""

from __future__ import annotations

from typing import Dict, Tuple

from ..errors import UnsupportedError
from ..tolerances import QUANTIZED, REFERENCE, Tolerance


def tolerances() -> Dict[Tuple[str, str], Tolerance]:
    """The whole table, (kind, precision) -> Tolerance, from the target registry."""
    from ..targets import KINDS

    table = {("reference", "fp32"): REFERENCE}
    for kind in KINDS.values():
        table.update({(kind.name, p): t for p, t in kind.tolerances.items()})
    return table


def tolerance_for(target: str, precision: str) -> Tolerance:
    """``precision`` as artifacts declare it; with compressed weights ``fp16+int4`` (``+`` the scheme,
    ``-b64`` a block size): the compressed weights' entry of :data:`QUANTIZED`, for any target that
    offers the base precision."""
    if "+" in precision:
        base, _, scheme = precision.partition("+")
        scheme = scheme.split("-")[0]
        tolerance_for(target, base)  # the target must offer the base precision
        if scheme not in QUANTIZED:
            raise UnsupportedError(f"no tolerance for compressed weights {scheme!r}; known: {sorted(QUANTIZED)}")
        return QUANTIZED[scheme]
    table = tolerances()
    try:
        return table[(target, precision)]
    except KeyError:
        known = ", ".join(f"{t}/{p}" for t, p in sorted(table))
        raise UnsupportedError(f"no tolerance for target {target!r} at precision {precision!r}; "
                               f"known: {known} (a target's kinds declare theirs in its package's target.py)") from None
