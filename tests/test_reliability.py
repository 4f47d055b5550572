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
from xlstm_export.targets import swept_kinds

REPO = Path(__file__).resolve().parents[1]

def kind_words(k) -> list[str]:
    """The CLI words of an artifact kind: ``onnx --scan``, ``onnx --prefill-chunk 8``."""
    return k.cli_words()


# Every artifact kind of the target registry, as its CLI command ("onnx --scan" for the onnx-scan kind).
EXPORTS = {" ".join(kind_words(k)): (kind_words(k), k.filename) for k in swept_kinds().values()}
assert len(EXPORTS) == len(swept_kinds())
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
                            "coreml --prefill-chunk 8", "executorch"}  # what the registry sweeps today
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
    elif path.suffix == ".pte":  # an ExecuTorch flatbuffer holding our contract method
        path.write_bytes(b"<\x00\x00\x00ET12" + b"an older artifact " * 50 + b"xlstm_export_io" + b"\x00" * 64)
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


def test_existing_swift_package_folder_is_not_overwritten_without_force(checkpoint_factory, out_dir):
    swift = out_dir / "model-swift"
    swift.mkdir()
    (swift / "Package.swift").write_text("// mine")
    res = invoke(argv("coreml", checkpoint_factory("hybrid"), out_dir))
    assert_one_error_line(res, "model-swift", "already exists")
    assert (swift / "Package.swift").read_text() == "// mine" and listing(out_dir) == ["model-swift"]


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
import contextlib, faulthandler, os, signal, sys, time
from pathlib import Path
signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C raises here, whatever the parent ignores
faulthandler.register(signal.SIGUSR1, all_threads=True)  # the test asks where a process hangs
import xlstm_export.outputs as outputs
_orig = outputs.atomic_outputs
@contextlib.contextmanager
def held(out_paths, force=False, ours=outputs.nothing_is_ours):
    with _orig(out_paths, force, ours) as tmps:
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


def _sigint_default() -> None:
    """In the child: SIGINT back to its default. A test run started in the background by a non-interactive
    shell ignores SIGINT, children inherit that, and Python then never raises KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start_held(cmd: str, ckpt: Path, out_dir: Path, held_file: Path) -> subprocess.Popen:
    # (no preexec_fn: it is not safe in a process with threads, as a pytest-xdist worker is; HOLD itself
    # sets SIGINT's handler)
    return subprocess.Popen([sys.executable, "-c", HOLD, *argv(cmd, ckpt, out_dir, "--no-validate")],
                            cwd=REPO, env=_env(XLSTM_TEST_HELD=held_file), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _ended(proc: subprocess.Popen, timeout: float) -> str:
    """The process's stderr once it has ended; if it has not within ``timeout``, its threads' stacks (HOLD's
    SIGUSR1) in the failure."""
    try:
        return proc.communicate(timeout=timeout)[1]
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGUSR1)
        time.sleep(2)
        proc.kill()
        raise AssertionError(f"still running {timeout} s after the signal:\n{proc.communicate()[1][-4000:]}")


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
    """SIGINT (Ctrl-C) and SIGTERM (kill) while the finished artifact sits in the temporary sibling (the hybrid
    fixture; ExecuTorch on the L family's, which it lowers in half the time: the write path is the same)."""
    ck = checkpoint_factory("hf" if cmd.startswith("executorch") else "hybrid")
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
        err = _ended(proc, 120)
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
                            cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_sigint_default)
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


# every target on the hybrid fixture (mLSTM + sLSTM blocks), but ExecuTorch (its lowering's determinism is the
# question, and XNNPACK lowers the 2-block L-family step in half the hybrid's time); the cheap ONNX ones on
# the L family too
REPRO = [(cmd, "hf" if cmd.startswith("executorch") else "hybrid") for cmd in EXPORTS] + [("onnx", "hf"),
                                                                                           ("onnx --scan", "hf")]


