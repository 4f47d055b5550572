"""The comparison every validation runs: an artifact's runner against the reference's, figures only.

For each prompt (several, seeded, within the vocabulary; the example task's prompts when given):

    step 0      prefill: the whole prompt (token by token when the artifact takes one token per call)
    step 1..N   decode: feed the *reference's* greedy token to both (teacher forcing, so an early
                near-tie flip does not make later steps compare different contexts)

Per step and prompt: max abs error of the logits, max rel error (``max|d| / max|ref|``), PSNR
(``10 log10(max|ref|^2 / mse)``), cosine similarity, and whether the argmax agrees (the prefill: the
fraction of positions). Per prompt: greedy agreement, the fraction of the N+1 greedy picks (after the
prefill and after each step) where the artifact's own argmax is the reference's, and for each pick the
reference's margin (``(ref[ref_pick] - ref[artifact_pick]) / max|ref|``, 0 when they agree): ``judge``
does not count a flip whose margin is within the tolerance's ``tie_margin`` (a near-tie).
To say *where* a difference starts: each state's error after the prefill and at the end (contract
order, so the first diverging state names the first block that went wrong), and when both runners
expose ``parameters()``, every weight that differs.

``compare`` only measures. ``judge`` applies a tolerance; ``localise`` turns the figures into one line.
"""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence

import numpy as np

from .. import progress
from ..errors import ConfigError
from ..graphs import Graph
from ..runner import Runner
from ..tolerances import Tolerance

STEP_METRICS = ("max_abs", "max_rel", "psnr", "cosine", "argmax_agreement")


class PromptError(ConfigError, ValueError):
    """A prompt is not a non-empty sequence of token ids within the vocabulary (also a ``ValueError``, as
    ``make_prompts`` raised before it joined the error hierarchy)."""


