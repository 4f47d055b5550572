"""``quiet()``, the one context for library noise (issue 23): around a library call it drops what the library
prints, logs and warns, file descriptors included; around a CLI command it holds stderr and shows it only
after a success; blocks nest."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Every kind of noise a library makes, on the real descriptors (a subprocess: pytest holds its own).
SCRIPT = textwrap.dedent("""
    import logging, os, sys, warnings
    from xlstm_export.quiet import quiet
    warnings.simplefilter("always")
    lib = logging.getLogger("somelib.with_handler")
    lib.addHandler(logging.StreamHandler())
    lib.propagate = False

    def noise(tag):
        os.write(1, f"{tag}: C-level stdout\\n".encode())
        os.write(2, f"{tag}: C-level stderr\\n".encode())
        print(f"{tag}: print", flush=False)
        print(f"{tag}: print to stderr", file=sys.stderr)
        warnings.warn(f"{tag}: a warning", DeprecationWarning)
        logging.getLogger("somelib").warning(f"{tag}: last-resort handler")
        lib.warning(f"{tag}: own handler")

    print("start", flush=True)
    with quiet():
        noise("dropped")
    print("between", flush=True)
    show = lambda e: e is None
    with quiet(show_after=show, stdout=False) as terminal:
        noise("held")
        with quiet():
            noise("inner")
        terminal.write("progress line\\n")
        terminal.flush()
        print("own line", flush=True)
    try:
        with quiet(show_after=show, stdout=False):
            noise("failed")
            raise ValueError("the command failed")
    except ValueError:
        print("caught", flush=True)
    print("end", flush=True)
""")


def test_quiet_drops_holds_and_shows_on_the_real_descriptors():
    res = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert res.returncode == 0, res.stderr
    out, err = res.stdout, res.stderr
    for tag in ("dropped", "inner"):  # dropped inside a library block, stdout included
        assert f"{tag}:" not in out + err, (tag, out, err)
    assert "failed:" not in err, err  # a failed command's held stderr is dropped
    # a command's stdout is not held (its own lines); its held stderr is shown after it, all of it
    assert out.splitlines()[:3] == ["start", "between", "held: C-level stdout"], out
    for line in ("held: print", "own line", "failed: C-level stdout", "failed: print", "caught", "end"):
        assert line in out.splitlines(), (line, out)
    for what in ("C-level stderr", "print to stderr", "a warning", "last-resort handler", "own handler"):
        assert f"held: {what}" in err, (what, err)
    assert err.index("progress line") < err.index("held: C-level stderr"), err  # progress: not held


def test_quiet_swaps_streams_that_are_not_the_descriptors(capsys):
    """``sys.stderr`` / ``sys.stdout`` that are not fds 1/2 (CliRunner, a notebook) are swapped, and restored."""
    import logging
    import warnings

    from xlstm_export.quiet import quiet

    before = (sys.stdout, sys.stderr)
    with quiet():
        print("dropped out")
        print("dropped err", file=sys.stderr)
        warnings.warn("dropped warning", UserWarning)  # not issued: pytest records none
        logging.getLogger("somelib").warning("dropped log")
    assert (sys.stdout, sys.stderr) == before
    with quiet(show_after=lambda e: e is None, stdout=False) as terminal:
        print("shown err", file=sys.stderr)
        assert terminal is before[1]
    got = capsys.readouterr()
    assert "dropped" not in got.out + got.err, got
    assert got.err == "shown err\n", got


def test_quiet_cuts_a_long_replay():
    from xlstm_export.quiet import HELD_REPLAY_MAX

    script = ("import sys\nfrom xlstm_export.quiet import quiet\n"
              f"with quiet(show_after=lambda e: True, stdout=False):\n    sys.stderr.write('x' * {3 * HELD_REPLAY_MAX})\n")
    res = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert res.returncode == 0, res.stderr
    lines = res.stderr.splitlines()
    assert lines[0] == "x" * HELD_REPLAY_MAX, len(lines[0])
    assert lines[1] == f"[xlstm-export: {3 * HELD_REPLAY_MAX} bytes of library messages, the rest cut]", lines[1:]


# What silences output; only quiet.py may use it (issue 23 found five ways in seven files).
SILENCERS = {("warnings", "simplefilter"), ("warnings", "filterwarnings"), ("warnings", "catch_warnings"),
             ("contextlib", "redirect_stdout"), ("contextlib", "redirect_stderr"), ("os", "dup2"),
             ("logging", "disable"), ("*", "setLevel")}


def test_only_quiet_silences_library_output():
    import ast

    import xlstm_export

    root = Path(xlstm_export.__file__).resolve().parent
    found = []
    for path in sorted(root.rglob("*.py")):
        if path.name == "quiet.py" and path.parent == root:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute):
                owner = node.value.id if isinstance(node.value, ast.Name) else "*"
                if (owner, node.attr) in SILENCERS or ("*", node.attr) in SILENCERS:
                    found.append(f"{path.relative_to(root.parent)}:{node.lineno}: {owner}.{node.attr}")
            elif isinstance(node, ast.ImportFrom) and node.module in ("warnings", "contextlib", "os", "logging"):
                found += [f"{path.relative_to(root.parent)}:{node.lineno}: from {node.module} import {a.name}"
                          for a in node.names if (node.module, a.name) in SILENCERS]
    assert not found, "silencing outside xlstm_export/quiet.py (use quiet()):\n" + "\n".join(found)