@pytest.mark.slow
@pytest.mark.parametrize("cmd,name", REPRO)
def test_exports_are_byte_reproducible(checkpoint_factory, exports, tmp_path, cmd, name):
    """Two exports of the same checkpoint and options in separate processes (different hash seeds and
    working directories; the second replaces an older artifact with --force) are identical, byte for byte,
    every file of a package (Manifest.json included) and the Swift snippet too. The first is the session's
    export (this test process, through the registry: what the CLI calls), the second a fresh CLI process."""
    ck = checkpoint_factory(name)
    kind = next(n for n, k in swept_kinds().items() if " ".join(kind_words(k)) == cmd)
    a = exports(name, kind).path.parent
    d = tmp_path / "run1"
    d.mkdir()
    make_placeholder(out_of(cmd, d))
    cwd = tmp_path / "cwd1"
    cwd.mkdir()
    seed = "2" if os.environ.get("PYTHONHASHSEED") == "1" else "1"  # not this process's
    env = _env(PYTHONHASHSEED=seed, PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-m", "xlstm_export", *argv(cmd, ck, d, "--no-validate", "--force")],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    b = d
    assert listing(a) == listing(b)
    for name in listing(a):
        ta, tb = tree_bytes(a / name), tree_bytes(b / name)
        assert sorted(ta) == sorted(tb), name
        differ = [k for k in ta if ta[k] != tb[k]]
        assert not differ, f"{cmd}: {name}: these files differ between two runs: {differ}"
    if cmd == "coreml":
        assert "Manifest.json" in tree_bytes(a / "model.mlpackage")
        assert listing(a) == ["model-swift", "model.mlpackage"]


# -- issue 14, checkpoints and configs ------------------------------------------------------------------
# Each class below failed on the code before it (traceback, hang, SIGBUS, a silently wrong model or an
# unbounded error line); each test says what it was.
LINE_LIMIT = len("error: ") + 1000  # errors.MAX_LINE


def _run(args: list[str], timeout: float = 120, **kw) -> subprocess.CompletedProcess:
    """The CLI in its own process (a hang is a timeout, a crash a signal, not this test run's)."""
    return subprocess.run([sys.executable, "-m", "xlstm_export", *args], cwd=REPO, env=_env(), capture_output=True,
                          text=True, timeout=timeout, **kw)


def assert_proc_one_line(res: subprocess.CompletedProcess, *needles: str) -> str:
    assert "Traceback" not in res.stderr, res.stderr
    assert res.returncode == 2, (res.returncode, res.stderr[-2000:])
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr[-2000:]
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def _cast_tensor(d: Path, tensor: str, dtype) -> None:
    rewrite_tensors(d / "model.safetensors", lambda sd: sd.__setitem__(tensor, sd[tensor].astype(dtype)))


def _cast_pt(d: Path, tensor: str, how) -> None:
    import torch

    sd = torch.load(d / "model.pt", weights_only=True)
    sd[tensor] = how(sd[tensor])
    torch.save(sd, d / "model.pt")


NON_FLOAT = {  # fixture -> edit(dir) -> tensor named in the error; before: exported and *passed* validation
    "safetensors-I32-embedding": ("hf", lambda d: _cast_tensor(d, "backbone.embeddings.weight", np.int32),
                                  "backbone.embeddings.weight"),
    "safetensors-U8-norm": ("hf", lambda d: _cast_tensor(d, "backbone.blocks.0.norm_mlstm.weight", np.uint8),
                            "backbone.blocks.0.norm_mlstm.weight"),
    "safetensors-I64-ffn": ("large", lambda d: _cast_tensor(d, "backbone.blocks.1.ffn.proj_down.weight", np.int64),
                            "backbone.blocks.1.ffn.proj_down.weight"),
    "safetensors-BOOL-recurrent": ("hybrid", lambda d: _cast_tensor(
        d, "xlstm_block_stack.blocks.1.xlstm.slstm_cell._recurrent_kernel_", np.bool_),
        "xlstm_block_stack.blocks.1.xlstm.slstm_cell._recurrent_kernel_"),
    "pt-int64-lm_head": ("hybrid_pt", lambda d: _cast_pt(d, "lm_head.weight", lambda t: t.long()), "lm_head.weight"),
    "pt-bool-lm_head": ("hybrid_pt", lambda d: _cast_pt(d, "lm_head.weight", lambda t: t > 0), "lm_head.weight"),
    "pt-int32-embedding": ("hybrid_pt", lambda d: _cast_pt(d, "token_embedding.weight", lambda t: t.int()),
                           "token_embedding.weight"),
}


@pytest.mark.parametrize("cmd", COMMANDS)
@pytest.mark.parametrize("case", sorted(NON_FLOAT))
def test_non_float_weights_are_refused_naming_tensor_and_file(checkpoint_factory, tmp_path, out_dir, case, cmd):
    name, edit, tensor = NON_FLOAT[case]
    d = copy_of(checkpoint_factory, tmp_path, name)
    edit(d)
    weights = "model.pt" if name.endswith("_pt") else "model.safetensors"
    line = assert_one_error_line(invoke(argv(cmd, d, out_dir)), f"{weights}:{tensor}", "not a float dtype")
    assert "int" in line or "bool" in line
    assert listing(out_dir) == []


def _odd_tensor(kind: str):
    import torch

    t = torch.randn(97, 64)
    if kind == "sparse_coo":
        return t.to_sparse()
    if kind == "sparse_csr":
        return t.to_sparse_csr()
    if kind == "meta":
        return torch.empty(97, 64, device="meta")
    if kind == "quantized":
        return torch.quantize_per_tensor(t, 0.1, 0, torch.qint8)
    if kind == "nested":  # before: a traceback ("NestedTensorImpl doesn't support sizes")
        return torch.nested.nested_tensor([t[:3], t[:5]])
    if kind == "jagged":
        return torch.nested.nested_tensor([t[:3], t[:5]], layout=torch.jagged)
    if kind == "complex":
        return t.to(torch.complex64)
    if kind == "float8":
        return t.to(torch.float8_e4m3fn)
    raise ValueError(kind)


ODD_TENSORS = ["sparse_coo", "sparse_csr", "meta", "quantized", "nested", "jagged", "complex", "float8"]


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("cmd", ["inspect", "onnx", "torchscript"])
@pytest.mark.parametrize("kind", ODD_TENSORS)
def test_odd_tensors_in_a_state_dict_are_one_line(checkpoint_factory, tmp_path, out_dir, kind, cmd):
    import torch

    d = copy_of(checkpoint_factory, tmp_path, "hybrid_pt")
    sd = torch.load(d / "model.pt", weights_only=True)
    sd["token_embedding.weight"] = _odd_tensor(kind)
    torch.save(sd, d / "model.pt")
    assert_one_error_line(invoke(argv(cmd, d, out_dir)), "model.pt", "token_embedding.weight")
    assert listing(out_dir) == []


def test_a_negated_view_in_a_state_dict_is_read_correctly(checkpoint_factory, tmp_path, out_dir):
    """A tensor saved with torch's negative bit set: before, numpy() refused it (a traceback at export)."""
    import torch

    from xlstm_export.frontends import load_checkpoint

    d = copy_of(checkpoint_factory, tmp_path, "hybrid_pt")
    sd = torch.load(d / "model.pt", weights_only=True)
    emb = sd["token_embedding.weight"].clone()
    sd["token_embedding.weight"] = torch._neg_view(emb)
    torch.save(sd, d / "model.pt")
    np.testing.assert_array_equal(load_checkpoint(d).weights["embedding.weight"].load(), -emb.numpy())
    res = invoke(argv("onnx", d, out_dir, "--no-validate"))
    assert res.exit_code == 0, res.output


def _alias_bomb(levels: int, fan: int = 9) -> str:
    """A YAML flow list whose anchors nest: ``levels`` x ``fan`` characters that stand for fan**levels values."""
    parts = ["&a0 [" + ",".join(["1"] * fan) + "]"]
    parts += [f"&a{i} [" + ",".join([f"*a{i - 1}"] * fan) + "]" for i in range(1, levels)]
    return "[" + ", ".join(parts) + "]"


YAML_CASES = {  # name -> (fixture, config.yaml text, needles)
    # ~1 KB that stands for 9**9 values: before, building the error message hung and ate the memory
    "alias-bomb-in-a-field": ("large", "embedding_dim: " + _alias_bomb(9) + "\nnum_heads: 2\nnum_blocks: 2\n"
                              "vocab_size: 97\n", ["config.yaml", "embedding_dim", "aliases"]),
    # a smaller one: before, an error line of megabytes
    "small-alias-bomb": ("hybrid", "mlstm_block: {}\nslstm_at: " + _alias_bomb(6) + "\n",
                         ["config.yaml", "slstm_at", "aliases"]),
    "alias-bomb-as-keys-values": ("large", "".join(f"k{i}: &k{i} [" + ",".join([f"*k{i - 1}"] * 9 if i else ["1"] * 9)
                                                   + "]\n" for i in range(9)), ["config.yaml", "aliases"]),
    "self-referencing-alias": ("hybrid", "mlstm_block: &r {mlstm: *r}\n", ["config.yaml", "contains itself"]),
    # before: TypeError from sorting int and str keys (a traceback)
    "int-and-str-keys": ("large", "1: 2\nzz: 3\nembedding_dim: 64\nnum_heads: 2\nnum_blocks: 2\nvocab_size: 97\n",
                         ["config.yaml", "key 1", "strings"]),
    "nested-int-keys": ("hybrid", "mlstm_block: {mlstm: {1: 2, zz: 3}}\nvocab_size: 97\n",
                        ["config.yaml", "mlstm_block.mlstm", "strings"]),
    "null-and-bool-keys": ("hybrid", "null: 1\ntrue: 2\nmlstm_block: {}\n", ["config.yaml", "strings"]),
    "date-key": ("large", "2001-01-01: 1\nembedding_dim: 64\n", ["config.yaml", "date", "strings"]),
    "float-key-in-slstm": ("hybrid", "slstm_block: {slstm: {0.5: 1}}\nmlstm_block: {}\n",
                           ["config.yaml", "slstm_block.slstm", "strings"]),
    "too-large": ("large", "# padding\n" * 120_000 + "embedding_dim: 64\n", ["config.yaml", "too large"]),
}


@pytest.mark.parametrize("case", sorted(YAML_CASES))
def test_yaml_bombs_and_odd_keys_are_one_short_line(checkpoint_factory, tmp_path, out_dir, case):
    """In a process of its own, with 2 GiB of address space and a time limit: a bomb must not get far."""
    name, text, needles = YAML_CASES[case]
    d = copy_of(checkpoint_factory, tmp_path, name)
    (d / "config.yaml").write_text(text)
    import resource

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (6 * 2**30, 6 * 2**30))

    for cmd in ("inspect", "onnx"):
        res = _run(argv(cmd, d, out_dir), timeout=60, preexec_fn=limit)
        line = assert_proc_one_line(res, *needles)
        assert len(line) <= LINE_LIMIT, len(line)
    assert listing(out_dir) == []


