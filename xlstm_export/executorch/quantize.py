"""Weight quantization of the ExecuTorch program (``--quantize 8da8w|8da4w``), lowered to XNNPACK.

    8da8w: int8 weights per output channel, activations quantized to int8 per token at run time
    8da4w: int4 weights in groups of ``group_size`` input channels (XNNPACK: a multiple of 32), same activations

torchao's source transform (``Int8DynamicActivationIntxWeightConfig``, HQQ scales, what ExecuTorch's own LLM
export uses) replaces the chosen linear weights of the reference module by quantized tensors before
``torch.export``; XNNPACK's partitioner takes the resulting ``choose_qparams -> quantize -> dequantize ->
linear`` patterns as its dynamically quantized (qd8) kernels. Nothing is calibrated (the activations'
scales are computed per call), so the states and the program's inputs are untouched.

What stays fp32, and why. The candidates are the 2-D linear weights (``Linear(in -> out)``, the LM head
included). By default ``DEFAULT_KEEP`` keeps the mLSTM input and forget gate projections: their outputs
enter ``exp`` (the input gate) and a cumulative ``logsigmoid`` (the forget gate) of the recurrence, so a
weight error there scales the memory of every later step rather than one step's output; they are tiny
(``NH`` outputs per block). The LM head is kept because it is the last layer (its error is the logits'
error, unsmoothed by later layers) and the embedding (a lookup, not a matmul), norms, convolutions,
headwise (block-diagonal) projections and sLSTM recurrent kernels are never quantized: they are not linear
layers XNNPACK's quantized kernels take. ``--keep`` replaces the default (``none``: quantize every candidate).

In an 8da4w program the layers that write the residual stream, each block's ``out_proj`` and ``ffn.down``
(:data:`INT8_IN_4BIT`), are int8 per channel, the rest int4. Measured with the eager quantized module on the
trained example LM's held-out text (2048 tokens, against the full-precision reference; perplexity ratio,
top-1, top-1 where confident; the exported program: x1.0131 / 0.9096 / 0.9681, benchmarks/RESULTS.md):
every chosen weight int4 x1.0240 / 0.8959 / 0.9493, short of the compression issue's int4 bounds (x1.02,
0.90, 0.95); ``ffn.down`` in int8 x1.0181 / 0.9047 / 0.9595; both x1.0133 / 0.9077 / 0.9675, at 31% of the
quantized parameters in int8 (~1.3x the int4 bytes). Other single choices measured: ``ffn.gate`` int8
x1.0136 / 0.8974 / 0.9561; ``q, k`` kept fp32 x1.0167 / 0.8945 / 0.9527.
"""

from __future__ import annotations

import fnmatch
from typing import Dict, List, Optional, Tuple

from ..errors import UnsupportedError
from ..graphs import Graph

SCHEMES = ("none", "8da8w", "8da4w")
DEFAULT_GROUP_SIZE = 32  # 8da4w; also the unit XNNPACK's blockwise int4 kernels need (multiples of 32)
XNNPACK_GROUP_UNIT = 32
DEFAULT_KEEP = ("*.igate.*", "*.fgate.*", "lm_head.*")
INT8_IN_4BIT = ("*.out_proj.*", "*.ffn.down.*")  # 8da4w: these of the chosen weights are int8 (see above)
KEEP_NONE = "none"


def parse_keep(text: Optional[str]) -> Tuple[str, ...]:
    """``--keep`` -> patterns: None is the default set, ``none`` the empty set, else comma-separated globs."""
    if text is None:
        return DEFAULT_KEEP
    if not isinstance(text, str):
        raise UnsupportedError(f"executorch: --keep must be text (comma-separated patterns), got {text!r}")
    if text.strip().lower() == KEEP_NONE:
        return ()
    pats = tuple(p.strip() for p in text.split(","))
    if not pats or any(not p for p in pats):
        raise UnsupportedError(f"executorch: --keep must be comma-separated weight name patterns (e.g. "
                               f"'*.igate.*,lm_head.*') or 'none'; got {text[:80]!r}")
    return pats


