"""An artifact's ``xlstm_export.io`` contract read back as data, and checked against a checkpoint's graph.

Every runner (``runner.ArtifactRunner``) calls :func:`parse_contract` on the JSON it finds in its
artifact (TorchScript extra file, ONNX ``metadata_props``, Core ML user metadata), then
:func:`check_contract` with the graph of the checkpoint it is validated against, and maps states through
:func:`state_slots`. A mismatch is an :class:`~xlstm_export.errors.ArtifactError` (exit 2): the artifact
was not exported from this checkpoint. Emitters, runners, verification and validation read the contract
through this module; it imports only ``graphs`` and ``errors`` (and numpy).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np

from .errors import ArtifactError, UnsupportedError
from .graphs import Graph
from .graphs.io import IO_FORMAT, IO_KEY

__all__ = ["IO_KEY", "StateSlot", "PrefillPlan", "parse_contract", "check_contract", "state_slots", "profile_diff",
           "contract_batch_size", "contract_vocab_size", "check_run_args", "declared_precision", "judged_precision",
           "check_contract_is", "prefill_plan", "TRUST_HINT"]


@dataclass(frozen=True)
class StateSlot:
    """Where one contract state (graph order) enters and leaves the artifact."""

    name: str  # canonical, e.g. "blocks.1.slstm.state"
    shape: tuple  # with the artifact's batch size
    dtype: str  # as stored in the artifact ("float32", "float16")
    input: str  # input name / state name / "states[3]"
    output: Optional[str]  # None for Core ML (states are updated in place)


def parse_contract(text: str | bytes | None, where: str) -> dict:
    """The contract JSON -> dict, checked for the fields every runner needs."""
    if text is None or (isinstance(text, (str, bytes)) and not text.strip()):
        raise ArtifactError(f"{where}: no {IO_KEY!r} contract in the artifact; it was not written by "
                            f"xlstm-export (re-export it with this tool)")
    try:
        c = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{where}: the {IO_KEY!r} contract is not valid JSON ({e})") from None
    except RecursionError:
        raise ArtifactError(f"{where}: the {IO_KEY!r} contract is nested too deeply to be a contract") from None
    if not isinstance(c, dict):
        raise ArtifactError(f"{where}: the {IO_KEY!r} contract must be a JSON object, got {type(c).__name__}")
    if c.get("format") != IO_FORMAT:
        raise ArtifactError(f"{where}: contract format must be {IO_FORMAT!r}, got {c.get('format')!r}")
    for key, typ in (("inputs", list), ("outputs", list), ("states", list), ("profile", dict)):
        if not isinstance(c.get(key), typ):
            raise ArtifactError(f"{where}: contract field {key!r} must be a JSON {typ.__name__}, "
                                f"got {type(c.get(key)).__name__}")
    for key in ("inputs", "outputs"):
        for i, e in enumerate(c[key]):
            if not isinstance(e, dict) or not isinstance(e.get("name"), str) or not _is_shape(e.get("shape")):
                raise ArtifactError(f"{where}: contract {key}[{i}] must be an object with a string 'name' and "
                                    f"a 'shape' list, got {_short(e)}")
    for i, s in enumerate(c["states"]):
        if not isinstance(s, dict) or not all(k in s for k in ("name", "shape", "dtype", "input", "output")):
            raise ArtifactError(f"{where}: contract states[{i}] must have name, shape, dtype, input, output")
        if not (isinstance(s["name"], str) and _is_shape(s["shape"], dynamic=False) and isinstance(s["dtype"], str)
                and isinstance(s["input"], str) and (s["output"] is None or isinstance(s["output"], str))):
            raise ArtifactError(f"{where}: contract states[{i}] must have string name, dtype and input, a shape "
                                f"of non-negative integers and a string or null output, got {_short(s, 120)}")
    extra = c.get("extra_states", [])
    if not isinstance(extra, list):
        raise ArtifactError(f"{where}: contract field 'extra_states' must be a JSON list, got {type(extra).__name__}")
    for i, s in enumerate(extra):
        scale = s.get("scale", 1.0) if isinstance(s, dict) else None
        if not (isinstance(s, dict) and isinstance(s.get("part_of"), str) and isinstance(s.get("input"), str)
                and _is_shape(s.get("shape"), dynamic=False) and isinstance(scale, (int, float))
                and not isinstance(scale, bool) and math.isfinite(scale) and scale != 0):
            raise ArtifactError(f"{where}: contract extra_states[{i}] must have string part_of and input, a shape "
                                f"and a finite non-zero scale, got {_short(s, 120)}")
    return c


def _is_shape(v: Any, dynamic: bool = True) -> bool:
    """A JSON shape: a list of non-negative integers (and nulls, dynamic axes, where allowed)."""
    return isinstance(v, list) and all(
        (d is None and dynamic) or (isinstance(d, int) and not isinstance(d, bool) and d >= 0) for d in v)


def _short(v: Any, n: int = 60) -> str:
    s = json.dumps(v, sort_keys=True)
    return s if len(s) <= n else s[:n - 3] + "..."


def profile_diff(a: Any, b: Any, path: str = "profile", limit: int = 4,
                 labels: Sequence[str] = ("artifact", "checkpoint")) -> List[str]:
    """The first ``limit`` differences between two JSON values (``a`` = artifact, ``b`` = checkpoint, or
    what ``labels`` name), plain fields before nested ones, so the most telling (family, vocab_size, ...)
    come first."""
    out: List[str] = []
    la, lb = labels

    def walk(x: Any, y: Any, p: str) -> None:
        if len(out) >= limit:
            return
        if isinstance(x, dict) and isinstance(y, dict):
            keys = sorted(set(x) | set(y), key=lambda k: (isinstance(x.get(k, y.get(k)), (dict, list)), k))
            for k in keys:
                if k not in x:
                    out.append(f"{p}.{k}: missing in the {la}, {lb} has {_short(y[k])}")
                elif k not in y:
                    out.append(f"{p}.{k}: {la} has {_short(x[k])}, missing in the {lb}")
                else:
                    walk(x[k], y[k], f"{p}.{k}")
        elif isinstance(x, list) and isinstance(y, list):
            if len(x) != len(y):
                out.append(f"{p}: {la} has {len(x)} entries, {lb} {len(y)}")
            for i, (u, v) in enumerate(zip(x, y)):
                walk(u, v, f"{p}[{i}]")
        elif x != y or type(x) is not type(y):
            out.append(f"{p}: {la} {_short(x)}, {lb} {_short(y)}")

    walk(a, b, path)
    return out


def check_contract(contract: dict, graph: Graph, where: str) -> None:
    """Raise ArtifactError unless the artifact's profile is the checkpoint graph's profile."""
    expected = json.loads(json.dumps(graph.to_profile(informational=False)))
    diffs = profile_diff(contract["profile"], expected, limit=5)
    if diffs:
        shown = "; ".join(diffs[:4]) + ("; ..." if len(diffs) > 4 else "")
        raise ArtifactError(f"{where}: the artifact was exported from a different model than "
                            f"{graph.source or 'the checkpoint'}: " + shown
                            + " (validate it against the checkpoint it was exported from)")


TRUST_HINT = "pass --trust-artifact to judge it by its own description anyway"


def judged_precision(contract: dict) -> str:
    """The precision an artifact is judged at: its declared precision, with its weight compression
    (``fp16+int4``, ``fp32+int8-b64``) when the contract declares one (``tolerances.tolerance_for``)."""
    p = str(contract.get("precision", ""))
    q = contract.get("quantize")
    if not isinstance(q, dict):
        return p
    scheme, block = q.get("scheme"), q.get("block_size")
    label = str(scheme) if block in (None, 32) else f"{scheme}-b{block}"
    return f"{p}+{label}"


def declared_precision(contract: dict, where: str, target: str, offered: Sequence[str],
                       kinds: Sequence[str] = ()) -> str:
    """The contract's precision, if ``target`` writes it (ArtifactError otherwise): it picks the tolerance
    the artifact is judged by, so it is checked against the artifact's tensors after this. The contract's
    ``"target"`` must be ``target`` or one of ``kinds`` (the other kinds its file declares, e.g. a Scan graph)."""
    p = contract.get("precision")
    if contract.get("target") not in (target, *kinds):
        raise ArtifactError(f"{where}: its contract declares target {_short(contract.get('target'))}, but "
                            f"the file is a {target} artifact; its tolerance would be another target's "
                            f"({TRUST_HINT})")
    if p not in offered:
        raise ArtifactError(f"{where}: its contract declares precision {_short(p)}; xlstm-export writes {target} "
                            f"artifacts in {', '.join(offered)} ({TRUST_HINT})")
    return p


def check_contract_is(contract: dict, expected: dict, where: str, what: str) -> None:
    """Raise ArtifactError unless the artifact's contract is ``expected``: what xlstm-export writes for
    the checkpoint and the options the contract declares (``what`` says which)."""
    a = json.loads(json.dumps(contract))
    b = json.loads(json.dumps(expected))
    # the tokenizer / generation files are not part of the computation validation judges: an artifact is
    # checked against weights whatever text files either side has (``run`` checks the files it uses)
    a.pop("text", None)
    b.pop("text", None)
    diffs = profile_diff(a, b, path="contract", limit=3, labels=("artifact", "xlstm-export"))
    if diffs:
        raise ArtifactError(f"{where}: its I/O contract is not what xlstm-export writes for {what}: "
                            + "; ".join(diffs) + f" (re-export it, or {TRUST_HINT})")


def state_slots(contract: dict, graph: Graph, where: str) -> List[StateSlot]:
    """The artifact's states in the graph's contract order (what runners exchange)."""
    by_name = {s["name"]: s for s in contract["states"]}
    specs = graph.state_contract(contract_batch_size(contract, where))
    want = [s.name for s in specs]
    missing = [n for n in want if n not in by_name]
    extra = [n for n in by_name if n not in set(want)]
    if missing or extra or len(by_name) != len(contract["states"]):
        raise ArtifactError(f"{where}: the contract's states do not match the checkpoint's state contract "
                            f"(missing {missing}, unexpected {extra})")
    for s in specs:
        if tuple(by_name[s.name]["shape"]) != tuple(s.shape):
            raise ArtifactError(f"{where}: the contract's state {s.name} has shape {by_name[s.name]['shape']}, "
                                f"the checkpoint's state contract says {list(s.shape)}")
    return [StateSlot(n, tuple(by_name[n]["shape"]), by_name[n]["dtype"], by_name[n]["input"],
                      by_name[n]["output"]) for n in want]


def contract_batch_size(contract: dict, where: str) -> int:
    """The batch size the artifact was exported for (``input_ids`` shape[0]; 1 when dynamic)."""
    ids = next((i for i in contract["inputs"] if isinstance(i, dict) and i.get("name") == "input_ids"), None)
    if ids is None:
        raise ArtifactError(f"{where}: the contract has no 'input_ids' input")
    shape = ids.get("shape")
    b = shape[0] if isinstance(shape, list) and shape else None
    return int(b) if isinstance(b, int) and not isinstance(b, bool) and b > 0 else 1


def contract_vocab_size(contract: dict) -> Optional[int]:
    """The vocabulary size the artifact's ``logits`` output declares (its last axis); None if it declares none."""
    logits = next((o for o in contract["outputs"] if o["name"] == "logits"), None)
    v = logits["shape"][-1] if logits is not None and logits["shape"] else None
    return v if isinstance(v, int) and not isinstance(v, bool) and v > 0 else None


