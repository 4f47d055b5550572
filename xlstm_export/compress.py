"""``--quantize`` and its options, from the command line (or ``api.export``) to a
:class:`~xlstm_export.lowering.quant.Compression`, with calibration for GPTQ.

    xlstm-export coreml --checkpoint ckpt -o m.mlpackage --quantize int4 [--block-size 32] [--keep 'blocks.0.*']
                        [--quant-method auto|rtn|gptq] [--calibration text.txt] [--asymmetric]

``--quant-method auto`` (the default) is GPTQ when calibration text is given (``--calibration FILE``: text,
tokenized with the checkpoint's ``tokenizer.json``, or a ``.ids`` file of whitespace-separated token ids)
and round-to-nearest with a per-block clipping search otherwise: nothing is calibrated on data the user
did not choose. The calibration runs our fp32 reference model over at most :data:`MAX_CALIBRATION_TOKENS`
tokens and keeps, per Linear, the Hessian ``X^T X`` of its inputs (``in x in`` floats per distinct input).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Dict, Optional, Sequence

import numpy as np

from .errors import ConfigError, UnsupportedError
from .graphs import Graph
from .lowering.quant import Compression

QUANT_FIELDS = ("quantize", "block_size", "keep", "quant_method", "calibration", "asymmetric")
MAX_CALIBRATION_TOKENS = 8192
CALIBRATION_WINDOW = 512  # tokens per reference forward (one sequence from an empty state each)


def compression_for(graph: Graph, target: str, quantize: str = "none", block_size: int = 32,
                    keep: Optional[str | Sequence[str]] = None, quant_method: str = "auto",
                    calibration: Optional[str] = None, asymmetric: bool = False,
                    schemes: Optional[Sequence[str]] = None) -> Optional[Compression]:
    """The compression the options ask for (None for ``--quantize none``), calibrated when GPTQ is used;
    ``target`` (its name, for messages) takes the schemes ``schemes`` (default: every scheme)."""
    if quantize in (None, "none"):
        extra = [f for f, v in (("--calibration", calibration), ("--keep", keep), ("--asymmetric", asymmetric))
                 if v not in (None, "", (), False)]
        if extra:
            raise UnsupportedError(f"{target}: {extra[0]} applies to compressed weights; add --quantize int8|int4")
        return None
    if schemes is not None and quantize not in schemes:
        what = " (palettes)" if quantize.startswith("lut") else ""
        raise UnsupportedError(f"{target}: --quantize {quantize}{what} is not a format of {target}; it takes "
                               f"{' or '.join(schemes)}")
    if isinstance(keep, str):
        keep = tuple(k.strip() for k in keep.split(",") if k.strip())
    method = quant_method or "auto"
    if method == "auto":
        method = "gptq" if calibration else "rtn"
    if method == "gptq" and not calibration:
        raise UnsupportedError(f"{target}: --quant-method gptq needs calibration text: --calibration FILE")
    if method == "rtn" and calibration:
        raise UnsupportedError(f"{target}: --calibration is used by GPTQ only; drop it or use --quant-method gptq")
    if quantize.startswith("lut") and method == "gptq":
        raise UnsupportedError(f"{target}: --quantize {quantize} (palettes) is made by k-means, not GPTQ; "
                               f"drop --calibration")
    comp = Compression(quantize, block_size, not asymmetric, method, tuple(keep or ()))
    if method == "gptq":
        ids = calibration_ids(graph, calibration)
        comp = replace(comp, hessians=calibrate(graph, ids))
    return comp


def calibration_ids(graph: Graph, path: str, flag: str = "--calibration", minimum: int = 16,
                    limit: int = MAX_CALIBRATION_TOKENS) -> np.ndarray:
    """Token ids of a text file (``--calibration``, ``--heldout``): ``.ids`` (whitespace-separated integers)
    or text, tokenized with the checkpoint's ``tokenizer.json``; at most ``limit``."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{flag} {path}: no such file")
    V = graph.config.vocab_size
    if p.suffix == ".ids":
        try:
            ids = np.array([int(t) for t in p.read_text().split()], dtype=np.int64)
        except (ValueError, UnicodeDecodeError) as e:
            raise ConfigError(f"{flag} {path}: expected whitespace-separated token ids ({e})") from None
    else:
        tok = _tokenizer_of(graph, f"{flag} {path}")
        try:
            text = p.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise ConfigError(f"{flag} {path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
        ids = np.array(tok.encode(text).ids, dtype=np.int64)
    if ids.size < minimum:
        raise ConfigError(f"{flag} {path}: {ids.size} tokens; at least {minimum} are needed")
    if ids.min() < 0 or ids.max() >= V:
        raise ConfigError(f"{flag} {path}: token ids must be in [0, {V}), got {int(ids.min())}..{int(ids.max())}")
    return ids[:limit]


def _tokenizer_of(graph: Graph, what: str):
    src = Path(graph.source) if graph.source else None
    folder = src if src is not None and src.is_dir() else (src.parent if src is not None else None)
    tj = folder / "tokenizer.json" if folder is not None else None
    if tj is None or not tj.is_file():
        raise ConfigError(f"{what}: the checkpoint has no tokenizer.json to tokenize text with; "
                          f"give token ids instead (a .ids file of whitespace-separated integers)")
    from tokenizers import Tokenizer

    try:
        return Tokenizer.from_file(str(tj))
    except Exception as e:  # noqa: BLE001 - the tokenizers library's own parse errors
        raise ConfigError(f"{tj}: not a tokenizer the tokenizers library reads ({str(e).splitlines()[0][:200]})") from None


def calibrate(graph: Graph, ids: np.ndarray, window: int = CALIBRATION_WINDOW) -> Dict[str, np.ndarray]:
    """Per canonical Linear prefix (and ``lm_head``), ``X^T X`` of its inputs over the calibration tokens
    (float64), from our fp32 reference model run over windows of ``window`` tokens."""
    import torch
    from torch import nn

    from .reference.model import LINEAR_NAMES, build_model

    model = build_model(graph, device="cpu").set_kernel("chunkwise", chunk_size=min(64, window))
    hess: Dict[str, torch.Tensor] = {}

    def add(name: str, x: torch.Tensor) -> None:
        x = x.detach().reshape(-1, x.shape[-1]).double()
        h = x.T @ x
        hess[name] = hess[name] + h if name in hess else h

    hooks = []
    for m in model.modules():
        if isinstance(m, nn.Linear) and m in LINEAR_NAMES:
            hooks.append(m.register_forward_hook(lambda mod, inp, out, n=LINEAR_NAMES[m]: add(n, inp[0])))
    hooks.append(model.out_norm.register_forward_hook(lambda mod, inp, out: add("lm_head", out)))
    try:
        with torch.no_grad():
            for s in range(0, len(ids), window):
                chunk = ids[s:s + window]
                if len(chunk) < 2:
                    break
                model(torch.from_numpy(np.ascontiguousarray(chunk))[None])
    finally:
        for h in hooks:
            h.remove()
    return {k: v.numpy() for k, v in hess.items()}


__all__ = ["CALIBRATION_WINDOW", "MAX_CALIBRATION_TOKENS", "QUANT_FIELDS", "calibrate",
           "calibration_ids", "compression_for"]
