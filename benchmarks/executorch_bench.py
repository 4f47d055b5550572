"""ExecuTorch decode-step latency against upstream's eager step, our ONNX step graph and TorchScript.

    python benchmarks/executorch_bench.py --out benchmarks/RESULTS.md            # `make bench` runs it after run.py
    python benchmarks/executorch_bench.py --out benchmarks/RESULTS.md --configs 100m --rounds 5

Per config (``tiny``, ``hybrid``, ``100m``, as in ``run.py``): exports the ONNX step graph, the TorchScript
module and ``.pte`` programs (XNNPACK fp32 and 8da4w; 8da8w with ``--with-8da8w``), each once, in this process; then times one decode
step (batch 1) of each implementation, all in this one process at ``--threads`` (torch, ORT intra-op and the
ExecuTorch threadpool alike), in ``--rounds`` interleaved rounds (each round times every implementation once
more, in turn): the figure is the median over the rounds of each round's median, so a burst of load from
other processes on a shared machine hits one round of every implementation rather than all of one.
Ratios are to upstream's eager step and to the ONNX step graph. Also, less sensitive to other processes'
load: the process CPU time of one step at 1 thread (ONNX and the programs).

The ExecuTorch step is ``method.execute([ids, *states])`` with the returned states fed back (what an app
does; the states are explicit inputs/outputs). Also recorded per program: how many XNNPACK partitions
(delegate calls) its step has and which operators run outside them (in ExecuTorch's portable kernels),
and the lowering time. Writes ``results-executorch.json`` beside ``--out`` and re-renders ``--out``
(``report.py``) with the figures of ``run.py``'s last run.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Callable, Dict

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import (REPO, build_hf_checkpoint, build_hybrid_checkpoint, log, machine_info,  # noqa: E402
                    time_calls, wait_quiet)

CONFIGS = ("tiny", "hybrid", "100m")
PROGRAMS = {"executorch": {}, "executorch-8da4w": {"quantize": "8da4w"}}  # --with-8da8w adds "executorch-8da8w"
# per config: (warmup, repeats per round); a round of one implementation is also capped at ROUND_SECONDS
REPEATS = {"tiny": (20, 200), "hybrid": (20, 200), "100m": (5, 40)}
ROUND_SECONDS = 8.0


def step_executorch(path: Path, vocab: int) -> Callable[[], object]:
    """One decode step of a ``.pte``: ``forward(ids, *states)`` with the returned states fed back."""
    import numpy as np
    import torch
    from executorch.runtime import Runtime

    from speed import _Cycle

    prog = Runtime.get().load_program(path)
    method = prog.load_method("forward")
    contract = json.loads(prog.load_method("xlstm_export_io").execute([])[0])
    states = [[torch.zeros(s["shape"], dtype=torch.float32) for s in contract["states"]]]
    cyc = _Cycle(vocab)

    def step():
        out = method.execute([torch.from_numpy(np.ascontiguousarray(cyc.next())), *states[0]])
        states[0] = list(out[1:])
        return out[0]

    return step


def partitions(path: Path) -> dict:
    """XNNPACK delegate calls in the step and the operators left outside them (from the program file)."""
    from xlstm_export.executorch.passes import delegation

    return delegation(path.read_bytes())


def export_all(name: str, ckpt: Path, work: Path, prev: dict) -> tuple:
    import xlstm_export as xe
    from xlstm_export.frontends import load_checkpoint

    graph = load_checkpoint(ckpt)
    arts, info = {}, {}
    jobs = [("onnx", "onnx", {}, "m.onnx"), ("torchscript", "torchscript", {}, "m.pt")]
    jobs += [(p, "executorch", o, f"{p}.pte") for p, o in PROGRAMS.items()]
    for label, target, opts, fname in jobs:
        out = work / name / fname
        out.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        cached = out.exists()  # from an earlier run over the same --work: its export time is that run's
        if not cached:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                xe.export(graph, target, out, **opts)
        info[label] = {"export_s": time.perf_counter() - t0, "bytes": _size(out)}
        if cached:
            info[label].update({"export_s": prev.get(label, {}).get("export_s", float("nan")), "cached": True})
        if target == "executorch":
            info[label].update(partitions(out))
        log(f"  {name}: exported {label} in {info[label]['export_s']:.1f}s ({info[label]['bytes'] / 1e6:.1f} MB)")
        arts[label] = out
    return graph, arts, info


def _size(p: Path) -> int:
    return sum(f.stat().st_size for f in p.parent.glob(p.name + "*")) if p.suffix == ".onnx" else p.stat().st_size


def measure(kind: str, ckpt: Path, graph, arts: Dict[str, Path], threads: int, rounds: int, warmup: int,
            repeats: int) -> dict:
    import speed

    vocab = graph.config.vocab_size
    makers = {"upstream": lambda: speed.step_upstream(kind, ckpt, vocab),
              "onnx": lambda: speed.step_onnx(arts["onnx"], vocab, threads),
              "torchscript": lambda: speed.step_torchscript(arts["torchscript"], vocab),
              **{p: (lambda p=p: step_executorch(arts[p], vocab)) for p in PROGRAMS}}
    fns = {n: m() for n, m in makers.items()}
    per_round: Dict[str, list] = {n: [] for n in fns}
    for r in range(rounds):
        for n, fn in fns.items():
            t = time_calls(fn, warmup if r == 0 else 2, repeats, ROUND_SECONDS)
            per_round[n].append(t["median_ms"])
        log(f"  round {r + 1}/{rounds}: " + ", ".join(f"{n} {v[-1]:.3f}" for n, v in per_round.items()))
    del fns
    gc.collect()
    return {n: {"median_ms": statistics.median(v), "rounds_ms": v} for n, v in per_round.items()}


def measure_cpu(graph, arts: Dict[str, Path], rounds: int, steps: int = 15) -> dict:
    """Process CPU time per step at 1 thread (ONNX and the programs): what a step costs in CPU, much less
    sensitive than wall time to other processes holding the cores (one thread: no pool waiting for a
    core). Restores the thread settings afterwards."""
    import torch
    from executorch.extension.pybindings.portable_lib import _unsafe_reset_threadpool

    import speed

    vocab, threads = graph.config.vocab_size, torch.get_num_threads()
    torch.set_num_threads(1)
    _unsafe_reset_threadpool(1)
    try:
        fns = {"onnx": speed.step_onnx(arts["onnx"], vocab, 1),
               **{p: step_executorch(arts[p], vocab) for p in PROGRAMS}}
        per_round: Dict[str, list] = {n: [] for n in fns}
        for r in range(rounds):
            for n, fn in fns.items():
                fn()
                fn()
                ts = []
                for _ in range(steps):
                    t0 = time.process_time()
                    fn()
                    ts.append((time.process_time() - t0) * 1e3)
                per_round[n].append(statistics.median(ts))
            log(f"  1-thread CPU round {r + 1}/{rounds}: " + ", ".join(f"{n} {v[-1]:.3f}" for n, v in per_round.items()))
    finally:
        torch.set_num_threads(threads)
        _unsafe_reset_threadpool(threads)
    return {n: {"median_ms": statistics.median(v), "rounds_ms": v} for n, v in per_round.items()}


TEXT_PROGRAMS = {"fp32": {}, "8da8w": {"quantize": "8da8w"}, "8da4w": {"quantize": "8da4w"}}
TEXT_TOKENS = 2048


def measure_text(work: Path) -> dict:
    """Each program of the trained example LM (``examples/pylm``, the step method) judged as users judge
    quantizations: perplexity on the first ``TEXT_TOKENS`` tokens of its held-out text and teacher-forced top-1
    agreement with the full-precision reference (``validate --heldout``), and its parity against what it is
    judged by (the reference; a quantized program, the eager module it was exported from)."""
    import xlstm_export as xe
    from xlstm_export import api

    pylm = REPO / "examples" / "pylm"
    graph = api.load_checkpoint(str(pylm))
    out = {"checkpoint": "examples/pylm", "tokens": TEXT_TOKENS, "programs": {}}
    for label, opts in TEXT_PROGRAMS.items():
        path = work / "pylm" / f"{label}.pte"
        path.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            xe.export(graph, "executorch", path, force=True, **opts)
        export_s = time.perf_counter() - t0
        r = api.validate(path, graph, steps=2, prompts=1, heldout=pylm / "heldout.txt", heldout_tokens=TEXT_TOKENS)
        out["programs"][label] = {"export_s": export_s, "bytes": path.stat().st_size, "passed": r.passed,
                                  "max_rel": r.report["summary"]["max_rel"],
                                  "text": {k: v for k, v in r.report["text"].items() if not isinstance(v, list)}}
        log(f"  pylm {label}: {r.summary_line()}")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=HERE / "RESULTS.md")
    ap.add_argument("--work", type=Path, default=Path("/tmp/xlstm-bench-executorch"))
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--threads", type=int, default=2, help="torch, ORT intra-op and ExecuTorch threads (default 2)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS",
                    help="before each config's timings, wait up to this long for a 1-min load average < 0.7")
    ap.add_argument("--no-render", action="store_true", help="write results-executorch.json only")
    ap.add_argument("--with-8da8w", action="store_true", help="also the 8da8w program")
    ap.add_argument("--text", action="store_true",
                    help="also the quantized programs' cost on the trained example LM's held-out text (examples/pylm)")
    a = ap.parse_args(argv)

    import torch
    from executorch.extension.pybindings.portable_lib import _unsafe_reset_threadpool

    torch.set_num_threads(a.threads)
    _unsafe_reset_threadpool(a.threads)
    if a.with_8da8w:
        PROGRAMS["executorch-8da8w"] = {"quantize": "8da8w"}
    json_path = a.out.with_name("results-executorch.json")
    prev = json.loads(json_path.read_text()) if json_path.exists() else {}
    res = {"machine": machine_info(), "command": "python benchmarks/executorch_bench.py " + " ".join(
        sys.argv[1:] if argv is None else argv), "threads": a.threads, "rounds": a.rounds,
        "load_average_start": os.getloadavg(), "configs": dict(prev.get("configs", {}))}
    t_start = time.perf_counter()
    for name in a.configs.split(","):
        log(f"== {name}")
        ckpt = build_hybrid_checkpoint(a.work) if name == "hybrid" else build_hf_checkpoint(name, a.work)
        kind = "hybrid" if name == "hybrid" else "hf"
        graph, arts, info = export_all(name, ckpt, a.work, res["configs"].get(name, {}).get("exports", {}))
        load_before = wait_quiet(a.wait_quiet) if a.wait_quiet else os.getloadavg()
        warmup, repeats = REPEATS[name]
        steps = measure(kind, ckpt, graph, arts, a.threads, a.rounds, warmup, repeats)
        cpu = measure_cpu(graph, arts, a.rounds)
        res["configs"][name] = {"cpu_1thread": cpu, "params": graph.config_params if hasattr(graph, "config_params") else
                                int(graph.weights.numel), "exports": info, "decode": steps,
                                "load_before": load_before, "load_after": os.getloadavg(),
                                "measured_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
        json_path.write_text(json.dumps(res, indent=1) + "\n")
    if a.text:
        res["text"] = measure_text(a.work)
        json_path.write_text(json.dumps(res, indent=1) + "\n")
    elif "text" in prev:
        res["text"] = prev["text"]
    res["seconds"] = time.perf_counter() - t_start
    res["load_average_end"] = os.getloadavg()
    json_path.write_text(json.dumps(res, indent=1) + "\n")
    log(f"wrote {json_path}")
    if not a.no_render and a.out.with_name("results.json").exists():
        from report import render

        seven = a.out.with_name("results-7b.json")
        a.out.write_text(render(json.loads(a.out.with_name("results.json").read_text()),
                                json.loads(seven.read_text()) if seven.exists() else None, res))
        log(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    sys.exit(main())
