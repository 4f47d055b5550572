"""Decode-step latency (batch 1) and 512-token prefill, every implementation in this one process.

Implementations of one decode step (one token in, logits + carried state out):

- ``upstream``: what users run today. transformers ``xLSTMForCausalLM`` with an ``xLSTMCache``
  (``model(input_ids=tok, cache_params=cache, use_cache=True)``), its native step kernel in fp32; for
  the hybrid, xlstm's ``xLSTMLMModel.step(tok, state)``.
- ``reference``: our eager reference, ``forward_with_states(tok, states)``.
- ``torchscript``: the exported ``.pt`` (``torch.jit.load``), ``forward_with_states``.
- ``onnx``: the exported step graph on ONNX Runtime's CPU execution provider (``session.run`` with the
  states fed back as numpy arrays).

Prefill of 512 tokens from an empty state: the ONNX Scan graph, the ONNX prefill graphs (``--prefill-chunk
T``: 512 / T ``session.run`` calls of T tokens, the states carried from call to call; with
``--last-logits-only`` too), the reference's chunkwise form (and TorchScript's, the same code scripted),
upstream's chunkwise kernel (transformers) or step loop (the hybrid: its parallel forward stops at
``context_length``), and for context the step graph fed 512 times.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple

import numpy as np

from common import load_upstream, log, time_calls

PREFILL_TOKENS = 512


def _tokens(vocab: int, n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, vocab, size=(1, n), dtype=np.int64)


class _Cycle:
    """The next token of a fixed seeded sequence, as a (1, 1) array / tensor, round and round."""

    def __init__(self, vocab: int, n: int = 64):
        self.ids = _tokens(vocab, n, seed=1)
        self.i = 0

    def next(self) -> np.ndarray:
        t = self.ids[:, self.i % self.ids.shape[1]: self.i % self.ids.shape[1] + 1]
        self.i += 1
        return t


def ort_session(path: Path, threads: int):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    contract = json.loads(sess.get_modelmeta().custom_metadata_map["xlstm_export.io"])
    return sess, contract


def _ort_states(contract: dict):
    return [np.zeros(s["shape"], dtype=np.dtype(s["dtype"])) for s in contract["states"]]


# -- step functions: each returns a zero-argument callable doing one decode step ----------------------
def step_upstream(kind: str, ckpt: Path, vocab: int) -> Callable[[], object]:
    import torch

    model = load_upstream(kind, ckpt)
    cyc = _Cycle(vocab)
    if kind == "hf":
        from transformers.models.xlstm.modeling_xlstm import xLSTMCache

        cache = xLSTMCache(model.config, 1, dtype=torch.float32)

        def step():
            with torch.inference_mode():
                return model(input_ids=torch.from_numpy(cyc.next()), cache_params=cache, use_cache=True).logits

        return step
    state = [None]

    def step_h():
        with torch.inference_mode():
            logits, state[0] = model.step(torch.from_numpy(cyc.next()), state[0])
        return logits

    return step_h


def _torch_stepper(module, vocab: int) -> Callable[[], object]:
    import torch

    cyc = _Cycle(vocab)
    states = [module.init_states(1)]

    def step():
        with torch.inference_mode():
            logits, states[0] = module.forward_with_states(torch.from_numpy(cyc.next()), states[0])
        return logits

    return step


def step_reference(graph, vocab: int):
    from xlstm_export.reference import build_model

    return _torch_stepper(build_model(graph, device="cpu"), vocab)


def step_torchscript(path: Path, vocab: int):
    import torch

    return _torch_stepper(torch.jit.load(str(path), map_location="cpu"), vocab)


def step_onnx(path: Path, vocab: int, threads: int):
    sess, contract = ort_session(path, threads)
    names = ["logits"] + [s["output"] for s in contract["states"]]
    inputs = [s["input"] for s in contract["states"]]
    cyc = _Cycle(vocab)
    states = [_ort_states(contract)]

    def step():
        feed = dict(zip(inputs, states[0]))
        feed["input_ids"] = cyc.next()
        outs = sess.run(names, feed)
        states[0] = outs[1:]
        return outs[0]

    return step


def decode_latency(kind: str, ckpt: Path, graph, artifacts: Dict[str, Path], threads: int, warmup: int,
                   repeats: int, max_seconds: float = 30.0) -> Dict[str, dict]:
    """Decode-step latency of each implementation (dict name -> timing): ``warmup`` + ``repeats`` steps,
    bounded by ``max_seconds`` of timed steps (``common.time_calls``)."""
    import gc

    vocab = graph.config.vocab_size
    makers = {
        "upstream": lambda: step_upstream(kind, ckpt, vocab),
        "reference": lambda: step_reference(graph, vocab),
        "torchscript": lambda: step_torchscript(artifacts["torchscript"], vocab),
        "onnx": lambda: step_onnx(artifacts["onnx"], vocab, threads),
    }
    out = {}
    for name, make in makers.items():
        fn = make()
        out[name] = time_calls(fn, warmup, repeats, max_seconds)
        log(f"  decode {name}: median {out[name]['median_ms']:.3f} ms, p90 {out[name]['p90_ms']:.3f} ms")
        del fn
        gc.collect()
    return out


# -- prefill ------------------------------------------------------------------------------------------
def prefill_onnx_chunks(path: Path, chunk: int, ids: np.ndarray, threads: int) -> Callable[[], object]:
    """A prompt through an ONNX prefill graph (``<stem>.prefill.onnx``, static T = ``chunk``): one
    ``session.run`` per chunk from an empty state, each chunk's states fed to the next; returns the last
    call's logits. The prompt length must be a multiple of T (the remainder would be step calls)."""
    sess, contract = ort_session(path, threads)
    T = contract["inputs"][0]["shape"][1]
    if T != chunk or ids.shape[1] % T:
        raise ValueError(f"{path}: prefill chunk {T} (expected {chunk}) does not divide {ids.shape[1]} tokens")
    names = ["logits"] + [s["output"] for s in contract["states"]]
    inputs = [s["input"] for s in contract["states"]]
    chunks = [np.ascontiguousarray(ids[:, i:i + T]) for i in range(0, ids.shape[1], T)]

    def run():
        states = _ort_states(contract)
        for c in chunks:
            feed = dict(zip(inputs, states))
            feed["input_ids"] = c
            outs = sess.run(names, feed)
            states = outs[1:]
        return outs[0]

    return run


