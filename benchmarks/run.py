"""Speed and memory of the exported artifacts against what users run today; writes RESULTS.md.

    python benchmarks/run.py --out benchmarks/RESULTS.md            # what `make bench` runs (< 20 min)
    python benchmarks/run.py --out benchmarks/RESULTS.md --with-7b  # + the xLSTM-7B-shaped export (long)

Sections (every figure of a section from this one run; all raw figures also in ``results.json`` beside
the output):

1. export cost per target, each export in its own process: wall time, peak RSS vs the artifact's
   weight bytes; Core ML MIL ops per decode step (``export_child.py``, ``common.run_measured``);
   and the prefill exports, exported once per config and reused for section 3: ONNX with
   ``prefill_chunk`` T = 64, 32, 16 (step + ``.prefill.onnx`` + one shared data file) and T = 64 with
   ``last_logits_only``, and Core ML fp16 with ``prefill_chunk=64`` (multifunction ``main`` + ``prefill``),
   whose MIL ops per token are counted for both functions: ``main`` (one decode step = one token) vs
   ``prefill`` / T. Chunks above a checkpoint's ``context_length`` are left out (``hybrid``: 32, so its
   chunks are 32 and 16 and its headline chunk 32). Core ML cannot run on Linux: op counts, not timings;
2. decode-step latency at batch 1: ONNX (ORT CPU EP), TorchScript, our eager reference, upstream's
   eager step (``speed.py``), as ratios to upstream; at ``--threads`` (default: the usable cores) and
   at 1 thread (torch and ORT alike);
3. prefill of 512 tokens at ``--threads``, every implementation in one process: the ONNX Scan graph
   (one call), the ONNX prefill graphs (512 / T calls carrying the states), the reference's chunkwise
   form, TorchScript's, upstream's, and the step graph x 512. The goals table judges the ONNX prefill
   graph (T = 64) at ``100m``: >= 8x faster than the Scan graph, <= 1.5x the reference chunkwise time;
4. compressed weights (``quant.py``, with ``100m`` in the configs, or alone with ``--only-quant``): the
   ONNX decode step at 100M with int8 / int4 weights vs fp32 in interleaved rounds, artifact bytes per
   precision, and the Core ML EP's share of each compressed form (ORT's usability checker);
5. with ``--with-7b``: an xLSTM-7B-shaped transformers checkpoint (its real config, generated bf16
   weights) exported to ONNX fp16 with external data and to Core ML fp16 (``big7b.py``).

Without ``--with-7b`` the 7B section of an earlier ``--with-7b`` run (``results-7b.json``) is carried
into RESULTS.md, marked with the date and commit of that run.

Configs: ``tiny`` (the ``hf`` test fixture's scale), ``100m`` (transformers xLSTM, hidden 768, 12 blocks,
4 heads, vocab 8192: ~100M parameters), ``hybrid`` (the ``hybrid`` fixture: xlstm xLSTMLMModel with
mLSTM + sLSTM blocks). Random weights; speed does not depend on their values.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import (PY, REPO, GiB, build_hf_checkpoint, build_hybrid_checkpoint, log,  # noqa: E402
                    machine_info, run_measured, wait_quiet)

TARGETS = (("torchscript", "fp32"), ("onnx", "fp32"), ("onnx-scan", "fp32"), ("coreml", "fp16"))
SUFFIX = {"torchscript": ".pt", "onnx": ".onnx", "onnx-scan": ".scan.onnx", "coreml": ".mlpackage"}
# per config: (decode warmup, decode repeats, prefill warmup, prefill repeats, prefill seconds per implementation)
REPEATS = {"tiny": (20, 200, 3, 10, 20.0), "hybrid": (20, 200, 3, 10, 30.0), "100m": (10, 100, 2, 5, 45.0)}
QUICK_REPEATS = (2, 5, 1, 2, 1.0)
PREFILL_CHUNKS = (64, 32, 16)  # ONNX prefill graphs timed; the first one that fits is the headline (goals)
COREML_PREFILL_CHUNK = 64  # Core ML prefill function (op counts)


def _export(name: str, ckpt: Path, path: Path, target: str, precision: str, extra=()) -> dict:
    """One export in its own process (``export_child.py``): its JSON figures + the process's."""
    label = " ".join([target, precision, *extra])
    log(f"export {name} -> {label} (subprocess)")
    r = run_measured([PY, str(HERE / "export_child.py"), "--checkpoint", str(ckpt), "--target", target,
                      "--precision", precision, "--out", str(path), *extra], anon_cap=int(18 * GiB))
    if r["rc"] != 0 or r["result"] is None:
        raise RuntimeError(f"export {name} {label} failed (rc {r['rc']}, {r['killed']}):\n"
                           + "\n".join(r["stderr_tail"]))
    res = r.pop("result")
    r.pop("stderr_tail")
    log(f"  {r['wall_s']:.1f}s wall ({res['seconds']:.1f}s load+emit), peak RSS "
        f"{r['peak_rss_bytes'] / 2**20:.0f} MiB, weights {res['weight_bytes'] / 2**20:.1f} MiB")
    return {**res, **r, "path": str(path)}