def make_prompts(vocab_size: int, num: int = 3, length: int = 12, seed: int = 0,
                 extra: Sequence[Sequence[int]] = ()) -> List[np.ndarray]:
    """``extra`` prompts first (e.g. the example task's), then ``num`` seeded uniform ones."""
    for key, v, lo in (("vocab_size", vocab_size, 1), ("num", num, 0), ("length", length, 1), ("seed", seed, 0)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
            raise PromptError(f"prompts: {key} must be an integer >= {lo}, got {v!r}")
    out = []
    for i, p in enumerate(extra):
        try:
            arr = np.asarray(p, dtype=np.int64)
        except (ValueError, TypeError, OverflowError):  # not numbers, ragged, beyond int64
            arr = None
        if arr is None or arr.ndim != 1 or arr.size == 0 or arr.min() < 0 or arr.max() >= vocab_size:
            raise PromptError(f"prompt {i}: expected a non-empty list of token ids in [0, {vocab_size}), "
                              f"got {p.tolist() if isinstance(p, np.ndarray) else p!r}")
        out.append(arr)
    rng = np.random.default_rng(seed)
    out += [rng.integers(0, vocab_size, size=length, dtype=np.int64) for _ in range(num)]
    return out


def step_metrics(art: np.ndarray, ref: np.ndarray) -> Dict[str, float]:
    """Figures of one step's logits (..., V); the argmax agreement is over all positions."""
    a = art.astype(np.float64)
    r = ref.astype(np.float64)
    peak = float(np.abs(r).max())
    agree = float(np.mean(np.argmax(art, axis=-1) == np.argmax(ref, axis=-1)))
    if not np.isfinite(a).all():
        return {"max_abs": math.inf, "max_rel": math.inf, "psnr": -math.inf, "cosine": 0.0,
                "argmax_agreement": agree, "nonfinite": int(a.size - np.isfinite(a).sum())}
    d = a - r
    max_abs = float(np.abs(d).max())
    mse = float(np.mean(d * d))
    na, nr = float(np.linalg.norm(a)), float(np.linalg.norm(r))
    return {
        "max_abs": max_abs,
        "max_rel": max_abs / peak if peak > 0 else (0.0 if max_abs == 0 else math.inf),
        "psnr": math.inf if mse == 0 else (10 * math.log10(peak * peak / mse) if peak > 0 else -math.inf),
        "cosine": float(np.dot(a.ravel(), r.ravel()) / (na * nr)) if na > 0 and nr > 0 else float(na == nr),
        "argmax_agreement": agree,
    }


def max_rel(art, ref) -> float:
    """``max |art - ref| / max |ref|``, the figure every comparison and tolerance uses (arrays or CPU tensors;
    inf when ``art`` holds NaN/Inf). Tests measure with this, not with helpers of their own."""
    return step_metrics(np.asarray(art, dtype=np.float64), np.asarray(ref, dtype=np.float64))["max_rel"]


def _error(a: np.ndarray, r: np.ndarray) -> Dict[str, float]:
    if not np.isfinite(a).all():
        return {"max_abs": math.inf, "max_rel": math.inf}
    d = float(np.abs(a.astype(np.float64) - r.astype(np.float64)).max()) if a.size else 0.0
    peak = float(np.abs(r).max()) if r.size else 0.0
    return {"max_abs": d, "max_rel": d / peak if peak > 0 else (0.0 if d == 0 else math.inf)}


def _run(runner: Runner, ids: np.ndarray, states: List[np.ndarray]):
    """One call, or several when the runner takes at most ``max_tokens_per_call`` tokens."""
    k = runner.max_tokens_per_call
    if not k or ids.shape[1] <= k:
        return runner.run(ids, states)
    parts = []
    for s in range(0, ids.shape[1], k):
        logits, states = runner.run(ids[:, s:s + k], states)
        parts.append(logits)
    return np.concatenate(parts, axis=1), states


def _call_metrics(a: np.ndarray, ref: np.ndarray, pos: np.ndarray, start: int, stop: int) -> Dict[str, float]:
    """Figures of the positions [start, stop) the artifact returns logits for."""
    idx = pos[(pos >= start) & (pos < stop)]
    m = step_metrics(a[idx], ref[idx])
    return {"positions": [int(i) for i in idx], "max_rel": m["max_rel"], "argmax_agreement": m["argmax_agreement"]}


def _merge_state_errors(acc: Dict[str, Dict[str, float]], key: str, errs: Dict[str, float]) -> None:
    cur = acc.setdefault(key, {"max_abs": 0.0, "max_rel": 0.0})
    for m in ("max_abs", "max_rel"):
        cur[m] = max(cur[m], errs[m])


def compare(reference: Runner, artifact: Runner, graph: Graph, prompts: Sequence[np.ndarray],
            steps: int) -> dict:
    """Run both runners over ``prompts`` (prefill + ``steps`` teacher-forced decode steps); figures only.

    Both runners must have the same ``batch_size``; prompts are batched by length in groups of it (a
    short group is padded with repeats, which are not scored).
    """
    if reference.batch_size != artifact.batch_size:
        raise ConfigError(f"compare: batch sizes differ: reference {reference.batch_size}, artifact "
                          f"{artifact.batch_size}; open both runners at the same batch size")
    B = artifact.batch_size
    specs = graph.state_contract(B)
    results: List[Optional[dict]] = [None] * len(prompts)
    state_err: Dict[str, Dict[str, Dict[str, float]]] = {s.name: {} for s in specs}

    by_len: Dict[int, List[int]] = {}
    for i, p in enumerate(prompts):
        by_len.setdefault(len(p), []).append(i)
    groups = [idx[g:g + B] for idx in by_len.values() for g in range(0, len(idx), B)]

    for g, group in enumerate(groups):
        progress.note(f"validating {artifact.kind}: prompt group ({len(prompts[group[0]])} tokens)", g + 1, len(groups))
        rows = group + [group[0]] * (B - len(group))
        ids = np.stack([prompts[i] for i in rows])  # (B, T)
        ref_logits, ref_states = _run(reference, ids, reference.init_states())
        art_logits, art_states = _run(artifact, ids, artifact.init_states())
        per_row: List[dict] = [{"steps": [], "reference_tokens": [], "artifact_tokens": [], "pick_margins": []}
                               for _ in group]
        L = ids.shape[1]
        pos = np.asarray(artifact.logit_positions(L)) if callable(getattr(artifact, "logit_positions", None)) \
            else np.arange(L)
        calls = artifact.calls(L) if callable(getattr(artifact, "calls", None)) else None
        for r, res in enumerate(per_row):
            a, ref = art_logits[r], ref_logits[r]
            m = step_metrics(a[pos], ref[pos])
            peak = float(np.abs(ref[pos]).max()) or 1.0
            pos_rel: List[Optional[float]] = [None] * L  # None: a position the artifact returns no logits for
            for t, x in zip(pos, np.abs(a[pos].astype(np.float64) - ref[pos]).max(-1) / peak):
                pos_rel[int(t)] = float(x)
            step0 = {"step": 0, "kind": "prefill", "tokens": int(L), **m, "position_max_rel": pos_rel}
            if calls:  # figures per call: which prefill chunk or step call a difference comes from
                step0["calls"] = [{"start": s0, "stop": s1, "via": via, **_call_metrics(a, ref, pos, s0, s1)}
                                  for s0, s1, via in calls]
            res["steps"].append(step0)
        for spec, a, r in zip(specs, art_states, ref_states):
            _merge_state_errors(state_err[spec.name], "after_prefill", _error(a, r))

        for step in range(1, steps + 2):
            ref_tok = np.argmax(ref_logits[:, -1], axis=-1)  # (B,)
            art_tok = np.argmax(art_logits[:, -1], axis=-1)
            for r, res in enumerate(per_row):
                res["reference_tokens"].append(int(ref_tok[r]))
                res["artifact_tokens"].append(int(art_tok[r]))
                last = ref_logits[r, -1].astype(np.float64)
                peak = float(np.abs(last).max()) or 1.0
                # how much the reference prefers its pick over the artifact's (0 when they agree)
                res["pick_margins"].append(float(last[ref_tok[r]] - last[art_tok[r]]) / peak)
            if step > steps:
                break
            feed = ref_tok.astype(np.int64)[:, None]  # (B, 1) teacher forcing with the reference's pick
            ref_logits, ref_states = _run(reference, feed, ref_states)
            art_logits, art_states = _run(artifact, feed, art_states)
            for r, res in enumerate(per_row):
                res["steps"].append({"step": step, "kind": "decode", "tokens": 1,
                                     **step_metrics(art_logits[r], ref_logits[r])})
        for spec, a, r in zip(specs, art_states, ref_states):
            _merge_state_errors(state_err[spec.name], "final", _error(a, r))

        for r, res in enumerate(per_row):
            agree = [x == y for x, y in zip(res["artifact_tokens"], res["reference_tokens"])]
            res["greedy_agreement"] = float(np.mean(agree))
            res["ids"] = [int(x) for x in prompts[group[r]]]
            res["index"] = group[r]
            results[group[r]] = res

    states = [{"name": s.name, "block": s.block, "role": s.role, **state_err[s.name]} for s in specs]
    out = {"prompts": results, "states": states, "parameters": compare_parameters(reference, artifact)}
    out["summary"] = summarise(out)
    return out


def compare_parameters(reference: Runner, artifact: Runner) -> Optional[dict]:
    """Every weight both runners expose, by name (None when either does not expose them)."""
    get_r, get_a = getattr(reference, "parameters", None), getattr(artifact, "parameters", None)
    if not callable(get_r) or not callable(get_a):
        return None
    pr, pa = get_r(), get_a()
    rows = []
    for name in sorted(set(pr) & set(pa)):
        a, r = pa[name], pr[name]
        if a.shape != r.shape:
            rows.append({"name": name, "max_abs": math.inf, "max_rel": math.inf,
                         "note": f"shape {list(a.shape)} vs reference {list(r.shape)}"})
        else:
            rows.append({"name": name, **_error(a, r)})
    return {"compared": len(rows), "only_in_artifact": sorted(set(pa) - set(pr)),
            "only_in_reference": sorted(set(pr) - set(pa)),
            "tensors": sorted(rows, key=lambda x: (-x["max_rel"], x["name"]))}


def summarise(cmp: dict) -> dict:
    steps = [s for p in cmp["prompts"] for s in p["steps"]]
    return {
        "max_abs": max(s["max_abs"] for s in steps),
        "max_rel": max(s["max_rel"] for s in steps),
        "min_psnr": min(s["psnr"] for s in steps),
        "min_cosine": min(s["cosine"] for s in steps),
        "greedy_agreement": float(np.mean([p["greedy_agreement"] for p in cmp["prompts"]])),
        "min_greedy_agreement": min(p["greedy_agreement"] for p in cmp["prompts"]),
        "greedy_picks": sum(len(p["reference_tokens"]) for p in cmp["prompts"]),
        "greedy_agreeing": sum(sum(x == y for x, y in zip(p["artifact_tokens"], p["reference_tokens"]))
                               for p in cmp["prompts"]),
    }


def judge(cmp: dict, tol: Tolerance) -> List[dict]:
    """Every figure outside ``tol``, in (step, prompt) order: the first is where it starts."""
    fails: List[dict] = []
    for p in cmp["prompts"]:
        for s in p["steps"]:
            where = {"prompt": p["index"], "step": s["step"], "kind": s["kind"]}
            if s.get("nonfinite"):
                fails.append({**where, "metric": "nonfinite", "value": s["nonfinite"], "limit": 0})
            if not s["max_rel"] <= tol.max_rel:
                f = {**where, "metric": "max_rel", "value": s["max_rel"], "limit": tol.max_rel}
                if s["kind"] == "prefill":
                    bad = [t for t, x in enumerate(s["position_max_rel"]) if x is not None and not x <= tol.max_rel]
                    f["position"] = bad[0] if bad else None
                fails.append(f)
            if not s["cosine"] >= tol.min_cosine:
                fails.append({**where, "metric": "cosine", "value": s["cosine"], "limit": tol.min_cosine})
        # a flip on a near-tie (the reference prefers its pick by <= tie_margin) is not held against it
        decisive = [i for i, mg in enumerate(p["pick_margins"]) if mg > tol.tie_margin]
        agreement = 1.0 - len(decisive) / len(p["pick_margins"])
        if not agreement >= tol.min_greedy_agreement:
            fails.append({"prompt": p["index"], "step": decisive[0], "kind": "greedy", "metric": "greedy_agreement",
                          "value": agreement, "limit": tol.min_greedy_agreement,
                          "decisive_flips": decisive})
    return sorted(fails, key=lambda f: (f["step"], f["prompt"]))


def localise(cmp: dict, fails: List[dict], tol: Tolerance) -> dict:
    """Where the difference starts: first failing figure, first diverging state, differing weights."""
    loc: dict = {"first_failure": fails[0] if fails else None}
    diverging = [s for s in cmp["states"] if not s.get("after_prefill", {}).get("max_rel", 0.0) <= tol.state_rel]
    diverging_final = [s for s in cmp["states"] if not s.get("final", {}).get("max_rel", 0.0) <= tol.state_rel]
    first = (diverging or diverging_final or [None])[0]
    loc["first_diverging_state"] = None if first is None else {
        "name": first["name"], "block": first["block"],
        "max_rel": max(first.get("after_prefill", {}).get("max_rel", 0.0), first.get("final", {}).get("max_rel", 0.0))}
    params = cmp.get("parameters")
    loc["differing_parameters"] = None if params is None else [
        t for t in params["tensors"] if not t["max_rel"] <= tol.param_rel][:10]
    return loc


def fmt(x: float) -> str:
    return f"{x:.2e}" if isinstance(x, float) and math.isfinite(x) else str(x)


def where_line(loc: dict) -> str:
    """One line naming the place: step and prompt, state, tensor."""
    parts = []
    f = loc.get("first_failure")
    if f and f["kind"] == "weights":
        parts.append(f"a compressed weight is not the checkpoint's: {f['metric']} {fmt(f['value'])} vs limit "
                     f"{fmt(f['limit'])}")
    elif f:
        at = "prefill" if f["kind"] == "prefill" else ("greedy pick" if f["kind"] == "greedy" else "decode step")
        pos = f" position {f['position']}" if f.get("position") is not None else ""
        step = "" if f["kind"] == "prefill" else f" {f['step']}"
        parts.append(f"first out of tolerance: prompt {f['prompt']}, {at}{step}{pos} "
                     f"({f['metric']} {fmt(f['value'])} vs limit {fmt(f['limit'])})")
    s = loc.get("first_diverging_state")
    if s:
        parts.append(f"first diverging state: {s['name']} (block {s['block']}, rel {fmt(s['max_rel'])})")
    elif f:
        parts.append("no state diverges: the difference is after the last state update (a last block's "
                     "output projection/FFN, out_norm or lm_head)")
    params = loc.get("differing_parameters")
    if params:
        names = ", ".join(f"{t['name']} (rel {fmt(t['max_rel'])})" for t in params[:3])
        more = f" and {len(params) - 3} more" if len(params) > 3 else ""
        parts.append(f"differing weights: {names}{more}")
    return "; ".join(parts)