def test_long_input_values_give_a_short_error_line(checkpoint_factory, tmp_path, out_dir):
    """Before: the line quoted the whole value (100 KB here)."""
    d = copy_of(checkpoint_factory, tmp_path, "hf")
    edit_json(d / "config.json", lambda c: c.update(num_heads="8" * 100_000))
    line = assert_one_error_line(invoke(argv("inspect", d, out_dir)), "config.json", "'num_heads'", "must be int")
    assert len(line) <= 400, len(line)
    d2 = tmp_path / "ck2"
    shutil.copytree(checkpoint_factory("hybrid"), d2)
    rewrite_tensors(d2 / "model.safetensors", lambda sd: sd.__setitem__("x" * 100_000, np.zeros(1, np.float32)))
    line = assert_one_error_line(invoke(argv("onnx", d2, out_dir)), "unexpected 1", "xxxx")
    assert len(line) <= LINE_LIMIT, len(line)


def test_every_error_line_is_cut_to_a_readable_length(capsys):
    """The one central cut (cli.run_guarded), whatever a message holds: its head and its end survive."""
    from xlstm_export.cli import run_guarded
    from xlstm_export.errors import ConfigError

    def boom():
        raise ConfigError("head-of-message " + "y" * 8_000_000 + " end-of-message")

    with pytest.raises(SystemExit) as e:
        run_guarded(boom)
    assert e.value.code == 2
    line = capsys.readouterr().err.strip()
    assert "\n" not in line and len(line) <= LINE_LIMIT
    assert line.startswith("error: head-of-message") and line.endswith("end-of-message") and "characters cut" in line


