"""Issue 14, CLI bounds, warnings and reproducibility (one section per class):

1. counts and batch sizes have maxima, and a validation's batch is checked against the memory available
   before anything is allocated or written (one line naming both figures);
2. a device that is absent, or that torch lists but cannot use, is one line and exit 2 for ``generate``
   (``--device auto`` falls back to cpu);
3. a failing command prints exactly one stderr line: warnings, logging and C-level writes of the libraries
   are held back and shown only after a successful command;
4. artifacts hold no path: the same checkpoint in two folders, exported to two file names, gives the same
   bytes (sibling files of a multi-file artifact are named by their base names only).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from xlstm_export import resources
from xlstm_export.cli import main
from xlstm_export.targets import KINDS, TARGETS

REPO = Path(__file__).resolve().parents[1]


def invoke(args: list[str]):
    return CliRunner().invoke(main, [str(a) for a in args])


def one_error_line(res, *needles: str, code: int = 2) -> str:
    assert "Traceback" not in res.output, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    assert res.exit_code == code, (res.exit_code, res.output)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def run_cli(*args, cwd=None, env=None, timeout=300) -> subprocess.CompletedProcess:
    e = dict(os.environ, PYTHONPATH=str(REPO), **(env or {}))
    return subprocess.run([sys.executable, "-m", "xlstm_export", *map(str, args)], cwd=cwd, env=e,
                          capture_output=True, text=True, timeout=timeout)


def kind_words(k) -> list[str]:
    """The CLI words of an artifact kind: ``onnx --scan``, ``onnx --prefill-chunk 8``."""
    return k.cli_words()


SUFFIX = {name: t.suffixes[0] for name, t in TARGETS.items()}


# == 1. bounds ==============================================================================================
BOUNDED = [  # argv (checkpoint and artifact need not exist: the bound is checked first), option, maximum
    (["generate", "--prompt-ids", "1,2", "--max-new-tokens", "1000000000"], "--max-new-tokens", resources.MAX_NEW_TOKENS),
    (["validate", "ART.pt", "--steps", "100000"], "--steps", resources.MAX_STEPS),
    (["validate", "ART.pt", "--prompts", "1000000"], "--prompts", resources.MAX_PROMPTS),
    (["validate", "ART.pt", "--prompt-len", "10000000"], "--prompt-len", resources.MAX_PROMPT_LEN),
    (["validate", "ART.pt", "--batch-size", "1000000000"], "--batch-size", resources.MAX_BATCH_SIZE),
    *[([*kind_words(k), "-o", f"OUT/m{SUFFIX[k.target]}", "--steps", "100000"], "--steps", resources.MAX_STEPS)
      for k in KINDS.values()],
    *[([*kind_words(k), "-o", f"OUT/m{SUFFIX[k.target]}", "--batch-size", "3000000000"], "--batch-size",
       resources.MAX_BATCH_SIZE) for k in KINDS.values()],
]


@pytest.mark.parametrize("args,option,maximum", BOUNDED, ids=[" ".join(a[:3]) + " " + o for a, o, _ in BOUNDED])
def test_counts_and_batch_sizes_have_maxima(tmp_path, args, option, maximum):
    """Was: generate --max-new-tokens 1e9 and validate --steps 1e5 ran unbounded; a Core ML export at batch 3e9
    died in a traceback. Now refused when parsed: one line naming the option and its maximum."""
    (tmp_path / "OUT").mkdir()
    args = [a.replace("OUT", str(tmp_path / "OUT")).replace("ART.pt", str(tmp_path / "a.pt")) for a in args]
    res = invoke([*args, "--checkpoint", tmp_path / "no-checkpoint"])  # before reading anything
    line = one_error_line(res, option, f"<={maximum}")
    assert len(line) < 200
    assert list((tmp_path / "OUT").iterdir()) == [] and not (tmp_path / "a.pt.report").exists()


def _export(ck: Path, out: Path, *extra):
    res = invoke(["torchscript", "--checkpoint", ck, "-o", out, "--no-validate", *extra])
    assert res.exit_code == 0, res.output
    return out


@pytest.mark.parametrize("cmd", ["export", "validate"])
def test_a_batch_that_does_not_fit_in_memory_is_refused_before_any_work(checkpoint_factory, tmp_path, monkeypatch,
                                                                        cmd):
    """Was: any batch size was run, allocating until the machine struggled. Now the estimate of a validation at
    that batch is compared with MemAvailable first (here: a machine with 8 MB available), one line naming both."""
    ck = checkpoint_factory("hybrid")
    art = _export(ck, tmp_path / "m.pt") if cmd == "validate" else None
    out = tmp_path / "out"
    out.mkdir()
    monkeypatch.setattr(resources, "available_memory", lambda: 8 * 1024 ** 2)
    if cmd == "export":
        res = invoke(["onnx", "--checkpoint", ck, "-o", out / "m.onnx", "--batch-size", "64"])
    else:
        res = invoke(["validate", art, "--checkpoint", ck, "--batch-size", "64", "--report", out / "rep"])
    from xlstm_export import load_checkpoint

    per_seq, fixed = resources.validation_bytes(load_checkpoint(ck), 64, 12)
    line = one_error_line(res, "--batch-size 64", "validating needs about", "8.0 MB available", "MemAvailable",
                          resources.human_bytes(per_seq))
    assert ("--no-validate" in line) == (cmd == "export")
    assert list(out.iterdir()) == []
    # the same batch where memory suffices: runs (the estimate is ~0.6 MB per sequence for this model)
    monkeypatch.setattr(resources, "available_memory", lambda: 64 * 1024 ** 3)
    if cmd == "export":
        res = invoke(["onnx", "--checkpoint", ck, "-o", out / "m.onnx", "--batch-size", "4", "--steps", "2"])
    else:
        res = invoke(["validate", art, "--checkpoint", ck, "--batch-size", "4", "--steps", "2", "--report",
                      out / "rep"])
    assert res.exit_code == 0, res.output


def test_the_memory_estimate_reads_meminfo_and_scales_with_the_batch(checkpoint_factory, tmp_path, monkeypatch):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24000000 kB\nMemFree:  100 kB\nMemAvailable:   1234567 kB\n")
    monkeypatch.setattr(resources, "MEMINFO", str(meminfo))
    assert resources.available_memory() == 1234567 * 1024
    monkeypatch.setattr(resources, "MEMINFO", str(tmp_path / "absent"))
    assert resources.available_memory() is None  # (macOS): no memory check, the maxima still apply
    from xlstm_export import load_checkpoint

    g = load_checkpoint(checkpoint_factory("hybrid"))
    states = sum(int(torch.tensor(s.shape).prod()) for s in g.state_contract(1))
    per_seq, fixed = resources.validation_bytes(g, 1, 12)
    assert per_seq == 4 * (12 * states + 4 * 12 * g.config.vocab_size + 32 * 12 * g.config.embedding_dim)
    assert fixed == 8 * g.num_params
    resources.check_validation_memory(g, 100, 12, available=per_seq * 100 + fixed)  # fits exactly
    with pytest.raises(resources.ConfigError, match="--batch-size 101: validating needs about"):
        resources.check_validation_memory(g, 101, 12, available=per_seq * 100 + fixed)


def test_generate_feeds_long_prompts_in_chunks_and_reports_progress(checkpoint_factory):
    """A long prompt never holds (T, V) logits at once, and the tokens are what generate_greedy gives."""
    from xlstm_export import load_checkpoint, progress
    from xlstm_export.cli import GENERATE_CHUNK, _generate
    from xlstm_export.reference import build_model

    model = build_model(load_checkpoint(checkpoint_factory("hybrid")), device="cpu")
    for n_prompt in (3, GENERATE_CHUNK + 7):
        ids = [(7 * i + 3) % 97 for i in range(n_prompt)]
        notes: list[str] = []
        with progress.reporting(notes.append):
            got = _generate(model, ids, 6, "cpu")
        with torch.no_grad():
            want = model.generate_greedy(torch.tensor([ids]), 6)[0].tolist()
        assert got == want, n_prompt
        assert any(n.endswith("generating token 1/6") for n in notes) and notes[-1].endswith("generating token 6/6")


# == 2. devices =============================================================================================
def _no(device: str) -> bool:
    if device == "cuda":
        return not torch.cuda.is_available()
    return not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


@pytest.mark.parametrize("device", ["cuda", "mps"])
def test_absent_device_is_one_line(checkpoint_factory, device):
    if not _no(device):
        pytest.skip(f"this machine has {device}")
    res = invoke(["generate", "--checkpoint", checkpoint_factory("hybrid"), "--prompt-ids", "1,2", "--device", device])
    one_error_line(res, f"device {device!r}", "not available", "cpu")


def _pretend_present(monkeypatch, device: str) -> None:
    """torch says the device is there; using it fails (a CPU build: AssertionError for cuda, NotImplementedError
    for mps) -- what a broken driver, a wrong build or a missing MPS kernel look like."""
    if device == "cuda":
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    else:
        monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)


@pytest.mark.parametrize("device", ["cuda", "mps"])
def test_device_that_torch_lists_but_cannot_use_is_one_line(checkpoint_factory, monkeypatch, device):
    """Was: a traceback (AssertionError 'Torch not compiled with CUDA enabled', NotImplementedError from MPS)."""
    if not _no(device):
        pytest.skip(f"this machine has {device}")
    _pretend_present(monkeypatch, device)
    res = invoke(["generate", "--checkpoint", checkpoint_factory("hybrid"), "--prompt-ids", "1,2", "--device", device])
    line = one_error_line(res, f"device {device!r} cannot run this model", "--device cpu")
    assert len(line) < 300


def test_auto_device_falls_back_to_cpu_when_the_accelerator_fails(checkpoint_factory, monkeypatch):
    if not _no("mps"):
        pytest.skip("this machine has mps")
    ck = checkpoint_factory("hybrid")
    want = invoke(["generate", "--checkpoint", ck, "--prompt-ids", "1,2,3", "--device", "cpu", "--json"])
    _pretend_present(monkeypatch, "mps")  # auto picks mps first
    res = invoke(["generate", "--checkpoint", ck, "--prompt-ids", "1,2,3", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout) == json.loads(want.stdout)


def test_a_device_query_that_fails_is_one_line(checkpoint_factory, monkeypatch):
    if not _no("cuda"):
        pytest.skip("this machine has cuda")

    def broken():
        raise RuntimeError("Unexpected error from cudaGetDeviceCount(): driver too old")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", broken)
    res = invoke(["generate", "--checkpoint", checkpoint_factory("hybrid"), "--prompt-ids", "1", "--device", "cuda"])
    one_error_line(res, "device 'cuda' is not usable", "driver too old")
    res = invoke(["generate", "--checkpoint", checkpoint_factory("hybrid"), "--prompt-ids", "1", "--json"])
    assert res.exit_code == 0, res.output  # auto: cuda's query fails -> cpu


# == 3. warnings ============================================================================================
# A command whose checkpoint loading makes every kind of library noise, then fails (or not).
NOISY = textwrap.dedent("""
    import logging, os, sys, warnings
    import numpy as np
    import xlstm_export.frontends as fe
    warnings.simplefilter("always")                      # as torch/numpy deprecations show up in scripts
    lib = logging.getLogger("somelib.with_handler")      # a library logger with its own handler (torch's kind)
    lib.addHandler(logging.StreamHandler())
    lib.propagate = False
    real = fe.load_checkpoint
    def noisy(path, format=None):
        warnings.warn("a UserWarning", UserWarning)
        warnings.warn("a DeprecationWarning", DeprecationWarning)
        np.float64(1.0) / np.float64(0.0)                # numpy's RuntimeWarning: divide by zero
        logging.getLogger("somelib").warning("no handler: the last-resort handler")
        lib.warning("own handler")
        os.write(2, b"C-level write to fd 2\\n")
        print("print to sys.stderr", file=sys.stderr)
        if os.environ.get("FAIL") == "1":
            from xlstm_export.errors import ConfigError
            raise ConfigError("config.json: field 'x' is bad")
        return real(path, format)
    fe.load_checkpoint = noisy
    from xlstm_export.cli import main
    main(sys.argv[1:], prog_name="xlstm-export")
