"""Validating an artifact with compressed weights (``--quantize``), in three questions:

1. **Does it compute what it stores?** The artifact is compared with the reference model running on the
   artifact's *own* weights: each compressed weight decoded from the artifact by our numpy code (runners'
   ``compressed_weights``; the artifact's code never runs), every other weight from the checkpoint. That
   comparison is judged by the base precision's tolerance (fp16 / fp32): what it measures is the runtime
   and the emitter, as for an uncompressed artifact.
2. **Are the stored weights the checkpoint's, compressed?** Each decoded weight against the checkpoint's:
   ``||w_q - w|| / ||w||`` (relative RMS error) must be within the scheme's :data:`WEIGHT_RMS` bound: a
   transposed, mis-scaled or shuffled weight is far outside it.
3. **How much does the compression cost?** What users compare quantizations by: perplexity on held-out text
   and teacher-forced top-1 agreement with the full-precision reference (:mod:`.text`). Reported, judged
   only where an acceptance threshold is asked for.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Dict, Tuple

import numpy as np

from ..errors import ArtifactError
from ..graphs import Graph
from ..graphs.weights import WeightStore, constant

# Relative RMS error bounds per scheme: measured on our trained example LM and random-weight fixtures
# (docs/COMPRESSION.md): int8 ~0.004, int4 block 32 ~0.06-0.09, lut4 ~0.07-0.1, lut6 ~0.02. Twice that,
# rounded up: a healthy weight passes on any checkpoint; a broken one (wrong layout, scale, order) is ~1 or more.
WEIGHT_RMS = {"int8": 0.02, "int4": 0.2, "lut4": 0.2, "lut6": 0.06}


def is_compressed(precision: str) -> bool:
    return "+" in precision


def base_precision(precision: str) -> str:
    return precision.partition("+")[0]


def scheme_of(precision: str) -> str:
    return precision.partition("+")[2].split("-")[0]


def with_weights(graph: Graph, dense: Dict[str, np.ndarray]) -> Graph:
    """``graph`` with the weights named in ``dense`` replaced (same names, shapes; fp32 arrays). Each
    replaced weight gets its own handle: a tied embedding and LM head compressed differently stay two."""
    handles = dict(graph.weights.items())
    for name, arr in dense.items():
        if name not in handles:
            raise ArtifactError(f"compressed weight {name!r} is not a weight of the checkpoint")
        want = tuple(handles[name].shape)
        if tuple(arr.shape) != want:
            raise ArtifactError(f"compressed weight {name}: decoded shape {tuple(arr.shape)}, the checkpoint's "
                                f"is {want}")
        handles[name] = constant(name, np.asarray(arr, dtype=np.float32), source=f"artifact:{name}")
    return replace(graph, weights=WeightStore(handles))


def compressed_graph(graph: Graph, comp) -> Graph:
    """``graph`` with every weight ``comp`` compresses replaced by its dequantized value, as our quantizer
    makes it: the reference model of a compressed artifact without exporting one (measurements of the
    policy and per-layer sensitivity; an artifact computes the same to its base precision's rounding)."""
    from ..lowering import FULL_PRECISION
    from ..lowering.quant import compressed_weights_of, quantize, split_sources

    dense, made = {}, {}
    for spec, scheme, owner in compressed_weights_of(graph, FULL_PRECISION, comp):
        if owner.key not in made:
            made[owner.key] = quantize(graph, owner, scheme, comp).dequantize()
        dense.update(split_sources(graph, spec, made[owner.key]))
    return with_weights(graph, dense)


def weight_errors(graph: Graph, dense: Dict[str, np.ndarray]) -> Dict[str, float]:
    """Relative RMS error of each decoded weight against the checkpoint's."""
    from ..frontends import load_weight

    out = {}
    for name, arr in sorted(dense.items()):
        w = load_weight(graph.weights[name])
        den = float(np.sqrt(np.mean(w.astype(np.float64) ** 2)))
        num = float(np.sqrt(np.mean((arr.astype(np.float64) - w) ** 2)))
        out[name] = num / den if den > 0 else (0.0 if num == 0 else float("inf"))
    return out


def judge_weights(errors: Dict[str, float], scheme: str) -> Tuple[dict, list]:
    """The report section and its failures (weights beyond the scheme's bound)."""
    bound = WEIGHT_RMS[scheme]
    worst = max(errors.items(), key=lambda kv: kv[1]) if errors else (None, 0.0)
    fails = [{"prompt": None, "step": None, "kind": "weights", "metric": f"weight_rms of {n}", "value": e,
              "limit": bound} for n, e in errors.items() if not e <= bound]
    section = {"scheme": scheme, "weights": len(errors), "rms_bound": bound,
               "max_rms": worst[1], "worst_weight": worst[0],
               "mean_rms": float(np.mean(list(errors.values()))) if errors else 0.0,
               "per_weight": errors}
    return section, fails


__all__ = ["WEIGHT_RMS", "base_precision", "compressed_graph", "is_compressed", "judge_weights", "scheme_of", "weight_errors",
           "with_weights"]