def export_cost(name: str, ckpt: Path, work: Path, targets=TARGETS) -> dict:
    """Each target exported in its own process: time, peak RSS, weight bytes, ops."""
    return {target: _export(name, ckpt, work / f"{name}-{precision}{SUFFIX[target]}", target, precision)
            for target, precision in targets}


def prefill_chunks(graph) -> list:
    """The ONNX prefill chunks this checkpoint takes (T <= its context_length, when it declares one)."""
    ctx = graph.config.context_length
    return [T for T in PREFILL_CHUNKS if ctx is None or T <= ctx]


def export_prefill(name: str, ckpt: Path, work: Path, graph) -> dict:
    """The prefill exports, once per config (reused by the prefill timings), each in its own process:
    ONNX fp32 at every chunk of :func:`prefill_chunks` and the headline chunk with ``last_logits_only``;
    Core ML fp16 with ``COREML_PREFILL_CHUNK`` (capped at the context length), for its op counts."""
    chunks = prefill_chunks(graph)
    out = {}
    for T in chunks:  # the headline chunk first, then its last-logits variant, then the smaller chunks
        out[f"onnx-prefill-T{T}"] = _export(name, ckpt, work / f"{name}-prefill{T}.onnx", "onnx", "fp32",
                                            ("--prefill-chunk", str(T)))
        if T == chunks[0]:
            out[f"onnx-prefill-T{T}-last"] = _export(name, ckpt, work / f"{name}-prefill{T}-last.onnx", "onnx",
                                                     "fp32", ("--prefill-chunk", str(T), "--last-logits-only"))
    ctx = graph.config.context_length
    Tc = COREML_PREFILL_CHUNK if ctx is None else min(COREML_PREFILL_CHUNK, ctx)
    out[f"coreml-prefill-T{Tc}"] = _export(name, ckpt, work / f"{name}-prefill{Tc}-fp16.mlpackage", "coreml",
                                           "fp16", ("--prefill-chunk", str(Tc)))
    return out


def prefill_graphs(exports: dict) -> dict:
    """name -> (the .prefill.onnx path, T) of the ONNX prefill exports, the headline chunk first."""
    return {k: (next(Path(f) for f in v["files"] if f.endswith(".prefill.onnx")), v["prefill_chunk"])
            for k, v in exports.items() if k.startswith("onnx-prefill")}


def remove_artifacts(exports: dict) -> None:
    for v in exports.values():
        for f in {v["path"], *v.get("files", ())}:
            p = Path(f)
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