def _fifo(p: Path) -> None:
    if p.exists() or p.is_symlink():
        p.unlink()
    os.mkfifo(p)


def _dev_zero(p: Path) -> None:
    if p.exists() or p.is_symlink():
        p.unlink()
    p.symlink_to("/dev/zero")


NON_REGULAR = {  # fixture, file, how -> needles; before: every one hung (or read /dev/zero without end)
    "fifo-config-json": ("hf", "config.json", _fifo, ["config.json", "FIFO"]),
    "fifo-config-yaml": ("large", "config.yaml", _fifo, ["config.yaml", "FIFO"]),
    "dev-zero-config-json": ("hf", "config.json", _dev_zero, ["config.json", "character device"]),
    "dev-zero-config-yaml": ("hybrid", "config.yaml", _dev_zero, ["config.yaml", "character device"]),
    "fifo-weights": ("hf", "model.safetensors", _fifo, ["model.safetensors", "FIFO"]),
    "dev-zero-weights": ("large", "model.safetensors", _dev_zero, ["model.safetensors", "character device"]),
    "fifo-shard": ("hf_sharded", "model-00003-of-00008.safetensors", _fifo, ["model-00003-of-00008", "FIFO"]),
    "fifo-index": ("hf_sharded", "model.safetensors.index.json", _fifo, ["index.json", "FIFO"]),
    "fifo-state-dict": ("hybrid_pt", "model.pt", _fifo, ["model.pt", "FIFO"]),
}


