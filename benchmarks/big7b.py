"""An xLSTM-7B-shaped transformers checkpoint (the real config, generated weights), exported to ONNX fp16
with external data and to Core ML fp16, each in its own watched process (peak RSS, time).

    python benchmarks/run.py --out benchmarks/RESULTS.md --only-7b      # this section alone

The checkpoint: NX-AI/xLSTM-7b's ``config.json`` fields below; tensor names and shapes from transformers'
own ``xLSTMForCausalLM`` built on the meta device (no memory); values written tensor by tensor as bf16
safetensors shards (``model-0000i-of-0000n.safetensors`` + index, as on the Hub), real numbers on disk
(not a sparse file): the exporters read and convert every one. ~13.7 GB; deleted at the end, and each
artifact right after its figures are taken.

An export that cannot fit is stopped before the machine runs out of memory (``common.run_measured``):
the section then says at which figure, and how to run it on a larger machine.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np

from xlstm_export.frontends.safetensors_io import float32_to_bf16_bits

from common import HF_CPU_SETTINGS, REPO, GiB, PY, log, run_measured

HERE = Path(__file__).resolve().parent

# NX-AI/xLSTM-7b's config.json (the fields that shape the model; its kernels are the Triton ones)
XLSTM_7B = {
    "model_type": "xlstm", "architectures": ["xLSTMForCausalLM"], "vocab_size": 50304, "hidden_size": 4096,
    "embedding_dim": 4096, "num_hidden_layers": 32, "num_blocks": 32, "num_heads": 8, "use_bias": False,
    "norm_eps": 1e-6, "norm_reduction_force_float32": True, "add_out_norm": True, "qk_dim_factor": 0.5,
    "v_dim_factor": 1.0, "ffn_proj_factor": 2.667, "ffn_round_up_to_multiple_of": 64, "gate_soft_cap": 15.0,
    "output_logit_soft_cap": 30.0, "weight_mode": "single", "tie_word_embeddings": False, "eps": 1e-6,
    "chunkwise_kernel": "chunkwise--triton_xl_chunk", "sequence_kernel": "native_sequence__triton",
    "step_kernel": "triton", "mode": "inference", "chunk_size": 64, "return_last_states": True,
    "autocast_kernel_dtype": "bfloat16", "inference_state_dtype": "float32", "dtype": "bfloat16",
    "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1,
}
SHARD_BYTES = 5 * 10**9
CHUNK = 1 << 24  # elements generated at a time (64 MB of float32)
DISK_NEEDED = 32 * 10**9  # checkpoint + the larger artifact + slack
ANON_CAP = int(20.5 * GiB)  # of this machine's 24 GiB: stop an export before it takes the machine down
# what to run where this machine is too small (the `device` machine: 128 GiB); see RESULTS.md
DEVICE_HINT = ("python3 benchmarks/run.py --out benchmarks/RESULTS.md --only-7b  (on a machine with >= 48 GiB "
               "of memory and 35 GB of disk, with this repo's dependencies installed)")


def shapes_from_upstream(config: dict) -> dict:
    import torch
    from transformers import xLSTMConfig, xLSTMForCausalLM

    kw = {k: v for k, v in config.items() if k not in ("model_type", "architectures", "dtype")}
    kw.update(HF_CPU_SETTINGS)  # the Triton kernels the config names are not installed here; no effect on shapes
    with torch.device("meta"):
        model = xLSTMForCausalLM(xLSTMConfig(**kw))
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def values(name: str, shape: tuple, rng: np.random.Generator, n0: int, n: int) -> np.ndarray:
    """``n`` float32 values (from element ``n0``) of a small tensor: norms ~1, input-gate bias ~-10,
    forget-gate bias in [3, 6] (xLSTM's init)."""
    if name.endswith("igate_preact.bias"):
        return np.full(n, -10.0, np.float32) + rng.standard_normal(n, dtype=np.float32) * 0.1
    if name.endswith("fgate_preact.bias"):
        return np.linspace(3.0, 6.0, shape[0], dtype=np.float32)[n0:n0 + n]
    if "norm" in name:
        return 1.0 + rng.standard_normal(n, dtype=np.float32) * 0.02
    return rng.standard_normal(n, dtype=np.float32) * np.float32(0.02)


class WeightSource:
    """Matrix weights N(0, 0.02) as bf16: a pool of 2^24 seeded values, each chunk a slice of it at a
    random offset (drawing 6.9e9 normals one by one takes ~8 min on 2 cores; this runs at disk speed)."""

    POOL = 1 << 24

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)
        pool = float32_to_bf16_bits(self.rng.standard_normal(self.POOL + CHUNK, dtype=np.float32) * np.float32(0.02))
        self.pool = pool

    def chunk(self, name: str, shape: tuple, n0: int, n: int) -> bytes:
        if len(shape) == 1:  # norms, biases: computed
            return float32_to_bf16_bits(values(name, shape, self.rng, n0, n)).tobytes()
        off = int(self.rng.integers(0, self.POOL))
        return self.pool[off:off + n].tobytes()