def check_run_args(where: str, batch_size: int, input_ids: Any, states: Sequence[Any],
                   state_shapes: Optional[Sequence[tuple]] = None, vocab_size: Optional[int] = None) -> np.ndarray:
    """What every runner's ``run`` checks first, so a bad call is the same UnsupportedError in every target:
    ``input_ids`` (B, T) integers (in ``[0, vocab_size)`` when given), one state per contract state (of
    ``state_shapes`` when given). Returns ``input_ids`` as an int64 array."""
    try:
        ids = np.asarray(input_ids)
    except ValueError:  # ragged
        ids = None
    if ids is None or ids.ndim != 2 or ids.shape[0] != batch_size or ids.shape[1] < 1 or (
            ids.dtype.kind not in "iu"):
        got = f"{ids.dtype} {ids.shape}" if ids is not None else type(input_ids).__name__
        raise UnsupportedError(f"{where}: input_ids must be integer token ids of shape ({batch_size}, T) with "
                               f"T >= 1, got {got}")
    if vocab_size is not None and (ids.min() < 0 or ids.max() >= vocab_size):
        raise UnsupportedError(f"{where}: input_ids must be in [0, {vocab_size}), got values in "
                               f"[{int(ids.min())}, {int(ids.max())}]")
    if state_shapes is not None:
        if len(states) != len(state_shapes):
            raise UnsupportedError(f"{where}: expected {len(state_shapes)} states (contract order), got {len(states)}")
        for i, (s, shape) in enumerate(zip(states, state_shapes)):
            got = tuple(np.shape(s))
            if got != tuple(shape):
                raise UnsupportedError(f"{where}: state {i} must have shape {tuple(shape)}, got {got}")
    return ids.astype(np.int64, copy=False)


