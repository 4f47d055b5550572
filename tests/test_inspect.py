"""``inspect``: a 7B-shaped checkpoint in seconds with little memory; broken checkpoints give one
clear line and exit code 2."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from xlstm_export.cli import main
from xlstm_export.frontends.safetensors_io import open_safetensors

REPO = Path(__file__).resolve().parents[1]

# NX-AI/xLSTM-7b's config.json (the fields that shape the model)
XLSTM_7B = {
    "model_type": "xlstm", "architectures": ["xLSTMForCausalLM"], "vocab_size": 50304, "hidden_size": 4096,
    "embedding_dim": 4096, "num_hidden_layers": 32, "num_blocks": 32, "num_heads": 8, "use_bias": False,
    "norm_eps": 1e-6, "norm_reduction_force_float32": True, "add_out_norm": True, "qk_dim_factor": 0.5,
    "v_dim_factor": 1.0, "ffn_proj_factor": 2.667, "ffn_round_up_to_multiple_of": 64, "gate_soft_cap": 15.0,
    "output_logit_soft_cap": 30.0, "weight_mode": "single", "tie_word_embeddings": False, "eps": 1e-6,
    "chunkwise_kernel": "chunkwise--triton_xl_chunk", "sequence_kernel": "native_sequence__triton",
    "step_kernel": "triton", "mode": "inference", "chunk_size": 64, "return_last_states": True,
    "autocast_kernel_dtype": "bfloat16", "inference_state_dtype": "float32", "dtype": "bfloat16",
}


def seven_b_shapes() -> dict[str, tuple[int, ...]]:
    E, V, NH, U = 4096, 50304, 8, 10944
    qk, v = E // 2, E
    out = {"backbone.embeddings.weight": (V, E)}
    for i in range(32):
        p = f"backbone.blocks.{i}."
        out.update({
            p + "norm_mlstm.weight": (E,), p + "mlstm_layer.q.weight": (qk, E), p + "mlstm_layer.k.weight": (qk, E),
            p + "mlstm_layer.v.weight": (v, E), p + "mlstm_layer.ogate_preact.weight": (v, E),
            p + "mlstm_layer.igate_preact.weight": (NH, E), p + "mlstm_layer.igate_preact.bias": (NH,),
            p + "mlstm_layer.fgate_preact.weight": (NH, E), p + "mlstm_layer.fgate_preact.bias": (NH,),
            p + "mlstm_layer.multihead_norm.weight": (v,), p + "mlstm_layer.out_proj.weight": (E, v),
            p + "norm_ffn.weight": (E,), p + "ffn.proj_up_gate.weight": (U, E), p + "ffn.proj_up.weight": (U, E),
            p + "ffn.proj_down.weight": (E, U),
        })
    out["backbone.out_norm.weight"] = (E,)
    out["lm_head.weight"] = (V, E)
    return out


def write_sparse_safetensors(path: Path, shapes: dict, dtype: str = "BF16", itemsize: int = 2) -> int:
    """A valid header with correct offsets; the data is a hole made with truncate (no real disk)."""
    header, off = {}, 0
    for name, shape in shapes.items():
        n = int(np.prod(shape)) * itemsize
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [off, off + n]}
        off += n
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little"))
        f.write(raw)
        f.truncate(8 + len(raw) + off)
    return 8 + len(raw) + off


@pytest.mark.slow
def test_inspect_7b_sparse_checkpoint_is_fast_and_small(tmp_path):
    d = tmp_path / "xlstm-7b"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(XLSTM_7B))
    size = write_sparse_safetensors(d / "model.safetensors", seven_b_shapes())
    assert size > 13e9  # ~13.7 GB apparent size, bf16
    assert os.stat(d / "model.safetensors").st_blocks * 512 < 50e6  # and it really is sparse
    rss_file = tmp_path / "rss"
    wrapper = (
        "import sys, runpy\n"
        f"sys.argv = ['xlstm-export', 'inspect', '--checkpoint', {str(d)!r}, '--json']\n"
        "try:\n    runpy.run_module('xlstm_export', run_name='__main__')\n"
        "except SystemExit as e:\n    code = e.code\n"
        # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the (large) parent across fork+exec
        "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM:')][0].split()[1]\n"
        f"open({str(rss_file)!r}, 'w').write(hwm)\n"
    )
    t0 = time.time()
    res = subprocess.run([sys.executable, "-c", wrapper], capture_output=True, text=True, cwd=REPO, timeout=120)
    elapsed = time.time() - t0
    assert res.returncode == 0, res.stderr
    prof = json.loads(res.stdout)
    assert [b["kind"] for b in prof["blocks"]] == ["mlstm"] * 32
    assert all(b["ffn"]["up_dim"] == 10944 and b["gate_soft_cap"] == 15.0 for b in prof["blocks"])
    assert prof["output_logit_soft_cap"] == 30.0
    assert 6.8e9 < prof["parameters"] < 7.0e9 and prof["weight_bytes"] == 2 * prof["parameters"]
    c = prof["states"][0]
    assert c["shape"] == [1, 8, 256, 512]
    peak_mb = int(rss_file.read_text()) / 1024  # VmHWM is in kB
    print(f"\ninspect 7B: {elapsed:.2f}s, peak RSS {peak_mb:.0f} MB for a {size / 1e9:.1f} GB checkpoint")
    assert elapsed < 20
    assert peak_mb < 500


# -- broken checkpoints: exit 2, one line ---------------------------------------------------------
def run_inspect(path) -> tuple[int, str]:
    res = CliRunner().invoke(main, ["inspect", "--checkpoint", str(path)])
    assert "Traceback" not in res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    return res.exit_code, res.stderr


def assert_one_line_error(path, *needles):
    code, err = run_inspect(path)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def _rewrite(path: Path, edit) -> None:
    from safetensors.numpy import save_file

    sd = {k: np.array(h.load(keep_dtype=True)) for k, h in open_safetensors(path).items()}
    edit(sd)
    save_file(sd, str(path))


@pytest.fixture
def copy_of(checkpoint_factory, tmp_path):
    def get(name):
        d = tmp_path / name
        shutil.copytree(checkpoint_factory(name), d)
        return d
    return get


def test_missing_tensor(copy_of):
    d = copy_of("hf")
    _rewrite(d / "model.safetensors", lambda sd: sd.pop("backbone.blocks.1.mlstm_layer.k.weight"))
    assert_one_line_error(d, "missing 1", "backbone.blocks.1.mlstm_layer.k.weight")


def test_several_problems_are_listed_together(copy_of):
    d = copy_of("hybrid")

    def edit(sd):
        sd.pop("xlstm_block_stack.blocks.0.xlstm.learnable_skip")
        sd["xlstm_block_stack.blocks.2.xlstm.proj_up.weight"] = np.zeros((100, 64), np.float32)
        sd["xlstm_block_stack.blocks.1.xlstm.group_norm.weight"] = np.zeros((65,), np.float32)
        sd["extra.tensor"] = np.zeros(3, np.float32)

    _rewrite(d / "model.safetensors", edit)
    assert_one_line_error(d, "missing 1", "learnable_skip", "misshaped 2", "proj_up.weight", "group_norm.weight",
                          "expected [64], got [65]", "unexpected 1", "extra.tensor")


def test_misshaped_tensor(copy_of):
    d = copy_of("large")
    _rewrite(d / "model.safetensors",
             lambda sd: sd.__setitem__("backbone.blocks.0.ffn.proj_down.weight", np.zeros((64, 100), np.float32)))
    assert_one_line_error(d, "misshaped 1", "backbone.blocks.0.ffn.proj_down.weight", "expected [64, 192]",
                          "got [64, 100]")


def test_truncated_safetensors(copy_of):
    d = copy_of("hf")
    f = d / "model.safetensors"
    with open(f, "r+b") as fh:
        fh.truncate(f.stat().st_size - 1000)
    assert_one_line_error(d, "model.safetensors", "truncated")


def test_half_written_header(copy_of):
    d = copy_of("hybrid")
    f = d / "model.safetensors"
    with open(f, "r+b") as fh:
        fh.truncate(100)
    assert_one_line_error(d, "model.safetensors", "header length")
    f.write_bytes(b"\x05\x00")
    assert_one_line_error(d, "model.safetensors", "shorter than the 8-byte header length")
    f.write_bytes((10).to_bytes(8, "little") + b"not json!!")
    assert_one_line_error(d, "not valid JSON")
    f.write_bytes((2).to_bytes(8, "little") + b"[]")
    assert_one_line_error(d, "must be a JSON object")


@pytest.mark.parametrize("entry,needle", [
    ({"a": {"dtype": "Q7", "shape": [2], "data_offsets": [0, 8]}}, "unknown dtype 'Q7'"),
    ({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, "needs 12"),
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
      "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, "overlap"),
    ({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, "truncated"),
    ({"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 8]}}, "non-negative"),
])
def test_bad_safetensors_headers(copy_of, entry, needle):
    d = copy_of("hybrid")
    raw = json.dumps(entry).encode()
    (d / "model.safetensors").write_bytes(len(raw).to_bytes(8, "little") + raw + b"\0" * 12)
    line = assert_one_line_error(d, needle)
    assert "tensor 'a'" in line or "'b'" in line


def test_missing_shard(copy_of):
    d = copy_of("hf_sharded")
    shards = sorted(d.glob("model-*.safetensors"))
    assert len(shards) > 1
    shards[1].unlink()
    assert_one_line_error(d, "shard", shards[1].name, "missing")


def test_unknown_hybrid_config_field(copy_of):
    import yaml

    d = copy_of("hybrid")
    cfg = yaml.safe_load((d / "config.yaml").read_text())
    cfg["slstm_block"]["slstm"]["num_head"] = 4
    (d / "config.yaml").write_text(yaml.safe_dump(cfg))
    assert_one_line_error(d, "config.yaml", "slstm_block.slstm", "unknown field", "num_head")


def test_bad_config_values(copy_of):
    d = copy_of("hf")
    cfg = json.loads((d / "config.json").read_text())
    cfg["num_heads"] = "two"
    (d / "config.json").write_text(json.dumps(cfg))
    assert_one_line_error(d, "config.json", "num_heads", "must be int")
    (d / "config.json").write_text("{ not json")
    assert_one_line_error(d, "config.json", "not valid JSON")


def test_pickle_with_code_is_refused_not_run(copy_of, tmp_path):
    import pathlib

    import torch

    d = copy_of("hybrid_pt")
    marker = tmp_path / "ran"

    class Payload:  # unpickling calls marker.touch()
        def __reduce__(self):
            return (pathlib.Path.touch, (marker,))

    torch.save({"token_embedding.weight": torch.zeros(3), "x": Payload()}, d / "model.pt")
    line = assert_one_line_error(d, "model.pt", "refused", "not run")
    assert not marker.exists() and "Traceback" not in line


def test_no_checkpoint_here(tmp_path):
    assert_one_line_error(tmp_path / "missing", "no such file or directory", "expected")
    (tmp_path / "empty").mkdir()
    assert_one_line_error(tmp_path / "empty", "empty", "config.json")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "weights.npz").write_bytes(b"x")
    assert_one_line_error(tmp_path / "other", "no recognisable checkpoint")


def test_console_script_and_module_entry_points(checkpoint_factory):
    for argv in ([sys.executable, "-m", "xlstm_export"], [str(Path(sys.executable).parent / "xlstm-export")]):
        if not Path(argv[-1]).exists() and argv[-1] != "xlstm_export":
            continue
        t0 = time.time()
        res = subprocess.run(argv + ["--help"], capture_output=True, text=True, cwd=REPO, timeout=60)
        assert res.returncode == 0 and "inspect" in res.stdout
        assert time.time() - t0 < 5
        res = subprocess.run(argv + ["inspect", "--checkpoint", str(checkpoint_factory("hybrid")) + "-nope"],
                             capture_output=True, text=True, cwd=REPO, timeout=60)
        assert res.returncode == 2 and res.stderr.count("\n") == 1 and res.stderr.startswith("error: ")


def test_help_does_not_import_heavy_modules():
    code = ("import sys; from xlstm_export.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "heavy = [m for m in ('torch', 'onnx', 'coremltools', 'transformers', 'numpy') if m in sys.modules]\n"
            "print('HEAVY:' + ','.join(heavy))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().splitlines()[-1] == "HEAVY:"