""")
NOISE = ["a UserWarning", "a DeprecationWarning", "divide by zero", "the last-resort handler", "own handler",
         "C-level write to fd 2", "print to sys.stderr"]


def _noisy(*args, fail: bool):
    return subprocess.run([sys.executable, "-c", NOISY, *map(str, args)], cwd=REPO, capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(REPO), FAIL="1" if fail else "0"), timeout=300)


def test_a_failing_command_prints_only_its_error_line(checkpoint_factory):
    """Was: every warning (Python, numpy, logging, C level) printed before the error line."""
    res = _noisy("inspect", "--checkpoint", checkpoint_factory("hybrid"), fail=True)
    assert res.returncode == 2, res.stderr
    assert res.stderr.splitlines() == ["error: config.json: field 'x' is bad"], res.stderr


def test_warnings_of_a_successful_command_are_shown_after_it(checkpoint_factory):
    res = _noisy("inspect", "--checkpoint", checkpoint_factory("hybrid"), fail=False)
    assert res.returncode == 0, res.stderr
    assert "family: hybrid" in res.stdout
    for n in NOISE:
        assert n in res.stderr, (n, res.stderr)


def test_failing_command_in_process_prints_one_line(checkpoint_factory, monkeypatch):
    """Through CliRunner (sys.stderr is not fd 2): a logging warning and a write to sys.stderr are held too."""
    import logging

    import xlstm_export.frontends as fe
    from xlstm_export.errors import ConfigError

    def noisy(path, format=None):
        logging.getLogger("somelib").warning("held back")
        print("also held back", file=sys.stderr)
        raise ConfigError("profile.json: bad")

    monkeypatch.setattr(fe, "load_checkpoint", noisy)
    res = invoke(["inspect", "--checkpoint", checkpoint_factory("hybrid")])
    assert one_error_line(res) == "error: profile.json: bad"


def test_a_real_failing_coreml_export_prints_one_line(checkpoint_factory, tmp_path):
    """coremltools' import logs (torchao's missing libraries, torch's pytree deprecation) came before the error."""
    from safetensors.numpy import load_file, save_file

    ck = tmp_path / "ck"
    shutil.copytree(checkpoint_factory("hybrid"), ck)
    sd = load_file(str(ck / "model.safetensors"))
    name = "xlstm_block_stack.post_blocks_norm.weight"
    sd[name] = sd[name].copy()
    sd[name][0] = float("nan")  # found while writing: after coremltools is imported
    save_file(sd, str(ck / "model.safetensors"))
    res = run_cli("coreml", "--checkpoint", ck, "-o", tmp_path / "m.mlpackage")
    assert res.returncode == 2
    lines = res.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "non-finite" in lines[0], res.stderr


