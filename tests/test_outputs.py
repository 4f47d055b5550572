"""Writing outputs (issue 14, "outputs"): each class of the adversarial pass, through the real CLI where it
was found there.

1. no-clobber is atomic and exclusive: of two exports racing to one new path exactly one succeeds;
2. ``--force`` replaces only what is recognisably an artifact of ours (never a folder we did not write);
3. nothing planted beside the output (at the temporary / backup names) is trusted, used or deleted;
4. a full disk (a real short write under RLIMIT_FSIZE, or ENOSPC) is one line, exit 2, nothing left,
   TorchScript and Core ML temporaries included (they are written beside the output, not in TMPDIR);
5. report and output paths that the file system refuses (too long, unreachable, read-only) are one line;
6. a Core ML package gets the usual modes (0644 / 0755 under umask 022; the umask is respected).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from fixtures import copy_of

from xlstm_export.cli import main

REPO = Path(__file__).resolve().parents[1]
FILENAME = {"torchscript": "model.pt", "coreml": "model.mlpackage", "onnx": "model.onnx"}


def invoke(args: list[str]):
    return CliRunner().invoke(main, args)


def listing(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir())


def one_error_line(res, *needles: str) -> str:
    assert "Traceback" not in res.output, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    assert res.exit_code == 2, (res.exit_code, res.output)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def error_lines(stderr: str) -> list[str]:
    """The ``error:`` lines of a subprocess (imports of coremltools print unrelated notices on stderr)."""
    assert "Traceback" not in stderr, stderr
    return [ln for ln in stderr.splitlines() if ln.startswith("error: ")]


def tree_bytes(path: Path) -> dict:
    if path.is_dir():
        return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}
    return {path.name: path.read_bytes()}


def env(**extra) -> dict:
    e = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=str(REPO))
    e.update({k: str(v) for k, v in extra.items()})
    return e


def export_args(cmd: str, ckpt: Path, out: Path, *extra: str) -> list[str]:
    words = cmd.split()
    return [*words, "--checkpoint", str(ckpt), "-o", str(out), *extra]


# -- 1. exclusive final step -------------------------------------------------------------------------------
# Both exports are held just before their first move into place (the real code runs; only a wait is added)
# until both have passed every existence check; then both go.
RACE = """
import os, sys, time
from pathlib import Path
import xlstm_export.outputs as outputs
_orig = outputs._commit
first = [True]
def gated(*a, **k):
    if first[0]:
        first[0] = False
        Path(os.environ["XLSTM_TEST_READY"]).write_text("ready")
        t0 = time.time()
        while not Path(os.environ["XLSTM_TEST_GO"]).exists():
            if time.time() - t0 > 300:
                sys.exit(99)
            time.sleep(0.005)
    return _orig(*a, **k)
