"""The reference model on a CUDA (or MPS) device against upstream on the CPU.

    python benchmarks/cuda_reference.py [--device cuda] [--out FILE.json]

For each upstream-made fixture (tests/fixtures.py) and each bundled trained example: full-sequence
logits of our reference on the device vs upstream's on the CPU (relative max |dlogits|), greedy
continuation equality, and the device's prefill time for 512 tokens, chunkwise form vs the sequence
loop, on an HF-format config with random weights (hidden 768, 12 blocks, vocab 50304: 162M parameters).
Its one recorded run (H200, torch 2.11 there): ``cuda_reference_h200.json``. Needs xlstm, mlstm_kernels and transformers importable.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from fixtures import FIXTURES, load_upstream  # noqa: E402

from xlstm_export.frontends import load_checkpoint  # noqa: E402
from xlstm_export.reference import build_model  # noqa: E402


def upstream_logits(model, ids):
    with torch.no_grad():
        out = model(ids)
    out = getattr(out, "logits", out)
    return (out[0] if isinstance(out, tuple) else out).float()


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    elif device == "mps":
        torch.mps.synchronize()


def check(name: str, path: Path, upstream, device: str) -> dict:
    ours = build_model(load_checkpoint(path), device=device)
    ids = torch.randint(0, ours.vocab_size, (2, 30), generator=torch.Generator().manual_seed(0))
    ref = upstream_logits(upstream, ids)
    with torch.no_grad():
        got = ours(ids.to(device)).cpu()
        new = ours.generate_greedy(ids[:, :12].to(device), 10).cpu()
    seq = ids[:, :12]
    for _ in range(10):
        seq = torch.cat([seq, upstream_logits(upstream, seq)[:, -1].argmax(-1, keepdim=True)], 1)
    return {"name": name, "rel_max_dlogits": float((got - ref).abs().max() / ref.abs().max()),
            "greedy_equal": bool(torch.equal(new, seq[:, 12:]))}


def prefill_time(device: str) -> dict:
    from transformers import xLSTMConfig, xLSTMForCausalLM

    torch.manual_seed(0)
    cfg = xLSTMConfig(vocab_size=50304, hidden_size=768, num_heads=4, num_hidden_layers=12,
                      chunkwise_kernel="chunkwise--native_autograd", sequence_kernel="native_sequence__native",
                      step_kernel="native", mode="inference", return_last_states=True)
    with tempfile.TemporaryDirectory() as d:
        xLSTMForCausalLM(cfg).save_pretrained(d)
        model = build_model(load_checkpoint(d), device=device)
    params = sum(p.numel() for p in model.parameters())
    ids = torch.randint(0, 50304, (1, 512), device=device)
    times = {}
    for kernel in ("chunkwise", "sequence"):
        model.set_kernel(kernel)
        with torch.no_grad():
            model(ids)
            sync(device)
            t = []
            for _ in range(5):
                t0 = time.perf_counter()
                model(ids)
                sync(device)
                t.append(time.perf_counter() - t0)
        times[kernel] = sorted(t)[len(t) // 2]
    return {"params": params, "prefill_512_s": times}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--out", default=None)
    ap.add_argument("--skip-prefill", action="store_true")
    a = ap.parse_args()
    torch.set_grad_enabled(False)
    res = {"device": a.device, "torch": torch.__version__, "python": platform.python_version(),
           "gpu": torch.cuda.get_device_name(0) if a.device.startswith("cuda") else a.device, "checks": []}
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("hf", "large", "hybrid", "hybrid_slstm_only", "hybrid_cuda_layout"):
            d = Path(tmp) / name
            d.mkdir()
            path = FIXTURES[name](d)
            res["checks"].append(check(name, path, load_upstream(name, path), a.device))
            print(json.dumps(res["checks"][-1]), flush=True)
    for ex in ("hf-recall", "hybrid-copy"):
        path = ROOT / "examples" / ex
        name = "hf" if ex == "hf-recall" else "hybrid"
        res["checks"].append(check(f"example:{ex}", path, load_upstream(name, path), a.device))
        print(json.dumps(res["checks"][-1]), flush=True)
    if not a.skip_prefill:
        res["prefill"] = prefill_time(a.device)
        print(json.dumps(res["prefill"]), flush=True)
    if a.out:
        Path(a.out).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