@pytest.mark.parametrize("case", sorted(NON_REGULAR))
def test_non_regular_checkpoint_files_are_refused_without_reading(checkpoint_factory, tmp_path, out_dir, case):
    name, fname, how, needles = NON_REGULAR[case]
    d = copy_of(checkpoint_factory, tmp_path, name)
    how(d / fname)
    assert_proc_one_line(_run(argv("onnx", d, out_dir), timeout=60), *needles, "not a regular file")
    assert listing(out_dir) == []


@pytest.mark.parametrize("what", ["fifo-onnx", "dev-zero-pt", "fifo-in-package", "fifo-onnx-data"])
def test_non_regular_artifacts_are_refused_by_validate(checkpoint_factory, tmp_path, what):
    ck = checkpoint_factory("hf")
    d = tmp_path / "art"
    d.mkdir()
    if what == "fifo-onnx":
        art = d / "model.onnx"
        _fifo(art)
        bad = art
    elif what == "dev-zero-pt":
        art = d / "model.pt"
        _dev_zero(art)
        bad = art
    elif what == "fifo-onnx-data":
        art = d / "model.onnx"
        assert invoke(["onnx", "--checkpoint", str(ck), "-o", str(art), "--no-validate"]).exit_code == 0
        bad = d / "model.onnx.data"
        _fifo(bad)
    else:
        art = d / "model.mlpackage"
        (art / "Data" / "com.apple.CoreML").mkdir(parents=True)
        (art / "Manifest.json").write_text("{}")
        bad = art / "Data" / "com.apple.CoreML" / "model.mlmodel"
        _fifo(bad)
    res = _run(["validate", str(art), "--checkpoint", str(ck)], timeout=60)
    assert_proc_one_line(res, bad.name, "not a regular file")