def prefill_latency(kind: str, ckpt: Path, graph, artifacts: Dict[str, Path], threads: int, warmup: int,
                    repeats: int, tokens: int = PREFILL_TOKENS, max_seconds: float = 60.0,
                    prefill_graphs: Optional[Dict[str, Tuple[Path, int]]] = None) -> Dict[str, dict]:
    """Each implementation: ``warmup`` + ``repeats`` prefills, bounded by ``max_seconds`` of timed calls
    (``common.time_calls``: a slow one gets fewer, at least 2). ``prefill_graphs``: name -> (the
    ``.prefill.onnx`` path, its chunk T), each timed as 512 / T calls (:func:`prefill_onnx_chunks`) right
    after the Scan graph, in the order given."""
    import gc

    import torch

    from xlstm_export.reference import build_model

    ids = _tokens(graph.config.vocab_size, tokens, seed=2)
    tids = torch.from_numpy(ids)
    out: Dict[str, dict] = {}

    def record(name: str, fn: Callable[[], object]) -> None:
        out[name] = time_calls(fn, warmup, repeats, max_seconds)
        log(f"  prefill {tokens} {name}: median {out[name]['median_ms']:.1f} ms")

    # ONNX Scan graph: one session.run over the whole prompt
    sess, contract = ort_session(artifacts["onnx-scan"], threads)
    feed = {s["input"]: z for s, z in zip(contract["states"], _ort_states(contract))}
    feed["input_ids"] = ids
    record("onnx-scan", lambda: sess.run(None, feed))
    del sess

    # ONNX prefill graphs: tokens / T calls of T tokens each, the states carried
    for name, (path, chunk) in (prefill_graphs or {}).items():
        fn = prefill_onnx_chunks(path, chunk, ids, threads)
        record(name, fn)
        out[name]["chunk"], out[name]["calls"] = chunk, tokens // chunk
        del fn
        gc.collect()

    # reference, chunkwise form (the default for T > 1), and the same code scripted
    model = build_model(graph, device="cpu")

    def ref():
        with torch.inference_mode():
            return model.forward_with_states(tids, model.init_states(1))

    record("reference-chunkwise", ref)
    del model
    ts = torch.jit.load(str(artifacts["torchscript"]), map_location="cpu")

    def ts_run():
        with torch.inference_mode():
            return ts.forward_with_states(tids, ts.init_states(1))

    record("torchscript-chunkwise", ts_run)
    del ts

    # upstream
    up = load_upstream(kind, ckpt)
    if kind == "hf":
        from transformers.models.xlstm.modeling_xlstm import xLSTMCache

        def up_run():
            with torch.inference_mode():
                return up(input_ids=tids, cache_params=xLSTMCache(up.config, 1, dtype=torch.float32),
                          use_cache=True).logits

        record("upstream-chunkwise", up_run)
    else:
        def up_steps():
            with torch.inference_mode():
                state = None
                for t in range(tokens):
                    _, state = up.step(tids[:, t:t + 1], state)

        record("upstream-step-loop", up_steps)
    del up
    gc.collect()

    # the step graph fed one token per call (what a step-only deployment does)
    sess, contract = ort_session(artifacts["onnx"], threads)
    names = ["logits"] + [s["output"] for s in contract["states"]]
    inputs = [s["input"] for s in contract["states"]]

    def step_loop():
        states = _ort_states(contract)
        for t in range(tokens):
            feed = dict(zip(inputs, states))
            feed["input_ids"] = ids[:, t:t + 1]
            states = sess.run(names, feed)[1:]

    record("onnx-step-loop", step_loop)
    return out
