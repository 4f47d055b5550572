"""RESULTS.md from the figures of ``run.py`` (``results.json``, ``results-7b.json``) and of ``executorch_bench.py``
(``results-executorch.json``, its own run)."""

from __future__ import annotations

import re
from typing import List, Optional

GOAL_ONNX, GOAL_TS, GOAL_RSS = 3.0, 1.5, 1.5
# the ONNX prefill graph (chunk PREFILL_GOAL_CHUNK) at PREFILL_GOAL_CONFIG: >= GOAL_PREFILL_SCAN x faster than
# the Scan graph, at most GOAL_PREFILL_REF x the reference chunkwise form's time
GOAL_PREFILL_SCAN, GOAL_PREFILL_REF, PREFILL_GOAL_CHUNK, PREFILL_GOAL_CONFIG = 8.0, 1.5, 64, "100m"
GOAL_INT4 = 2.0  # ONNX int4 (MatMulNBits) decode step vs the fp32 step graph, same run
DECODE_ORDER = ("upstream", "reference", "torchscript", "onnx")
DECODE_TEXT = {
    "upstream": "upstream eager step",
    "reference": "our reference, eager",
    "torchscript": "TorchScript artifact",
    "onnx": "ONNX step graph, ORT CPU EP",
}
PREFILL_TEXT = {
    "onnx-scan": "ONNX Scan graph, one call",
    "reference-chunkwise": "reference, chunkwise form (chunk 64)",
    "torchscript-chunkwise": "TorchScript artifact, chunkwise",
    "upstream-chunkwise": "upstream (transformers), chunkwise kernel",
    "upstream-step-loop": "upstream (xlstm) step() x 512 (its parallel form stops at context_length)",
    "onnx-step-loop": "ONNX step graph x 512 calls",
}
PREFILL_GRAPH = re.compile(r"onnx-prefill-T(\d+)(-last)?")


def prefill_text(impl: str, t: dict) -> str:
    m = PREFILL_GRAPH.fullmatch(impl)
    if m:
        calls = t.get("calls")
        return (f"ONNX prefill graph, T = {m[1]}" + (", last logits only" if m[2] else "")
                + (f" ({calls} calls)" if calls else ""))
    return PREFILL_TEXT.get(impl, impl)


def mib(n: Optional[float]) -> str:
    return "-" if n is None else f"{n / 2**20:,.0f} MiB" if n < 10 * 2**30 else f"{n / 2**30:,.2f} GiB"


def size(n: Optional[float]) -> str:
    if n is None:
        return "-"
    for unit, k in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= k:
            return f"{n / k:,.2f} {unit}"
    return f"{int(n)} B"


def ms(x: float) -> str:
    return f"{x:.3f}" if x < 10 else f"{x:.1f}" if x < 1000 else f"{x:,.0f}"


