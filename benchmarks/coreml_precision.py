"""The measurement behind the Core ML precision choice (``coreml.policy.POLICIES["fp16"]``).

    python benchmarks/coreml_precision.py --checkpoint CKPT [--tokens 256] [--policies fp16,fp16-plain,...]
    python benchmarks/coreml_precision.py --checkpoint CKPT --memory OUT.mlpackage   # export peak RSS

The experimental policies live here, not in the package: each is a ``PrecisionPolicy`` handed to the
emitter's ``policy`` option.

For each precision policy: export the package, execute it FROM DISK with the executor token by token
over a seeded random sequence (or the example task's), and compare every step's logits and the final
states with the fp32 reference. Prints one JSON object per policy.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Dict, Optional, Sequence

import numpy as np

from xlstm_export.graphs import Graph
from xlstm_export.coreml.policy import POLICIES as PACKAGE_POLICIES
from xlstm_export.lowering import PrecisionPolicy, StateStorage

_FP16, _FP32 = PACKAGE_POLICIES["fp16"], PACKAGE_POLICIES["fp32"]
_PLAIN = StateStorage("fp16", split=False)
POLICIES: Dict[str, PrecisionPolicy] = {
    "fp32": _FP32,
    "fp32-split-m": _FP32.with_states("fp32-split-m", c=_PLAIN, n=_PLAIN, conv=_PLAIN, slstm=_PLAIN),
    "fp16": _FP16,
    "fp16-split-m": _FP16.with_states("fp16-split-m", c=_PLAIN, n=_PLAIN, slstm=_PLAIN),
    "fp16-plain": _FP16.with_states("fp16-plain", c=_PLAIN, n=_PLAIN, m=_PLAIN, slstm=_PLAIN),
    "fp16-stream16": PrecisionPolicy("coreml", "fp16-stream16", weights="fp16", stream="fp16", norm="fp32",
                                     cell="fp32", act="fp16", states=_FP16.states),
    "fp16-all": PrecisionPolicy("coreml", "fp16-all", weights="fp16", stream="fp16", norm="fp16", cell="fp16", act="fp16",
                                states={r: _PLAIN for r in _FP16.states}),
}


def reference_run(graph: Graph, ids: np.ndarray):
    """Logits (B, T, V) and final states of the fp32 reference over ``ids``."""
    import torch

    from xlstm_export.reference import build_model

    model = build_model(graph, device="cpu")
    with torch.no_grad():
        logits, states = model.forward_with_states(torch.from_numpy(ids), model.init_states(ids.shape[0]))
    return logits.numpy(), [s.numpy() for s in states], [s.name for s in graph.state_contract(ids.shape[0])]


def measure_policy(graph: Graph, policy: str, ids: np.ndarray, ref_logits: np.ndarray, ref_states,
                   workdir: Path) -> Dict:
    from xlstm_export.coreml.emit import CoreMLOptions, emit
    from xlstm_export.coreml.runner import CoreMLRunner

    path = workdir / f"{policy}.mlpackage"
    emit(graph, CoreMLOptions(precision="fp16", batch_size=ids.shape[0], force=True, swift=False,
                              policy=POLICIES[policy]), path)
    runner = CoreMLRunner(path, graph, backend="executor")
    states = runner.init_states()
    logits = []
    t0 = time.perf_counter()
    for t in range(ids.shape[1]):
        lg, states = runner.run(ids[:, t:t + 1], states)
        logits.append(lg)
    dt = time.perf_counter() - t0
    got = np.concatenate(logits, axis=1)
    rel = np.abs(got - ref_logits).max(axis=(0, 2)) / np.abs(ref_logits).max(axis=(0, 2))  # per step
    agree = float((got.argmax(-1) == ref_logits.argmax(-1)).mean())
    state_err = {}
    for name, a, r in zip(runner.state_names, states, ref_states):
        role = name.rsplit(".", 1)[-1]
        e = float(np.abs(a - r).max() / max(np.abs(r).max(), 1e-30))
        state_err[role] = max(state_err.get(role, 0.0), e)
    n = len(rel)
    return {"policy": policy, "tokens": int(ids.shape[1]), "max_rel": float(rel.max()),
            "max_rel_first_quarter": float(rel[: max(1, n // 4)].max()),
            "max_rel_last_quarter": float(rel[-max(1, n // 4):].max()),
            "mean_rel": float(rel.mean()), "greedy_agreement": agree,
            "state_rel_by_role": {k: round(v, 6) for k, v in sorted(state_err.items())},
            "executor_ms_per_step": round(1e3 * dt / ids.shape[1], 2)}


def measure(graph: Graph, ids: np.ndarray, policies: Sequence[str] = POLICIES,
            workdir: Optional[Path] = None) -> list:
    ref_logits, ref_states, _ = reference_run(graph, ids)
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        wd = Path(workdir or tmp)
        for p in policies:
            out.append(measure_policy(graph, p, ids, ref_logits, ref_states, wd))
    return out


_MEMORY_CHILD = r"""
import json, sys
def status(key):  # VmRSS: now; VmHWM: peak of this process image (ru_maxrss would carry the parent's over exec)
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise SystemExit("no /proc/self/status: the export memory is measured on Linux only")
rss = lambda: status("VmRSS")
from xlstm_export.coreml._ct import ct
ct()
from xlstm_export.coreml.emit import CoreMLOptions, emit
from xlstm_export.frontends import load_checkpoint
graph = load_checkpoint(sys.argv[1])
largest = max(h.numel for h in graph.weights.values()) * 4
base = rss()
art = emit(graph, CoreMLOptions(precision=sys.argv[3], force=True, swift=False), sys.argv[2])
peak = status("VmHWM")
print(json.dumps({"base_rss": base, "peak_rss": peak, "export_bytes": peak - base,
                  "package_weight_bytes": art.stats["weight_bytes"], "checkpoint_bytes": graph.weight_bytes,
                  "largest_tensor_fp32_bytes": largest}))