outputs._commit = gated
from xlstm_export.cli import main
main(sys.argv[1:], prog_name="xlstm-export")
"""

RACES = {"torchscript": ["model.pt"], "coreml": ["model.mlpackage", "model-swift"],
         "onnx --prefill-chunk 4": ["model.onnx", "model.prefill.onnx", "model.onnx.data"]}


@pytest.mark.slow
@pytest.mark.parametrize("cmd", list(RACES))
def test_two_exports_racing_to_one_new_path_exactly_one_wins(checkpoint_factory, exports, tmp_path, cmd):
    """Two exports of different models (batch 1 and batch 2) to one new path: exactly one exits 0, the other
    exits 2 saying "already exists", and every file there is the winner's, complete (the bytes the same
    export makes alone: the session's export of those options; exports are byte-reproducible across processes,
    test_reliability.py)."""
    ck = checkpoint_factory("hybrid")
    name = FILENAME[cmd.split()[0]]
    go = tmp_path / "go"
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    procs = []
    for i in range(2):
        opts = ("--no-validate", "--batch-size", str(i + 1))
        procs.append(subprocess.Popen(
            [sys.executable, "-c", RACE, *export_args(cmd, ck, out_dir / name, *opts)], cwd=tmp_path,
            env=env(XLSTM_TEST_READY=tmp_path / f"ready{i}", XLSTM_TEST_GO=go), stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True))
    words = cmd.split()  # "onnx --prefill-chunk 4": the onnx export with prefill_chunk=4
    extra = {w[2:].replace("-", "_"): int(v) for w, v in zip(words[1::2], words[2::2])}
    refs = [exports("hybrid", words[0], batch_size=i + 1, **extra) for i in range(2)]  # while the racers start
    t0 = time.time()
    while not all((tmp_path / f"ready{i}").exists() for i in range(2)):
        assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
        assert time.time() - t0 < 500, "the exports did not reach the final step"
        time.sleep(0.01)
    go.write_text("go")
    results = [p.communicate(timeout=300) + (p.returncode,) for p in procs]
    codes = [rc for _, _, rc in results]
    assert sorted(codes) == [0, 2], [(rc, err[-1500:]) for _, err, rc in results]
    winner = codes.index(0)
    lines = error_lines(results[1 - winner][1])
    assert len(lines) == 1 and "already exists" in lines[0], results[1 - winner][1]
    assert listing(out_dir) == sorted(RACES[cmd])  # nothing else: no temporaries, no part of the loser
    assert refs[winner].path.name == name and sorted(p.name for p in refs[winner].path.parent.iterdir()) == \
        sorted(RACES[cmd])
    for f in RACES[cmd]:
        assert tree_bytes(out_dir / f) == tree_bytes(refs[winner].path.parent / f), \
            f"{f} is not the winner's complete artifact"


@pytest.mark.parametrize("fallback", ["renameat2", "link", "reservation"])
@pytest.mark.parametrize("kind", ["file", "folder"])
def test_a_second_writer_of_one_path_fails_and_the_first_survives(tmp_path, monkeypatch, kind, fallback):
    """Two writers of one path in one process, the second finishing after the first: the second fails with
    'already exists' and leaves the first's artifact whole -- with renameat2(RENAME_NOREPLACE), and where
    there is none (link for files, an exclusively made placeholder otherwise)."""
    from xlstm_export import outputs
    from xlstm_export.errors import OutputError

    if fallback != "renameat2":
        monkeypatch.setattr(outputs, "_RENAMEAT2", None)
        monkeypatch.setattr(outputs, "_RENAMEX_NP", None)
    if fallback == "reservation":
        def no_link(*a, **k):
            raise OSError(errno.EPERM, "Operation not permitted")
        monkeypatch.setattr(outputs.os, "link", no_link)
    out = tmp_path / ("model.mlpackage" if kind == "folder" else "model.onnx")

    def write(tmp: Path, text: str) -> None:
        if kind == "folder":
            tmp.mkdir()
            (tmp / "part1").write_text(text)
            (tmp / "part2").write_text(text)
        else:
            tmp.write_text(text)

    with pytest.raises(OutputError, match="model.* already exists"):
        with outputs.atomic_output(out) as tmp_b:
            write(tmp_b, "second")
            with outputs.atomic_output(out) as tmp_a:  # starts after b, finishes first
                write(tmp_a, "first")
    assert tree_bytes(out) == ({"part1": b"first", "part2": b"first"} if kind == "folder" else {out.name: b"first"})
    assert listing(tmp_path) == [out.name]


# -- 2. --force replaces only our artifacts -----------------------------------------------------------------
def _folder_of_mine(p: Path) -> dict:
    p.mkdir()
    (p / "notes.txt").write_text("mine")
    (p / "sub").mkdir()
    (p / "sub" / "data.bin").write_bytes(b"\0" * 10)
    return tree_bytes(p)


def _foreign_package(p: Path) -> dict:
    """A Core ML package another tool wrote: manifest and spec, no xlstm-export metadata."""
    (p / "Data" / "com.apple.CoreML").mkdir(parents=True)
    (p / "Manifest.json").write_text('{"fileFormatVersion": "1.0.0", "itemInfoEntries": {}}')
    (p / "Data" / "com.apple.CoreML" / "model.mlmodel").write_bytes(b"\x08\x09 someone else's spec")
    return tree_bytes(p)


FOREIGN = {  # what is at the output path -> (the export, the path, maker)
    "folder-named-mlpackage": ("coreml", "model.mlpackage", _folder_of_mine),
    "other-tools-mlpackage": ("coreml", "model.mlpackage", lambda p: (p.mkdir(), _foreign_package(p))[1]),
    "folder-at-swift-package": ("coreml", "model-swift", _folder_of_mine),
    "folder-at-pt": ("torchscript", "model.pt", _folder_of_mine),
    "folder-at-onnx": ("onnx", "model.onnx", _folder_of_mine),
    "state-dict-at-pt": ("torchscript", "model.pt",
                         lambda p: (p.write_bytes(b"PK\x03\x04 my training checkpoint"), tree_bytes(p))[1]),
    "other-onnx": ("onnx", "model.onnx",
                   lambda p: (p.write_bytes(b"\x08\x08\x12\x07pytorch rest of a model"), tree_bytes(p))[1]),
}


@pytest.mark.parametrize("case", sorted(FOREIGN))
def test_force_never_replaces_what_this_tool_did_not_write(checkpoint_factory, tmp_path, case):
    cmd, name, make = FOREIGN[case]
    before = make(tmp_path / name)
    res = invoke(export_args(cmd, checkpoint_factory("hybrid"), tmp_path / FILENAME[cmd], "--force", "--no-validate"))
    one_error_line(res, name, "not an artifact of xlstm-export")
    assert tree_bytes(tmp_path / name) == before
    assert listing(tmp_path) == [name]


def test_force_replaces_our_own_artifacts_and_symlinks_only_as_links(checkpoint_factory, exports, tmp_path):
    ck = checkpoint_factory("hybrid")
    copy_of(exports("hybrid", "coreml"), tmp_path)  # an earlier export of ours: model.mlpackage, model-swift
    first = tree_bytes(tmp_path / "model.mlpackage")
    (tmp_path / "model.mlpackage" / "extra-file").write_text("old")  # still recognisably ours
    res = invoke(export_args("coreml", ck, tmp_path / "model.mlpackage", "--no-validate", "--force"))
    assert res.exit_code == 0, res.output
    assert tree_bytes(tmp_path / "model.mlpackage") == first
    # a link to our artifact: the link is replaced, the artifact it points to is left as it was
    real = tmp_path / "keep"
    copy_of(exports("hybrid", "torchscript"), real)
    kept = (real / "model.pt").read_bytes()
    (tmp_path / "model.pt").symlink_to(real / "model.pt")
    assert invoke(export_args("torchscript", ck, tmp_path / "model.pt", "--no-validate", "--force")).exit_code == 0
    assert not (tmp_path / "model.pt").is_symlink() and (real / "model.pt").read_bytes() == kept


def test_force_never_replaces_a_folder_at_a_report_files_place(tmp_path, exported_pt):
    rep = tmp_path / "rep"
    rep.mkdir()
    before = _folder_of_mine(rep / "report.json")
    res = invoke(["validate", str(exported_pt), "--checkpoint", str(exported_pt.parent.parent / "ck"), "--steps", "1",
                  "--report", str(rep), "--force"])
    one_error_line(res, "report.json", "not a report of xlstm-export")
    assert tree_bytes(rep / "report.json") == before and listing(rep) == ["report.json"]


@pytest.fixture(scope="module")
def exported_pt(tmp_path_factory, checkpoint_factory, exports) -> Path:
    """A private copy of the session's TorchScript export of the hybrid fixture (this module's tests write beside
    it); its checkpoint copied beside it (``../ck``)."""
    root = tmp_path_factory.mktemp("exported")
    shutil.copytree(checkpoint_factory("hybrid"), root / "ck")
    art = copy_of(exports("hybrid", "torchscript"), root / "art")
    assert art.path == root / "art" / "model.pt"
    return art.path


# -- 3. planted siblings ------------------------------------------------------------------------------------
def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_files_planted_at_temporary_and_backup_names_are_not_used_or_deleted(tmp_path):
    from xlstm_export.outputs import atomic_output

    dead = _dead_pid()
    out = tmp_path / "model.pt"
    victim = tmp_path / "victim.txt"
    victim.write_text("do not touch")
    planted = {
        f".model.pt.tmp-{dead}": b"planted tmp",  # the names earlier versions used: a dead pid's temporary ...
        f".model.pt.old-{dead}": b"planted backup",  # ... and backup (was: put back as the artifact)
        f".model.pt.xlstm-tmp-{dead}-{'0' * 16}": None,  # our private folder's pattern, without our marker
    }
    for n, data in planted.items():
        if data is None:
            (tmp_path / n).mkdir()
            (tmp_path / n / "model.pt").write_bytes(b"planted artifact")
        else:
            (tmp_path / n).write_bytes(data)
    (tmp_path / f".model.pt.tmp-{os.getpid()}").symlink_to(victim)  # this process's predictable name
    before = {n: tree_bytes(tmp_path / n) for n in listing(tmp_path)}
    with atomic_output(out) as tmp:
        assert not tmp.exists() and tmp.name == "model.pt" and tmp.parent.parent.parent == tmp_path
        tmp.write_bytes(b"new")
    assert out.read_bytes() == b"new"
    assert {n: tree_bytes(tmp_path / n) for n in before} == before  # all still there, unchanged
    assert listing(tmp_path) == sorted([*before, "model.pt"])


def test_private_folders_are_unpredictable_and_exclusive(tmp_path):
    from xlstm_export import outputs

    names = set()
    for _ in range(2):
        with outputs.atomic_output(tmp_path / "model.onnx") as tmp:
            private = tmp.parent.parent
            names.add(private.name)
            assert stat.S_IMODE(private.stat().st_mode) == 0o700
            assert private.name.startswith(".model.onnx.xlstm-tmp-") and len(private.name.split("-")[-1]) == 16
            tmp.write_text("x")
        (tmp_path / "model.onnx").unlink()
    assert len(names) == 2 and listing(tmp_path) == []


def test_a_killed_exports_private_folder_is_cleaned_and_a_moved_aside_artifact_put_back(tmp_path):
    """What SIGKILL leaves (a private folder with our marker, its pid dead) goes with the next export into
    the folder; an artifact it had moved aside while replacing is put back first."""
    from xlstm_export import outputs

    dead = _dead_pid()
    stale = tmp_path / f".model.pt.xlstm-tmp-{dead}-{'a' * 16}"
    (stale / "new").mkdir(parents=True)
    (stale / "old").mkdir()
    (stale / "new" / "model.pt").write_bytes(b"half")
    (stale / "old" / "model.pt").write_bytes(b"the previous artifact")
    (stale / outputs._MARKER).write_text(json.dumps({"tool": "xlstm-export", "pid": dead, "outputs": ["model.pt"]}))
    with pytest.raises(Exception, match="already exists"):  # the artifact is back: no clobber without force
        with outputs.atomic_output(tmp_path / "model.pt") as tmp:
            tmp.write_bytes(b"new")
    assert (tmp_path / "model.pt").read_bytes() == b"the previous artifact"
    assert listing(tmp_path) == ["model.pt"]


# -- 4. a full disk -------------------------------------------------------------------------------------------
FSIZE = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG, like a full disk
lim = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_FSIZE, (lim, lim))
from xlstm_export.cli import main
main(sys.argv[2:], prog_name="xlstm-export")
"""