def table(header: List[str], rows: List[List[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def yes(ok: bool, ratio: float = 0.0, goal: float = 0.0) -> str:
    """The verdict; for a timing, "(borderline)" when within 25% of its goal (run-to-run noise here)."""
    text = "**met**" if ok else "**not met**"
    if goal and abs(ratio / goal - 1.0) <= 0.25:
        text += " (borderline)"
    return text


def machine_lines(m: dict) -> List[str]:
    v = m["versions"]
    return [
        f"- CPU: {m['cpu']}; {m['usable_cpus']} usable cores ({m['logical_cpus']} logical); "
        f"RAM {m['ram_bytes'] / 2**30:.1f} GiB; {m['os']}",
        f"- Python {m['python']}; " + ", ".join(f"{k} {v[k]}" for k in v),
        f"- commit {m['commit']}, {m['date']}",
    ]


def render(r: dict, seven: Optional[dict], et: Optional[dict] = None) -> str:
    L: List[str] = ["# Benchmarks", ""]
    L += ["All figures below except the 7B section come from one run of", "", f"    {r['command']}", "",
          "(`make bench` runs `python benchmarks/run.py --out benchmarks/RESULTS.md`; `--wait-quiet S` waits up to "
          "S seconds for an idle machine before each config's decode and prefill timings.)", ""]
    if r["settings"].get("quick"):
        L += ["**Smoke run (`--quick`): too few repeats; these figures are not the benchmark.**", ""]
    s = r["settings"]
    L += ["Machine:", ""] + machine_lines(r["machine"])
    if "load_average_end" in r:
        L += [f"- load average (1/5/15 min) at the start {', '.join(f'{x:.2f}' for x in r['load_average_start'])}, "
              f"at the end {', '.join(f'{x:.2f}' for x in r['load_average_end'])}; the run took "
              f"{r['seconds'] / 60:.1f} min" + (f" ({r['waited_quiet_seconds'] / 60:.1f} min of it waiting for an idle "
                                                f"machine)" if r.get("waited_quiet_seconds") else "")]
    if r.get("load_before_timings"):
        L += ["- load average (1/5/15 min) before each config's timings: " + "; ".join(
            f"{n} {', '.join(f'{x:.2f}' for x in v)}" for n, v in r["load_before_timings"].items())]
    if r.get("load_before_prefill"):
        L += ["- load average (1/5/15 min) before each config's prefill timings: " + "; ".join(
            f"{n} {', '.join(f'{x:.2f}' for x in v)}" for n, v in r["load_before_prefill"].items())]
    if r.get("load_after_timings"):
        L += ["- load average (1/5/15 min) after each config's timings: " + "; ".join(
            f"{n} {', '.join(f'{x:.2f}' for x in v)}" for n, v in r["load_after_timings"].items())
              + " (other processes on this machine during the timings slow every figure, multi-threaded torch most)"]
    L += [""]
    L += [f"Threads: `torch.set_num_threads({s['torch_threads']})` for every PyTorch implementation; ONNX Runtime "
          f"CPU EP with `intra_op_num_threads={s['ort_intra_op_threads']}`, `inter_op_num_threads="
          f"{s['ort_inter_op_threads']}`, default graph optimisations. Decode latency is also measured with 1 "
          f"thread for both (tables marked *1 thread*). Timings: warm-up calls, then each call timed "
          f"alone (`time.perf_counter`); median and 90th percentile. Raw figures: `benchmarks/results.json`.", ""]

    # -- goals ----------------------------------------------------------------------------------------
    L += ["## Goals", ""]
    rows = []
    for name, d in r["decode"].items():
        up = d["upstream"]["median_ms"]
        if "thread" in name and not any(n in name for n in ("100m",)):
            continue  # the goals table: every config at the main thread count, and 100M at 1 thread too
        for impl, goal in (("onnx", GOAL_ONNX), ("torchscript", GOAL_TS)):
            x = up / d[impl]["median_ms"]
            rows.append([f"{impl} decode step >= {goal:g}x faster than upstream's eager step", name,
                         f"{x:.2f}x ({ms(up)} -> {ms(d[impl]['median_ms'])} ms)", yes(x >= goal, x, goal)])
    pf = r.get("prefill", {}).get(PREFILL_GOAL_CONFIG, {})
    key = f"onnx-prefill-T{PREFILL_GOAL_CHUNK}"
    if key in pf and "onnx-scan" in pf and "reference-chunkwise" in pf:
        p, scan, ref = (pf[k]["median_ms"] for k in (key, "onnx-scan", "reference-chunkwise"))
        x, y = scan / p, p / ref
        rows.append([f"onnx prefill (T={PREFILL_GOAL_CHUNK}) >= {GOAL_PREFILL_SCAN:g}x faster than the onnx Scan "
                     f"graph (512 tokens)", PREFILL_GOAL_CONFIG, f"{x:.2f}x ({ms(scan)} -> {ms(p)} ms)",
                     yes(x >= GOAL_PREFILL_SCAN, x, GOAL_PREFILL_SCAN)])
        rows.append([f"onnx prefill (T={PREFILL_GOAL_CHUNK}) no more than {GOAL_PREFILL_REF:g}x slower than the "
                     f"reference's chunkwise form (512 tokens)", PREFILL_GOAL_CONFIG,
                     f"{y:.2f}x the reference's time ({ms(ref)} -> {ms(p)} ms)",
                     yes(y <= GOAL_PREFILL_REF, y, GOAL_PREFILL_REF)])
    for name, e in r["export"].items():
        for target, v in e.items():
            ratio = v["peak_rss_bytes"] / v["weight_bytes"]
            if name == "100m":
                rows.append([f"export peak RSS <= {GOAL_RSS:g}x the artifact's weight bytes", f"{name} {target}",
                             f"{ratio:.2f}x ({mib(v['peak_rss_bytes'])} / {mib(v['weight_bytes'])})",
                             yes(ratio <= GOAL_RSS)])
    if seven:
        for target, v in seven["exports"].items():
            if v.get("peak_rss_bytes") and v.get("weight_bytes") and v["rc"] == 0:
                ratio = v["peak_rss_bytes"] / v["weight_bytes"]
                rows.append([f"export peak RSS <= {GOAL_RSS:g}x the artifact's weight bytes", f"7B {target}",
                             f"{ratio:.2f}x ({mib(v['peak_rss_bytes'])} / {mib(v['weight_bytes'])})",
                             yes(ratio <= GOAL_RSS)])
            else:
                rows.append([f"export peak RSS <= {GOAL_RSS:g}x the artifact's weight bytes", f"7B {target}",
                             f"did not finish here: {v.get('killed') or 'rc ' + str(v['rc'])}", "**not measured**"])
    q = r.get("quant")
    if q and "int4" in q.get("decode", {}):
        d = q["decode"]
        x = d["int4"]["speedup_vs_fp32"]
        rows.append([f"onnx int4 (MatMulNBits, block 32) decode step >= {GOAL_INT4:g}x faster than the fp32 step "
                     f"graph ({q['threads']} threads)", q["config"],
                     f"{x:.2f}x ({ms(d['fp32']['median_ms'])} -> {ms(d['int4']['median_ms'])} ms; median of "
                     f"{q['rounds']} interleaved rounds)", yes(x >= GOAL_INT4, x, GOAL_INT4)])
    L += [table(["goal", "config", "measured", "verdict"], rows), ""]
    L += ["Speed-ups are medians of this run. This is a shared 2-core VM: between runs an hour apart the same "
          "step time has differed by up to ~50% (sub-millisecond steps) and ratios by ~25%, so a verdict marked "
          "*borderline* (within 25% of its goal) can fall either way in another run.", ""]
    L += ["Peak RSS is the export process's high-water mark (`VmHWM`): it includes the Python runtime and "
          "libraries (the *baseline* column below, measured after the imports) and the memory-mapped checkpoint "
          "pages the export touched. At the small configs the baseline dominates, so the ratio says more at 100M "
          "and at 7B.", ""]

    # -- configs --------------------------------------------------------------------------------------
    L += ["## Configurations", ""]
    L += [table(["config", "checkpoint format", "shape", "parameters", "checkpoint weights"],
                [[n, c["format"], c["shape"], f"{c['params']:,}", size(c["checkpoint_weight_bytes"])]
                 for n, c in r["configs"].items()]), ""]
    L += ["`tiny` is the `hf` test fixture's scale, `hybrid` the `hybrid` fixture (xlstm `xLSTMLMModel`, "
          "mLSTM + sLSTM blocks), `100m` a transformers xLSTM with hidden 768, 12 blocks, 4 heads, vocab 8192. "
          "Random weights (upstream's init plus seeded noise, as the test fixtures make them). Upstream runs "
          "its CPU kernels in fp32 (`chunkwise--native_autograd`, `native` step, `autocast_kernel_dtype: "
          "float32`).", ""]

    # -- decode ---------------------------------------------------------------------------------------
    L += ["## Decode step latency, batch 1", "",
          "One token in, logits and the carried state out. Upstream: transformers `xLSTMForCausalLM(input_ids=tok, "
          "cache_params=xLSTMCache, use_cache=True)`; for `hybrid`, xlstm `xLSTMLMModel.step(tok, state)`. "
          "Reference: `ReferenceModel.forward_with_states(tok, states)`. TorchScript: the exported `.pt`, "
          "`forward_with_states`. ONNX: the exported step graph, `session.run` with the states fed back. "
          "Core ML packages cannot run on Linux (no Core ML runtime); their MIL op count per step is below.", ""]
    for name, d in r["decode"].items():
        up = d["upstream"]["median_ms"]
        rows = []
        for impl in DECODE_ORDER:
            t = d[impl]
            rows.append([DECODE_TEXT[impl], ms(t["median_ms"]), ms(t["p90_ms"]), f"{1e3 / t['median_ms']:,.0f}",
                         f"{up / t['median_ms']:.2f}x", f"{t['warmup']}+{t['repeats']}"])
        L += [f"**{name}**", "", table(["implementation", "median ms", "p90 ms", "steps/s", "speed-up vs upstream",
                                        "warm-up+timed steps"], rows), ""]

    if "100m" in r["configs"]:
        wb = r["configs"]["100m"]["checkpoint_weight_bytes"]
        L += [f"At `100m` a decode step reads every weight once ({size(wb)} in fp32) for one token: the step is "
              "bound by memory bandwidth, not by per-op overhead, so the ratios to upstream are smaller there than "
              "at the small configs, where the overhead of eager PyTorch dominates.", ""]

    # -- prefill --------------------------------------------------------------------------------------
    L += ["## Prefill of 512 tokens, batch 1", "",
          f"From an empty state to the logits of all 512 positions and the final state, every implementation in "
          f"the same process at {s['torch_threads']} threads (ORT `intra_op_num_threads={s['ort_intra_op_threads']}`). "
          "The Scan graph runs the recurrent step once per token (the step graph's lowerings in a `Scan` body), so "
          "it costs about what 512 step calls cost. The ONNX prefill graph (`xlstm-export onnx --prefill-chunk T`: "
          "`model.prefill.onnx`, static T, weights shared with the step graph in `model.onnx.data`) runs the "
          "chunkwise mLSTM form (sLSTM blocks unrolled over the T steps) on T tokens per `session.run`; a prompt "
          "of 512 tokens is 512 / T calls, each call's `<state>.next` fed as the next call's states. *Last logits "
          "only* (`--last-logits-only`) returns the logits of each chunk's last position (B, 1, V) instead of all "
          "T: what generation needs, the LM head on 1 row instead of T. The chunkwise form of the reference, "
          "TorchScript and transformers handles 64 tokens per matrix product. Chunks above a checkpoint's "
          "`context_length` cannot be exported (`hybrid`: 32, so its ONNX prefill graphs are T = 32 and 16).", ""]
    for name, d in r["prefill"].items():
        ref = d["reference-chunkwise"]["median_ms"]
        scan = d["onnx-scan"]["median_ms"]
        up_key = "upstream-chunkwise" if "upstream-chunkwise" in d else "upstream-step-loop"
        up = d[up_key]["median_ms"]
        rows = []
        for impl, t in d.items():
            rows.append([prefill_text(impl, t), ms(t["median_ms"]), ms(t["p90_ms"]),
                         f"{512e3 / t['median_ms']:,.0f}", f"{ref / t['median_ms']:.2f}x",
                         f"{scan / t['median_ms']:.2f}x", f"{up / t['median_ms']:.2f}x",
                         f"{t['warmup']}+{t['repeats']}"])
        L += [f"**{name}**", "", table(["implementation", "median ms", "p90 ms", "tokens/s",
                                        "speed-up vs reference chunkwise", "speed-up vs ONNX Scan",
                                        "speed-up vs upstream", "warm-up+timed"], rows), ""]

    # -- export ---------------------------------------------------------------------------------------
    L += ["## Export cost per target", "",
          "Each export in its own process (`benchmarks/export_child.py`: load the checkpoint, call the emitter; "
          "no validation). Weight bytes: the weights stored in the artifact.", ""]
    rows = []
    for name, e in r["export"].items():
        for target, v in e.items():
            rows.append([name, target, v["precision"], f"{v['seconds']:.2f}", f"{v['wall_s']:.1f}",
                         mib(v["peak_rss_bytes"]), mib(v["baseline_rss_bytes"]), size(v["weight_bytes"]),
                         f"{v['peak_rss_bytes'] / v['weight_bytes']:.2f}x",
                         f"{(v['peak_rss_bytes'] - v['baseline_rss_bytes']) / v['weight_bytes']:.2f}x",
                         size(v["artifact_bytes"])])
    L += [table(["config", "target", "precision", "load+emit s", "process wall s", "peak RSS",
                 "baseline RSS (after imports)", "artifact weight bytes", "peak RSS / weights",
                 "(peak - baseline) / weights", "artifact on disk"], rows), ""]

    L += ["### Core ML: MIL ops per decode step", "",
          "Non-const operations in the saved package's `main` function (one decode step), counted from the "
          "package on disk.", ""]
    rows = []
    for name, e in r["export"].items():
        v = e.get("coreml")
        if v and "ops_per_step" in v:
            top = sorted(((k, n) for k, n in v["op_types"].items() if k != "const"), key=lambda kv: (-kv[1], kv[0]))
            top = ", ".join(f"{k} {n}" for k, n in top[:10])
            rows.append([name, str(v["ops_per_step"]), f"{v['ops_per_step'] / v['blocks']:.1f}", str(v["consts"]),
                         top])
    if seven and "ops_per_step" in seven["exports"].get("coreml", {}):
        v = seven["exports"]["coreml"]
        rows.append(["7B", str(v["ops_per_step"]), f"{v['ops_per_step'] / v['blocks']:.1f}", str(v["consts"]), "-"])
    L += [table(["config", "ops per step", "per block", "consts", "most frequent ops"], rows), ""]
    L += prefill_export_section(r)

    L += quant_section(r.get("quant"))
    L += executorch_section(et)

    # -- 7B -------------------------------------------------------------------------------------------
    L += ["## xLSTM-7B-shaped checkpoint", ""]
    if not seven:
        L += ["Not run yet: `python benchmarks/run.py --out benchmarks/RESULTS.md --with-7b`.", ""]
    else:
        L += seven_section(seven)
    L += ["## Reproduce", "",
          "    make bench                                                     # sections 1-3 (< 20 min here)",
          "    .venv/bin/python benchmarks/run.py --out benchmarks/RESULTS.md --with-7b   # + the 7B section",
          "    .venv/bin/python benchmarks/run.py --out benchmarks/RESULTS.md --only-7b   # the 7B section alone",
          "    .venv/bin/python benchmarks/executorch_bench.py --out benchmarks/RESULTS.md  # the ExecuTorch section",
          ""]
    return "\n".join(L)


def prefill_export_section(r: dict) -> List[str]:
    """The prefill exports (reused by the prefill timings) and Core ML's ops per token, prefill vs decode."""
    pe = r.get("prefill_export")
    if not pe:
        return []
    L = ["### Exports with a prefill graph / function", "",
         "Exported once per config, each in its own process as above, and reused by the prefill timings. ONNX: "
         "`xlstm-export onnx --prefill-chunk T` writes the step graph, the prefill graph and one data file they "
         "share (on disk: all three). Core ML: `xlstm-export coreml --prefill-chunk T` writes one multifunction "
         "package (`main`: the decode step, `prefill`: T tokens), each weight stored once.", ""]
    rows = []
    for name, e in pe.items():
        for key, v in e.items():
            graph = (f"{v['nodes']} / {v['prefill_nodes']} nodes" if key.startswith("onnx")
                     else f"{v['ops_per_step']} / {v['prefill_ops']} ops")
            rows.append([name, key, v["precision"], str(v["prefill_chunk"]), f"{v['seconds']:.2f}",
                         f"{v['wall_s']:.1f}", mib(v["peak_rss_bytes"]), size(v["weight_bytes"]),
                         f"{v['peak_rss_bytes'] / v['weight_bytes']:.2f}x", size(v["artifact_bytes"]), graph])
    L += [table(["config", "artifact", "precision", "chunk T", "load+emit s", "process wall s", "peak RSS",
                 "artifact weight bytes", "peak RSS / weights", "artifact on disk",
                 "step / prefill (ONNX nodes, Core ML MIL ops)"], rows), ""]

    L += ["### Core ML: MIL ops per token, prefill vs decode", "",
          "**Op counts of the saved program, not timings**: Core ML packages cannot run on Linux (no Core ML "
          "runtime). Counted in the package on disk: non-const ops of `main` (one decode step, i.e. one token) "
          "and of `prefill` (one call of T tokens), divided by the tokens each call handles. A prefill op works on "
          "T rows at once, so ops per token says how much per-op dispatch a prompt token pays, not its arithmetic "
          "(which the chunkwise form grows with T: a T x T decay matrix per head).", ""]
    rows = []
    for name, e in pe.items():
        for key, v in e.items():
            if not key.startswith("coreml") or "prefill_ops" not in v:
                continue
            T = v["prefill_chunk"]
            per_tok = v["prefill_ops"] / T
            diff = {k: n - v["op_types"].get(k, 0) for k, n in v["prefill_op_types"].items() if k != "const"}
            more = sorted(((k, n) for k, n in diff.items() if n > 0), key=lambda kv: (-kv[1], kv[0]))
            rows.append([name, v["precision"], str(T), str(v["ops_per_step"]), str(v["prefill_ops"]),
                         f"{per_tok:.2f}", f"{v['ops_per_step'] / per_tok:.1f}x",
                         ", ".join(f"{k} +{n}" for k, n in more[:8]) or "-"])
    L += [table(["config", "precision", "prefill chunk T", "decode: ops per token (main)", "prefill: ops per call",
                 "prefill: ops per token", "decode / prefill ops per token", "prefill's extra ops vs main"],
                rows), ""]
    return L


def quant_section(q: Optional[dict]) -> List[str]:
    """Compressed ONNX weights (``quant.py``): decode step int8 / int4 vs fp32, bytes, Core ML EP share."""
    if not q:
        return []
    m = q["machine"]
    d = q["decode"]
    L = ["## Compressed weights: ONNX decode step and artifact bytes", "",
         f"From `python benchmarks/run.py --only-quant` ({m['date']}, commit {m['commit']}; also part of a full run), "
         f"config `{q['config']}` ({q['params']:,} parameters), ORT CPU EP, `intra_op_num_threads={q['threads']}`, "
         f"default session options. The variants are timed in {q['rounds']} interleaved rounds ({q['warmup']} "
         f"warm-up + {q['repeats']} timed steps per variant per round); a latency is the median of the per-round "
         f"medians, a speed-up the median of the per-round ratios. **Measured on a shared 2-core machine under "
         f"CPU contention from other engineers** (1-min load average at the start of each round: "
         f"{', '.join(f'{x:.1f}' for x in d.get('_load_1min', []))}): absolute times vary between runs by far more "
         f"than the ratios, which is why rounds are interleaved.", ""]
    rows = []
    for k, e in q["exports"].items():
        t = d.get(k)
        rows.append([k, e["precision"], e["format"] or "-", str(e["compressed_nodes"]), size(e["weight_bytes"]),
                     size(e["artifact_bytes"]), f"{e['artifact_bytes'] / q['exports']['fp32']['artifact_bytes']:.3f}",
                     f"{e['seconds']:.1f}", ms(t["median_ms"]) if t else "-",
                     f"{t['speedup_vs_fp32']:.2f}x" if t else "-",
                     ", ".join(f"{x:.2f}" for x in t["speedup_rounds"]) if t else "-"])
    L += [table(["variant", "precision", "format", "compressed nodes", "weight bytes", "artifact on disk",
                 "vs fp32 bytes", "export s", "decode step ms", "speed-up vs fp32", "per-round speed-ups"], rows), ""]
    L += ["- Block 32, round-to-nearest with the clipping search, the policy of `lowering/quant.py` (input/forget "
          "gate projections, norms, conv and biases kept fp32; the embedding and LM head int8; the projections in "
          "the scheme). `int4-asym`: codes with a zero point per block.",
          "- int8 Linears in a MatMulNBits graph (the `int8` variant's projections, every variant's LM head) are "
          "codes + scales dequantized by Cast/Mul of constants, which ORT folds into dense fp32 weights when the "
          "session loads (`onnx/quant.py`, form `int8rows`; hence 0 compressed nodes for `int8`): fp32 speed, int8 "
          "bytes on disk. ORT 1.32's 8-bit MatMulNBits with fp32 activations has no fast kernel (measured during "
          "development: the int4 step with an 8-bit MatMulNBits LM head ran at 1.14x fp32's speed instead of ~1.9x).",
          "- `int4-qdq` (blocked `DequantizeLinear -> MatMul`, the form for the Core ML EP) is slower than fp32 on "
          "the CPU EP: ORT fuses the MatMuls followed by the residual Add into Gemm before its "
          "DequantizeLinear -> MatMulNBits fusion, so the out_proj and FFN down weights are dequantized every call "
          "(and the fused ones quantize activations to int8 unless `session.qdq_matmulnbits_accuracy_level` is "
          "0). On CPU use the MatMulNBits form.", ""]
    share = q.get("coreml_share")
    if share:
        L += [f"### ONNX formats and the Core ML EP ({q['usability_config']} config)", "",
              "`python -m onnxruntime.tools.check_onnx_model_mobile_usability --log_level debug` on each step graph "
              "(it reads the model; the Core ML EP itself runs on Apple devices only).", ""]
        rows = [[k, str(v["opset"]), str(v["partitions"]), f"{v['supported']}/{v['nodes']}",
                 f"{v['supported'] / v['nodes']:.1%}", str(v["partition_sizes"]), v["unsupported"]]
                for k, v in share.items()]
        L += [table(["step graph", "opset", "partitions", "nodes the EP takes", "share", "partition sizes",
                     "ops it does not take"], rows), ""]
    return L


def seven_section(s: dict) -> List[str]:
    c = s["checkpoint"]
    L = [f"From the run of {s['machine']['date']} (commit {s['machine']['commit']}): `{s['command']}`.", "",
         f"The real NX-AI/xLSTM-7b config (hidden 4096, 8 heads, 32 blocks, vocab 50304, qk_dim_factor 0.5, "
         f"v_dim_factor 1, ffn_proj_factor 2.667 rounded to 64, gate/logit soft caps 15/30) with generated "
         f"weights: {c['params']:,} parameters, {size(c['bytes'])} of bf16 safetensors in {c['shards']} shards, "
         f"names and shapes from transformers' own `xLSTMForCausalLM` built on the meta device, values written "
         f"tensor by tensor ({c['seconds']:.0f}s).", ""]
    L += machine_lines(s["machine"]) + [""]
    rows = []
    for target, v in s["exports"].items():
        ok = v["rc"] == 0
        state = "ok" if ok else f"failed: {v.get('killed') or 'rc ' + str(v['rc'])}"
        if v.get("carried_from"):
            state += f" (run of {v['carried_from']})"
        if v.get("run_on"):
            state += f" (on {v['run_on'].split(':')[0]}, {v['machine']['date']})"
        rows.append([target.split("+")[0], v["precision"], state,
                     f"{v['seconds']:.0f}" if ok else "-", f"{v['wall_s']:.0f}", mib(v["peak_rss_bytes"]),
                     mib(v.get("peak_anon_bytes_sampled")),
                     size(v.get("weight_bytes")),
                     f"{v['peak_rss_bytes'] / v['weight_bytes']:.2f}x" if ok and v.get("weight_bytes") else "-",
                     size(v.get("artifact_bytes"))])
    L += [table(["target", "precision", "result", "load+emit s", "process wall s", "peak RSS",
                 "peak anonymous RSS (sampled)", "artifact weight bytes", "peak RSS / weights", "artifact on disk"],
                rows), ""]
    notes = list(s.get("notes", []))
    q4 = s["exports"].get("coreml+int4", {})
    if q4.get("rc") == 0 and q4.get("artifact_bytes"):
        ok = q4["artifact_bytes"] <= 4.2e9 and q4["peak_rss_bytes"] <= 24 * 2**30
        notes.append(f"Goal (compression issue): int4 Core ML package <= 4.2 GB, exported within 24 GiB: "
                     f"{q4['artifact_bytes'] / 1e9:.2f} GB, peak RSS {q4['peak_rss_bytes'] / 2**30:.2f} GiB: "
                     f"**{'met' if ok else 'not met'}**.")
    cm = s["exports"].get("coreml", {})
    if "ops_per_step" in cm:
        notes.append(f"Core ML: {cm['ops_per_step']:,} MIL ops per decode step ({cm['ops_per_step'] / cm['blocks']:.1f} "
                     f"per block), {cm['consts']:,} consts.")
    notes += [f"Export command ({t}; its own process, watched for memory): `{v['command']}`"
              for t, v in s["exports"].items() if v.get("command")]
    notes.append("Matrix weights are slices of a pool of 2^24 seeded N(0, 0.02) bf16 values at random offsets; norms "
                 "and gate biases follow xLSTM's init. The artifacts are not validated here: an fp32 reference of "
                 "6.9B parameters needs ~27 GB of memory (validation runs in the tests, the demo and on the other "
                 "configs).")
    L += [f"- {n}" for n in notes] + [""]
    return L


ET_LABELS = {"upstream": "upstream eager step", "onnx": "ONNX step graph (ORT CPU EP)", "torchscript": "TorchScript",
             "executorch": "ExecuTorch XNNPACK fp32", "executorch-8da8w": "ExecuTorch XNNPACK 8da8w",
             "executorch-8da4w": "ExecuTorch XNNPACK 8da4w"}


def executorch_section(et: Optional[dict]) -> List[str]:
    """The ExecuTorch decode-step section (``executorch_bench.py``: its own run, its own machine lines)."""
    L = ["## ExecuTorch decode step", ""]
    if not et:
        return L + ["Not run yet: `python benchmarks/executorch_bench.py --out benchmarks/RESULTS.md`.", ""]
    L += ["From one run of", "", f"    {et['command']}", "",
          f"at {et['threads']} threads for every implementation (torch, ORT intra-op, ExecuTorch's threadpool), in "
          f"{et['rounds']} interleaved rounds per config; a figure is the median over the rounds of each round's median "
          f"step time (each round's figures are in `results-executorch.json`). The machine is shared with other "
          f"engineers' work: figures were measured under possible contention (load averages below).", ""]
    L += machine_lines(et["machine"])
    cores = et["machine"].get("usable_cpus") or 1
    busy = {n: c["load_before"][0] for n, c in et["configs"].items() if c["load_before"][0] > cores}
    for name, c in et["configs"].items():
        L += [f"- {name}: measured {c['measured_at']}; load average before {', '.join(f'{x:.2f}' for x in c['load_before'])},"
              f" after {', '.join(f'{x:.2f}' for x in c['load_after'])}"]
    L += [""]
    if busy:
        L += [f"**Measured on a busy machine** (1-min load average {', '.join(f'{n} {v:.1f}' for n, v in busy.items())} "
              f"on {cores} cores): every figure is inflated, the multi-threaded ones most, and unevenly: torch's "
              f"(upstream, TorchScript) and ORT's intra-op threads wait for cores that other processes hold. Compare "
              f"with the quiet-machine decode figures of the sections above (same configs) before trusting a ratio; "
              f"rerun with `--wait-quiet 900`.", ""]
    goal_rows = []
    for name, c in et["configs"].items():
        d = c["decode"]
        up, ox = d["upstream"]["median_ms"], d["onnx"]["median_ms"]
        rows = [[ET_LABELS.get(k, k), ms(v["median_ms"]), f"{up / v['median_ms']:.2f}x", f"{ox / v['median_ms']:.2f}x",
                 ", ".join(ms(x) for x in v["rounds_ms"])] for k, v in d.items()]
        L += [f"**{name}** ({c['params']:,} parameters), decode step, batch 1:", "",
              table(["implementation", "median ms", "speed-up vs upstream", "speed-up vs ONNX", "per round (ms)"], rows),
              ""]
        cpu = c.get("cpu_1thread")
        if cpu:
            cx = cpu["onnx"]["median_ms"]
            rows = [[ET_LABELS.get(k, k), ms(v["median_ms"]), f"{cx / v['median_ms']:.2f}x",
                     ", ".join(ms(x) for x in v["rounds_ms"])] for k, v in cpu.items()]
            L += [f"**{name}**, process CPU time of one decode step at 1 thread (less sensitive to other processes' "
                  f"load than wall time):", "",
                  table(["implementation", "median CPU ms", "vs ONNX", "per round (ms)"], rows), ""]
        if "executorch" in d:
            r = ox / d["executorch"]["median_ms"]
            goal_rows.append([name, f"{r:.2f}x ONNX's speed ({ms(ox)} -> {ms(d['executorch']['median_ms'])} ms)",
                              yes(r >= 1.0, r, 1.0) if name == "100m" else "(the goal is set at 100m)"])
            if cpu and "executorch" in cpu:
                rc = cpu["onnx"]["median_ms"] / cpu["executorch"]["median_ms"]
                goal_rows.append([f"{name}, 1 thread, CPU time", f"{rc:.2f}x ONNX's speed ({ms(cpu['onnx']['median_ms'])} "
                                  f"-> {ms(cpu['executorch']['median_ms'])} CPU ms)",
                                  yes(rc >= 1.0, rc, 1.0) if name == "100m" else "(the goal is set at 100m)"])
    L += ["Goal (issue 13): the XNNPACK fp32 decode step at 100m at least as fast as the ONNX step graph on ORT CPU, "
          "same run (the other configs for comparison).", "",
          table(["config", "measured", "verdict"], goal_rows), ""]
    rows = []
    for name, c in et["configs"].items():
        for k, e in c["exports"].items():
            if "delegate_calls" in e:
                ops = ", ".join(f"{o.replace('aten::', '')} {n}" for o, n in list(e["portable_ops"].items())[:8])
                rows.append([name, ET_LABELS.get(k, k), f"{e['export_s']:.0f}" + (" (an earlier run's)" if e.get("cached")
                                                                                 else ""), size(e["bytes"]),
                             str(e["delegate_calls"]), str(sum(e["portable_ops"].values())), ops])
    L += executorch_text_lines(et.get("text"))
    L += ["Programs: export time (lowering included; a program reused from an earlier run over the same "
          "`--work` shows that run's), size, XNNPACK delegate calls per decode step and the "
          "operators that run outside XNNPACK (ExecuTorch's portable kernels) per step:", "",
          table(["config", "program", "export s", "size", "delegate calls", "portable ops", "most frequent portable ops"],
                rows), ""]
    return L


# the compression issue's bounds on the trained LM's held-out text: (perplexity ratio, top-1, top-1 where confident)
TEXT_BOUNDS = {"8da8w": (1.005, None, None), "8da4w": (1.02, 0.90, 0.95)}


def executorch_text_lines(t: Optional[dict]) -> List[str]:
    """The quantized programs' cost on the trained example LM's held-out text (``executorch_bench.py --text``)."""
    if not t:
        return []
    rows = []
    for label, p in t["programs"].items():
        m = p["text"]
        bound = TEXT_BOUNDS.get(label)
        if bound is None:
            verdict = "(the full-precision program)"
        else:
            ok = [m["perplexity_ratio"] <= bound[0]] + ([m["top1_agreement"] >= bound[1]] if bound[1] else []) + \
                 ([m["top1_agreement_confident"] >= bound[2]] if bound[2] else [])
            want = f"x{bound[0]}" + (f", {bound[1]}, {bound[2]}" if bound[1] else "")
            verdict = ("met" if all(ok) else "**not met**") + f" ({want})"
        rows.append([label, size(p["bytes"]), f"{p['export_s']:.0f}", f"{p['max_rel']:.2e}" + ("" if p["passed"] else " (FAIL)"),
                     f"{m['perplexity']:.3f}", f"x{m['perplexity_ratio']:.4f}", f"{m['top1_agreement']:.4f}",
                     f"{m['top1_agreement_confident']:.4f}", verdict])
    return [f"**Quantized programs on text**: the trained example LM (`{t['checkpoint']}`), the step method, "
            f"perplexity on the first {t['tokens']} tokens of its held-out text and teacher-forced top-1 agreement "
            f"with the full-precision reference (`validate --heldout`; 'confident': where the reference's top-two "
            f"margin exceeds 0.25). Parity: max rel of the logits against what the program is judged by (an fp32 "
            f"program the reference; a quantized one the eager module it was exported from). Verdict against the "
            f"compression issue's bounds (int8: perplexity within 0.5%; int4: within 2%, top-1 >= 0.90 and >= 0.95 "
            f"where confident):", "",
            table(["program", "size", "export s", "parity", "perplexity", "vs reference", "top-1", "top-1 confident",
                   "verdict"], rows), ""]
