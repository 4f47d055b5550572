"""Reliability through the real CLI, for every export command and ``inspect``:

* every malformed input: exit 2, exactly one ``error:`` line on stderr naming the file / tensor / field,
  no traceback, and nothing written (no artifact, no temporary sibling) at or beside the ``-o`` path;
* a pickle that would run code is refused and never runs;
* NaN / Inf weights are refused by every exporter, naming the tensor;
* no-clobber: an existing artifact is untouched without ``--force`` and survives a failing ``--force``;
* interruption (SIGINT, SIGTERM, and SIGKILL's leftovers) leaves nothing at the output path;
* byte-reproducibility: two exports in separate processes give identical bytes (every file of a package).

``test_inspect.py`` checks the error lines of ``inspect`` in detail; here the same classes of input go
through every command.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from xlstm_export.cli import main
from xlstm_export.targets import KINDS

REPO = Path(__file__).resolve().parents[1]

def kind_words(k) -> list[str]:
    """The CLI words of an artifact kind: ``onnx --scan``, ``onnx --prefill-chunk 8``."""
    words = [k.target]
    for f, v in k.fixed.items():
        if v is True:
            words.append(f"--{f.replace('_', '-')}")
        elif v not in (False, None):
            words += [f"--{f.replace('_', '-')}", str(v)]
    return words


# Every artifact kind of the target registry, as its CLI command ("onnx --scan" for the onnx-scan kind).
EXPORTS = {" ".join(kind_words(k)): (kind_words(k), k.filename) for k in KINDS.values()}
assert len(EXPORTS) == len(KINDS)
COMMANDS = ["inspect", *EXPORTS]


def out_of(cmd: str, out_dir: Path) -> Path:
    return out_dir / EXPORTS[cmd][1]


def argv(cmd: str, ckpt: Path, out_dir: Path, *extra: str) -> list[str]:
    if cmd == "inspect":
        return ["inspect", "--checkpoint", str(ckpt), *extra]
    words, _ = EXPORTS[cmd]
    return [*words, "--checkpoint", str(ckpt), "-o", str(out_of(cmd, out_dir)), *extra]


def invoke(args: list[str]):
    return CliRunner().invoke(main, args)


def assert_one_error_line(res, *needles: str) -> str:
    assert "Traceback" not in res.output, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    lines = res.stderr.strip().splitlines()
    assert res.exit_code == 2, (res.exit_code, res.output)
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def listing(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir())


@pytest.fixture
def out_dir(tmp_path) -> Path:
    d = tmp_path / "out"
    d.mkdir()
    return d


def copy_of(factory, tmp: Path, name: str) -> Path:
    d = tmp / "ck"
    shutil.copytree(factory(name), d)
    return d


# -- safetensors surgery ---------------------------------------------------------------------------
def split_safetensors(path: Path) -> tuple[dict, bytes]:
    blob = path.read_bytes()
    n = int.from_bytes(blob[:8], "little")
    return json.loads(blob[8:8 + n]), blob[8 + n:]


def join_safetensors(path: Path, header: dict, payload: bytes) -> None:
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + payload)


def rewrite_tensors(path: Path, edit) -> None:
    from safetensors.numpy import load_file, save_file

    sd = load_file(str(path))
    edit(sd)
    save_file(sd, str(path))


def edit_yaml(path: Path, edit) -> None:
    cfg = yaml.safe_load(path.read_text())
    edit(cfg)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))


def edit_json(path: Path, edit) -> None:
    cfg = json.loads(path.read_text())
    edit(cfg)
    path.write_text(json.dumps(cfg))


# -- the malformed inputs: name -> builder(factory, tmp) -> (checkpoint path, needles, extra args) -----------
def _truncated(f, t):
    d = copy_of(f, t, "hf")
    p = d / "model.safetensors"
    with open(p, "r+b") as fh:
        fh.truncate(p.stat().st_size - 1000)  # half-downloaded: the header is whole, the data is not
    return d, ["model.safetensors", "truncated"], []


def _truncated_in_header(f, t):
    d = copy_of(f, t, "hybrid")
    with open(d / "model.safetensors", "r+b") as fh:
        fh.truncate(100)
    return d, ["model.safetensors", "header length"], []


def _absurd_header_length(f, t):
    d = copy_of(f, t, "hybrid")
    p = d / "model.safetensors"
    blob = bytearray(p.read_bytes())
    blob[:8] = (2**63 + 12345).to_bytes(8, "little")
    p.write_bytes(bytes(blob))
    return d, ["model.safetensors", f"header length {2**63 + 12345} is impossible"], []


def _header_not_json(f, t):
    d = copy_of(f, t, "hybrid")
    p = d / "model.safetensors"
    blob = bytearray(p.read_bytes())
    n = int.from_bytes(blob[:8], "little")
    blob[8:8 + n] = b"\xff\xfe not json" + b"!" * (n - 11)
    p.write_bytes(bytes(blob))
    return d, ["model.safetensors", "not valid JSON"], []


def _offsets_past_end(f, t):
    d = copy_of(f, t, "hybrid")
    p = d / "model.safetensors"
    header, payload = split_safetensors(p)
    name = max((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][1])
    b, e = header[name]["data_offsets"]
    header[name]["data_offsets"] = [len(payload) + 64, len(payload) + 64 + (e - b)]
    join_safetensors(p, header, payload)
    return d, [name, "data ends at byte", "truncated"], []


def _unknown_dtype(f, t):
    d = copy_of(f, t, "hybrid")
    p = d / "model.safetensors"
    header, payload = split_safetensors(p)
    header["xlstm_block_stack.blocks.0.xlstm.q_proj.weight"]["dtype"] = "F12"
    join_safetensors(p, header, payload)
    return d, ["xlstm_block_stack.blocks.0.xlstm.q_proj.weight", "unknown dtype 'F12'"], []


def _tensors_wrong(f, t):
    d = copy_of(f, t, "hybrid")

    def edit(sd):
        sd.pop("xlstm_block_stack.blocks.2.xlstm.learnable_skip")
        sd.pop("xlstm_block_stack.blocks.1.ffn.proj_down.weight")
        sd["xlstm_block_stack.blocks.0.xlstm.v_proj.weight"] = np.zeros((7, 4, 4), np.float32)
        sd["backbone.stray"] = np.zeros(3, np.float32)

    rewrite_tensors(d / "model.safetensors", edit)
    return d, ["missing 2", "learnable_skip", "ffn.proj_down.weight", "misshaped 1", "v_proj.weight",
               "got [7, 4, 4]", "unexpected 1", "backbone.stray"], []


def _config_missing(f, t):
    d = copy_of(f, t, "hf")
    (d / "config.json").unlink()
    return d, ["no recognisable checkpoint", "model.safetensors", "config.json"], []


def _config_missing_forced(f, t):
    d = copy_of(f, t, "hf")
    (d / "config.json").unlink()
    return d, ["config.json is missing"], ["--format", "hf"]


def _config_not_json(f, t):
    d = copy_of(f, t, "hf")
    (d / "config.json").write_text('{"model_type": "xlstm", "hidden_size": 12')
    return d, ["config.json", "not valid JSON"], []


def _config_not_yaml(f, t):
    d = copy_of(f, t, "large")
    (d / "config.yaml").write_text("embedding_dim: [64\nnum_heads: 2\n")
    return d, ["config.yaml", "not valid YAML"], []


def _config_wrong_type(f, t):
    d = copy_of(f, t, "hybrid")
    edit_yaml(d / "config.yaml", lambda c: c.update(embedding_dim="64"))
    return d, ["config.yaml", "'embedding_dim'", "must be int", "'64'"], []


def _config_field_missing(f, t):
    d = copy_of(f, t, "large")
    edit_yaml(d / "config.yaml", lambda c: c.pop("vocab_size"))
    return d, ["config.yaml", "'vocab_size' is missing"], ["--format", "large"]


def _heads_not_dividing_large(f, t):
    d = copy_of(f, t, "large")
    edit_yaml(d / "config.yaml", lambda c: c.update(num_heads=3))
    return d, ["config.yaml", "num_heads 3 must divide"], []


def _heads_not_dividing_slstm(f, t):
    d = copy_of(f, t, "hybrid")
    edit_yaml(d / "config.yaml", lambda c: c["slstm_block"]["slstm"].update(num_heads=5))
    return d, ["config.yaml", "slstm_block.slstm", "num_heads 5 must divide embedding_dim 64"], []


def _heads_not_dividing_mlstm(f, t):
    d = copy_of(f, t, "hybrid")
    edit_yaml(d / "config.yaml", lambda c: c["mlstm_block"]["mlstm"].update(num_heads=3))
    return d, ["config.yaml", "num_heads 3 does not divide the inner dim 128"], []


def _non_positive_blocks(f, t):
    d = copy_of(f, t, "large")
    edit_yaml(d / "config.yaml", lambda c: c.update(num_blocks=0))
    return d, ["config.yaml", "'num_blocks' must be positive, got 0"], []


def _non_positive_vocab(f, t):
    d = copy_of(f, t, "hf")
    edit_json(d / "config.json", lambda c: c.update(vocab_size=-5))
    return d, ["config.json", "'vocab_size' must be positive, got -5"], []


def _profile_inconsistent(f, t):
    from xlstm_export.frontends import load_checkpoint
    from xlstm_export.frontends.profile import save_profile_checkpoint

    d = save_profile_checkpoint(load_checkpoint(f("hybrid")), t / "ck")
    edit_json(d / "profile.json", lambda p: p["blocks"][1].update(num_heads=3))
    return d, ["profile.json", "num_heads 3 x head_dim 16 must equal embedding_dim 64"], []


def _missing_shard(f, t):
    d = copy_of(f, t, "hf_sharded")
    shard = sorted(d.glob("model-*.safetensors"))[1]
    shard.unlink()
    return d, ["model.safetensors.index.json", shard.name, "missing"], []


def _unknown_hybrid_field(f, t):
    d = copy_of(f, t, "hybrid")
    edit_yaml(d / "config.yaml", lambda c: c["slstm_block"]["slstm"].update(num_head=4))
    return d, ["config.yaml", "slstm_block.slstm", "unknown field", "num_head"], []


def _no_such_path(f, t):
    return t / "does-not-exist", ["does-not-exist", "no such file or directory"], []


def _empty_dir(f, t):
    (t / "empty").mkdir()
    return t / "empty", ["empty", "the directory is empty"], []


BAD_INPUTS = {
    "truncated-safetensors": _truncated,
    "truncated-in-header": _truncated_in_header,
    "absurd-header-length": _absurd_header_length,
    "header-not-json": _header_not_json,
    "offsets-past-end": _offsets_past_end,
    "unknown-dtype": _unknown_dtype,
    "tensors-missing-misshaped-unexpected": _tensors_wrong,
    "config-missing": _config_missing,
    "config-missing-format-given": _config_missing_forced,
    "config-not-json": _config_not_json,
    "config-not-yaml": _config_not_yaml,
    "config-field-wrong-type": _config_wrong_type,
    "config-field-missing": _config_field_missing,
    "heads-not-dividing-dims-large": _heads_not_dividing_large,
    "heads-not-dividing-dims-slstm": _heads_not_dividing_slstm,
    "heads-not-dividing-inner-mlstm": _heads_not_dividing_mlstm,
    "non-positive-num-blocks": _non_positive_blocks,
    "non-positive-vocab": _non_positive_vocab,
    "profile-inconsistent-schedule": _profile_inconsistent,
    "missing-shard": _missing_shard,
    "unknown-hybrid-field": _unknown_hybrid_field,
    "path-does-not-exist": _no_such_path,
    "empty-directory": _empty_dir,
}


def test_every_target_has_an_export_command():
    from xlstm_export.targets import TARGETS

    assert set(EXPORTS) == {"torchscript", "onnx", "onnx --scan", "onnx --prefill-chunk 8", "coreml",
                            "coreml --prefill-chunk 8"}  # what the registry holds today
    assert {"inspect", *TARGETS} <= set(main.commands)
    assert any("--scan" in p.opts for p in main.commands["onnx"].params)
    for name in ("onnx", "coreml"):
        assert any("--prefill-chunk" in p.opts for p in main.commands[name].params), name
    for name in TARGETS:
        assert any("--force" in p.opts for p in main.commands[name].params), name


@pytest.mark.parametrize("cmd", COMMANDS)
@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_malformed_input_one_line_exit_2_nothing_written(checkpoint_factory, tmp_path, out_dir, case, cmd):
    ckpt, needles, extra = BAD_INPUTS[case](checkpoint_factory, tmp_path)
    res = invoke(argv(cmd, ckpt, out_dir, *extra))
    assert_one_error_line(res, *needles)
    assert listing(out_dir) == []


# -- pickles ----------------------------------------------------------------------------------------
class RunsCode:
    """Unpickling this runs a shell command (touches ``marker``)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _evil_pt(d: Path, marker: Path, how: str) -> None:
    import torch

    if how == "torch.save":  # a zip archive, like every modern .pt
        torch.save({"token_embedding.weight": torch.zeros(97, 64), "evil": RunsCode(marker)}, d / "model.pt")
    else:  # a bare (legacy) pickle stream
        (d / "model.pt").write_bytes(pickle.dumps({"evil": RunsCode(marker)}, protocol=2))


