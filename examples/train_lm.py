"""Train ``examples/pylm``: a ~8M-parameter transformers xLSTM language model of Python source code.

Two stages, because the corpus lives on the machine that runs this and the training wants a GPU:

    python examples/train_lm.py prepare --work /tmp/pylm-work    # CPU: corpus, split, tokenizer, token ids
    python examples/train_lm.py train --work /tmp/pylm-work      # GPU (or CPU, slowly): model, figures
    python examples/train_lm.py all --work /tmp/pylm-work        # both in one go

``prepare`` (deterministic, offline):
- The corpus is the running interpreter's **standard library sources**: every ``*.py`` under
  ``sysconfig.get_paths()["stdlib"]`` outside ``site-packages``, read as strict UTF-8 (the few files that
  are not, deliberately, in the test suite are skipped), sorted by relative path.
- The split is by file and stable: ``sha256(relative path)`` picks a bucket of 1000; buckets < 40 are the
  **test** split (held out, ~4 %), 40..59 the **validation** split (~2 %, used only to pick the best
  checkpoint during training), the rest is **training** text. A file's split never depends on which
  other files exist.
- A byte-level BPE tokenizer (``tokenizers``; GPT-2 byte alphabet and pre-tokenizer regex, no prefix
  space, so decoding returns the exact bytes) is trained on the training split only. ``<|endoftext|>``
  (id 0) is BOS, EOS and PAD: every file is encoded as ``<|endoftext|> + text``.
- Writes into ``--out`` (default ``examples/pylm/``): ``tokenizer.json``, ``tokenizer_config.json``,
  ``special_tokens_map.json`` (``PreTrainedTokenizerFast.save_pretrained``), ``heldout.txt`` (whole test
  split files, each preceded by ``<|endoftext|>``, ~150 KB) and ``calibration.txt`` (the same from the
  training split, ~45 KB, for quantization calibration); into ``--work``: ``ids.npz`` (uint16 token ids
  of each split and of heldout.txt) and ``prepare.json`` (corpus figures).

``train`` reads only ``--work`` (so it can run on a machine without this interpreter's sources):
- transformers ``xLSTMForCausalLM`` in ``mode="train"`` (mlstm chunkwise kernel with autograd,
  ``chunk_size`` dividing the sequence length, ``return_last_states=True``, called with
  ``use_cache=False``: XLSTM_NOTES.md "Training and large checks"). Batches are random 512-token
  windows of the training stream (seeded generator); AdamW, warmup then cosine decay; the validation
  loss is measured every ``eval_every`` steps and the best weights are kept.
- Saves with ``save_pretrained`` switched back to inference mode and the pure-PyTorch kernels (as
  ``train_examples.py`` does), with the weights in **float16** (the repo holds at most 25 MB; fp32 would
  not fit comfortably) and ``dtype: float32`` in config.json, so ``from_pretrained`` and our frontend
  compute in fp32; plus ``generation_config.json`` (BOS/EOS/PAD = 0).
- Reloads the saved checkpoint (fp16 weights widened to fp32, inference mode) and measures the
  teacher-forced perplexity per token of heldout.txt as one stream, of its first 512 tokens (what
  ``tests/test_pylm.py`` checks) and of the whole test split in 512-token windows, and bits per byte;
  all of it goes to ``train_log.json``.

On a GPU, training is seeded but not bitwise reproducible (cuBLAS/atomics); on CPU with one thread it is.
``--steps`` and the model fields are settable for experiments (``--set model.num_blocks=6``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import platform
import sys
import sysconfig
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
EOT = "<|endoftext|>"

SETTINGS = {
    "corpus": {"test_buckets": 40, "val_buckets": 20, "buckets": 1000},
    "tokenizer": {"vocab_size": 4096, "min_frequency": 2},
    "samples": {"heldout_bytes": 150_000, "calibration_bytes": 45_000, "max_file_bytes": 30_000},
    "model": {"hidden_size": 256, "num_heads": 4, "num_blocks": 8, "qk_dim_factor": 0.5, "v_dim_factor": 1.0,
              "ffn_proj_factor": 2.667, "chunk_size": 64},
    "train": {"seq_len": 512, "batch_size": 64, "steps": 1500, "lr": 3e-3, "warmup": 200, "min_lr_ratio": 0.05,
              "weight_decay": 0.1, "betas": [0.9, 0.95], "grad_clip": 1.0, "eval_every": 250,
              "eval_windows": 256, "seed": 0},
}

# Saved into config.json: the pure-PyTorch kernels and fp32 compute, so from_pretrained works on a CPU.
HF_INFERENCE_SETTINGS = {
    "chunkwise_kernel": "chunkwise--native_autograd",
    "sequence_kernel": "native_sequence__native",
    "step_kernel": "native",
    "mode": "inference",
    "autocast_kernel_dtype": "float32",
    "inference_state_dtype": "float32",
}


# --- prepare ---------------------------------------------------------------------------------------


def bucket(rel: str, buckets: int) -> int:
    """A file's stable bucket: its relative path's sha256, as a number, modulo ``buckets``."""
    return int(hashlib.sha256(rel.encode("utf-8")).hexdigest(), 16) % buckets


def split_of(rel: str, corpus: dict) -> str:
    b = bucket(rel, corpus["buckets"])
    if b < corpus["test_buckets"]:
        return "test"
    if b < corpus["test_buckets"] + corpus["val_buckets"]:
        return "val"
    return "train"


def read_corpus(corpus: dict) -> tuple[dict[str, list[tuple[str, str]]], dict]:
    """{split: [(relative path, text)]} in sorted path order, and figures about what was read."""
    root = Path(sysconfig.get_paths()["stdlib"])
    paths = sorted((p for p in root.rglob("*.py") if "site-packages" not in p.relative_to(root).parts
                    and p.is_file()), key=lambda p: p.relative_to(root).as_posix())
    splits: dict[str, list[tuple[str, str]]] = {"train": [], "val": [], "test": []}
    skipped = []
    for p in paths:
        rel = p.relative_to(root).as_posix()
        try:
            text = p.read_bytes().decode("utf-8")
        except UnicodeDecodeError:
            skipped.append(rel)
            continue
        if EOT in text or not text.strip():
            skipped.append(rel)
            continue
        splits[split_of(rel, corpus)].append((rel, text))
    info = {
        "stdlib": str(root), "python": platform.python_version(), "files_read": len(paths),
        "files_skipped": skipped,
        **{f"{s}_files": len(v) for s, v in splits.items()},
        **{f"{s}_bytes": sum(len(t.encode("utf-8")) for _, t in v) for s, v in splits.items()},
    }
    return splits, info


def sample(files: list[tuple[str, str]], target_bytes: int, max_file_bytes: int, salt: str) -> list[str]:
    """Whole files, in a stable pseudo-random order (sha256 of salt + path), each at most
    ``max_file_bytes``, until ``target_bytes`` are reached."""
    order = sorted(files, key=lambda f: hashlib.sha256((salt + f[0]).encode()).hexdigest())
    out, size = [], 0
    for rel, text in order:
        n = len(text.encode("utf-8"))
        if n > max_file_bytes:
            continue
        out.append((rel, text))
        size += n
        if size >= target_bytes:
            break
    return out


def joined(files: list[tuple[str, str]]) -> str:
    """Files as one text, each preceded by the separator (= BOS): what the model saw in training."""
    return "".join(EOT + text for _, text in files)


def train_tokenizer(texts: list[str], tok_settings: dict):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=tok_settings["vocab_size"], min_frequency=tok_settings["min_frequency"],
        special_tokens=[EOT], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def encode_files(tok, texts: list[str]) -> np.ndarray:
    """One uint16 stream: for each file, EOT then its tokens."""
    eot = tok.token_to_id(EOT)
    parts = []
    for enc in tok.encode_batch(texts, add_special_tokens=False):
        parts.append(np.asarray([eot] + enc.ids, dtype=np.uint16))
    return np.concatenate(parts)


def prepare(out: Path, work: Path, settings: dict) -> dict:
    from transformers import PreTrainedTokenizerFast

    t0 = time.perf_counter()
    splits, info = read_corpus(settings["corpus"])
    print(f"corpus: {json.dumps({k: v for k, v in info.items() if k != 'files_skipped'})}", flush=True)
    tok = train_tokenizer([t for _, t in splits["train"]], settings["tokenizer"])
    assert tok.get_vocab_size() <= 65535 and tok.token_to_id(EOT) == 0
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOT, eos_token=EOT, pad_token=EOT,
                                   unk_token=None, model_max_length=1_000_000, clean_up_tokenization_spaces=False)
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(out)
    # transformers 5 names its own backend class and writes no special_tokens_map.json; name the class
    # every version and swift-transformers know, and write the map that older loaders read
    tc = json.loads((out / "tokenizer_config.json").read_text())
    tc["tokenizer_class"] = "PreTrainedTokenizerFast"
    (out / "tokenizer_config.json").write_text(json.dumps(tc, indent=2, sort_keys=True) + "\n")
    special = {"bos_token": EOT, "eos_token": EOT, "pad_token": EOT}
    (out / "special_tokens_map.json").write_text(json.dumps(special, indent=2, sort_keys=True) + "\n")
    s = settings["samples"]
    held = sample(splits["test"], s["heldout_bytes"], s["max_file_bytes"], "heldout")
    calib = sample(splits["train"], s["calibration_bytes"], s["max_file_bytes"], "calibration")
    (out / "heldout.txt").write_text(joined(held), encoding="utf-8", newline="")
    (out / "calibration.txt").write_text(joined(calib), encoding="utf-8", newline="")
    ids = {name: encode_files(tok, [t for _, t in files]) for name, files in splits.items()}
    # heldout.txt exactly as a user would tokenize the file: the separators are recognized as special
    ids["heldout"] = np.asarray(tok.encode((out / "heldout.txt").read_text(encoding="utf-8")).ids, dtype=np.uint16)
    np.savez_compressed(work / "ids.npz", **ids)
    info |= {
        "tokens": {k: int(v.size) for k, v in ids.items()},
        "heldout_txt": {"files": [r for r, _ in held], "bytes": len(joined(held).encode("utf-8"))},
        "calibration_txt": {"files": [r for r, _ in calib], "bytes": len(joined(calib).encode("utf-8"))},
        "bytes_per_token_test": round(info["test_bytes"] / ids["test"].size, 4),
        "prepare_seconds": round(time.perf_counter() - t0, 1),
        "vocab_size": tok.get_vocab_size(),
    }
    (work / "prepare.json").write_text(json.dumps(info, indent=2) + "\n")
    print(f"tokens: {info['tokens']}  bytes/token (test) {info['bytes_per_token_test']}  "
          f"{info['prepare_seconds']} s", flush=True)
    return info


# --- train -----------------------------------------------------------------------------------------


def hf_config(model: dict, vocab_size: int, *, training: bool):
    from transformers import xLSTMConfig

    settings = dict(HF_INFERENCE_SETTINGS)
    if training:
        # "train": the chunkwise kernel with autograd over the whole window (a multiple of chunk_size);
        # return_last_states must stay True: upstream's mLSTMLayer unpacks (h, state) in every mode.
        settings["mode"] = "train"
    return xLSTMConfig(
        vocab_size=vocab_size, hidden_size=model["hidden_size"], num_hidden_layers=model["num_blocks"],
        num_heads=model["num_heads"], qk_dim_factor=model["qk_dim_factor"], v_dim_factor=model["v_dim_factor"],
        ffn_proj_factor=model["ffn_proj_factor"], chunk_size=model["chunk_size"], return_last_states=True,
        tie_word_embeddings=False, bos_token_id=0, eos_token_id=0, pad_token_id=0, **settings)


def lr_at(step: int, tr: dict) -> float:
    """Linear warmup, then cosine decay to ``min_lr_ratio`` of the peak."""
    if step < tr["warmup"]:
        return tr["lr"] * (step + 1) / tr["warmup"]
    progress = (step - tr["warmup"]) / max(1, tr["steps"] - tr["warmup"])
    return tr["lr"] * (tr["min_lr_ratio"] + (1 - tr["min_lr_ratio"]) * 0.5 * (1.0 + math.cos(math.pi * progress)))


def windows(stream, starts, seq_len: int):
    """(inputs, targets) int64 (B, seq_len) of the windows starting at ``starts``."""
    import torch

    idx = starts[:, None] + torch.arange(seq_len + 1, device=starts.device)[None, :]
    w = stream[idx]
    return w[:, :-1], w[:, 1:]


def mean_nll_windows(model, stream, seq_len: int, max_windows: int | None, batch: int = 64) -> tuple[float, int]:
    """Mean next-token NLL over consecutive, non-overlapping windows (each starts with no state)."""
    import torch
    import torch.nn.functional as F

    n = (stream.numel() - 1) // seq_len
    if max_windows is not None:
        n = min(n, max_windows)
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, n, batch):
            starts = torch.arange(i, min(n, i + batch), device=stream.device) * seq_len
            x, y = windows(stream, starts, seq_len)
            logits = model(input_ids=x, use_cache=False).logits
            total += F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), reduction="sum").item()
            count += y.numel()
    return total / count, count


def stream_nll(model, ids, device, segment: int = 4096) -> tuple[float, int]:
    """Teacher-forced mean NLL of ``ids`` as one sequence, over every token after the first: segments of
    ``segment`` tokens, the recurrent state carried between them in an ``xLSTMCache`` made on ``device``
    (transformers' own long-input path makes its cache on the CPU)."""
    import torch
    import torch.nn.functional as F
    from transformers.models.xlstm.modeling_xlstm import xLSTMCache

    x = torch.as_tensor(ids.astype(np.int64), device=device)[None]
    cache = xLSTMCache(model.config, 1, dtype=torch.float32, device=device)
    total = 0.0
    with torch.no_grad():
        for i in range(0, x.shape[1] - 1, segment):
            inp, tgt = x[:, i:i + segment], x[:, i + 1:i + 1 + segment]
            out = model(input_ids=inp[:, :tgt.shape[1]], cache=cache, use_cache=True)
            cache = out.cache
            total += F.cross_entropy(out.logits[0].float(), tgt[0], reduction="sum").item()
    return total / (x.shape[1] - 1), x.shape[1] - 1


def train(out: Path, work: Path, settings: dict, device: str) -> dict:
    import torch
    import torch.nn.functional as F
    import transformers
    from transformers import GenerationConfig, xLSTMForCausalLM

    m, tr = settings["model"], settings["train"]
    prep = json.loads((work / "prepare.json").read_text())
    data = np.load(work / "ids.npz")
    vocab = int(prep["vocab_size"])
    torch.manual_seed(tr["seed"])
    if device == "cpu":
        torch.set_num_threads(1)
        torch.use_deterministic_algorithms(True)
    else:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    train_ids = torch.as_tensor(data["train"].astype(np.int64), device=device)
    val_ids = torch.as_tensor(data["val"].astype(np.int64), device=device)
    model = xLSTMForCausalLM(hf_config(m, vocab, training=True)).to(device)
    params = sum(p.numel() for p in model.parameters())
    print(f"model: {params:,} parameters; train {train_ids.numel():,} tokens; {json.dumps(m)}", flush=True)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "embeddings" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "embeddings" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": tr["weight_decay"]},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=tr["lr"], betas=tuple(tr["betas"]), fused=device != "cpu")
    gen = torch.Generator(device=device).manual_seed(tr["seed"])
    seq, bsz = tr["seq_len"], tr["batch_size"]
    history, best = [], {"val_loss": float("inf"), "step": -1, "state": None}
    t0 = time.perf_counter()
    recent: list[float] = []
    for step in range(tr["steps"]):
        model.train()
        for group in opt.param_groups:
            group["lr"] = lr_at(step, tr)
        starts = torch.randint(0, train_ids.numel() - seq - 1, (bsz,), device=device, generator=gen)
        x, y = windows(train_ids, starts, seq)
        logits = model(input_ids=x, use_cache=False).logits
        loss = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), tr["grad_clip"])
        opt.step()
        if step % 50 == 0 or step == tr["steps"] - 1:
            recent.append(loss.item())
        last = step == tr["steps"] - 1
        if (step + 1) % tr["eval_every"] == 0 or last:
            model.eval()
            val, _ = mean_nll_windows(model, val_ids, seq, tr["eval_windows"])
            history.append({"step": step + 1, "train_loss": round(loss.item(), 4), "val_loss": round(val, 4),
                            "seconds": round(time.perf_counter() - t0, 1)})
            print(f"  step {step + 1:5d}  loss {loss.item():.4f}  val {val:.4f}  lr {lr_at(step, tr):.2e}  "
                  f"{time.perf_counter() - t0:6.1f}s", flush=True)
            if val < best["val_loss"]:
                best = {"val_loss": val, "step": step + 1,
                        "state": {k: v.detach().clone() for k, v in model.state_dict().items()}}
    if device != "cpu":
        torch.cuda.synchronize()
    train_seconds = time.perf_counter() - t0
    model.load_state_dict(best["state"])

    # save: inference settings, fp16 weights, fp32 compute
    for key, value in HF_INFERENCE_SETTINGS.items():
        setattr(model.config, key, value)
    out.mkdir(parents=True, exist_ok=True)
    model.to("cpu", torch.float16).save_pretrained(out)
    cfg_path = out / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["dtype"] = "float32"  # the weights are stored in fp16; load and compute in fp32
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    GenerationConfig(bos_token_id=0, eos_token_id=0, pad_token_id=0, max_new_tokens=256).save_pretrained(out)

    # measure the saved checkpoint, as a user loads it, in plain fp32 (no TF32 matmuls)
    if device != "cpu":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    saved = xLSTMForCausalLM.from_pretrained(out, dtype=torch.float32).to(device).eval()
    held_nll, held_n = stream_nll(saved, data["heldout"], device)
    first_nll, first_n = stream_nll(saved, data["heldout"][:512], device)
    test_nll, test_n = mean_nll_windows(saved, torch.as_tensor(data["test"].astype(np.int64), device=device),
                                        seq, None)
    held_bytes = prep["heldout_txt"]["bytes"]
    figures = {
        "parameters": params,
        "weights_bytes": sum(f.stat().st_size for f in out.glob("*.safetensors")),
        "train_tokens_seen": tr["steps"] * bsz * seq,
        "epochs": round(tr["steps"] * bsz * seq / train_ids.numel(), 2),
        "train_seconds": round(train_seconds, 1),
        "final_train_loss_mean": round(float(np.mean(recent[-10:])), 4),
        "best_val_step": best["step"], "best_val_loss": round(best["val_loss"], 4),
        "heldout_txt": {"tokens_scored": held_n, "nll": round(held_nll, 5), "perplexity": round(math.exp(held_nll), 4),
                        "bits_per_byte": round(held_nll * held_n / math.log(2) / held_bytes, 4)},
        "heldout_txt_first512": {"tokens_scored": first_n, "nll": round(first_nll, 5),
                                 "perplexity": round(math.exp(first_nll), 4)},
        "test_split_windows": {"seq_len": seq, "tokens_scored": test_n, "nll": round(test_nll, 5),
                               "perplexity": round(math.exp(test_nll), 4)},
        "history": history,
        "device": torch.cuda.get_device_name() if device != "cpu" else (platform.processor() or platform.machine()),
        "torch": torch.__version__, "transformers": transformers.__version__,
    }
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stage", choices=["prepare", "train", "all"])
    parser.add_argument("--out", type=Path, default=REPO / "examples" / "pylm", help="the checkpoint folder")
    parser.add_argument("--work", type=Path, required=True, help="token ids and corpus figures (not committed)")
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=JSON",
                        help="override one setting, e.g. train.steps=100 (for experiments)")
    args = parser.parse_args(argv)
    for item in args.set:
        dotted, value = item.split("=", 1)
        section, key = dotted.split(".")
        if key not in SETTINGS[section]:
            parser.error(f"unknown setting {dotted}")
        SETTINGS[section][key] = json.loads(value)

    if args.stage in ("prepare", "all"):
        prepare(args.out, args.work, SETTINGS)
    if args.stage in ("train", "all"):
        import torch

        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        figures = train(args.out, args.work, SETTINGS, device)
        prep = json.loads((args.work / "prepare.json").read_text())
        log = {
            "command": " ".join(["python", "examples/train_lm.py", *(argv if argv is not None else sys.argv[1:])]),
            # no validation_prompts.json: validation uses its seeded prompts (and --heldout text)
            "task": {"name": "language_modeling", "text": "heldout.txt"},
            "settings": SETTINGS, "corpus": prep, **figures,
        }
        (args.out / "train_log.json").write_text(json.dumps(log, indent=2) + "\n")
        print(json.dumps({k: v for k, v in figures.items() if k != "history"}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