def write_checkpoint(d: Path, seed: int = 0, config: dict = XLSTM_7B, shard_bytes: int = SHARD_BYTES) -> dict:
    """A transformers checkpoint of ``config`` (default: xLSTM-7B's) with generated bf16 weights."""
    t0 = time.perf_counter()
    d.mkdir(parents=True, exist_ok=True)
    shapes = shapes_from_upstream(config)
    shards, cur, cur_bytes = [], [], 0
    for name, shape in shapes.items():
        nb = int(np.prod(shape)) * 2
        if cur and cur_bytes + nb > shard_bytes:
            shards.append(cur)
            cur, cur_bytes = [], 0
        cur.append(name)
        cur_bytes += nb
    shards.append(cur)
    src = WeightSource(seed)
    weight_map, total = {}, 0
    for i, names in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        header, off = {"__metadata__": {"format": "pt"}}, 0
        for name in names:
            nb = int(np.prod(shapes[name])) * 2
            header[name] = {"dtype": "BF16", "shape": list(shapes[name]), "data_offsets": [off, off + nb]}
            off += nb
        raw = json.dumps(header).encode()
        raw += b" " * (-len(raw) % 8)
        with open(d / fname, "wb") as f:
            f.write(len(raw).to_bytes(8, "little"))
            f.write(raw)
            for name in names:
                numel = int(np.prod(shapes[name]))
                for n0 in range(0, numel, CHUNK):
                    f.write(src.chunk(name, shapes[name], n0, min(CHUNK, numel - n0)))
                weight_map[name] = fname
        total += off
        log(f"  7B checkpoint: wrote {fname} ({off / 1e9:.2f} GB, {time.perf_counter() - t0:.0f}s)")
    (d / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1))
    (d / "config.json").write_text(json.dumps(config, indent=1))
    params = sum(int(np.prod(s)) for s in shapes.values())
    return {"params": params, "bytes": total, "shards": len(shards), "tensors": len(shapes),
            "seconds": round(time.perf_counter() - t0, 1)}


# (target, compression): what the 7B section exports. int4: projections int4 block 32 (round-to-nearest with
# the clipping search: no calibration text for generated weights), embedding and LM head int8 (the policy)
VARIANTS = (("onnx", None), ("coreml", None), ("coreml", "int4"), ("onnx", "int4"))
INT4_GOAL_BYTES = 4.2e9  # the compression issue's bound for the int4 Core ML package


def export(ckpt: Path, target: str, out: Path, timeout: float, quantize: str | None = None) -> dict:
    cmd = [PY, str(HERE / "export_child.py"), "--checkpoint", str(ckpt), "--target", target,
           "--precision", "fp16", "--out", str(out)]
    if quantize:
        cmd += ["--quantize", quantize]
    if target == "onnx":
        cmd.append("--external-data")
    log(f"7B export -> {target} fp16: {' '.join(cmd[1:])}")
    r = run_measured(cmd, anon_cap=ANON_CAP, min_available=int(1.5 * GiB), timeout=timeout)
    res = r.pop("result") or {}
    if r["rc"] == 0:
        r.pop("stderr_tail")
    entry = {"target": target, "precision": "fp16" + (f"+{quantize}" if quantize else ""),
             **{k: v for k, v in res.items() if k != "op_types"}, **r}
    entry["command"] = " ".join(["python"] + [os.path.relpath(c, REPO) if c.startswith(str(REPO)) else c
                                              for c in cmd[1:]])
    log(f"  rc {r['rc']}, {r['wall_s']:.0f}s, peak RSS {r['peak_rss_bytes'] / GiB:.2f} GiB"
        + (f", killed: {r['killed']}" if r["killed"] else ""))
    for p in (out, out.with_name(out.name + ".data")):
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
    for p in out.parent.glob(f".{out.name}*"):  # an interrupted export's temporaries
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    return entry


def run(work: Path, machine: dict, command: str, timeout: float = 3 * 3600, variants=VARIANTS,
        previous: dict | None = None) -> dict:
    """Export each of ``variants``; with ``previous`` (an earlier run's results), its exports of the
    variants not run now are carried over, marked with their run's date."""
    work.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(work).free
    result = {"machine": machine, "command": command, "exports": {}, "notes": []}
    names = [t if q is None else f"{t}+{q}" for t, q in variants]
    if previous:
        for name, e in previous.get("exports", {}).items():
            if name not in names:
                result["exports"][name] = {**e, "carried_from": previous["machine"]["date"]}
    if free < DISK_NEEDED:
        raise SystemExit(f"7B: {work} has {free / 1e9:.0f} GB free; needs {DISK_NEEDED / 1e9:.0f} GB")
    ckpt = work / "xlstm-7b"
    try:
        log("7B: writing the checkpoint (generated bf16 weights)")
        result["checkpoint"] = write_checkpoint(ckpt)
        for (target, quantize), key in zip(variants, names):
            name = "xlstm-7b" + (f"-{quantize}" if quantize else "") + (".onnx" if target == "onnx" else ".mlpackage")
            e = export(ckpt, target, work / name, timeout, quantize)
            result["exports"][key] = e
            if e["rc"] != 0:
                result["notes"].append(
                    f"{target}: did not complete on this machine "
                    f"({e['killed'] or 'exit status ' + str(e['rc'])}; sampled peak RSS "
                    f"{e['peak_rss_bytes'] / GiB:.2f} GiB, anonymous {e['peak_anon_bytes_sampled'] / GiB:.2f} GiB). "
                    f"Run it where it fits: {DEVICE_HINT}.")
    finally:
        shutil.rmtree(ckpt, ignore_errors=True)
    return result