def test_the_evil_pickle_really_runs_code_when_unpickled(tmp_path):
    """Control: the payload used below is live (so its marker staying absent means it was not run)."""
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps(RunsCode(marker)))
    assert marker.exists()


@pytest.mark.parametrize("how", ["torch.save", "bare-pickle"])
@pytest.mark.parametrize("cmd", COMMANDS)
def test_pickle_that_would_run_code_is_refused_and_never_runs(checkpoint_factory, tmp_path, out_dir, cmd, how):
    d = copy_of(checkpoint_factory, tmp_path, "hybrid_pt")
    marker = tmp_path / "pwned"
    _evil_pt(d, marker, how)
    res = invoke(argv(cmd, d, out_dir))
    assert_one_error_line(res, "model.pt", "refused", "not run")
    assert not marker.exists()
    assert listing(out_dir) == []


# -- NaN / Inf weights -------------------------------------------------------------------------------
NON_FINITE = {  # fixture, checkpoint tensor, index, value
    "nan-in-slstm-gate": ("hybrid", "xlstm_block_stack.blocks.1.xlstm.zgate.weight", (0, 1, 2), np.nan),
    "inf-in-mlstm-proj": ("hybrid", "xlstm_block_stack.blocks.2.xlstm.proj_up.weight", (5, 3), -np.inf),
    "nan-in-large-ffn": ("hf", "backbone.blocks.1.ffn.proj_down.weight", (0, 0), np.nan),
}


