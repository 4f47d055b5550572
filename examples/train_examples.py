"""Train the two example checkpoints, on CPU, one thread, in upstream formats.

    python examples/train_examples.py                 # both, written to examples/<name>/
    python examples/train_examples.py --only hf-recall --out /tmp/ex

- ``hf-recall``: transformers ``xLSTMForCausalLM`` (L family) on multi-query in-context recall;
  ``save_pretrained`` -> config.json + model.safetensors.
- ``hybrid-copy``: xlstm ``xLSTMLMModel`` (H family, mLSTM + sLSTM blocks) on selective copying;
  config.yaml (xLSTMLMModelConfig fields, upstream README form) + model.safetensors (state_dict).

Deterministic given the seeds below: every training batch is drawn from ``tasks.py`` (beside this script) with
seed ``TRAIN_SEED_BASE + step``; the held-out accuracy uses ``EVAL_SEED`` (< TRAIN_SEED_BASE, so
never a training batch). After saving, each checkpoint is reloaded from disk with the upstream
library (CPU inference kernels) and scored; the figures are printed and written to ``train_log.json``
next to the checkpoint, with ``validation_prompts.json`` (held-out sequences at ``EVAL_SEED`` that
validation adds to its seeded prompts). Not run by ``make test``; the checkpoints are committed.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from anywhere: import xlstm_export from this checkout
sys.path.insert(0, str(Path(__file__).resolve().parent))  # and tasks.py from beside this script

import tasks  # noqa: E402

TRAIN_SEED_BASE = 1_000_000
EVAL_SEED = 7
EVAL_N = 1024

# The task parameters and training settings of each example; train_log.json repeats them.
EXAMPLES = {
    "hf-recall": {
        "task": {"name": "in_context_recall", "seq_len": 64, "vocab_size": 16, "num_keys": 8},
        "model": {"hidden_size": 128, "num_heads": 2, "num_blocks": 2, "qk_dim_factor": 0.5},
        "train": {"steps": 1000, "batch_size": 32, "lr": 1e-3, "warmup": 100, "weight_decay": 0.01, "init_seed": 0},
    },
    "hybrid-copy": {
        "task": {"name": "selective_copying", "seq_len": 64, "vocab_size": 16, "num_tokens_to_copy": 8},
        "model": {"embedding_dim": 64, "num_blocks": 3, "slstm_at": [1], "num_heads": 4},
        "train": {"steps": 1500, "batch_size": 32, "lr": 2e-3, "warmup": 100, "weight_decay": 0.01, "init_seed": 0},
    },
}


def make_batch(task: dict, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """One batch of the example's task, (input_ids, targets) int64 (n, seq_len)."""
    return tasks.generate(task, n, seed)


# --- L family: transformers xLSTMForCausalLM -------------------------------------------------------

# Saved into config.json: the pure-PyTorch kernels, so from_pretrained works on a CPU-only machine.
HF_INFERENCE_SETTINGS = {
    "chunkwise_kernel": "chunkwise--native_autograd",
    "sequence_kernel": "native_sequence__native",
    "step_kernel": "native",
    "mode": "inference",
    "autocast_kernel_dtype": "float32",
    "inference_state_dtype": "float32",
}


def hf_config(spec: dict, *, training: bool):
    """xLSTMConfig for the example; ``training`` swaps in mode "train" (chunkwise kernel with autograd,
    chunk size = the task's sequence length)."""
    from transformers import xLSTMConfig

    m, t = spec["model"], spec["task"]
    settings = dict(HF_INFERENCE_SETTINGS)
    if training:
        # "train" runs the chunkwise kernel on the whole sequence, which must be a multiple of chunk_size.
        # return_last_states must stay True: upstream's mLSTMLayer unpacks (h, state) in every mode.
        settings["mode"] = "train"
    return xLSTMConfig(
        vocab_size=t["vocab_size"],
        hidden_size=m["hidden_size"],
        num_hidden_layers=m["num_blocks"],
        num_heads=m["num_heads"],
        qk_dim_factor=m["qk_dim_factor"],
        chunk_size=t["seq_len"],
        return_last_states=True,
        pad_token_id=None,
        bos_token_id=None,
        eos_token_id=None,
        **settings,
    )


