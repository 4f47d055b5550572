"""Compressed ONNX weights: decode-step latency of int8 / int4 graphs against fp32, artifact bytes per
precision, and how much of each compressed form ORT's Core ML EP would take.

    python benchmarks/run.py --out benchmarks/RESULTS.md --only-quant     # this section alone
    python benchmarks/quant.py --config 100m --rounds 5                   # figures printed as JSON

Latency: the step graphs of one checkpoint (fp32; int8, int4 and asymmetric int4 block 32 as
``MatMulNBits``; int4 as blocked ``DequantizeLinear -> MatMul``, which ORT's CPU EP fuses into MatMulNBits
itself) on ORT's CPU EP at ``threads`` intra-op threads, all in this one process. The machine is shared,
so the variants are timed in interleaved **rounds** (each round times every variant once, warm-up then
``repeats`` steps); a variant's figure is the median over rounds of its per-round median, and a speed-up
is the median over rounds of the per-round ratio (contention hits both sides of a ratio alike).

Core ML EP share: ``python -m onnxruntime.tools.check_onnx_model_mobile_usability --log_level debug``
on each form's step graph of a small checkpoint (it reads the model, runs nothing): partitions, nodes
the MLProgram EP takes, and the ops it does not.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import PY, build_hf_checkpoint, log, time_calls  # noqa: E402

# (label, scheme or None, symmetric, format)
VARIANTS: Tuple[Tuple[str, Optional[str], bool, str], ...] = (
    ("fp32", None, True, "matmulnbits"),
    ("int8", "int8", True, "matmulnbits"),
    ("int4", "int4", True, "matmulnbits"),
    ("int4-asym", "int4", False, "matmulnbits"),
    ("int4-qdq", "int4", True, "qdq"),
)
USABILITY = (("fp32", None, "matmulnbits"), ("int8 matmulnbits", "int8", "matmulnbits"),
             ("int4 matmulnbits", "int4", "matmulnbits"), ("int8 qdq", "int8", "qdq"), ("int4 qdq", "int4", "qdq"))


def _options(scheme: Optional[str], symmetric: bool, fmt: str, block: int = 32):
    from xlstm_export.lowering.quant import Compression
    from xlstm_export.onnx import OnnxOptions

    comp = Compression(scheme, block, symmetric) if scheme else None
    return OnnxOptions(compression=comp, quantize_format=fmt, force=True)


def export_variants(graph, work: Path, name: str, variants=VARIANTS) -> Dict[str, dict]:
    """Each variant's step graph: path, export seconds, weight bytes, bytes on disk (model + data)."""
    from xlstm_export.onnx.emit import emit

    out = {}
    for label, scheme, sym, fmt in variants:
        path = work / f"{name}-{label}.onnx"
        t0 = time.perf_counter()
        art = emit(graph, _options(scheme, sym, fmt), path)
        secs = time.perf_counter() - t0
        disk = sum(Path(f).stat().st_size for f in art.files)
        out[label] = {"path": str(path), "files": [str(f) for f in art.files], "seconds": round(secs, 2),
                      "weight_bytes": art.stats["weight_bytes"], "artifact_bytes": disk,
                      "precision": art.precision, "format": fmt if scheme else None,
                      "compressed_nodes": art.stats.get("compressed_nodes", 0)}
        log(f"  export {name} {label}: {secs:.1f}s, {disk / 2**20:.1f} MiB on disk")
    return out


def decode_rounds(paths: Dict[str, Path], vocab: int, threads: int, rounds: int, warmup: int,
                  repeats: int) -> Dict[str, dict]:
    """Interleaved rounds of every variant's decode step (see the module docstring)."""
    from speed import step_onnx

    steps = {k: step_onnx(p, vocab, threads) for k, p in paths.items()}
    per_round: Dict[str, List[float]] = {k: [] for k in steps}
    loads = []
    for r in range(rounds):
        loads.append(os.getloadavg()[0])
        for k, fn in steps.items():
            per_round[k].append(time_calls(fn, warmup, repeats)["median_ms"])
        log(f"  round {r + 1}/{rounds}: " + ", ".join(f"{k} {v[-1]:.2f} ms" for k, v in per_round.items()))
    base = per_round["fp32"]
    out = {}
    for k, ts in per_round.items():
        ratios = [b / t for b, t in zip(base, ts)]
        out[k] = {"median_ms": statistics.median(ts), "rounds_ms": ts, "speedup_vs_fp32": statistics.median(ratios),
                  "speedup_rounds": ratios}
    out["_load_1min"] = loads
    return out