def non_finite_checkpoint(factory, tmp: Path, case: str) -> tuple[Path, str]:
    name, tensor, index, value = NON_FINITE[case]
    d = copy_of(factory, tmp, name)
    rewrite_tensors(d / "model.safetensors", lambda sd: sd[tensor].__setitem__(index, value))
    return d, tensor


EXPORT_PARAMS = list(EXPORTS)


@pytest.mark.parametrize("cmd", EXPORT_PARAMS)
@pytest.mark.parametrize("case", sorted(NON_FINITE))
def test_non_finite_weight_is_refused_by_every_export(checkpoint_factory, tmp_path, out_dir, case, cmd):
    d, tensor = non_finite_checkpoint(checkpoint_factory, tmp_path, case)
    res = invoke(argv(cmd, d, out_dir, "--no-validate"))
    assert_one_error_line(res, tensor, "non-finite")
    assert listing(out_dir) == []


def test_inspect_reads_no_tensor_data_so_non_finite_weights_pass_it(checkpoint_factory, tmp_path):
    """By design (a 7B checkpoint inspects in a second): NaNs are found by the exports, not by inspect."""
    d, _ = non_finite_checkpoint(checkpoint_factory, tmp_path, "nan-in-slstm-gate")
    assert invoke(["inspect", "--checkpoint", str(d)]).exit_code == 0


