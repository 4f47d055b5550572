"""Precision policies: which dtype each role of a lowering computes in, as data.

A lowering never names a dtype. It asks for a *role*: ``ops.cast(x, "cell", ...)`` casts to whatever the
policy says the cell math runs in, and is no op when x already has that dtype. Roles:

    weights   weight constants and the matmuls that use them (linear, headwise, conv)
    stream    the residual stream, norm outputs, activations between blocks
    norm      norm statistics (mean, variance, the normalised value)
    cell      gates, exp, stabiliser, C/n update, normaliser, head norm input, sLSTM recurrence
    act       the FFN's nonlinearity (ORT's CPU provider has no fp16 GELU kernel: it inlines the
              function into Erf/Sum nodes that the Core ML EP rejects, so ONNX fp16 runs it in fp32)
    logits    the logits the artifact returns

and, per state role (c, n, m, conv, slstm: ``graph.state_contract``), how the state is stored:
its dtype, and whether it is *split* into an fp16 high part plus an fp16 low part scaled by
``LOW_SCALE`` (value = high + low / LOW_SCALE, ~22 significant bits; Core ML states are fp16 only and
plain fp16 cannot carry the recurrence: measured, see ``docs/ARCHITECTURE.md``).

Each lowered target declares the policies it offers in its package (``coreml/policy.py``,
``onnx/policy.py``: ``POLICIES``, by precision name). Measurement harnesses (``benchmarks/``) build their
own :class:`PrecisionPolicy` and hand it to an emitter's ``policy`` option.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Dict, Mapping, Tuple

from ..errors import UnsupportedError

DTYPES = ("fp16", "fp32")
ROLES = ("weights", "stream", "norm", "cell", "act", "logits")
STATE_ROLES = ("c", "n", "m", "conv", "slstm")
# value = high + low / LOW_SCALE. The remainder of an fp16 rounding is at most half an ulp (2^-11 of the
# high part), so scaling it by 2^11 keeps it no larger than the high part (no overflow) and out of fp16's
# subnormal range for states of small magnitude, where an unscaled remainder would lose its bits.
LOW_SCALE = 2048.0
LOW_SUFFIX = ".lo"  # canonical key of a split state's low part: "blocks.0.mlstm.m.lo"


@dataclass(frozen=True)
class StateStorage:
    dtype: str  # "fp16" | "fp32"
    split: bool = False  # fp16 high part + fp16 scaled low part


@dataclass(frozen=True)
class PrecisionPolicy:
    """Which dtype each role computes in, and how each state role is stored."""

    target: str
    name: str
    weights: str
    stream: str
    norm: str
    cell: str
    act: str
    logits: str = "fp32"
    states: Mapping[str, StateStorage] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for role in ROLES:
            if getattr(self, role) not in DTYPES:
                raise UnsupportedError(f"precision policy {self.target}/{self.name}: role {role!r} has dtype "
                                       f"{getattr(self, role)!r}; expected one of {DTYPES}")
        missing = [r for r in STATE_ROLES if r not in self.states]
        if missing:
            raise UnsupportedError(f"precision policy {self.target}/{self.name}: no storage for state roles "
                                   f"{missing}")

    def dtype(self, role: str) -> str:
        if role in ROLES:
            return getattr(self, role)
        raise UnsupportedError(f"precision policy {self.target}/{self.name}: unknown role {role!r}; "
                               f"known: {ROLES}")

    def storage(self, state_role: str) -> StateStorage:
        return self.states[state_role]

    def split_roles(self) -> Tuple[str, ...]:
        return tuple(r for r in STATE_ROLES if self.states[r].split)

    def with_states(self, name: str, **storage: StateStorage) -> "PrecisionPolicy":
        """A variant (for measurements) with some state roles stored differently."""
        return replace(self, name=name, states={**self.states, **storage})


def state_storage(dtype: str, split: Tuple[str, ...] = ()) -> Dict[str, StateStorage]:
    """Every state role stored in ``dtype``, those in ``split`` split into high + low parts."""
    return {r: StateStorage(dtype, r in split) for r in STATE_ROLES}


# All fp32, no state split: what the reference computes in. Measurements and the reference model of a
# compressed artifact (``validation/compressed.py``) enumerate weights with it; targets declare their own
# policies in their packages (``coreml/policy.py``, ``onnx/policy.py``).
FULL_PRECISION = PrecisionPolicy("reference", "fp32", weights="fp32", stream="fp32", norm="fp32", cell="fp32",
                                 act="fp32", states=state_storage("fp32"))


def choose_policy(policies: Mapping[str, PrecisionPolicy], target: str, precision: str,
                  override: "PrecisionPolicy | None" = None) -> PrecisionPolicy:
    """The policy of ``policies`` (a target's, by precision name) that ``precision`` names (``override``: a
    measurement's own policy)."""
    if override is not None:
        return override
    try:
        return policies[precision]
    except KeyError:
        raise UnsupportedError(f"{target}: precision must be one of {sorted(policies)}, got {precision!r}") from None
