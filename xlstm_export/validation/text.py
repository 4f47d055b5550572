"""What users compare quantizations by: perplexity on held-out text, and teacher-forced top-1 agreement with
the full-precision reference.

    m = text_metrics(artifact_runner, ReferenceRunner(graph), ids)     # ids: held-out token ids
    m["perplexity"], m["reference_perplexity"], m["perplexity_ratio"], m["top1_agreement"]

Both runners read the same ids in windows of ``window`` tokens, each from an empty state (the artifact in
prefill chunks and steps as it takes prompts); every position but a window's first is scored (its logits
predict the next token). ``top1_agreement`` is the share of positions where the artifact's argmax is the
reference's; ``top1_agreement_confident`` counts only positions where the reference's top-two logit
margin exceeds ``margin`` (0.25: near-ties aside), as the compression issue's acceptance asks.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from ..errors import ConfigError

DEFAULT_WINDOW = 256
CONFIDENT_MARGIN = 0.25


def _logits(runner, ids: np.ndarray) -> np.ndarray:
    """Teacher-forced logits (T, V) of one window from an empty state."""
    states = runner.init_states()
    x = ids[None, :].astype(np.int64)
    per_call = runner.max_tokens_per_call
    if getattr(runner, "prefill", None) is not None or per_call is None or per_call >= len(ids):
        logits, _ = runner.run(x, states)
        return np.asarray(logits[0], dtype=np.float64)
    out = []
    for t in range(len(ids)):
        lg, states = runner.run(x[:, t:t + 1], states)
        out.append(np.asarray(lg[0, -1], dtype=np.float64))
    return np.stack(out)


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def text_metrics(artifact, reference, ids: np.ndarray, window: int = DEFAULT_WINDOW,
                 margin: float = CONFIDENT_MARGIN, max_tokens: Optional[int] = None) -> dict:
    """Perplexities of both runners on ``ids`` and the artifact's top-1 agreement with the reference."""
    ids = np.asarray(ids, dtype=np.int64)
    if max_tokens is not None:
        ids = ids[:max_tokens]
    nll_a = nll_r = 0.0
    n = agree = confident = agree_confident = 0
    for s in range(0, len(ids) - 1, window):
        w = ids[s:s + window + 1]  # the window and the token after its last position
        if len(w) < 2:
            break
        la, lr = _logits(artifact, w[:-1]), _logits(reference, w[:-1])
        tgt = w[1:]
        rows = np.arange(len(tgt))
        nll_a -= float(_log_softmax(la)[rows, tgt].sum())
        nll_r -= float(_log_softmax(lr)[rows, tgt].sum())
        pa, pr = la.argmax(-1), lr.argmax(-1)
        top2 = np.sort(lr, axis=-1)[:, -2:]
        sure = (top2[:, 1] - top2[:, 0]) > margin
        n += len(tgt)
        agree += int((pa == pr).sum())
        confident += int(sure.sum())
        agree_confident += int(((pa == pr) & sure).sum())
    if n == 0:
        raise ConfigError(f"held-out text: {len(ids)} token(s); perplexity needs at least 2")
    ppl_a, ppl_r = float(np.exp(nll_a / n)), float(np.exp(nll_r / n))
    return {"tokens": n, "window": window, "perplexity": ppl_a, "reference_perplexity": ppl_r,
            "perplexity_ratio": ppl_a / ppl_r, "top1_agreement": agree / n,
            "top1_agreement_confident": agree_confident / confident if confident else None,
            "confident_positions": confident, "margin": margin}


def metrics_line(m: dict) -> str:
    conf = m["top1_agreement_confident"]
    return (f"held-out text, {m['tokens']} tokens: perplexity {m['perplexity']:.3f} vs reference "
            f"{m['reference_perplexity']:.3f} (x{m['perplexity_ratio']:.4f}), top-1 agreement "
            f"{m['top1_agreement']:.4f}" + (f", {conf:.4f} where the reference's margin > {m['margin']:g}"
                                             if conf is not None else ""))


__all__ = ["CONFIDENT_MARGIN", "DEFAULT_WINDOW", "metrics_line", "text_metrics"]
