"""The precision policies the Core ML target offers (``--precision``), by name.

Core ML states must be fp16. "fp16" = fp16 weights and matmuls (the bandwidth), fp32 stream and cell math,
the recurrent states split into an fp16 high part and a scaled fp16 low part (the conv ring holds fp16
matmul outputs already: exact in fp16). "fp32" = fp32 everything, every state split. The measurement
behind the split is in docs/ARCHITECTURE.md (``benchmarks/coreml_precision.py``)."""

from __future__ import annotations

from typing import Dict

from ..lowering.precision import STATE_ROLES, PrecisionPolicy, choose_policy, state_storage

POLICIES: Dict[str, PrecisionPolicy] = {
    "fp16": PrecisionPolicy("coreml", "fp16", weights="fp16", stream="fp32", norm="fp32", cell="fp32", act="fp16",
                            states=state_storage("fp16", split=("c", "n", "m", "slstm"))),
    "fp32": PrecisionPolicy("coreml", "fp32", weights="fp32", stream="fp32", norm="fp32", cell="fp32", act="fp32",
                            states=state_storage("fp16", split=STATE_ROLES)),
}


def policy_for(precision: str, override: "PrecisionPolicy | None" = None) -> PrecisionPolicy:
    return choose_policy(POLICIES, "coreml", precision, override)