def check_scheme(scheme: str, group_size: Optional[int], keep: Optional[str], backend: str) -> Optional[int]:
    """The options alone are consistent (no checkpoint needed); returns the group size (None: per channel)."""
    if scheme not in SCHEMES:
        raise UnsupportedError(f"executorch: --quantize must be one of {', '.join(SCHEMES)}, got {scheme!r}")
    if scheme == "none":
        if group_size is not None:
            raise UnsupportedError("executorch: --group-size applies to --quantize 8da4w; this export is not "
                                   "quantized")
        if keep is not None:
            raise UnsupportedError("executorch: --keep applies to a quantized export (--quantize 8da8w|8da4w)")
        return None
    if backend != "xnnpack":
        raise UnsupportedError(f"executorch: --quantize {scheme} is lowered to XNNPACK's quantized kernels; the "
                               f"{backend} backend does not take it (use --backend xnnpack)")
    if group_size is not None and (isinstance(group_size, bool) or not isinstance(group_size, int)):
        raise UnsupportedError(f"executorch: --group-size must be an integer, got {group_size!r}")
    if scheme == "8da8w":
        if group_size is not None:
            raise UnsupportedError("executorch: 8da8w quantizes per output channel (XNNPACK's int8 kernels take "
                                   "no groups); --group-size applies to 8da4w")
        return None
    gs = DEFAULT_GROUP_SIZE if group_size is None else group_size
    if gs < XNNPACK_GROUP_UNIT or gs % XNNPACK_GROUP_UNIT:
        raise UnsupportedError(f"executorch: --group-size must be a positive multiple of {XNNPACK_GROUP_UNIT} "
                               f"(XNNPACK's blockwise int4 kernels), got {gs}")
    return gs


def candidates(graph: Graph) -> Dict[str, Tuple[int, int]]:
    """Canonical name -> (out, in) of every weight the reference computes as a linear layer."""
    out = {}
    for name in graph.weights:
        shape = tuple(graph.weights[name].shape)
        if (name.endswith(".weight") and len(shape) == 2 and name != "embedding.weight"
                and not name.endswith(".conv.weight")):
            out[name] = shape
    return out


def plan(graph: Graph, scheme: str, group_size: Optional[int], keep_text: Optional[str]) -> List[str]:
    """The canonical names of the weights to quantize, sorted; UnsupportedError (one line) for a group size
    that does not divide a chosen weight's input dim, a ``--keep`` pattern naming no weight, or nothing left."""
    keep = parse_keep(keep_text)
    if keep_text is not None:  # the user's patterns: each must name something (a typo would keep nothing)
        for p in keep:
            if not any(fnmatch.fnmatchcase(n, p) for n in graph.weights):
                raise UnsupportedError(f"executorch: --keep pattern {p!r} matches no weight of this checkpoint "
                                       f"(canonical names, e.g. blocks.0.mlstm.q.weight; see xlstm-export inspect)")
    chosen = sorted(n for n in candidates(graph) if not any(fnmatch.fnmatchcase(n, p) for p in keep))
    if not chosen:
        raise UnsupportedError(f"executorch: --keep {','.join(keep)!r} keeps every linear weight: nothing to "
                               f"quantize (drop --quantize, or keep fewer)")
    if group_size:
        int8 = set(int8_part(scheme, chosen))
        bad = [n for n in chosen if n not in int8 and graph.weights[n].shape[1] % group_size]
        if bad:
            n = bad[0]
            raise UnsupportedError(f"executorch: --group-size {group_size} does not divide the input dim "
                                   f"{graph.weights[n].shape[1]} of {n}" + (f" (and {len(bad) - 1} more)" if
                                                                            len(bad) > 1 else "")
                                   + "; choose a group size dividing it, or --keep that weight")
    return chosen


def int8_part(scheme: str, names: List[str]) -> List[str]:
    """Of the weights ``plan`` chose, those the program stores in int8 per channel: all of them for 8da8w;
    for 8da4w, the residual-stream writers (:data:`INT8_IN_4BIT`)."""
    if scheme == "8da8w":
        return sorted(names)
    return sorted(n for n in names if any(fnmatch.fnmatchcase(n, p) for p in INT8_IN_4BIT))


