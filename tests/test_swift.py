"""The Swift we hand to apps, compiled and tested with the Swift toolchain (``swift`` on PATH; CI has it).

* ``tests/swift``: a SwiftPM package whose library is the generation core exactly as an emitted package
  carries it (``Sources/<Module>/Core/``), tested with XCTest against golden vectors this module writes from
  the Python side: the SplitMix64 outputs, the same logits sequence -> the same tokens (greedy and seeded
  sampling, EOS stop), the prefill plan for many lengths, streamed text for a multi-byte UTF-8 sample.
  Built once per session in a temporary scratch folder.
* Every emitted ``Package.swift`` (Core ML, with and without prefill) evaluates with
  ``swift package dump-package``; every emitted ``.swift`` file passes ``swiftc -parse``.
* Names holding a newline, quote or ``*/`` produce no Swift code from that text.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from xlstm_export.contract import PrefillPlan
from xlstm_export.coreml.swift import module_name, swift_comment, swift_package_files, swift_string
from xlstm_export.swift import CORE_DIR, core_sources
from xlstm_export.text.generation import Sampling, generate_tokens
from xlstm_export.text.rng import SplitMix64
from xlstm_export.text.tokenizer import TextStream

REPO = Path(__file__).resolve().parents[1]
SWIFT_TESTS = REPO / "tests" / "swift"
MIN_SWIFT_TESTS = 10


def _swift() -> str:
    exe = shutil.which("swift")
    if exe is None:
        pytest.fail("swift is not on PATH: the Swift tests need a Swift 6 toolchain (swift, swiftc, SwiftPM, XCTest)",
                    pytrace=False)
    return exe


def _run(cmd, cwd, timeout=600, env=None):
    import os

    res = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                         env=None if env is None else {**os.environ, **env})
    return res


# -- golden vectors ------------------------------------------------------------------------------------------
def _sampling_cases():
    rng = np.random.default_rng(25)
    cases = []
    opts = [("greedy", 0.0, 0, 1.0), ("greedy-ties", 0.0, 0, 1.0), ("temp0.7", 0.7, 0, 1.0), ("temp1.5-k5", 1.5, 5, 1.0),
            ("temp1-p0.9", 1.0, 0, 0.9), ("temp1.2-k20-p0.95", 1.2, 20, 0.95), ("temp0.3-p0.5", 0.3, 0, 0.5),
            ("temp2-k1", 2.0, 1, 1.0), ("temp1-k3-p0.6", 1.0, 3, 0.6)]
    for seed in (0, 1, 7, 2**63 + 5, 2**64 - 1):
        for name, t, k, p in opts:
            V, n = 64, 12
            rows = (rng.standard_normal((n, V)) * 3).astype(np.float32)
            if name == "greedy-ties":
                rows[:, 5] = rows[:, 40] = rows.max() + 1  # the first maximum wins
            cases.append((f"{name}-seed{seed}", rows, Sampling(temperature=t, top_k=k, top_p=p, seed=seed), ()))
    eos_rows = (rng.standard_normal((20, 16)) * 2).astype(np.float32)
    cases.append(("eos-greedy", eos_rows, Sampling(), (int(np.argmax(eos_rows[4])),)))
    cases.append(("eos-sampled", eos_rows, Sampling(temperature=1.0, seed=3), tuple(range(0, 16, 3))))
    out = []
    for name, rows, s, eos in cases:
        calls = iter(rows)
        tokens, stop = generate_tokens(lambda ids: next(calls), [0], len(rows), s, eos)
        out.append({"name": name, "logits": rows.astype(np.float64).tolist(), "temperature": s.temperature,
                    "topK": s.top_k, "topP": s.top_p, "seed": str(s.seed % 2**64), "maxNewTokens": len(rows),
                    "eos": list(eos), "tokens": tokens, "stop": stop})
    return out


STREAM_TABLE = [b"Hello", b",", b" caf", b"\xc3", b"\xa9", b" costs", b" 5", b"\xe2", b"\x82", b"\xac", b" ",
                b"\xf0\x9f", b"\x98", b"\x80", b" \xe6\x97", b"\xa5\xe6\x9c\xac", b" e", b"\xcc\x81", b"!", b"\xe2\x82"]
STREAM_TOKENS = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 0, 19]


class _ByteTokenizer:
    """A tokenizer as TextStream sees one: ids -> the UTF-8 decoding (U+FFFD for bad bytes) of their bytes."""

    def decode(self, ids, skip_special_tokens=True):
        return b"".join(STREAM_TABLE[i] for i in ids).decode("utf-8", "replace")


def _snapshot_states():
    """fp16 states given as raw bit patterns (NaN payloads, -0, infinities, subnormals: any bit pattern must
    survive), one float32 state and a non-ASCII name."""
    bits = np.random.default_rng(5).integers(0, 2**16, size=(1, 2, 4, 4), dtype=np.uint16)
    bits.reshape(-1)[:5] = [0x7E01, 0x8000, 0x7C00, 0x0001, 0xFC00]
    return [("blocks_0_mlstm_c", bits.view(np.float16)),
            ("blocks_0_mlstm_c_lo", np.random.default_rng(6).standard_normal((1, 2, 4, 4)).astype(np.float16)),
            ("blocks_1_slstm_state_\u00e9", np.random.default_rng(7).standard_normal((4, 1, 8)).astype(np.float32))]


def golden(folder: Path = None) -> dict:
    from xlstm_export.swift.snapshot import write_snapshot

    rngs = []
    for seed in (0, 1, 42, 2**64 - 1, 0x9E3779B97F4A7C15):
        a, b = SplitMix64(seed), SplitMix64(seed)
        rngs.append({"seed": str(seed), "outputs": [str(a.next()) for _ in range(8)],
                     "units": [b.next_unit() for _ in range(8)]})
    plans = []
    for chunk in (1, 2, 3, 4, 7, 8, 16, 64):
        for length in list(range(1, 41)) + [63, 64, 65, 127, 128, 129, 1000]:
            calls = PrefillPlan(chunk, False, "prefill").calls(length)
            plans.append({"chunk": chunk, "length": length, "calls": [[str(a), str(b), v] for a, b, v in calls]})
    stream = TextStream(_ByteTokenizer())
    pieces = [stream.push(t) for t in STREAM_TOKENS]
    flush = stream.flush()
    states = _snapshot_states()
    snap = None
    if folder is not None:
        (folder / "state.bin").write_bytes(write_snapshot(states))
        snap = {"path": str(folder / "state.bin"),
                "entries": [{"name": n, "shape": list(a.shape), "hex": a.tobytes().hex()} for n, a in states]}
    # a (2, 3, 4) fp16 array stored with padded strides (16, 5, 1) elements: its C-order bytes
    a = np.random.default_rng(8).standard_normal((2, 3, 4)).astype(np.float16)
    buf = np.full(2 * 16, np.float16(-7.0), dtype=np.float16)
    for i, j, k in np.ndindex(a.shape):
        buf[i * 16 + j * 5 + k] = a[i, j, k]
    strided = {"shape": [2, 3, 4], "strides": [16, 5, 1], "elementSize": 2, "buffer": buf.tobytes().hex(),
               "contiguous": a.tobytes().hex()}
    return {"rng": rngs, "sampling": _sampling_cases(), "plans": plans, "snapshot": snap, "strided": strided,
            "stream": {"table": [list(b) for b in STREAM_TABLE], "tokens": STREAM_TOKENS, "pieces": pieces,
                       "flush": flush, "text": "".join(pieces) + flush}}


def test_python_splitmix64_known_outputs_and_unit_conversion():
    r = SplitMix64(0)
    assert [r.next(), r.next()] == [0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4]  # the published SplitMix64 sequence
    u = SplitMix64(0).next_unit()
    assert u == (0xE220A8397B1DCDAF >> 11) / 2**53 and 0 <= u < 1
    assert SplitMix64(-1).state == 2**64 - 1


def test_python_snapshot_round_trip_and_errors(tmp_path):
    from xlstm_export.errors import ArtifactError
    from xlstm_export.swift.snapshot import read_snapshot, write_snapshot

    states = _snapshot_states()
    data = write_snapshot(states)
    back = read_snapshot(data)
    assert [(n, s) for n, s, _ in back] == [(n, a.shape) for n, a in states]
    assert all(b == a.tobytes() for (_, _, b), (_, a) in zip(back, states))  # bit for bit, NaN payloads included
    assert read_snapshot(write_snapshot([("s", np.zeros((), np.float32))])) == [("s", (), bytes(4))]
    with pytest.raises(ArtifactError, match="truncated"):
        read_snapshot(data[:-3], "x.bin")
    with pytest.raises(ArtifactError, match="not a state snapshot"):
        read_snapshot(b"NOPE" + data[4:], "x.bin")


def test_python_stream_sample_is_multibyte_and_held_back():
    g = golden()["stream"]
    assert g["text"] == "Hello, caf\u00e9 costs 5\u20ac \U0001F600 \u65e5\u672c e\u0301!Hello\ufffd"
    assert g["pieces"][3] == "" and g["pieces"][4] == "é"  # the half of é is held back, then shown whole


# -- the Swift test package --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def core_package(tmp_path_factory):
    """tests/swift copied with the Core/ folder of an emitted package as its library and the golden JSON; built
    once (``swift build --build-tests`` in a temporary scratch folder). Returns (folder, scratch, seconds)."""
    swift = _swift()
    root = tmp_path_factory.mktemp("swift")
    pkg = root / "pkg"
    shutil.copytree(SWIFT_TESTS, pkg, symlinks=True, ignore=shutil.ignore_patterns(".build", ".swiftpm"))
    lib = pkg / "Sources" / "XLSTMCore"
    if lib.is_symlink() or lib.is_file():
        lib.unlink()
    elif lib.exists():
        shutil.rmtree(lib)
    lib.mkdir()
    emitted = swift_package_files(_contract(prefill=None), "model.mlpackage")
    core = {rel.split("/")[-1]: text for rel, text in emitted.items() if rel.startswith("Sources/XLSTMModel/Core/")}
    assert core == core_sources() and len(core) >= 5  # the emitted core is the package data, byte for byte
    for name, text in core.items():
        (lib / name).write_text(text, encoding="utf-8")
    (pkg / "golden.json").write_text(json.dumps(golden(pkg)), encoding="utf-8")
    scratch = root / "scratch"
    t0 = time.perf_counter()
    res = _run([swift, "build", "--build-tests", "--scratch-path", scratch], pkg)
    seconds = time.perf_counter() - t0
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    return pkg, scratch, seconds


def test_swift_core_tests_pass_against_python_golden_vectors(core_package):
    pkg, scratch, build_s = core_package
    t0 = time.perf_counter()
    res = _run([_swift(), "test", "--skip-build", "--scratch-path", scratch], pkg,
               env={"XLSTM_SWIFT_GOLDEN": str(pkg / "golden.json")})
    test_s = time.perf_counter() - t0
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-6000:]
    m = re.search(r"Test Suite 'All tests' passed.*?\n\s*Executed (\d+) tests?, with (?:(\d+) tests? skipped and )?(\d+) "
                  r"failures?", out)
    assert m, out[-3000:]
    executed, skipped, failures = int(m.group(1)), int(m.group(2) or 0), int(m.group(3))
    print(f"swift: build {build_s:.1f} s, test {test_s:.1f} s, {executed} XCTest tests")
    assert executed >= MIN_SWIFT_TESTS and skipped == 0 and failures == 0, out[-3000:]
    for name in ("testSampledTokensMatchPython", "testGreedyTokensMatchPython", "testPrefillPlansMatchPython",
                 "testStreamingMatchesPython", "testSplitMix64MatchesPython", "testStateFileWrittenByPythonReadsBitExact",
                 "testStridedGatherAndScatterMatchPythonCOrder"):
        assert f"'CoreTests.{name}' passed" in out, name
    assert build_s + test_s < 300, (build_s, test_s)  # ~15 s on the 2-core CI machine


# -- emitted packages ----------------------------------------------------------------------------------------
def _contract(prefill=None, evil: str = ""):
    """A Core ML contract as emit writes one (the fields the Swift generator reads)."""
    c = {"inputs": [{"name": "input_ids", "shape": [1, 1]}], "outputs": [{"name": "logits", "shape": [1, 1, 97]}],
         "states": [{"name": f"blocks.0.mlstm.c{evil}", "input": f"blocks_0_mlstm_c{evil}", "shape": [1, 2, 8, 8]}],
         "extra_states": [{"part_of": f"blocks.0.mlstm.c{evil}", "input": f"blocks_0_mlstm_c_lo{evil}",
                           "shape": [1, 2, 8, 8], "scale": 2048.0}],
         "text": {"eos_token_id": [0], "tokenizer": "tokenizer.json"}}
    if prefill:
        c["prefill"] = {"chunk": prefill, "function": f"prefill{evil}", "last_logits_only": True}
    return c


def _check_package(folder: Path):
    """dump-package on the manifest, swiftc -parse on every source; returns the manifest as JSON."""
    swift = _swift()
    res = _run([swift, "package", "dump-package"], folder, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    manifest = json.loads(res.stdout)
    sources = sorted(str(p) for p in folder.rglob("*.swift") if p.name != "Package.swift")
    res = _run(["swiftc", "-parse", *sources], folder, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    return manifest, sources


@pytest.mark.parametrize("kind", ["coreml", "coreml-prefill"])
def test_emitted_swift_package_evaluates_and_parses(exports, kind, tmp_path):
    """The package an export writes: tools 6.0 manifest, iOS 18 / macOS 15, swift-transformers' Tokenizers
    product only, module XLSTMModel, README, the core files; dump-package and swiftc -parse accept it."""
    art = exports("hf", kind)
    mod = module_name(art.path.name)
    assert mod == {"coreml": "XLSTMModel", "coreml-prefill": "XLSTMModelPrefill"}[kind]
    folder = tmp_path / "model-swift"
    shutil.copytree(art.files[1], folder)
    assert sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) == sorted(
        ["Package.swift", "README.md", f"Sources/{mod}/{mod}.swift", *(f"Sources/{mod}/Core/{n}" for n in core_sources())])
    assert (folder / "Package.swift").read_text().splitlines()[0] == "// swift-tools-version: 6.0"
    manifest, sources = _check_package(folder)
    assert manifest["name"] == mod and manifest["toolsVersion"]["_version"].startswith("6.0")
    assert {(p["platformName"], p["version"]) for p in manifest["platforms"]} == {("ios", "18.0"), ("macos", "15.0")}
    (target,) = manifest["targets"]
    assert target["name"] == mod
    deps = [d["product"][:2] for d in target["dependencies"]]
    assert deps == [["Tokenizers", "swift-transformers"]], deps
    assert len(sources) == 1 + len(core_sources())
    for rel in core_sources():
        assert (folder / "Sources" / mod / "Core" / rel).read_text() == core_sources()[rel]
    adapter = (folder / f"Sources/{mod}/{mod}.swift").read_text()
    for needle in ["#if canImport(CoreML)", "withUnsafeShapedBufferPointer", "MLShapedArray<Int32>(scalars:",
                   "Generation.run(", "TextStreamer", "AsyncThrowingStream", "task.cancel()", "withMultiArray(for: name)"]:
        assert needle in adapter, needle
    assert ("func prefill(" in adapter) == (kind == "coreml-prefill")
    assert ".floatValue" not in adapter and "NSNumber" not in adapter  # no per-element reads
    readme = (folder / "README.md").read_text()
    for needle in ["Add Local", f"import {mod}", "stream(prompt:", "snapshot(of:", "restore("]:
        assert needle in readme, needle


EVIL = '\nfatalError("pwned") /* */ */\n// "\\(x)'


def _code_only(src: str) -> str:
    """Swift text without its comments and string literal contents (enough for the code we generate)."""
    out, i, n = [], 0, len(src)
    while i < n:
        if src.startswith("//", i):
            i = src.find("\n", i) if "\n" in src[i:] else n
        elif src.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if src.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif src.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    i += 1
        elif src[i] == '"':
            i += 1
            while i < n and src[i] != '"':
                i += 2 if src[i] == "\\" else 1
            i += 1
            out.append('""')
        else:
            out.append(src[i])
            i += 1
    return "".join(out)


def test_names_with_newline_quote_and_comment_end_produce_no_swift_code(tmp_path):
    """The package file name and the contract's feature / state / function names, holding a newline, a quote,
    ``*/`` and an interpolation, go into comments and literals escaped: the manifest evaluates, every file
    parses, and the payload appears nowhere as code."""
    for prefill in (None, 4):
        folder = tmp_path / f"evil-{prefill}"
        name = f"my{EVIL}.mlpackage"
        for rel, text in swift_package_files(_contract(prefill, EVIL), name).items():
            p = folder / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(text, encoding="utf-8")
            assert EVIL not in text and "pwned\")" not in text.replace('\\"pwned\\")', ""), rel
            if rel.endswith(".swift"):
                assert "pwned" not in _code_only(text), rel
        manifest, _ = _check_package(folder)
        assert manifest["name"] == module_name(name) == "XLSTMMyFatalErrorPwnedX"
        assert (folder / "Package.swift").read_text().split("\n")[1].startswith("// Swift package for my\\n")


def test_escaping_helpers():
    assert swift_string('a"b\\c\n\u00e9\ud800') == '"a\\"b\\\\c\\u{A}\\u{E9}\\u{FFFD}"'
    assert swift_string("\\(x)") == '"\\\\(x)"'  # no interpolation
    assert swift_comment("a\nb */ c /* d\u2028") == "a\\nb *\\/ c /\\* d\\u2028"
    assert [module_name(n) for n in ("model.mlpackage", "XLSTM.mlpackage", "xlstm-7b.mlpackage", "hf-recall.mlpackage",
                                     "\u6a21\u578b.mlpackage", "generator.mlpackage")] == [
        "XLSTMModel", "XLSTM", "XLSTM7b", "XLSTMHfRecall", "XLSTMModel", "XLSTMGeneratorModel"]


def test_core_sources_are_package_data():
    """The core ships in the wheel: pyproject's package-data names Core/*.swift, and the files exist."""
    text = (REPO / "pyproject.toml").read_text()
    assert re.search(r'\[tool\.setuptools\.package-data\]\n"xlstm_export\.swift" = \["Core/\*\.swift"\]', text)
    assert sorted(core_sources()) == sorted(p.name for p in CORE_DIR.glob("*.swift")) and len(core_sources()) >= 5