def load_hf(path: Path):
    """The upstream way: ``xLSTMForCausalLM.from_pretrained``; returns a callable ids -> logits."""
    from transformers import xLSTMForCausalLM

    model = xLSTMForCausalLM.from_pretrained(path).eval()
    return lambda ids: model(input_ids=ids, use_cache=False).logits


# --- H family: xlstm xLSTMLMModel ------------------------------------------------------------------


def hybrid_config_dict(spec: dict) -> dict:
    """The config.yaml content: xLSTMLMModelConfig fields, nested as in upstream's README."""
    m, t = spec["model"], spec["task"]
    return {
        "vocab_size": t["vocab_size"],
        "context_length": t["seq_len"],
        "num_blocks": m["num_blocks"],
        "embedding_dim": m["embedding_dim"],
        "slstm_at": list(m["slstm_at"]),
        "add_post_blocks_norm": True,
        "bias": False,
        "dropout": 0.0,
        "tie_weights": False,
        "mlstm_block": {
            "mlstm": {
                "conv1d_kernel_size": 4,
                "qkv_proj_blocksize": 4,
                "num_heads": m["num_heads"],
                "proj_factor": 2.0,
            }
        },
        "slstm_block": {
            "slstm": {
                "backend": "vanilla",
                "num_heads": m["num_heads"],
                "conv1d_kernel_size": 4,
                "bias_init": "powerlaw_blockdependent",
            },
            "feedforward": {"proj_factor": 1.3, "act_fn": "gelu"},
        },
    }


def build_hybrid(cfg: dict):
    import dacite
    from xlstm import xLSTMLMModel, xLSTMLMModelConfig

    config = dacite.from_dict(xLSTMLMModelConfig, cfg, config=dacite.Config(strict=True))
    return xLSTMLMModel(config)


def load_hybrid(path: Path):
    """The upstream way: dacite-strict config + ``load_state_dict``; returns a callable ids -> logits."""
    import yaml
    from safetensors.torch import load_file

    cfg = yaml.safe_load((path / "config.yaml").read_text())
    model = build_hybrid(cfg)
    model.load_state_dict(load_file(path / "model.safetensors"), strict=True)
    return model.eval()


def save_hybrid(model, cfg: dict, out: Path) -> None:
    import yaml
    from safetensors.torch import save_file

    (out / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    # tie_weights is False, so no tensor is shared and every entry is its own storage
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, out / "model.safetensors", metadata={"format": "pt"})


# --- training --------------------------------------------------------------------------------------


def lr_at(step: int, train: dict) -> float:
    """Linear warmup, then cosine decay to 10% of the peak."""
    if step < train["warmup"]:
        return train["lr"] * (step + 1) / train["warmup"]
    progress = (step - train["warmup"]) / max(1, train["steps"] - train["warmup"])
    return train["lr"] * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress)))


def masked_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    # targets are already aligned with logits (tasks module docstring): no shift here
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=tasks.IGNORE_INDEX)


@torch.no_grad()
def evaluate(forward, task: dict, n: int, seed: int, batch: int = 256) -> float:
    ids, tgt = make_batch(task, n, seed)
    preds = [forward(torch.from_numpy(ids[i : i + batch])).argmax(-1).numpy() for i in range(0, n, batch)]
    return tasks.accuracy(np.concatenate(preds), tgt)


