"""CLI surface: usage errors are one line with exit 2, like every other bad input."""

import subprocess
import sys

import pytest

CASES = [
    (["--bogus"], "No such option"),
    (["inspect"], "Missing option '--checkpoint'"),
    (["onnx", "--checkpoint", "x", "-o", "y", "--precision", "fp64"], "Invalid value for '--precision'"),
]


@pytest.mark.parametrize("args,needle", CASES)
def test_usage_errors_are_one_line_exit_2(args, needle):
    res = subprocess.run([sys.executable, "-m", "xlstm_export", *args], capture_output=True, text=True)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], res.stderr
    assert "Traceback" not in res.stderr


def test_help_exits_0():
    res = subprocess.run([sys.executable, "-m", "xlstm_export", "--help"], capture_output=True, text=True)
    assert res.returncode == 0 and "coreml" in res.stdout and "onnx" in res.stdout


@pytest.mark.parametrize("target, suffix", [("onnx", ".onnx"), ("coreml", ".mlpackage")])
@pytest.mark.parametrize("value, needle", [("0", "Invalid value for '--prefill-chunk'"),
                                           ("-4", "Invalid value for '--prefill-chunk'"),
                                           ("abc", "Invalid value for '--prefill-chunk'"),
                                           ("2000", "Invalid value for '--prefill-chunk'"),
                                           ("33", "exceeds the checkpoint's context_length 32")])
def test_bad_prefill_chunks_are_one_line_exit_2(checkpoint_factory, tmp_path, target, suffix, value, needle):
    out = tmp_path / f"m{suffix}"
    res = subprocess.run([sys.executable, "-m", "xlstm_export", target, "--checkpoint",
                          str(checkpoint_factory("hybrid")), "-o", str(out), "--prefill-chunk", value],
                         capture_output=True, text=True)
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], res.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("target, name", [("onnx", "x.mlpackage"), ("torchscript", "x.onnx"), ("onnx", "noext"),
                                          ("coreml", "x.onnx")])
def test_a_wrong_output_suffix_is_refused_before_any_work(tmp_path, target, name):
    res = subprocess.run([sys.executable, "-m", "xlstm_export", target, "--checkpoint", "does-not-matter", "-o",
                          str(tmp_path / name)], capture_output=True, text=True)
    assert res.returncode == 2 and res.stderr.startswith("error: ") and "must end in" in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and list(tmp_path.iterdir()) == []