CONFIG_VALUES = {  # fixture, config file, edit, needles; before: accepted (NaN or a failing artifact)
    "hf-gate-soft-cap-0": ("hf", "config.json", {"gate_soft_cap": 0}, ["'gate_soft_cap'", "got 0"]),
    "hf-gate-soft-cap-negative": ("hf", "config.json", {"gate_soft_cap": -15.0}, ["'gate_soft_cap'", "-15"]),
    "hf-logit-cap-huge": ("hf", "config.json", {"output_logit_soft_cap": 1e308}, ["'output_logit_soft_cap'"]),
    "hf-norm-eps-negative": ("hf", "config.json", {"norm_eps": -1e-6}, ["'norm_eps'", "-1e-06"]),
    "hf-eps-zero": ("hf", "config.json", {"eps": 0.0}, ["'eps'"]),
    "large-gate-soft-cap-0": ("large", "config.yaml", {"gate_soft_cap": 0}, ["'gate_soft_cap'"]),
    "large-eps-huge": ("large", "config.yaml", {"eps": 1e300}, ["'eps'"]),
    "large-logit-cap-negative": ("large", "config.yaml", {"output_logit_soft_cap": -30.0},
                                 ["'output_logit_soft_cap'"]),
}


def _profile_with(checkpoint_factory, tmp: Path, edit) -> Path:
    from xlstm_export.frontends import load_checkpoint
    from xlstm_export.frontends.profile import save_profile_checkpoint

    d = save_profile_checkpoint(load_checkpoint(checkpoint_factory("hf")), tmp / "prof")
    edit_json(d / "profile.json", edit)
    return d


PROFILE_VALUES = {  # edit of profile.json -> needles
    "weight-offset-1e308": (lambda p: p["blocks"][0]["norm"].update(weight_offset=1e308), ["'weight_offset'"]),
    "cell-eps-negative": (lambda p: p["blocks"][1].update(cell_eps=-1e-6), ["'cell_eps'"]),
    "gate-soft-cap-0": (lambda p: p["blocks"][0].update(gate_soft_cap=0.0), ["'gate_soft_cap'"]),
    "out-norm-eps-negative": (lambda p: p["out_norm"].update(eps=-1.0), ["out_norm", "'eps'"]),
    "logit-cap-0": (lambda p: p.update(output_logit_soft_cap=0.0), ["'output_logit_soft_cap'"]),
    "head-norm-eps-inf-like": (lambda p: p["blocks"][0]["head_norm"].update(eps=1e200), ["head_norm", "'eps'"]),
}


@pytest.mark.parametrize("case", sorted(CONFIG_VALUES) + [f"profile-{k}" for k in sorted(PROFILE_VALUES)])
def test_config_values_that_cannot_work_are_config_errors(checkpoint_factory, tmp_path, out_dir, case):
    if case.startswith("profile-"):
        edit, needles = PROFILE_VALUES[case[len("profile-"):]]
        d = _profile_with(checkpoint_factory, tmp_path, edit)
        needles = ["profile.json", *needles]
    else:
        name, cfg, patch, needles = CONFIG_VALUES[case]
        d = copy_of(checkpoint_factory, tmp_path, name)
        (edit_json if cfg.endswith(".json") else edit_yaml)(d / cfg, lambda c: c.update(patch))
        needles = [cfg, *needles]
    for cmd in ("inspect", "onnx"):
        assert_one_error_line(invoke(argv(cmd, d, out_dir)), *needles)
    assert listing(out_dir) == []


def test_gate_soft_cap_0_is_a_config_error_for_coreml(checkpoint_factory, tmp_path, out_dir):
    """Before: a ZeroDivisionError traceback from the Core ML lowering."""
    d = copy_of(checkpoint_factory, tmp_path, "large")
    edit_yaml(d / "config.yaml", lambda c: c.update(gate_soft_cap=0))
    assert_one_error_line(invoke(argv("coreml", d, out_dir)), "config.yaml", "'gate_soft_cap'", "or null")
    assert listing(out_dir) == []


SHARD_NAMES = {  # before: the 5,000-character name was a traceback (ENAMETOOLONG), the NUL one too (ValueError)
    "5000-characters": ("x" * 5000 + ".safetensors", ["shard name", "5012 characters", "255 bytes"]),
    "nul-byte": ("a\x00b.safetensors", ["shard name", "plain file name"]),
    "dot": (".", ["shard name", "plain file name"]),
    "empty": ("", ["shard name", "plain file name"]),
    "parent": ("../model.safetensors", ["shard name", "plain file name"]),
}