@pytest.mark.slow
@pytest.mark.parametrize("cmd,limit", [("torchscript", 200_000), ("coreml", 100_000), ("onnx", 200_000)])
def test_a_short_write_is_one_line_and_leaves_nothing(checkpoint_factory, tmp_path, cmd, limit):
    """A real short write (RLIMIT_FSIZE below the artifact's size): was SIGABRT with a file left in TMPDIR
    (TorchScript), a traceback (Core ML)."""
    out_dir, tmpdir = tmp_path / "out", tmp_path / "tmpdir"
    out_dir.mkdir()
    tmpdir.mkdir()
    res = subprocess.run([sys.executable, "-c", FSIZE, str(limit),
                          *export_args(cmd, checkpoint_factory("hybrid"), out_dir / FILENAME[cmd], "--no-validate")],
                         cwd=tmp_path, env=env(TMPDIR=tmpdir), capture_output=True, text=True, timeout=600)
    assert res.returncode == 2, (res.returncode, res.stderr[-3000:])
    lines = error_lines(res.stderr)
    assert len(lines) == 1 and "cannot write" in lines[0] and "nothing was written" in lines[0], res.stderr
    assert len(lines[0]) < 400
    assert listing(out_dir) == []
    # nothing of ours in TMPDIR (torch's import makes its inductor cache folder there, empty)
    assert [n for n in listing(tmpdir) if not n.startswith("torchinductor_")] == []