# -- output paths: no-clobber, --force, unwritable places --------------------------------------------
def make_placeholder(path: Path) -> dict:
    """An 'existing artifact' at ``path`` (a directory for a package); returns its fingerprint."""
    if path.suffix == ".mlpackage":  # recognisably ours (outputs.foreign_reason): --force may replace it
        path.mkdir()
        (path / "Manifest.json").write_text('{"itemInfoEntries": {}, "old": true}')
        (path / "Data" / "com.apple.CoreML").mkdir(parents=True)
        (path / "Data" / "com.apple.CoreML" / "model.mlmodel").write_bytes(b"old spec xlstm_export.io {}")
        (path / "Data" / "weights.bin").write_bytes(b"old weights")
    elif path.suffix == ".pt":
        import zipfile

        with zipfile.ZipFile(path, "w") as z:
            z.writestr("old/extra/xlstm_export.io", "{}")
            z.writestr("old/data.pkl", b"an older artifact " * 100)
    else:  # ONNX: ir_version 8, producer_name "xlstm-export"
        path.write_bytes(b"\x08\x08\x12\x0cxlstm-export" + b"an older artifact " * 100)
    old = time.time() - 86400
    for p in [path, *path.rglob("*")]:
        os.utime(p, (old, old))
    return fingerprint(path)


