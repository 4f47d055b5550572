"""The whole model in a mode, from the per-block lowerings::

    step:     input_ids (B, 1) ─ gather(embedding) ─ block 0 .. N-1 ─ out_norm ─ lm_head ─ soft cap ─ logits (B, 1, V)
    prefill:  input_ids (B, T) ─ gather ─ rows (B*T, E) ─ blocks (chunkwise) ─ head ─ logits (B, T, V)
              (or the last position only: (B, 1, V))

``embed``, ``blocks`` and ``head`` are separate so that a backend can put the blocks inside a loop
(ONNX's Scan body runs ``blocks`` once per token; the head runs once over all rows).
"""

from __future__ import annotations

from typing import List, Optional, Tuple

from .. import progress
from ..errors import UnsupportedError
from ..graphs import Graph
from .layers import norm, soft_cap
from .ops import V, Ops
from .registry import LOWERINGS
from .states import block_states
from .weights import WeightSpec


def vocab_weights(graph: Graph) -> Tuple[WeightSpec, WeightSpec]:
    """The embedding and LM head constants (the same data when tied)."""
    emb = WeightSpec.tensor(graph, "embedding.weight", "embedding", "weights")
    head = WeightSpec.tensor(graph, "lm_head.weight", "lm_head", "weights")
    return emb, head


def embed(ops: Ops, ids: V) -> V:
    """ids (B, T) -> (B*T, E) rows of the embedding (row b*T + t), in the stream dtype; T = ``ops.tokens``."""
    emb, _ = vocab_weights(ops.graph)
    x = ops.gather(ops.weight(emb), ids, "embedding")  # (B, T, E)
    x = ops.reshape(x, (ops.batch * ops.tokens, ops.graph.config.embedding_dim), "embedding.rows")  # (B*T, E)
    return ops.cast(x, "stream", "embedding")


def embed_sequence(ops: Ops, ids: V) -> V:
    """ids (B, T) -> (T, B, E) time-major embedding rows, in the stream dtype (a Scan's input)."""
    emb, _ = vocab_weights(ops.graph)
    x = ops.cast(ops.gather(ops.weight(emb), ids, "embedding"), "stream", "embedding")  # (B, T, E)
    return ops.transpose(x, (1, 0, 2), "embedding.time_major")


def blocks(ops: Ops, x: V, mode: str = "step") -> V:
    """Every block's lowering in order; rows x (R, E) -> (R, E)."""
    graph = ops.graph
    for i, (block, st) in enumerate(zip(graph.blocks, block_states(graph, ops.batch))):
        progress.note(f"lowering ({mode}) block", i + 1, len(graph.blocks))
        x = LOWERINGS.get(block, mode)(ops, i, block, x, st)
    return x


def head_blocks(vocab: int, width: Optional[int]) -> List[Tuple[int, int]]:
    """Row ranges [start, stop) of the LM head, each at most ``width`` (None: one block)."""
    if width is None or vocab <= width:
        return [(0, vocab)]
    return [(s, min(s + width, vocab)) for s in range(0, vocab, width)]


def head(ops: Ops, x: V, lead: Tuple[int, ...]) -> V:
    """x rows (R, E) -> logits ``lead + (V,)`` (R = prod(lead)) in the logits dtype:
    ``out_norm -> lm_head -> soft cap``.

    When V exceeds the backend's ``max_matmul_width`` the LM head is several Linears over row blocks of
    the weight, each capped and shaped on its own, then one Concat, so no tensor is wider than the
    limit before the logits themselves::

        x ─ out_norm ─┬─ lm_head.0 (rows 0:16384)     ─ cap ─ shape ─┐
                      ├─ lm_head.1 (rows 16384:32768) ─ cap ─ shape ─┼─ concat ─ logits
                      └─ ...                                         ┘
    """
    graph = ops.graph
    cfg = graph.config
    if cfg.out_norm is not None:
        x = norm(ops, x, cfg.out_norm, "out_norm")
    x = ops.cast(x, "weights", "lm_head.in")
    _, spec = vocab_weights(graph)
    ranges = head_blocks(cfg.vocab_size, ops.max_matmul_width)
    if len(ranges) == 1:
        y = _capped(ops, ops.cast(ops.linear(x, spec, None, "lm_head"), "logits", "lm_head"), "lm_head")
        return ops.reshape(y, (*lead, cfg.vocab_size), "logits")
    parts = []
    for j, (s, e) in enumerate(ranges):
        name = f"lm_head.{j}"
        w = WeightSpec(f"lm_head.weight.{j}", spec.sources, "lm_head", "weights", (e - s, cfg.embedding_dim),
                       rows=(s, e))
        y = _capped(ops, ops.cast(ops.linear(x, w, None, name), "logits", name), name)  # (R, e - s)
        parts.append(ops.reshape(y, (*lead, e - s), f"{name}.out"))
    return ops.concat(parts, -1, "logits")


def _capped(ops: Ops, y: V, name: str) -> V:
    cap = ops.graph.config.output_logit_soft_cap
    return soft_cap(ops, y, float(cap), f"{name}.capped") if cap else y


def step(ops: Ops, ids: V) -> V:
    """One decode step: ids (B, 1) -> logits (B, 1, V)."""
    x = blocks(ops, embed(ops, ids), "step")
    return head(ops, x, (ops.batch, 1))


MAX_PREFILL_CHUNK = 1024  # each mLSTM head holds T x T decay weights per call; ORT's Core ML EP takes dims <= 16384


def check_prefill_chunk(graph: Graph, chunk, target: str) -> None:
    """A prefill chunk T is a positive integer, at most :data:`MAX_PREFILL_CHUNK` and at most the
    checkpoint's ``context_length`` when it declares one (one clear line otherwise; None: no prefill)."""
    if chunk is None:
        return
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise UnsupportedError(f"{target}: --prefill-chunk must be a positive integer (tokens per prefill call), "
                               f"got {chunk!r}")
    if chunk > MAX_PREFILL_CHUNK:
        raise UnsupportedError(f"{target}: --prefill-chunk {chunk} exceeds {MAX_PREFILL_CHUNK} (each mLSTM head "
                               f"holds T x T decay weights per call; longer prompts run in several calls)")
    ctx = graph.config.context_length
    if ctx is not None and chunk > ctx:
        raise UnsupportedError(f"{target}: --prefill-chunk {chunk} exceeds the checkpoint's context_length {ctx} "
                               f"({graph.source})")


def prefill(ops: Ops, ids: V, last_only: bool = False) -> V:
    """A chunk of T = ``ops.tokens`` tokens: ids (B, T) -> logits (B, T, V), or (B, 1, V) of the last
    position with ``last_only`` (the head then runs on B rows instead of B*T)."""
    B, T, E = ops.batch, ops.tokens, ops.graph.config.embedding_dim
    x = blocks(ops, embed(ops, ids), "prefill")  # (B*T, E)
    if not last_only:
        return head(ops, x, (B, T))
    if T > 1:
        x = ops.slice(ops.reshape(x, (B, T, E), "last.time"), 1, T - 1, T, "last.position")  # (B, 1, E)
        x = ops.reshape(x, (B, E), "last.rows")
    return head(ops, x, (B, 1))