def config_info(graph, kind: str, ckpt: Path) -> dict:
    c = graph.config
    b0 = graph.blocks[0]
    shape = (f"hidden {c.embedding_dim}, {len(graph.blocks)} blocks "
             f"({'/'.join(sorted({b.kind for b in graph.blocks}))}), {b0.num_heads} heads, vocab {c.vocab_size}")
    return {"format": {"hf": "transformers xLSTMForCausalLM", "hybrid": "xlstm xLSTMLMModel"}[kind],
            "family": c.family, "params": graph.num_params, "checkpoint_weight_bytes": graph.weight_bytes,
            "shape": shape, "checkpoint": str(ckpt)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=HERE / "RESULTS.md")
    ap.add_argument("--work", type=Path, default=Path("/tmp/xlstm-export-bench"),
                    help="checkpoints and artifacts (deleted at the end unless --keep)")
    ap.add_argument("--configs", default="tiny,hybrid,100m")
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                    help="torch threads and ORT intra-op threads (default: the usable cores)")
    ap.add_argument("--with-7b", action="store_true", help="also the xLSTM-7B-shaped export (long; ~45 GB disk)")
    ap.add_argument("--only-7b", action="store_true", help="only the 7B section (re-renders RESULTS.md)")
    ap.add_argument("--7b-variants", dest="seven_variants", default=None,
                    help="comma-separated 7B exports to run, e.g. coreml+int4,onnx+int4 (default: all; the others "
                         "are carried from the last run)")
    ap.add_argument("--render-only", action="store_true",
                    help="only re-write --out from results.json (and results-7b.json) beside it")
    ap.add_argument("--only-quant", action="store_true",
                    help="only the compressed-weights section (benchmarks/quant.py), merged into results.json")
    ap.add_argument("--quant-rounds", type=int, default=5, help="interleaved rounds of the compressed-weights timings")
    ap.add_argument("--quick", action="store_true", help="few repeats (a smoke run; figures not for RESULTS.md)")
    ap.add_argument("--keep", action="store_true", help="keep --work")
    ap.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS",
                    help="before each config's decode and prefill timings, wait up to this long for a 1-min "
                         "load average < 0.7")
    a = ap.parse_args(argv)

    import torch

    torch.set_num_threads(a.threads)
    from report import render  # noqa: E402

    json_path = a.out.with_name("results.json")
    json_7b = a.out.with_name("results-7b.json")
    json_et = a.out.with_name("results-executorch.json")  # executorch_bench.py's run, carried into RESULTS.md
    et = json.loads(json_et.read_text()) if json_et.exists() else None
    if a.render_only:
        a.out.write_text(render(json.loads(json_path.read_text()),
                                json.loads(json_7b.read_text()) if json_7b.exists() else None, et))
        log(f"wrote {a.out} from {json_path}")
        return 0
    args = list(sys.argv[1:] if argv is None else argv)
    command = " ".join(["python benchmarks/run.py"] + [os.path.relpath(x, REPO) if x.startswith("/") and
                                                       x.startswith(str(REPO)) else x for x in args])
    machine = machine_info()
    results = {"machine": machine, "command": command, "load_average_start": os.getloadavg(),
               "settings": {"torch_threads": torch.get_num_threads(), "ort_intra_op_threads": a.threads,
                            "ort_inter_op_threads": 1, "quick": a.quick}}
    a.work.mkdir(parents=True, exist_ok=True)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    if a.only_7b or a.only_quant:
        results = json.loads(json_path.read_text()) if json_path.exists() else None
        if a.only_quant and results is None:
            raise SystemExit(f"--only-quant merges into {json_path}, which does not exist: run the benchmark first")
    else:
        from xlstm_export.frontends import load_checkpoint

        import speed

        results.update(configs={}, export={}, prefill_export={}, decode={}, prefill={})
        waited = [0.0]

        def quiet() -> tuple:
            """--wait-quiet: wait for an idle machine (the time waited is recorded); the load averages."""
            if not a.wait_quiet:
                return os.getloadavg()
            t0 = time.perf_counter()
            la = wait_quiet(a.wait_quiet)
            waited[0] += time.perf_counter() - t0
            return la

        for name in [c for c in a.configs.split(",") if c]:
            kind = "hybrid" if name == "hybrid" else "hf"
            log(f"== {name}: building the checkpoint")
            ckpt = build_hybrid_checkpoint(a.work) if kind == "hybrid" else build_hf_checkpoint(name, a.work)
            graph = load_checkpoint(ckpt)
            results["configs"][name] = config_info(graph, kind, ckpt)
            results["export"][name] = export_cost(name, ckpt, a.work)
            results["prefill_export"][name] = export_prefill(name, ckpt, a.work, graph)
            arts = {t: Path(v["path"]) for t, v in results["export"][name].items()}
            dw, dr, pw, pr, ps = QUICK_REPEATS if a.quick else REPEATS[name]
            results.setdefault("load_before_timings", {})[name] = quiet()
            for th in sorted({a.threads, 1}, reverse=True):
                log(f"== {name}: decode-step latency, {th} thread(s) ({dw} warm-up + {dr} timed steps each)")
                torch.set_num_threads(th)
                key = name if th == a.threads else f"{name}, 1 thread"
                results["decode"][key] = speed.decode_latency(kind, ckpt, graph, arts, th, dw, dr)
            torch.set_num_threads(a.threads)
            results.setdefault("load_before_prefill", {})[name] = quiet()
            log(f"== {name}: prefill of {speed.PREFILL_TOKENS} tokens, {a.threads} thread(s)")
            results["prefill"][name] = speed.prefill_latency(
                kind, ckpt, graph, arts, a.threads, pw, pr, max_seconds=ps,
                prefill_graphs=prefill_graphs(results["prefill_export"][name]))
            results.setdefault("load_after_timings", {})[name] = os.getloadavg()
            remove_artifacts(results["export"][name])
            remove_artifacts(results["prefill_export"][name])
        results["seconds"] = round(time.perf_counter() - t_start, 1)
        results["waited_quiet_seconds"] = round(waited[0], 1)
        results["load_average_end"] = os.getloadavg()
    if a.only_quant or (not a.only_7b and "100m" in a.configs.split(",")):
        import quant

        rounds, repeats = (2, 5) if a.quick else (a.quant_rounds, 60)
        results["quant"] = quant.run(a.work / "quant", a.threads, "100m", "tiny", rounds, repeats=repeats)
    if a.with_7b or a.only_7b:
        import big7b

        previous = json.loads(json_7b.read_text()) if json_7b.exists() else None
        variants = big7b.VARIANTS if a.seven_variants is None else tuple(
            (v.split("+")[0], v.split("+")[1] if "+" in v else None) for v in a.seven_variants.split(","))
        seven = big7b.run(a.work / "7b", machine=machine, command=command, variants=variants, previous=previous)
        json_7b.write_text(json.dumps(seven, indent=1) + "\n")
    seven = json.loads(json_7b.read_text()) if json_7b.exists() else None
    if not a.only_7b:
        json_path.write_text(json.dumps(results, indent=1) + "\n")
    if results is not None:  # --only-7b before any full run: the 7B figures are in results-7b.json only
        a.out.write_text(render(results, seven, et))
    log(f"wrote {a.out if results is not None else json_7b} in {time.perf_counter() - t_start:.0f}s")
    if not a.keep:
        shutil.rmtree(a.work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
