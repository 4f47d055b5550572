"""The one generation loop: a prompt's ids, then one token at a time until EOS or ``max_new_tokens``.

``generate`` (the PyTorch reference) and ``run`` (an exported artifact, through its runner) both call
:func:`generate_tokens` with a *step*: ``step(ids) -> logits`` of the last position, (V,) float32, where
``ids`` are the prompt (first call) or the one token just picked; the step keeps the recurrent state.
Every token is picked by :func:`pick`, the one sampling function: greedy (temperature 0: the first
maximum, as ``torch.argmax``) or temperature, then top-k, then top-p (nucleus) filtering, as transformers'
``generate`` orders its logits warpers, then one draw from :class:`~xlstm_export.text.rng.SplitMix64` seeded
with ``seed``. The Swift core (``xlstm_export/swift/Core/Sampling.swift``) does the same arithmetic in the same
order: every sum sequential (``np.cumsum``), every exp ``math.exp`` (the platform's libm, as Swift's ``exp``),
so the same logits and seed pick the same tokens in both languages (``tests/test_swift.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import ConfigError
from .rng import SplitMix64

Step = Callable[[List[int]], np.ndarray]


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.0  # 0: greedy
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1: off
    seed: int = 0

    def __post_init__(self):
        if not (self.temperature >= 0 and np.isfinite(self.temperature)):
            raise ConfigError(f"--temperature must be a finite number >= 0 (0: greedy), got {self.temperature}")
        if self.top_k < 0:
            raise ConfigError(f"--top-k must be >= 0 (0: off), got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"--top-p must be in (0, 1] (1: off), got {self.top_p}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def rng(self) -> SplitMix64:
        return SplitMix64(self.seed)


def _exp(x: np.ndarray) -> np.ndarray:
    """exp elementwise through ``math.exp`` (libm, as Swift's ``exp``; numpy's own SIMD exp may differ by an ulp);
    exp(-inf) = 0 without a call."""
    out = np.zeros(x.shape, dtype=np.float64)
    live = np.flatnonzero(x != -np.inf)
    out[live] = np.fromiter((math.exp(v) for v in x[live].tolist()), dtype=np.float64, count=live.size)
    return out


def pick(logits: np.ndarray, sampling: Sampling, rng: Optional[SplitMix64] = None) -> int:
    """The next token from one position's logits (V,): see the module doc. Draws once from ``rng`` (a
    :class:`SplitMix64`; a fresh one from ``sampling.seed`` when None) unless greedy."""
    x = np.asarray(logits, dtype=np.float64).reshape(-1)
    if not np.isfinite(x).any():
        raise ConfigError("generation: the model returned no finite logit at this position")
    if sampling.greedy:
        return int(np.argmax(np.where(np.isnan(x), -np.inf, x)))
    rng = rng if rng is not None else sampling.rng()
    x = np.where(np.isnan(x), -np.inf, x) / sampling.temperature
    if 0 < sampling.top_k < x.size:
        kth = np.partition(x, -sampling.top_k)[-sampling.top_k]
        x = np.where(x < kth, -np.inf, x)
    if sampling.top_p < 1:
        order = np.argsort(-x, kind="stable")
        p = _exp(x[order] - x[order[0]])
        p /= np.cumsum(p)[-1]
        # keep the smallest prefix whose mass reaches top_p (at least one token), as transformers does
        before = np.concatenate([[0.0], np.cumsum(p)[:-1]])
        x[order[before >= sampling.top_p]] = -np.inf
    top = x.max()
    if top == np.inf:
        rng.next_unit()
        return int(np.flatnonzero(x == np.inf)[0])
    kept = np.flatnonzero(x > -np.inf)
    running = np.cumsum(_exp(x[kept] - top))
    u = rng.next_unit() * running[-1]
    j = int(np.searchsorted(running, u, side="right"))  # the first running sum > u
    return int(kept[min(j, kept.size - 1)])


def generate_tokens(step: Step, prompt: Sequence[int], max_new_tokens: int, sampling: Sampling = Sampling(),
                    eos_ids: Sequence[int] = (), on_token: Optional[Callable[[int], None]] = None
                    ) -> Tuple[List[int], str]:
    """New tokens after ``prompt`` and why it stopped ("eos" -- the EOS token is the last one returned --,
    or "length"). ``on_token`` sees each token as it is picked (streaming)."""
    from .. import progress

    if not prompt:
        raise ConfigError("generation needs a prompt of at least one token")
    rng = sampling.rng()
    eos = set(int(i) for i in eos_ids)
    out: List[int] = []
    if max_new_tokens <= 0:
        return out, "length"
    logits = step(list(prompt))
    while True:
        progress.note("generating token", len(out) + 1, max_new_tokens)
        tok = pick(logits, sampling, rng)
        out.append(tok)
        if on_token is not None:
            on_token(tok)
        if tok in eos:
            return out, "eos"
        if len(out) >= max_new_tokens:
            return out, "length"
        logits = step([tok])


from . import REFERENCE_CHUNK  # noqa: E402  (prompt tokens per reference call)


def reference_step(model, device: str, chunk: int = REFERENCE_CHUNK) -> Step:
    """A step over the PyTorch reference model (``build_model``): prompts in chunks of ``chunk`` tokens."""
    import torch

    states = [model.init_states(1)]

    def step(ids: List[int]) -> np.ndarray:
        x = torch.tensor([ids], dtype=torch.long, device=device)
        with torch.no_grad():
            for s in range(0, len(ids), chunk):
                logits, states[0] = model.forward_with_states(x[:, s:s + chunk], states[0])
        return logits[0, -1].float().cpu().numpy()

    return step


def runner_step(runner) -> Step:
    """A step over an artifact's runner (the validation Runner protocol): the prompt in one ``run`` call
    (the runner takes it in prefill chunks and step calls as its artifact allows); a batch artifact gets
    the same ids in every row and row 0 is read."""
    states = [runner.init_states()]
    B = int(runner.batch_size)

    def step(ids: List[int]) -> np.ndarray:
        x = np.tile(np.asarray([ids], dtype=np.int64), (B, 1))
        logits, states[0] = runner.run(x, states[0])
        return np.asarray(logits[0, -1], dtype=np.float32)

    return step


__all__ = ["Sampling", "pick", "generate_tokens", "reference_step", "runner_step", "REFERENCE_CHUNK"]