@pytest.mark.parametrize("case", sorted(SHARD_NAMES))
@pytest.mark.parametrize("cmd", ["inspect", "onnx"])
def test_odd_shard_names_in_the_index_are_one_line(checkpoint_factory, tmp_path, out_dir, case, cmd):
    shard, needles = SHARD_NAMES[case]
    d = copy_of(checkpoint_factory, tmp_path, "hf_sharded")
    edit_json(d / "model.safetensors.index.json",
              lambda ix: ix["weight_map"].update({next(iter(ix["weight_map"])): shard}))
    line = assert_one_error_line(invoke(argv(cmd, d, out_dir)), "model.safetensors.index.json", *needles)
    assert len(line) <= 400
    assert listing(out_dir) == []


TRUNCATE_MID_EXPORT = """
import os, sys
from xlstm_export.graphs import weights
_load = weights.WeightHandle.load
def load_then_truncate(self, *a, **k):
    arr = _load(self, *a, **k)  # the first tensor the export reads: then the file shrinks, as if rewritten meanwhile
    victim = os.environ.pop("XLSTM_TEST_TRUNCATE", None)
    if victim:
        with open(victim, "r+b") as f:
            f.truncate(0)
    return arr
weights.WeightHandle.load = load_then_truncate
from xlstm_export.cli import main
main(sys.argv[1:], prog_name="xlstm-export")
"""


# every export kind but Core ML's prefill one (the same reads as "coreml", and 20 s of coremltools)
TRUNCATED = [("hf", c) for c in EXPORTS if c != "coreml --prefill-chunk 8"] + [("hybrid_pt", "onnx"),
                                                                              ("hybrid_pt", "torchscript")]


@pytest.mark.parametrize("name,cmd", TRUNCATED)
def test_checkpoint_truncated_during_export_is_one_line_and_leaves_nothing(checkpoint_factory, tmp_path, out_dir,
                                                                           name, cmd):
    """Before: SIGBUS (the tensors were memory-mapped; the data of a truncated file is gone from the map) and a
    temporary sibling left beside the output."""
    d = copy_of(checkpoint_factory, tmp_path, name)
    victim = d / ("model.pt" if name.endswith("_pt") else "model.safetensors")
    res = subprocess.run([sys.executable, "-c", TRUNCATE_MID_EXPORT, *argv(cmd, d, out_dir)], cwd=REPO,
                         env=_env(XLSTM_TEST_TRUNCATE=victim), capture_output=True, text=True, timeout=300)
    assert res.returncode == 2, (res.returncode, res.stderr[-2000:])
    line = [ln for ln in res.stderr.splitlines() if ln.startswith("error: ")]
    assert len(line) == 1 and victim.name in line[0] and "truncated" in line[0], res.stderr[-2000:]
    assert "Traceback" not in res.stderr
    assert listing(out_dir) == []


@pytest.mark.parametrize("content", ["text", "zip", "png", "pt"])
def test_a_file_that_is_not_safetensors_is_said_so_without_quoting_its_bytes(checkpoint_factory, tmp_path, out_dir,
                                                                             content):
    """Before: 'safetensors header length 8031924123371070824 is impossible ...' (8 bytes of text as a number)."""
    import re

    d = copy_of(checkpoint_factory, tmp_path, "hf")
    p = d / "model.safetensors"
    if content == "text":
        p.write_text("hello world, this is a README and not a safetensors file at all\n" * 3)
    elif content == "zip":
        import zipfile

        with zipfile.ZipFile(p, "w") as z:
            z.writestr("a.txt", "hello" * 100)
    elif content == "png":
        p.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    else:
        shutil.copy(checkpoint_factory("hybrid_pt") / "model.pt", p)
    line = assert_one_error_line(invoke(argv("inspect", d, out_dir)), "model.safetensors", "not a safetensors file")
    assert not re.search(r"\d{7,}", line.replace(str(d), "")), line
