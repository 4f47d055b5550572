"""The pure-Swift generation core every generated Swift package carries (``Core/*.swift``, package data).

Sampling (``Sampler.pick``, step for step :func:`xlstm_export.text.generation.pick`), the seeded generator
(``SplitMix64``, :class:`xlstm_export.text.rng.SplitMix64`), the prefill plan (``PrefillPlan``,
:class:`xlstm_export.contract.PrefillPlan`), the generation loop with EOS stop and Task cancellation,
incremental text streaming (``TextStreamer``) and state snapshots. It imports nothing outside the Swift
toolchain; a target's package adds its adapter (Core ML: ``coreml/swift.py``) behind ``#if canImport(...)``.
The files are copied byte for byte into each emitted package (``Sources/<Module>/Core/``), and
``tests/swift`` compiles and tests exactly these files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict

CORE_DIR = Path(__file__).resolve().parent / "Core"


def core_sources() -> Dict[str, str]:
    """File name -> text of every core source, in name order."""
    return {p.name: p.read_text(encoding="utf-8") for p in sorted(CORE_DIR.glob("*.swift"))}


__all__ = ["CORE_DIR", "core_sources"]
