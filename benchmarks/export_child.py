"""One export in its own process, for the export-cost figures (``common.run_measured`` watches it).

    python benchmarks/export_child.py --checkpoint CKPT --target onnx|onnx-scan|coreml|torchscript \
        --precision fp32|fp16 --out PATH [--external-data] [--prefill-chunk T [--last-logits-only]]

Imports the target's emitter, notes the RSS after the imports (the baseline any export pays), loads the
checkpoint (headers only) and calls the emitter, as ``xlstm-export <target>`` does without validation.
Prints one JSON line: the peak RSS since exec (``VmHWM``; not ``ru_maxrss``, which Linux carries over
from the forking parent), seconds (load + emit), baseline RSS, the artifact's weight bytes and size on disk,
and for Core ML the MIL ops per decode step counted in the saved package.

``--prefill-chunk T`` (target ``onnx`` or ``coreml``) also writes the prefill graph / function of T tokens, as
``xlstm-export <target> --prefill-chunk T`` does: ONNX writes ``<stem>.onnx`` + ``<stem>.prefill.onnx`` +
``<stem>.onnx.data`` (the JSON adds the prefill graph's node count), Core ML a multifunction package whose
``prefill`` function's ops are counted too (``prefill_ops`` per call, ``prefill_ops_per_token``).
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from pathlib import Path


def rss_now(key: str = "VmRSS") -> int:
    """This process's RSS (``VmRSS``) or its peak since exec (``VmHWM``), in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return 0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", required=True)
    from xlstm_export.targets import KINDS, TARGETS

    ap.add_argument("--target", required=True, choices=sorted(KINDS), help="an artifact kind of the target registry")
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--out", required=True)
    ap.add_argument("--external-data", action="store_true")
    ap.add_argument("--prefill-chunk", type=int, default=None, help="also the prefill graph / function of T tokens")
    ap.add_argument("--last-logits-only", action="store_true", help="the prefill returns the chunk's last logits")
    ap.add_argument("--quantize", default=None, help="compressed weights (int8, int4, lut4, lut6)")
    a = ap.parse_args()
    out = Path(a.out)
    t_import = time.perf_counter()
    from xlstm_export.frontends import load_checkpoint
    from xlstm_export.outputs import bytes_on_disk

    kind = KINDS[a.target]
    extra = {"coreml": {"swift": False}, "onnx": {"external_data": True if a.external_data else None}}
    options = dict(precision=a.precision, force=True, **extra.get(kind.target, {}))
    if a.quantize:
        options["quantize"] = a.quantize
    if a.prefill_chunk is not None:  # the target's own options (a kind's fixed chunk would override them)
        options.update(kind.fixed, prefill_chunk=a.prefill_chunk, last_logits_only=a.last_logits_only)
        emit = TARGETS[kind.target].emit
    else:
        emit = kind.emit
    if kind.target == "torchscript":
        import torch  # noqa: F401  (the emitter imports it lazily; count it in the baseline)

    importlib.import_module(f"xlstm_export.{kind.target}")  # the target's own imports, in the baseline
    baseline = rss_now()
    print(f"[child] {a.target} {a.precision}: imports {time.perf_counter() - t_import:.1f}s, "
          f"RSS {baseline / 2**20:.0f} MiB; exporting {a.checkpoint} -> {out}", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    graph = load_checkpoint(a.checkpoint)
    art = emit(graph, out, **options)
    seconds = time.perf_counter() - t0
    stats = dict(art.stats)
    weight_bytes = stats.get("weight_bytes")
    if weight_bytes is None:  # TorchScript: the scripted module's tensors, in the chosen precision
        weight_bytes = graph.num_params * {"fp32": 4, "fp16": 2, "bf16": 2}[a.precision]
    result = {"target": a.target, "precision": art.precision, "seconds": round(seconds, 2),
              "baseline_rss_bytes": baseline, "weight_bytes": int(weight_bytes),
              "artifact_bytes": bytes_on_disk(TARGETS[kind.target].files_of(out)), "params": graph.num_params,
              "checkpoint_weight_bytes": graph.weight_bytes, "files": [str(p) for p in art.files]}
    if a.target == "coreml":
        import coremltools as ct

        from xlstm_export.coreml.emit import count_ops

        spec = ct.models.MLModel(str(out), skip_model_load=True).get_spec()
        ops = count_ops(spec)
        result.update(ops_per_step=ops["ops_per_step"], consts=ops["consts"], op_types=ops["op_types"],
                      blocks=len(graph.blocks))
        if a.prefill_chunk is not None:  # counted in the saved package, as main's
            from xlstm_export.coreml.emit import PREFILL_FUNCTION

            p = count_ops(spec, PREFILL_FUNCTION)
            result.update(prefill_chunk=a.prefill_chunk, last_logits_only=a.last_logits_only,
                          prefill_ops=p["ops_per_step"], prefill_consts=p["consts"],
                          prefill_op_types=p["op_types"],
                          prefill_ops_per_token=p["ops_per_step"] / a.prefill_chunk,
                          emitter_prefill_ops=stats.get("prefill_ops"))
    if a.target.startswith("onnx"):
        result["nodes"] = stats.get("nodes")
        if a.prefill_chunk is not None:  # step + prefill graph + the data file they share
            result["artifact_bytes"] = sum(Path(f).stat().st_size for f in art.files)
            result.update(prefill_chunk=a.prefill_chunk, last_logits_only=a.last_logits_only,
                          prefill_nodes=stats.get("prefill_nodes"))
    result["vmhwm_bytes"] = rss_now("VmHWM")
    print(f"[child] done in {seconds:.1f}s", file=sys.stderr, flush=True)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