def fingerprint(path: Path) -> dict:
    items = [path, *sorted(path.rglob("*"))] if path.is_dir() else [path]
    return {str(p.relative_to(path.parent)): (p.stat().st_mtime_ns, p.read_bytes() if p.is_file() else None)
            for p in items}


@pytest.mark.parametrize("cmd", list(EXPORTS))
def test_existing_output_is_never_overwritten_without_force(checkpoint_factory, out_dir, cmd):
    out = out_of(cmd, out_dir)
    before = make_placeholder(out)
    res = invoke(argv(cmd, checkpoint_factory("hybrid"), out_dir))
    assert_one_error_line(res, str(out), "already exists", "--force")
    assert fingerprint(out) == before
    assert listing(out_dir) == [out.name]


def test_existing_swift_snippet_is_not_overwritten_without_force(checkpoint_factory, out_dir):
    swift = out_dir / "model.swift"
    swift.write_text("// mine")
    res = invoke(argv("coreml", checkpoint_factory("hybrid"), out_dir))
    assert_one_error_line(res, "model.swift", "already exists")
    assert swift.read_text() == "// mine" and listing(out_dir) == ["model.swift"]


FAILING = {
    "bad-checkpoint": lambda f, t: (BAD_INPUTS["tensors-missing-misshaped-unexpected"](f, t)[0], "missing 2"),
    "nan-found-while-writing": lambda f, t: non_finite_checkpoint(f, t, "inf-in-mlstm-proj"),
}


@pytest.mark.parametrize("cmd", list(EXPORTS))
@pytest.mark.parametrize("failure", sorted(FAILING))
def test_failing_export_with_force_keeps_the_old_artifact(checkpoint_factory, tmp_path, out_dir, cmd, failure):
    ckpt, needle = FAILING[failure](checkpoint_factory, tmp_path)
    out = out_of(cmd, out_dir)
    before = make_placeholder(out)
    res = invoke(argv(cmd, ckpt, out_dir, "--force", "--no-validate"))
    assert_one_error_line(res, needle)
    assert fingerprint(out) == before
    assert listing(out_dir) == [out.name]


@pytest.mark.parametrize("cmd", list(EXPORTS))
def test_unwritable_output_places(checkpoint_factory, tmp_path, cmd):
    ck = checkpoint_factory("hybrid")
    res = invoke(argv(cmd, ck, tmp_path / "no" / "such" / "dir"))
    assert_one_error_line(res, "does not exist")
    (tmp_path / "a-file").write_text("x")
    res = invoke(argv(cmd, ck, tmp_path / "a-file"))
    assert_one_error_line(res, "is not a directory")
    assert (tmp_path / "a-file").read_text() == "x"


def test_write_errors_become_one_line(tmp_path):
    """A full disk / read-only place while writing is an OutputError (exit 2), and the temporary goes."""
    import errno

    from xlstm_export.errors import OutputError
    from xlstm_export.outputs import atomic_output

    out = tmp_path / "model.onnx"
    with pytest.raises(OutputError, match="model.onnx: cannot write: No space left"):
        with atomic_output(out) as tmp:
            tmp.write_bytes(b"partial")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    with pytest.raises(OutputError, match="cannot write"):
        with atomic_output(out) as tmp:
            tmp.mkdir()
            raise PermissionError(errno.EACCES, "Permission denied", str(tmp / "weights.bin"))
    with pytest.raises(FileNotFoundError):  # an input-side OSError is not disguised as an output error
        with atomic_output(out) as tmp:
            open(tmp_path / "missing-input")
    assert listing(tmp_path) == []


# test_outputs.py: nothing planted at a temporary / backup name is used or deleted; what a killed export
# leaves (its private folder, recognised by name, owner and marker) is cleaned by the next one.