def _config(scheme: str, group_size: Optional[int]):
    import torch
    from torchao.quantization.granularity import PerAxis, PerGroup
    from torchao.quantization.quant_api import Int8DynamicActivationIntxWeightConfig

    return Int8DynamicActivationIntxWeightConfig(
        weight_dtype=torch.int4 if scheme == "8da4w" else torch.int8,
        weight_granularity=PerGroup(group_size) if group_size else PerAxis(0),
        intx_choose_qparams_algorithm="hqq_scale_only")


def _linear_names(graph: Graph, model) -> Dict[str, object]:
    """Canonical weight name -> the reference's ``nn.Linear`` computing it (checked by name and shape)."""
    import torch

    out = {}
    for fqn, mod in model.named_modules():
        if not isinstance(mod, torch.nn.Linear):
            continue
        parts = fqn.split(".")  # blocks.{i}.{attr} or blocks.{i}.ffn.{attr}
        if len(parts) == 4 and parts[0] == "blocks" and parts[2] == "ffn":
            name = f"{fqn}.weight"
        elif len(parts) == 3 and parts[0] == "blocks":
            kind = getattr(graph.blocks[int(parts[1])], "kind", "mlstm")
            name = f"blocks.{parts[1]}.{kind}.{parts[2]}.weight"
        else:
            name = f"{fqn}.weight"
        if name not in graph.weights or tuple(graph.weights[name].shape) != tuple(mod.weight.shape):
            raise UnsupportedError(f"executorch: internal: the reference's linear layer {fqn} "
                                   f"{tuple(mod.weight.shape)} has no canonical weight (looked for {name})")
        out[name] = mod
    return out


def quantize_model(graph: Graph, model, scheme: str, group_size: Optional[int], names: List[str]) -> None:
    """Replace the weights ``names`` of ``model`` (the reference module) by torchao quantized tensors, in place."""
    import torch
    from torchao.quantization.quant_api import quantize_

    linears = _linear_names(graph, model)
    missing = sorted(set(names) - set(linears) - {"lm_head.weight"})
    if missing:
        raise UnsupportedError(f"executorch: internal: no linear layer computes {missing[:3]}")
    int8 = set(int8_part(scheme, names))
    for part, (s, gs) in ((sorted(set(names) - int8), (scheme, group_size)), (sorted(int8), ("8da8w", None))):
        if not part:
            continue
        chosen = {id(linears[n]) for n in part if n in linears}
        cfg = _config(s, gs)
        quantize_(model, cfg, filter_fn=lambda m, fqn: id(m) in chosen)
        if "lm_head.weight" in part:  # a parameter used through F.linear: quantized through a Linear holding it
            head = torch.nn.Linear(model.lm_head.shape[1], model.lm_head.shape[0], bias=False, device="meta")
            head.weight = model.lm_head
            quantize_(head, cfg)
            model.lm_head = head.weight  # a tied embedding keeps the fp32 tensor (the embedding is a lookup)
    if scheme == "8da4w":
        _bf16_scales(model)


def _bf16_scales(model) -> None:
    """XNNPACK's blockwise int4 kernels (qb4w) hold their scales in bf16: round them so here, so the module
    exported computes what the kernels compute (measured on the hf-recall example: the .pte agrees with the
    eager quantized module within 1.4e-6 of max |logit|; with fp32 scales in the eager module, 4e-2). Exact
    bf16 values convert losslessly, so the program is the same either way."""
    import torch

    for t in [getattr(m, "weight", None) for m in model.modules()] + [getattr(model, "lm_head", None)]:
        scale = getattr(t, "scale", None)
        if getattr(t, "target_dtype", None) != torch.int4:  # int8 per channel (qc8w): fp32 scales
            continue
        if isinstance(scale, torch.Tensor) and scale.dtype == torch.float32:
            scale.copy_(scale.to(torch.bfloat16).float())


__all__ = ["SCHEMES", "DEFAULT_KEEP", "DEFAULT_GROUP_SIZE", "INT8_IN_4BIT", "parse_keep", "check_scheme", "candidates",
           "plan", "int8_part", "quantize_model"]
