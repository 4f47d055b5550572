"""The bundled example checkpoints solve their tasks, loaded by upstream's libraries and by our reference.

The checkpoints are made by ``examples/train_examples.py`` (not run here). Accuracy is measured on a
held-out seed that neither training (seeds >= 1_000_000) nor the script's own evaluation (seed 7) used.
"""

from __future__ import annotations

import functools
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import tasks  # examples/tasks.py

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
HELD_OUT_SEED = 20_250
N = 256
MIN_ACCURACY = 0.90


@functools.lru_cache(maxsize=None)
def _train_script():
    """examples/train_examples.py as a module: its loaders are the upstream way to open each example."""
    spec = importlib.util.spec_from_file_location("train_examples", EXAMPLES / "train_examples.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _held_out(name: str) -> tuple[np.ndarray, np.ndarray]:
    log = json.loads((EXAMPLES / name / "train_log.json").read_text())
    return _train_script().make_batch(log["task"], N, HELD_OUT_SEED)


def _upstream_forward(name: str):
    script = _train_script()
    return {"hf-recall": script.load_hf, "hybrid-copy": script.load_hybrid}[name](EXAMPLES / name)


@pytest.mark.parametrize("name", ["hf-recall", "hybrid-copy"])
def test_upstream_model_solves_the_task(name):
    ids, targets = _held_out(name)
    forward = _upstream_forward(name)
    with torch.no_grad():
        logits = forward(torch.from_numpy(ids))
    assert logits.shape == (*ids.shape, 16)
    acc = tasks.accuracy(logits.numpy(), targets)
    assert acc >= MIN_ACCURACY, f"{name}: upstream held-out accuracy {acc:.4f} < {MIN_ACCURACY}"


@pytest.mark.parametrize("name", ["hf-recall", "hybrid-copy"])
def test_reference_model_solves_the_task(name):
    from xlstm_export.frontends import load_checkpoint
    from xlstm_export.reference import build_model

    ids, targets = _held_out(name)
    model = build_model(load_checkpoint(EXAMPLES / name), device="cpu")
    with torch.no_grad():
        logits = model(torch.from_numpy(ids))
    assert logits.dtype == torch.float32 and logits.shape == (*ids.shape, 16)
    acc = tasks.accuracy(logits.numpy(), targets)
    assert acc >= MIN_ACCURACY, f"{name}: reference held-out accuracy {acc:.4f} < {MIN_ACCURACY}"


def test_hybrid_config_is_strict_xlstm_lm_model_config():
    """config.yaml holds only xLSTMLMModelConfig fields: dacite strict accepts it, and it is the H family
    with both block kinds and the CPU sLSTM backend."""
    import dacite
    import yaml
    from xlstm import xLSTMLMModelConfig

    cfg = yaml.safe_load((EXAMPLES / "hybrid-copy" / "config.yaml").read_text())
    config = dacite.from_dict(xLSTMLMModelConfig, cfg, config=dacite.Config(strict=True))
    assert config.slstm_at == [1] and config.num_blocks == 3
    assert config.slstm_block.slstm.backend == "vanilla"


def test_hf_config_uses_cpu_inference_kernels():
    cfg = json.loads((EXAMPLES / "hf-recall" / "config.json").read_text())
    assert cfg["model_type"] == "xlstm"
    assert {k: cfg[k] for k in ("chunkwise_kernel", "sequence_kernel", "step_kernel", "mode", "autocast_kernel_dtype")} == {
        "chunkwise_kernel": "chunkwise--native_autograd",
        "sequence_kernel": "native_sequence__native",
        "step_kernel": "native",
        "mode": "inference",
        "autocast_kernel_dtype": "float32",
    }


# -- the task generators ----------------------------------------------------------------------------


def test_generators_are_deterministic_and_seeded():
    a = tasks.in_context_recall(8, 32, 16, seed=3)
    b = tasks.in_context_recall(8, 32, 16, seed=3)
    c = tasks.in_context_recall(8, 32, 16, seed=4)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[0], c[0])
    d = tasks.selective_copying(8, 32, 4, 16, seed=3)
    e = tasks.selective_copying(8, 32, 4, 16, seed=3)
    assert all(np.array_equal(x, y) for x, y in zip(d, e))
    for ids, tgt in (a, d):
        assert ids.dtype == tgt.dtype == np.int64 and ids.shape == tgt.shape


def test_in_context_recall_targets_are_the_values_of_recurring_keys():
    num_keys, vocab = 6, 16
    ids, tgt = tasks.in_context_recall(64, 40, vocab, seed=1, num_keys=num_keys)
    keys, values = ids[:, 0::2], ids[:, 1::2]
    assert keys.max() < num_keys and values.min() >= vocab // 2 and values.max() < vocab
    assert (tgt[:, 1::2] == tasks.IGNORE_INDEX).all()  # value positions: the next key is random
    assert (tgt[:, -2] != tasks.IGNORE_INDEX).all()  # the final pair always probes an earlier key
    for row in range(len(ids)):
        seen = {}
        for j, (k, v) in enumerate(zip(keys[row], values[row])):
            assert seen.setdefault(k, v) == v  # one key -> value map per sequence
            expected = v if j > 0 and k in keys[row, :j] else tasks.IGNORE_INDEX
            assert tgt[row, 2 * j] == expected  # at the key: its value, the token that follows


def test_selective_copying_targets_are_the_tokens_in_order():
    n, seq_len, ntc, vocab = 32, 24, 5, 10
    ids, tgt = tasks.selective_copying(n, seq_len, ntc, vocab, seed=2)
    blank, copy = vocab - 2, vocab - 1
    assert (ids[:, -ntc:] == copy).all() and (tgt[:, :-ntc] == tasks.IGNORE_INDEX).all()
    data = ids[:, :-ntc]
    for row in range(n):
        content = data[row][data[row] != blank]
        assert np.array_equal(content, tgt[row, -ntc:])


def test_accuracy_takes_logits_or_predictions():
    tgt = np.array([[tasks.IGNORE_INDEX, 2, 3], [1, tasks.IGNORE_INDEX, 0]])
    pred = np.array([[9, 2, 0], [1, 9, 0]])
    assert tasks.accuracy(pred, tgt) == 0.75
    logits = np.eye(10)[pred]  # (2, 3, 10), argmax = pred
    assert tasks.accuracy(logits, tgt) == 0.75
    with pytest.raises(ValueError):
        tasks.accuracy(pred[:, :2], tgt)