def usability(path: Path) -> dict:
    """ORT's mobile usability checker, its Core ML MLProgram section parsed."""
    res = subprocess.run([PY, "-m", "onnxruntime.tools.check_onnx_model_mobile_usability", "--log_level", "debug",
                          str(path)], capture_output=True, text=True, timeout=600)
    log_text = res.stdout + res.stderr
    section = log_text[log_text.index("Checking CoreML MLProgram"):] if "Checking CoreML MLProgram" in log_text else ""
    m = re.search(r"(\d+) partitions with a total of (\d+)/(\d+) nodes", section)
    if res.returncode != 0 or not m:
        raise RuntimeError(f"usability checker on {path} failed:\n{log_text[-2000:]}")
    sizes = re.search(r"Partition sizes: \[([^\]]*)\]", section)
    unsupported = re.search(r"Unsupported ops: (.*)", section)
    return {"partitions": int(m.group(1)), "supported": int(m.group(2)), "nodes": int(m.group(3)),
            "partition_sizes": [int(x) for x in sizes.group(1).split(",") if x.strip()] if sizes else [],
            "unsupported": unsupported.group(1).strip() if unsupported else ""}


def coreml_share(graph, work: Path, name: str) -> Dict[str, dict]:
    from xlstm_export.onnx.emit import emit

    out = {}
    for label, scheme, fmt in USABILITY:
        path = work / f"{name}-usability-{label.replace(' ', '-')}.onnx"
        art = emit(graph, _options(scheme, True, fmt), path)
        out[label] = {**usability(path), "opset": _opset(path)}
        for f in art.files:
            Path(f).unlink(missing_ok=True)
    return out


def _opset(path: Path) -> int:
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    return next(int(o.version) for o in m.opset_import if o.domain in ("", "ai.onnx"))


def run(work: Path, threads: int, config: str = "100m", usability_config: str = "tiny", rounds: int = 5,
        warmup: int = 10, repeats: int = 60) -> dict:
    """Every figure of the section: latency and bytes at ``config``, Core ML EP shares at ``usability_config``."""
    from common import machine_info

    from xlstm_export.frontends import load_checkpoint

    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    log(f"== quant: {config} checkpoint, exports")
    graph = load_checkpoint(build_hf_checkpoint(config, work))
    exports = export_variants(graph, work, config)
    log(f"== quant: {config} decode step, {threads} thread(s), {rounds} interleaved rounds")
    decode = decode_rounds({k: Path(v["path"]) for k, v in exports.items()}, graph.config.vocab_size, threads,
                           rounds, warmup, repeats)
    for v in exports.values():
        for f in v["files"]:
            Path(f).unlink(missing_ok=True)
    log(f"== quant: Core ML EP share ({usability_config})")
    share = coreml_share(load_checkpoint(build_hf_checkpoint(usability_config, work)), work, usability_config)
    return {"machine": machine_info(), "config": config, "params": graph.num_params, "threads": threads,
            "rounds": rounds, "warmup": warmup, "repeats": repeats, "exports": exports, "decode": decode,
            "usability_config": usability_config, "coreml_share": share,
            "seconds": round(time.perf_counter() - t0, 1)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="100m")
    ap.add_argument("--usability-config", default="tiny")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=60)
    ap.add_argument("--work", type=Path, default=Path("/tmp/xlstm-export-bench-quant"))
    a = ap.parse_args(argv)
    print(json.dumps(run(a.work, a.threads, a.config, a.usability_config, a.rounds, repeats=a.repeats), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