CANONICAL = """
import resource, signal, sys
from pathlib import Path
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
from xlstm_export.torchscript.emit import canonical_archive
src, dst, lim = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
resource.setrlimit(resource.RLIMIT_FSIZE, (lim, lim))
try:
    canonical_archive(src, dst)
except OSError as e:
    print("OSError", e.errno)
"""


def test_torchscript_rewrite_survives_a_short_write(exported_pt, tmp_path):
    """The record-by-record re-write (torch's zip writer) keeps the error instead of dying in std::terminate."""
    res = subprocess.run([sys.executable, "-c", CANONICAL, str(exported_pt), str(tmp_path / "x.pt"), "100000"],
                         env=env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, (res.returncode, res.stderr[-2000:])
    assert res.stdout.split() == ["OSError", str(errno.EFBIG)]


def test_torchscript_without_fork_checks_the_room_first(checkpoint_factory, tmp_path, monkeypatch):
    """Where the raw save cannot run in a forked child (macOS), a disk without room for it is refused before
    torch's writer could die on it; with room the export works as on Linux."""
    import importlib
    from collections import namedtuple

    ts = importlib.import_module("xlstm_export.torchscript.emit")
    monkeypatch.setattr(ts.sys, "platform", "darwin")
    ck = checkpoint_factory("hybrid")
    assert invoke(export_args("torchscript", ck, tmp_path / "ok.pt", "--no-validate")).exit_code == 0
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(ts.shutil, "disk_usage", lambda p: usage(10 ** 9, 10 ** 9 - 1000, 1000))
    res = invoke(export_args("torchscript", ck, tmp_path / "model.pt", "--no-validate"))
    one_error_line(res, "model.pt: cannot write: No space left on device", "1000 are free")
    assert listing(tmp_path) == ["ok.pt"]


@pytest.mark.parametrize("stage", ["convert", "write_package"])
def test_coreml_enospc_is_one_line_and_leaves_nothing(checkpoint_factory, tmp_path, monkeypatch, stage):
    import importlib

    cm = importlib.import_module("xlstm_export.coreml.emit")
    if stage == "convert":  # what coremltools' blob writer raises on a full disk
        def failing(*a, **k):
            raise RuntimeError("[MIL FileWriter]: Unknown error occurred while writing data to the file.")
        monkeypatch.setattr(cm._ct(), "convert", failing)
    else:
        def failing(pkg):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(pkg / "Manifest.json"))
        monkeypatch.setattr(cm, "write_manifest", failing)
    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmpdir))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    res = invoke(export_args("coreml", checkpoint_factory("hybrid"), out_dir / "model.mlpackage", "--no-validate"))
    one_error_line(res, "model.mlpackage: cannot write", "nothing was written")
    assert listing(out_dir) == [] and listing(tmpdir) == []