def test_core_ml_adapter_typechecks_against_the_documented_apis(tmp_path):
    """The Core ML adapter (which needs Apple's SDK to build) type-checked on Linux against stand-ins of Core ML,
    CryptoKit and Tokenizers declaring the signatures it calls, as Apple and swift-transformers document them
    (tests/swift/Stubs): its calls, types, closures and the TokenStepper conformance, with and without prefill,
    in the package's language mode (5) and in Swift 6."""
    _swift()
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    for src in sorted((SWIFT_TESTS / "Stubs").glob("*.swift")):
        res = _run(["swiftc", "-emit-module", "-parse-as-library", "-module-name", src.stem, src,
                    "-emit-module-path", stubs / f"{src.stem}.swiftmodule"], tmp_path, timeout=300)
        assert res.returncode == 0, res.stderr[-3000:]
    for prefill in (None, 4):
        folder = tmp_path / f"pkg-{prefill}"
        for rel, text in swift_package_files(_contract(prefill), "model.mlpackage").items():
            (folder / rel).parent.mkdir(parents=True, exist_ok=True)
            (folder / rel).write_text(text, encoding="utf-8")
        sources = sorted(str(p) for p in (folder / "Sources").rglob("*.swift"))
        assert "#if canImport(CoreML)" in (folder / "Sources/XLSTMModel/XLSTMModel.swift").read_text()
        for mode in ("5", "6"):
            res = _run(["swiftc", "-typecheck", "-swift-version", mode, "-I", stubs, "-module-name", "XLSTMModel",
                        *sources], tmp_path, timeout=300)
            assert res.returncode == 0 and "error" not in res.stderr, (prefill, mode, res.stderr[-3000:])