# -- interruption ---------------------------------------------------------------------------------------
# The temporary sibling of TorchScript and Core ML exists for a fraction of a second (the artifact is
# built in memory / in coremltools' own folder, then written in one go), too short to signal reliably.
# HOLD makes every export wait, with its complete artifact in the temporary sibling, just before the rename:
# the real atomic_output and signal handling run; only a sleep is added at the riskiest moment.
HOLD = """
import contextlib, os, sys, time
from pathlib import Path
import xlstm_export.outputs as outputs
_orig = outputs.atomic_outputs
@contextlib.contextmanager
def held(out_paths, force=False):
    with _orig(out_paths, force) as tmps:
        yield tmps
        Path(os.environ["XLSTM_TEST_HELD"]).write_text(str(tmps[0]))
        time.sleep(600)
outputs.atomic_outputs = held
from xlstm_export.cli import main
main(sys.argv[1:], prog_name="xlstm-export")
"""


def _env(**extra) -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.update({k: str(v) for k, v in extra.items()})
    return env


def _temp_siblings(out: Path) -> list[Path]:
    return [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]


def _start_held(cmd: str, ckpt: Path, out_dir: Path, held_file: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", HOLD, *argv(cmd, ckpt, out_dir, "--no-validate")],
                            cwd=REPO, env=_env(XLSTM_TEST_HELD=held_file), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _wait_for(pred, proc: subprocess.Popen, timeout: float, what: str) -> None:
    t0 = time.time()
    while not pred():
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"the export ended (rc {proc.returncode}) before {what}: {err[-2000:]}")
        if time.time() - t0 > timeout:
            proc.kill()
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.002)


@pytest.mark.slow
@pytest.mark.parametrize("cmd", list(EXPORTS))
def test_interrupted_export_leaves_nothing(checkpoint_factory, tmp_path, cmd):
    """SIGINT (Ctrl-C) and SIGTERM (kill) while the finished artifact sits in the temporary sibling."""
    ck = checkpoint_factory("hybrid")
    runs = {}
    for sig in (signal.SIGINT, signal.SIGTERM):  # both at once: the exports take a while
        d = tmp_path / sig.name
        d.mkdir()
        runs[sig] = (d, _start_held(cmd, ck, d, tmp_path / f"{sig.name}.held"))
    for sig, (d, proc) in runs.items():
        out = out_of(cmd, d)
        _wait_for(lambda: (tmp_path / f"{sig.name}.held").exists(), proc, 240, "the artifact was complete")
        assert _temp_siblings(out), "the temporary sibling should hold the artifact now"
        assert not out.exists()
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode != 0
        assert "Traceback" not in err, err
        assert listing(d) == [], f"{sig.name}: left {listing(d)}"


@pytest.fixture(scope="module")
def big_hf_checkpoint(tmp_path_factory) -> Path:
    """A transformers-format checkpoint with random weights, big enough that writing it takes a while:
    hidden 512, 6 blocks, vocab 8192 (27.7M parameters, 111 MB)."""
    d = tmp_path_factory.mktemp("big") / "hf512"
    d.mkdir()
    E, NH, NB, V = 512, 4, 6, 8192
    U, qk = 1408, E // 2
    shapes = {"backbone.embeddings.weight": (V, E)}
    for i in range(NB):
        p = f"backbone.blocks.{i}."
        shapes.update({
            p + "norm_mlstm.weight": (E,), p + "mlstm_layer.q.weight": (qk, E), p + "mlstm_layer.k.weight": (qk, E),
            p + "mlstm_layer.v.weight": (E, E), p + "mlstm_layer.ogate_preact.weight": (E, E),
            p + "mlstm_layer.igate_preact.weight": (NH, E), p + "mlstm_layer.igate_preact.bias": (NH,),
            p + "mlstm_layer.fgate_preact.weight": (NH, E), p + "mlstm_layer.fgate_preact.bias": (NH,),
            p + "mlstm_layer.multihead_norm.weight": (E,), p + "mlstm_layer.out_proj.weight": (E, E),
            p + "norm_ffn.weight": (E,), p + "ffn.proj_up_gate.weight": (U, E), p + "ffn.proj_up.weight": (U, E),
            p + "ffn.proj_down.weight": (E, U)})
    shapes.update({"backbone.out_norm.weight": (E,), "lm_head.weight": (V, E)})
    header, off = {}, 0
    for n, s in shapes.items():
        header[n] = {"dtype": "F32", "shape": list(s), "data_offsets": [off, off + 4 * int(np.prod(s))]}
        off += 4 * int(np.prod(s))
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    rng = np.random.default_rng(0)
    with open(d / "model.safetensors", "wb") as f:
        f.write(len(raw).to_bytes(8, "little") + raw)
        for n, s in shapes.items():
            f.write((rng.standard_normal(s, dtype=np.float32) * 0.02).tobytes())
    (d / "config.json").write_text(json.dumps({"model_type": "xlstm", "vocab_size": V, "hidden_size": E,
                                               "num_hidden_layers": NB, "num_heads": NH}))
    return d


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_mid_write_leaves_nothing(big_hf_checkpoint, tmp_path, sig):
    """No help: the ONNX writer streams 111 MB into the temporary sibling; signal as soon as it appears."""
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "model.onnx"
    proc = subprocess.Popen([sys.executable, "-m", "xlstm_export", *argv("onnx", big_hf_checkpoint, out_dir,
                                                                          "--no-validate")],
                            cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: bool(_temp_siblings(out)), proc, 120, "the temporary sibling appeared")
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0 and "Traceback" not in err, err
    assert listing(out_dir) == []