# -- 5. paths the file system refuses -------------------------------------------------------------------------
@pytest.mark.parametrize("cmd", ["torchscript", "onnx", "coreml"])
def test_an_output_name_as_long_as_the_file_system_allows_works(checkpoint_factory, tmp_path, cmd):
    """A 250-character output name (the file system takes 255): was a traceback, the temporary sibling's
    name ('.<name>.tmp-<pid>') being longer than the file system allows."""
    ext = FILENAME[cmd].split(".", 1)[1]
    name = "m" * (250 - len(ext) - 1) + "." + ext
    res = invoke(export_args(cmd, checkpoint_factory("hybrid"), tmp_path / name, "--no-validate"))
    assert res.exit_code == 0, res.output
    assert listing(tmp_path) == sorted([name] + ([name[:-len(".mlpackage")] + "-swift"] if cmd == "coreml" else []))


def test_report_paths_the_file_system_refuses_are_one_line(exported_pt, tmp_path, monkeypatch):
    ck = str(exported_pt.parent.parent / "ck")
    base = ["validate", str(exported_pt), "--checkpoint", ck, "--steps", "1"]
    # a name too long for the file system (was: OSError from Path.exists)
    one_error_line(invoke(base + ["--report", str(tmp_path / ("r" * 300))]), "File name too long")
    # the default ARTIFACT.report of an artifact whose name leaves no room for ".report"
    long = exported_pt.parent / ("m" * 250 + ".pt")
    shutil.copy(exported_pt, long)
    try:
        one_error_line(invoke(["validate", str(long), "--checkpoint", ck, "--steps", "1"]), "File name too long")
    finally:
        long.unlink()
    # a file at the default report folder's place
    (exported_pt.parent / "model.pt.report").write_text("mine")
    try:
        one_error_line(invoke(base), "model.pt.report", "a file is in the way")
        assert (exported_pt.parent / "model.pt.report").read_text() == "mine"
    finally:
        (exported_pt.parent / "model.pt.report").unlink()
    # a folder that cannot be looked into (another user's 0700 folder; simulated: this runs as root)
    locked = tmp_path / "locked"
    real_lstat, real_stat = os.lstat, os.stat

    def denied(f):
        def g(p, *a, **k):
            if str(p).startswith(str(locked) + os.sep):
                raise PermissionError(errno.EACCES, "Permission denied", str(p))
            return f(p, *a, **k)
        return g
    with monkeypatch.context() as m:
        m.setattr(os, "lstat", denied(real_lstat))
        m.setattr(os, "stat", denied(real_stat))
        one_error_line(invoke(base + ["--report", str(locked / "rep")]), "Permission denied")


