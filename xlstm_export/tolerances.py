"""The one tolerance table, keyed by (target, precision). Every validation judges against it.

Figures are per comparison step (the prefill, or one decode step) and per prompt:

* ``max_rel``: ``max |artifact - reference| / max |reference|`` over the step's logits;
* ``min_cosine``: cosine similarity of the step's logits (flattened);
* ``min_greedy_agreement``: per prompt, the fraction of greedy picks (argmax after the prefill and after
  each decode step; the decode is teacher-forced with the reference's tokens) equal to the reference's,
  not counting flips on near-ties: picks the reference prefers by at most ``tie_margin`` x max|logits|
  (with few picks per prompt, one flip on a tie would otherwise fail a healthy fp16 artifact: measured,
  a margin of 2e-4 flipped under fp16 weights with max rel error 1.2e-3);
* ``state_rel``: a state whose ``max |d| / max |ref|`` exceeds it is reported as diverging (used to say
  *where* a failure starts, not to judge);
* ``param_rel``: same, for an artifact's weights against the reference's (runners that expose them).

A target's artifact kinds name their tolerance per precision in the target's declaration (its package's
``target.py``), from the shared entries here; ``validation.tolerance_for`` reads them from the registry.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Dict


@dataclass(frozen=True)
class Tolerance:
    max_rel: float
    min_cosine: float
    min_greedy_agreement: float
    tie_margin: float
    state_rel: float
    param_rel: float
    why: str

    def to_json(self) -> dict:
        return asdict(self)


# fp32 artifacts compute the reference's math in fp32: only op order / fused kernels differ (~1e-6).
FP32 = Tolerance(max_rel=1e-4, min_cosine=0.99999, min_greedy_agreement=1.0, tie_margin=2e-4, state_rel=1e-4,
                  param_rel=1e-6,
                  why="fp32 everywhere: differences are summation order only (measured <= 1e-6); "
                      "1e-4 is the issue's bound; every greedy pick must agree unless the reference's "
                      "margin is within 2x that bound")
# fp16 weights (and Core ML's fp16 activations/states): ~3 significant digits per op, compounding over
# blocks and steps. Near-ties may flip a greedy pick: at most 1 in 10 per prompt.
FP16 = Tolerance(max_rel=3e-2, min_cosine=0.999, min_greedy_agreement=0.9, tie_margin=3e-3, state_rel=3e-2,
                  param_rel=1e-3,
                  why="fp16 weights/activations: ~1e-3 per op, compounding over blocks and steps; "
                      ">= 90% of greedy picks agree, flips on margins <= 3e-3 not counted")
# bf16 has 8 bits of mantissa (vs fp16's 11): ~8x the fp16 rounding error.
BF16 = Tolerance(max_rel=1e-1, min_cosine=0.99, min_greedy_agreement=0.8, tie_margin=2e-2, state_rel=1e-1,
                  param_rel=8e-3,
                  why="bf16 weights: 8-bit mantissa, ~8x fp16's rounding; >= 80% of greedy picks agree, "
                      "flips on margins <= 2e-2 not counted")

# Compressed weights (``--quantize``): the per-step logits carry the weights' rounding, by design. These
# bounds catch a broken artifact (wrong scales, wrong block layout, a transposed weight), not its quality:
# compressed artifacts are judged by perplexity on held-out text and teacher-forced top-1 agreement against
# the full-precision reference (``validation/text.py``; the acceptance figures).
INT8 = Tolerance(max_rel=6e-2, min_cosine=0.998, min_greedy_agreement=0.85, tie_margin=1e-2, state_rel=1e-1,
                 param_rel=1e-2,
                 why="int8 weights (per block): ~0.4% of a block's range per weight, fp16 activations on "
                     "Core ML; >= 85% of greedy picks agree, flips on margins <= 1e-2 not counted")
INT4 = Tolerance(max_rel=3e-1, min_cosine=0.98, min_greedy_agreement=0.7, tie_margin=5e-2, state_rel=5e-1,
                 param_rel=1.5e-1,
                 why="4-bit weights (int4 blocks or 16-entry palettes): ~7% of a block's range per weight; "
                     "quality is judged by perplexity and top-1 agreement on text, these bounds catch "
                     "broken artifacts; >= 70% of greedy picks agree, flips on margins <= 5e-2 not counted")
LUT6 = Tolerance(max_rel=1e-1, min_cosine=0.995, min_greedy_agreement=0.8, tie_margin=2e-2, state_rel=2e-1,
                 param_rel=4e-2,
                 why="6-bit palettes (64 entries per group): between int8 and int4")
QUANTIZED: Dict[str, Tolerance] = {"int8": INT8, "int4": INT4, "lut4": INT4, "lut6": LUT6}

REFERENCE = Tolerance(max_rel=1e-5, min_cosine=0.999999, min_greedy_agreement=1.0, tie_margin=2e-5, state_rel=1e-5,
                      param_rel=0.0, why="the reference against itself (other kernel form or device)")
# Core ML fp32: fp32 weights and math; states still fp16 (Core ML requires it) but split into high + scaled
# low parts, measured < 5e-5 relative over 2048 tokens (docs/ARCHITECTURE.md): the fp32 entry applies.
