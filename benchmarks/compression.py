"""Weight compression measured the way users judge it: perplexity on held-out text and teacher-forced top-1
agreement with the full-precision reference, on the trained example LM (``examples/pylm``).

    python benchmarks/compression.py --out benchmarks/COMPRESSION.md     # `make bench` runs it (~5 min)

Sections (raw figures in ``results-compression.json`` beside the output):

1. **Policy**: which weights to compress, measured with our fp32 reference on dequantized weights (what a
   compressed artifact computes, to its base precision's rounding): every weight int4 vs the policy, and
   the policy with one row changed (gates, LM head, embedding), symmetric vs asymmetric, block sizes.
2. **Method**: round-to-nearest without and with the per-block clipping search, and GPTQ calibrated on
   ``calibration.txt`` (training split), int4 block 32.
3. **Per-layer sensitivity**: int4 on one block's weights alone (the rest full precision).
4. **Artifacts**: exported Core ML packages (run by our package executor, coremltools' op semantics; Core
   ML itself needs macOS) and ONNX graphs (ONNX Runtime CPU EP) per scheme: bytes, perplexity, top-1.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from xlstm_export import api  # noqa: E402
from xlstm_export.compress import calibrate, calibration_ids  # noqa: E402
from xlstm_export.lowering.quant import POLICY, Compression  # noqa: E402
from xlstm_export.validation.compressed import compressed_graph  # noqa: E402
from xlstm_export.validation.reference_runner import ReferenceRunner  # noqa: E402
from xlstm_export.validation.text import text_metrics  # noqa: E402


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def policy(**rows) -> dict:
    return {**POLICY, **rows}


def variants(hessians) -> list:
    """(section, label, Compression) of every reference measurement."""
    out = [
        ("policy", "int8, the policy", Compression("int8")),
        ("policy", "int4 b32, the policy (gates kept, embedding and LM head int8)", Compression("int4")),
        ("policy", "int4 b32, every weight int4 (gates, embedding, LM head too)",
         Compression("int4", policy=policy(gates="scheme", embedding="scheme", headwise="scheme"))),
        ("policy", "int4 b32, gates int4", Compression("int4", policy=policy(gates="scheme"))),
        ("policy", "int4 b32, LM head int4", Compression("int4", policy=policy(lm_head="scheme"))),
        ("policy", "int4 b32, LM head kept", Compression("int4", policy=policy(lm_head="keep"))),
        ("policy", "int4 b32, embedding int4", Compression("int4", policy=policy(embedding="scheme"))),
        ("policy", "int4 b32, embedding kept", Compression("int4", policy=policy(embedding="keep"))),
        ("policy", "int4 b32 asymmetric", Compression("int4", symmetric=False)),
        ("policy", "int4 b64", Compression("int4", block_size=64)),
        ("policy", "lut6 (64-entry palette per row)", Compression("lut6")),
        ("policy", "lut4 (16-entry palette per row)", Compression("lut4")),
        ("method", "int4 b32 round-to-nearest, no clipping search", None),  # filled below
        ("method", "int4 b32 round-to-nearest + clipping search (default without calibration)", Compression("int4")),
        ("method", "int4 b32 GPTQ (calibration.txt)", Compression("int4", method="gptq", hessians=hessians)),
        ("method", "int4 b32 asymmetric GPTQ", Compression("int4", symmetric=False, method="gptq", hessians=hessians)),
        ("method", "int8 GPTQ", Compression("int8", method="gptq", hessians=hessians)),
        ("method", "int4 b32 GPTQ, columns in storage order (no act-order)", "gptq-storage-order"),
    ]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default=str(REPO / "examples" / "pylm"))
    ap.add_argument("--out", default=str(HERE / "COMPRESSION.md"))
    ap.add_argument("--tokens", type=int, default=4096, help="held-out tokens scored")
    ap.add_argument("--artifact-tokens", type=int, default=2048, help="held-out tokens scored per artifact")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-artifacts", action="store_true")
    ap.add_argument("--skip-layers", action="store_true")
    ap.add_argument("--only", nargs="*", help="measure only the variants whose label contains one of these")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    ck = Path(args.checkpoint)
    graph = api.load_checkpoint(str(ck))
    ids = calibration_ids(graph, str(ck / "heldout.txt"), "--heldout", limit=args.tokens)
    ref = ReferenceRunner(graph)
    t = time.perf_counter()
    hessians = calibrate(graph, calibration_ids(graph, str(ck / "calibration.txt")))
    calib_s = time.perf_counter() - t
    results = {"checkpoint": str(ck), "params": graph.num_params, "tokens": int(len(ids)),
               "calibration_seconds": calib_s, "reference": [], "layers": [], "artifacts": []}

    import xlstm_export.lowering.quant as q

    out = Path(args.out)

    def save() -> None:  # after every measurement: a long run that stops keeps what it measured
        out.with_name("results-compression.json").write_text(json.dumps(results, indent=1, default=str))
        out.write_text(render(results))

    todo = variants(hessians)
    if args.only:
        todo = [v for v in todo if any(k in v[1] for k in args.only)]
    for section, label, comp in todo:
        t = time.perf_counter()
        if comp is None:  # plain RTN: the clipping grid of one entry
            saved, q.CLIP_GRID = q.CLIP_GRID, (1.0,)
            try:
                g = compressed_graph(graph, Compression("int4"))
            finally:
                q.CLIP_GRID = saved
        elif comp == "gptq-storage-order":
            saved = q.gptq
            q.gptq = lambda w, h, scheme: saved(w, h, scheme, act_order=False)
            try:
                g = compressed_graph(graph, Compression("int4", method="gptq", hessians=hessians))
            finally:
                q.gptq = saved
        else:
            g = compressed_graph(graph, comp)
        build_s = time.perf_counter() - t
        m = text_metrics(ReferenceRunner(g), ref, ids)
        m.update(section=section, label=label, quantize_seconds=build_s)
        results["reference"].append(m)
        save()
        log(f"{label}: ppl x{m['perplexity_ratio']:.4f} top1 {m['top1_agreement']:.4f} "
            f"conf {m['top1_agreement_confident']:.4f} ({build_s:.1f}s)")

    for i in range(0 if args.skip_layers else len(graph.blocks)):
        comp = Compression("int4", keep=tuple(f"blocks.{j}.*" for j in range(len(graph.blocks)) if j != i)
                           + ("embedding.weight", "lm_head.weight"))
        m = text_metrics(ReferenceRunner(compressed_graph(graph, comp)), ref, ids)
        m.update(label=f"block {i} alone int4")
        results["layers"].append(m)
        save()
        log(f"block {i}: ppl x{m['perplexity_ratio']:.4f} top1 {m['top1_agreement']:.4f}")
    if not args.skip_layers:
        comp = Compression("int4", keep=tuple(f"blocks.{j}.*" for j in range(len(graph.blocks))) + ("embedding.weight",))
        m = text_metrics(ReferenceRunner(compressed_graph(graph, comp)), ref, ids)
        m.update(label="LM head alone int4")
        results["layers"].append(m)

    if not args.skip_artifacts:
        artifacts(graph, ck, ids[:args.artifact_tokens], ref, results["artifacts"], save, hessians)
    save()
    log(f"wrote {out}")


ARTIFACTS = (
    ("coreml", "fp16", {}), ("coreml", "fp16", {"quantize": "int8"}), ("coreml", "fp16", {"quantize": "int4"}),
    ("coreml", "fp16", {"quantize": "int4", "calibration": "calibration.txt"}),
    ("coreml", "fp16", {"quantize": "lut6"}), ("coreml", "fp16", {"quantize": "lut4"}),
    ("onnx", "fp32", {}), ("onnx", "fp32", {"quantize": "int8"}), ("onnx", "fp32", {"quantize": "int4"}),
    ("onnx", "fp32", {"quantize": "int4", "calibration": "calibration.txt"}),
    ("onnx", "fp32", {"quantize": "int4", "quantize_format": "qdq"}),
)


def artifacts(graph, ck: Path, ids, ref, rows: list, save, hessians) -> list:
    from xlstm_export.targets import TARGETS
    from xlstm_export.validation import open_artifact

    tmp = Path(tempfile.mkdtemp(prefix="xe-compression-"))
    try:
        for target, precision, opts in ARTIFACTS:
            opts = dict(opts)
            known = {o.dest for o in TARGETS[target].options}
            if not set(opts) <= known | {"calibration"}:
                log(f"skipped {target} {opts}: option not offered by this build")
                continue
            shown = dict(opts)
            if opts.pop("calibration", None):  # GPTQ on the Hessians calibrated once above (calibration.txt)
                opts.pop("quantize")
                opts["compression"] = Compression("int4", method="gptq", hessians=hessians)
            kw = {"prefill_chunk": 64} if target == "coreml" else {"prefill_chunk": 64}
            path = tmp / f"{target}-{len(rows)}{'.mlpackage' if target == 'coreml' else '.onnx'}"
            t = time.perf_counter()
            art = api.export(graph, target, path, precision=precision, **kw, **opts)
            export_s = time.perf_counter() - t
            size = sum(f.stat().st_size for p in art.files for f in ([p] if p.is_file() else p.rglob("*"))
                       if f.is_file())
            runner = open_artifact(art.path, graph)
            t = time.perf_counter()
            m = text_metrics(runner, ref, ids)
            m.update(target=target, precision=art.precision, options=shown,
                     bytes=size, weight_bytes=art.stats.get("weight_bytes"), export_seconds=export_s,
                     score_seconds=time.perf_counter() - t, runtime=getattr(runner, "runtime", "?"))
            rows.append(m)
            save()
            log(f"{target} {art.precision} {m['options']}: {size / 1e6:.2f} MB, ppl x{m['perplexity_ratio']:.4f} "
                f"top1 {m['top1_agreement']:.4f}")
            del runner
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return rows


def _f(x, d=4):
    return "-" if x is None else f"{x:.{d}f}"


def render(r: dict) -> str:
    lines = ["# Weight compression: perplexity and top-1 agreement on held-out text", "",
             f"Checkpoint `{Path(r['checkpoint']).name}` ({r['params'] / 1e6:.2f}M parameters), "
             f"{r['tokens']} held-out tokens scored in windows of 256 from an empty state. Perplexity ratio "
             "and top-1 agreement are against the fp32 reference on the checkpoint's weights; *confident* counts "
             "positions where the reference's top-two logit margin exceeds 0.25. Generated by "
             "`python benchmarks/compression.py`; raw figures in `results-compression.json`.", "",
             f"GPTQ calibration (`calibration.txt`, training split): {r['calibration_seconds']:.1f} s.", ""]
    for section, title, note in (
            ("policy", "## 1. Policy (reference on dequantized weights)",
             "Our fp32 reference running on the dequantized weights: what an artifact computes, to its base "
             "precision's rounding (section 4 has the artifacts)."),
            ("method", "## 2. Method: round-to-nearest vs GPTQ", "")):
        lines += [title, ""] + ([note, ""] if note else [])
        lines += ["| compression | perplexity | x reference | top-1 | top-1 confident |", "|---|---|---|---|---|"]
        for m in r["reference"]:
            if m["section"] == section:
                lines.append(f"| {m['label']} | {m['perplexity']:.3f} | x{m['perplexity_ratio']:.4f} | "
                             f"{_f(m['top1_agreement'])} | {_f(m['top1_agreement_confident'])} |")
        lines.append("")
    ref_ppl = r["reference"][0]["reference_perplexity"] if r["reference"] else float("nan")
    lines += [f"Reference perplexity (fp32, full precision): {ref_ppl:.3f}.", "",
              "## 3. Per-layer sensitivity (int4 b32 on one block alone)", "",
              "| weights int4 | x reference perplexity | top-1 |", "|---|---|---|"]
    lines += [f"| {m['label']} | x{m['perplexity_ratio']:.4f} | {_f(m['top1_agreement'])} |" for m in r["layers"]]
    lines += ["", "## 4. Artifacts", "",
              "Core ML packages run by our package executor (coremltools' op semantics; the Core ML runtime needs "
              "macOS); ONNX graphs by ONNX Runtime's CPU EP. Prefill chunk 64.", "",
              "| target | precision | options | bytes | perplexity | x reference | top-1 | top-1 confident | export s |",
              "|---|---|---|---|---|---|---|---|---|"]
    for m in r["artifacts"]:
        opts = ", ".join(f"{k}={v}" for k, v in m["options"].items()) or "-"
        lines.append(f"| {m['target']} | {m['precision']} | {opts} | {m['bytes'] / 1e6:.2f} MB | {m['perplexity']:.3f} | "
                     f"x{m['perplexity_ratio']:.4f} | {_f(m['top1_agreement'])} | "
                     f"{_f(m['top1_agreement_confident'])} | {m['export_seconds']:.1f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