@pytest.mark.parametrize("where", ["new-folder", "existing-folder"])
def test_a_read_only_report_location_is_one_line_and_leaves_nothing(exported_pt, tmp_path, monkeypatch, where):
    """A read-only file system under the report folder (simulated: EROFS from mkdir / open there)."""
    ck = str(exported_pt.parent.parent / "ck")
    ro = tmp_path / "ro"
    ro.mkdir()
    rep = ro / "rep"
    if where == "existing-folder":
        rep.mkdir()
    real_mkdir, real_open = os.mkdir, os.open

    def erofs(f):
        def g(p, *a, **k):
            if str(p).startswith(str(ro) + os.sep):
                raise OSError(errno.EROFS, "Read-only file system", str(p))
            return f(p, *a, **k)
        return g
    monkeypatch.setattr(os, "mkdir", erofs(real_mkdir))
    monkeypatch.setattr(os, "open", erofs(real_open))
    res = invoke(["validate", str(exported_pt), "--checkpoint", ck, "--steps", "1", "--report", str(rep)])
    one_error_line(res, "Read-only file system")
    assert listing(ro) == (["rep"] if where == "existing-folder" else [])
    if where == "existing-folder":
        assert listing(rep) == []


# -- 6. modes of a Core ML package --------------------------------------------------------------------------
@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_coreml_package_gets_the_usual_modes(checkpoint_factory, tmp_path, umask):
    old = os.umask(umask)
    try:
        res = invoke(export_args("coreml", checkpoint_factory("hybrid"), tmp_path / "model.mlpackage", "--no-validate"))
    finally:
        os.umask(old)
    assert res.exit_code == 0, res.output
    modes = {str(p.relative_to(tmp_path)): stat.S_IMODE(p.stat().st_mode)
             for p in [tmp_path / "model.mlpackage", *(tmp_path / "model.mlpackage").rglob("*"), tmp_path / "model-swift",
                       *(tmp_path / "model-swift").rglob("*")]}
    want = {k: (0o777 if (tmp_path / k).is_dir() else 0o666) & ~umask for k in modes}
    assert modes == want
    assert len(modes) >= 6  # package, Manifest.json, Data, com.apple.CoreML, model.mlmodel, weights/weight.bin