# == 4. no paths in artifacts ===============================================================================
PATH_KINDS = ["torchscript", "onnx", "onnx-prefill", "coreml"]


def _tree(path: Path) -> dict[str, bytes]:
    if path.is_dir():
        return {p.relative_to(path).as_posix(): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}
    return {"": path.read_bytes()}


@pytest.mark.slow
@pytest.mark.parametrize("kind", PATH_KINDS)
def test_same_checkpoint_in_two_folders_to_two_names_gives_the_same_bytes(checkpoint_factory, tmp_path, kind):
    """Was: the Core ML description and license named the checkpoint's folder, and TorchScript's archive folder
    was the output's file name. Two copies of one checkpoint (folders ckpt-alpha-q7zr / ckpt-omega-x3wm) exported
    to alpha.<ext> / omega.<ext> in two other folders: every file is byte-identical, except that an artifact of
    several files names its siblings (ONNX external data and prefill graph, the Swift snippet's package) by base
    name -- and no file holds a folder name."""
    k = KINDS[kind]
    suffix = SUFFIX[k.target]
    runs = []
    for name in ("alpha", "omega"):
        ck = tmp_path / f"ckpt-{name}-{'q7zr' if name == 'alpha' else 'x3wm'}"
        shutil.copytree(checkpoint_factory("hybrid"), ck)
        out = tmp_path / f"out-{name}-dir"
        out.mkdir()
        e = dict(os.environ, PYTHONPATH=str(REPO))
        runs.append((out, subprocess.Popen([sys.executable, "-m", "xlstm_export", *kind_words(k), "--checkpoint",
                                            str(ck), "-o", str(out / f"{name}{suffix}"), "--no-validate"],
                                           env=e, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                           text=True)))
    for _, proc in runs:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err
    (a_dir, _), (b_dir, _) = runs
    a_files = sorted(p.name for p in a_dir.iterdir())
    assert [n.replace("alpha", "omega") for n in a_files] == sorted(p.name for p in b_dir.iterdir())
    folders = [b"ckpt-alpha", b"ckpt-omega", b"out-alpha-dir", b"out-omega-dir", str(tmp_path).encode()]
    for n in a_files:
        ta, tb = _tree(a_dir / n), _tree(b_dir / n.replace("alpha", "omega"))
        if n.endswith("-swift"):  # the Swift module is named after the package: XLSTMAlpha / XLSTMOmega
            ta = {str(k).replace("Alpha", "Omega"): v.replace(b"Alpha", b"Omega") for k, v in ta.items()}
            tb = {str(k): v for k, v in tb.items()}
        assert sorted(ta) == sorted(tb)
        for rel in ta:
            for f in folders:
                assert f not in ta[rel] and f not in tb[rel], (n, rel, f)
            if not (n.endswith("-swift") or kind == "onnx-prefill"):
                assert ta[rel] == tb[rel], f"{kind}: {n}/{rel} depends on the paths"
            else:  # names its siblings by base name only
                assert ta[rel].replace(b"alpha", b"omega") == tb[rel], f"{kind}: {n}/{rel}"
    if kind == "coreml":  # the description names the source without a path
        from xlstm_export import load_checkpoint
        from xlstm_export.graphs.io import source_id

        spec = (a_dir / "alpha.mlpackage" / "Data" / "com.apple.CoreML" / "model.mlmodel").read_bytes()
        assert source_id(load_checkpoint(checkpoint_factory("hybrid"))).encode() in spec


def test_source_id_is_path_free_and_follows_the_config(checkpoint_factory, tmp_path):
    from xlstm_export import load_checkpoint
    from xlstm_export.graphs.io import profile_digest, source_id

    a = tmp_path / "one"
    b = tmp_path / "two"
    shutil.copytree(checkpoint_factory("hybrid"), a)
    shutil.copytree(checkpoint_factory("hybrid"), b)
    ga, gb = load_checkpoint(a), load_checkpoint(b)
    assert ga.source != gb.source and source_id(ga) == source_id(gb)
    assert "one" not in source_id(ga) and source_id(ga).startswith("xLSTM hybrid checkpoint, profile sha256:")
    assert profile_digest(ga) != profile_digest(load_checkpoint(checkpoint_factory("hf")))