@dataclass(frozen=True)
class PrefillPlan:
    """How an artifact with a prefill graph/function takes a prompt: ``floor(L / chunk)`` prefill calls of
    ``chunk`` tokens, then ``L mod chunk`` step calls (the step path). Read from the contract's
    ``"prefill"`` entry (:func:`prefill_plan`). Runners with one expose ``prefill`` (this plan),
    ``calls(L)`` and ``logit_positions(L)``; the comparison reports figures per call of the prompt."""

    chunk: int
    last_logits_only: bool
    where: str  # the companion file (ONNX) or function (Core ML, ExecuTorch)

    def calls(self, length: int) -> List[Tuple[int, int, str]]:
        """``(start, stop, via)`` of each call for a prompt of ``length`` tokens; via "prefill" | "step"."""
        full = length // self.chunk * self.chunk
        out = [(s, s + self.chunk, "prefill") for s in range(0, full, self.chunk)]
        return out + [(t, t + 1, "step") for t in range(full, length)]

    def logit_positions(self, length: int) -> np.ndarray:
        """Positions whose logits the artifact returns (all, unless the prefill returns only its last)."""
        if not self.last_logits_only:
            return np.arange(length)
        return np.array([stop - 1 if via == "prefill" else start for start, stop, via in self.calls(length)],
                        dtype=np.int64)


def prefill_plan(contract: dict, where: str) -> Optional[PrefillPlan]:
    """The contract's ``"prefill"`` entry, checked (artifacts are untrusted input): None when absent."""
    p = contract.get("prefill")
    if p is None:
        return None
    chunk = p.get("chunk") if isinstance(p, dict) else None
    last = p.get("last_logits_only", False) if isinstance(p, dict) else None
    target = (p.get("path") or p.get("function")) if isinstance(p, dict) else None
    if (isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1 or not isinstance(last, bool)
            or not isinstance(target, str) or not target or "/" in target or "\\" in target
            or target in (".", "..")):
        raise ArtifactError(f"{where}: the contract's 'prefill' entry must be {{'chunk': positive int, "
                            f"'last_logits_only': bool, 'path' or 'function': a plain name}}, got {str(p)[:120]}")
    return PrefillPlan(chunk, last, target)