"""


def export_memory(checkpoint: str, out: str, precision: str = "fp16") -> Dict:
    """Peak RSS of one export, measured in a fresh process (Linux: ``VmHWM``): the process's RSS
    once coremltools and the checkpoint's headers are loaded (``base_rss``), its peak during ``emit``,
    and the package's weight bytes to compare ``export_bytes`` (peak - base) with."""
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-c", _MEMORY_CHILD, str(checkpoint), str(out), precision],
                         capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"export_memory: the export failed:\n{res.stderr[-2000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main(argv: Optional[Sequence[str]] = None) -> None:
    from xlstm_export.frontends import load_checkpoint

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--policies", default=",".join(POLICIES))
    ap.add_argument("--task", action="store_true", help="use the example's task sequence (train_log.json)")
    ap.add_argument("--memory", metavar="OUT.mlpackage", help="measure the export's peak RSS instead")
    ap.add_argument("--precision", default="fp16", help="with --memory: the export's precision")
    a = ap.parse_args(argv)
    if a.memory:
        r = export_memory(a.checkpoint, a.memory, a.precision)
        r["export_over_package_weights"] = round(r["export_bytes"] / max(r["package_weight_bytes"], 1), 3)
        print(json.dumps(r))
        return
    graph = load_checkpoint(a.checkpoint)
    if a.task:
        from xlstm_export.validation.prompts import task_prompts

        first = task_prompts(a.checkpoint, 1)
        if not first:
            raise SystemExit(f"{a.checkpoint}: no train_log.json naming a task")
        seqs = task_prompts(a.checkpoint, -(-a.tokens // len(first[0])))  # back to back, one long sequence
        ids = np.array([sum(seqs, [])[: a.tokens]], dtype=np.int64)
    else:
        ids = np.random.default_rng(a.seed).integers(0, graph.config.vocab_size, size=(1, a.tokens))
    for r in measure(graph, ids, a.policies.split(",")):
        print(json.dumps(r))


if __name__ == "__main__":  # pragma: no cover
    main()
