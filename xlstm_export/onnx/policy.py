"""The precision policies the ONNX target offers (``--precision``), by name: states in the cell dtype
(fp32); "fp16" = fp16 weights and activations, fp32 norms, cells and the FFN's nonlinearity (ORT's CPU
provider has no fp16 GELU kernel)."""

from __future__ import annotations

from typing import Dict

from ..lowering.precision import PrecisionPolicy, choose_policy, state_storage

POLICIES: Dict[str, PrecisionPolicy] = {
    "fp32": PrecisionPolicy("onnx", "fp32", weights="fp32", stream="fp32", norm="fp32", cell="fp32", act="fp32",
                            states=state_storage("fp32")),
    "fp16": PrecisionPolicy("onnx", "fp16", weights="fp16", stream="fp16", norm="fp32", cell="fp32", act="fp32",
                            states=state_storage("fp32")),
}


def policy_for(precision: str, override: "PrecisionPolicy | None" = None) -> PrecisionPolicy:
    return choose_policy(POLICIES, "onnx", precision, override)