@pytest.mark.slow
def test_sigkill_leaves_nothing_at_the_output_path_and_the_next_export_cleans_up(checkpoint_factory, tmp_path):
    ck = checkpoint_factory("hybrid")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_of("onnx", out_dir)
    proc = _start_held("onnx", ck, out_dir, tmp_path / "held")
    _wait_for(lambda: (tmp_path / "held").exists(), proc, 120, "the artifact was complete")
    proc.kill()
    proc.communicate(timeout=60)
    assert not out.exists()
    left = _temp_siblings(out)
    assert left  # SIGKILL cannot be handled: the temporary stays, beside (not at) the output path
    res = subprocess.run([sys.executable, "-m", "xlstm_export", *argv("onnx", ck, out_dir, "--no-validate")],
                         cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert listing(out_dir) == ["model.onnx"]


# -- byte-reproducibility -----------------------------------------------------------------------------------
def tree_bytes(path: Path) -> dict[str, bytes]:
    if path.is_dir():
        return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}
    return {path.name: path.read_bytes()}


# every target on the hybrid fixture (mLSTM + sLSTM blocks); the cheap ONNX ones on the L family too
REPRO = [(cmd, "hybrid") for cmd in EXPORTS] + [("onnx", "hf"), ("onnx --scan", "hf")]


@pytest.mark.slow
@pytest.mark.parametrize("cmd,name", REPRO)
def test_exports_are_byte_reproducible(checkpoint_factory, tmp_path, cmd, name):
    """Two exports of the same checkpoint and options in separate processes (different hash seeds and
    working directories; the second replaces an older artifact with --force) are identical, byte for byte,
    every file of a package (Manifest.json included) and the Swift snippet too."""
    ck = checkpoint_factory(name)
    runs = []
    for i, seed in enumerate(("1", "2")):
        d = tmp_path / f"run{i}"
        d.mkdir()
        extra = ["--no-validate"]
        if i == 1:
            make_placeholder(out_of(cmd, d))
            extra.append("--force")
        cwd = tmp_path / f"cwd{i}"
        cwd.mkdir()
        env = _env(PYTHONHASHSEED=seed, PYTHONPATH=str(REPO))
        runs.append((d, subprocess.Popen([sys.executable, "-m", "xlstm_export", *argv(cmd, ck, d, *extra)], cwd=cwd,
                                         env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)))
    for d, proc in runs:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err
    (a, _), (b, _) = runs
    assert listing(a) == listing(b)
    for name in listing(a):
        ta, tb = tree_bytes(a / name), tree_bytes(b / name)
        assert sorted(ta) == sorted(tb), name
        differ = [k for k in ta if ta[k] != tb[k]]
        assert not differ, f"{cmd}: {name}: these files differ between two runs: {differ}"
    if cmd == "coreml":
        assert "Manifest.json" in tree_bytes(a / "model.mlpackage")
        assert listing(a) == ["model.mlpackage", "model.swift"]