def train(model, forward, spec: dict, log_every: int) -> dict:
    task, tr = spec["task"], spec["train"]
    opt = torch.optim.AdamW(model.parameters(), lr=tr["lr"], betas=(0.9, 0.95), weight_decay=tr["weight_decay"])
    model.train()
    t0, cpu0 = time.perf_counter(), time.process_time()
    recent = []
    for step in range(tr["steps"]):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, tr)
        ids, tgt = make_batch(task, tr["batch_size"], TRAIN_SEED_BASE + step)
        ids, tgt = torch.from_numpy(ids), torch.from_numpy(tgt)
        logits = forward(ids)
        loss = masked_loss(logits, tgt)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        recent = (recent + [loss.item()])[-50:]
        if step % log_every == 0 or step == tr["steps"] - 1:
            acc = tasks.accuracy(logits.detach().argmax(-1).numpy(), tgt.numpy())
            print(
                f"  step {step:5d}  loss {loss.item():.4f}  batch acc {acc:.3f}  "
                f"{time.perf_counter() - t0:6.1f}s",
                flush=True,
            )
    model.eval()
    return {
        # cpu = this process's CPU time on its one thread; wall also counts waiting for a shared core
        "train_cpu_seconds": round(time.process_time() - cpu0, 1),
        "train_wall_seconds": round(time.perf_counter() - t0, 1),
        "final_loss_mean_last_50": round(float(np.mean(recent)), 5),
    }


def run_hf_recall(spec: dict, out: Path, log_every: int) -> dict:
    from transformers import xLSTMForCausalLM

    torch.manual_seed(spec["train"]["init_seed"])
    model = xLSTMForCausalLM(hf_config(spec, training=True))
    figures = train(model, lambda ids: model(input_ids=ids, use_cache=False).logits, spec, log_every)
    # saved config = the inference settings; the training-only mode never reaches config.json
    for key, value in HF_INFERENCE_SETTINGS.items():
        setattr(model.config, key, value)
    model.save_pretrained(out)
    return figures | {"held_out_accuracy": evaluate(load_hf(out), spec["task"], EVAL_N, EVAL_SEED)}


def run_hybrid_copy(spec: dict, out: Path, log_every: int) -> dict:
    cfg = hybrid_config_dict(spec)
    torch.manual_seed(spec["train"]["init_seed"])
    model = build_hybrid(cfg)
    model.reset_parameters()
    figures = train(model, model, spec, log_every)
    save_hybrid(model, cfg, out)
    return figures | {"held_out_accuracy": evaluate(load_hybrid(out), spec["task"], EVAL_N, EVAL_SEED)}


RUNNERS = {"hf-recall": run_hf_recall, "hybrid-copy": run_hybrid_copy}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=sorted(EXAMPLES), action="append", help="train only this example")
    parser.add_argument("--out", type=Path, default=REPO / "examples", help="parent folder of the checkpoints")
    parser.add_argument("--log-every", type=int, default=100)
    parser.add_argument("--set", action="append", default=[], metavar="EXAMPLE.SECTION.KEY=JSON",
                        help="override one setting, e.g. hf-recall.train.steps=800 (for experiments)")
    args = parser.parse_args(argv)

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    for item in args.set:
        dotted, value = item.split("=", 1)
        name, section, key = dotted.split(".")
        EXAMPLES[name][section][key] = json.loads(value)

    for name in args.only or sorted(EXAMPLES):
        spec = EXAMPLES[name]
        out = args.out / name
        out.mkdir(parents=True, exist_ok=True)
        print(f"{name}: {json.dumps(spec)}", flush=True)
        figures = RUNNERS[name](spec, out, args.log_every)
        size = sum(f.stat().st_size for f in out.glob("model*.safetensors"))
        log = {
            "example": name,
            "command": " ".join(["python", "examples/train_examples.py", *(argv if argv is not None else sys.argv[1:])]),
            **spec,
            **figures,
            "eval": {"seed": EVAL_SEED, "n": EVAL_N},
            "train_seeds": f"{TRAIN_SEED_BASE} + step",
            "weights_bytes": size,
            "torch": torch.__version__,
            "machine": platform.processor() or platform.machine(),
        }
        (out / "train_log.json").write_text(json.dumps(log, indent=2) + "\n")
        tasks.write_validation_prompts(out, spec["task"], EVAL_SEED)
        print(f"{name}: {json.dumps(figures)}  weights {size / 1e6:.2f} MB", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
