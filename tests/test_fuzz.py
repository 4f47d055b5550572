"""Fuzzing the input side: safetensors headers and configs (hypothesis).

The property everywhere: ``load_checkpoint`` (+ ``graph.validate()``, the inspect CLI and, for headers,
reading every tensor) either succeeds or raises an :class:`XlstmExportError` subclass, which the CLI
turns into one ``error:`` line and exit code 2. Anything else (a TypeError, a RecursionError, an
OverflowError, ...) is a traceback for the user, and a finding.

``XLSTM_FUZZ_EXAMPLES`` is the total number of cases over all fuzz tests (default 300, derandomized,
part of ``make test``); ``make fuzz`` runs 10,000. ``XLSTM_FUZZ_SEED=<int>`` explores with another seed.
The counts reached are printed (``-s``) and checked by the last test.

Issue 14 added: YAML anchors/aliases (bombs, self-reference, merge keys) and non-string keys, where the
error line must also stay short and come fast; non-float weight dtypes (safetensors and ``.pt``), which must
be refused naming a tensor; non-regular files (FIFO, ``/dev/zero``, directories, dangling links) in place of
any file of a checkpoint, which must never hang.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import shutil
import signal
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from xlstm_export.cli import main
from xlstm_export.errors import XlstmExportError
from xlstm_export.frontends import load_checkpoint, load_weight
from xlstm_export.frontends.profile import save_profile_checkpoint
from xlstm_export.frontends.safetensors_io import open_safetensors, open_torch_state_dict

TOTAL = int(os.environ.get("XLSTM_FUZZ_EXAMPLES", "300"))
SEED = os.environ.get("XLSTM_FUZZ_SEED")
# share of the total per fuzz test (sums to 1)
SHARES = {
    "header_structured": 0.12, "header_raw": 0.05, "header_of_real_checkpoint": 0.11, "pickle_bytes": 0.05,
    "config_hf": 0.11, "config_large": 0.11, "config_hybrid": 0.14, "config_profile": 0.14,
    "yaml_aliases_and_keys": 0.07, "weight_dtypes": 0.06, "non_regular_files": 0.04,
}
COLLECT = os.environ.get("XLSTM_FUZZ_COLLECT") == "1"  # record findings and go on (report them at the end)
COUNTS: dict[str, int] = {}
FINDINGS: dict[tuple, str] = {}  # (test, exception type, innermost frame) -> one example


def examples(name: str) -> int:
    return max(1, round(TOTAL * SHARES[name]))


def fuzz_settings(name: str):
    """deadline off, no example database; derandomized unless XLSTM_FUZZ_SEED is set."""
    s = settings(max_examples=examples(name), deadline=None, database=None, derandomize=SEED is None,
                 print_blob=True,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                        HealthCheck.filter_too_much, HealthCheck.function_scoped_fixture])

    def deco(fn):
        fn = s(fn)
        return seed(int(SEED))(fn) if SEED is not None else fn

    return deco


def expect_clean(name: str, fn: Callable[[], Any], count: bool = True) -> Any:
    """Run one case: success or an XlstmExportError; anything else fails the test (a finding)."""
    if count:
        COUNTS[name] = COUNTS.get(name, 0) + 1
    try:
        return fn()
    except XlstmExportError as e:
        msg = str(e)
        assert msg.strip(), f"{type(e).__name__} with an empty message"
        return e
    except Exception as e:
        if not COLLECT:
            raise
        import traceback

        frame = traceback.extract_tb(e.__traceback__)[-1]
        FINDINGS.setdefault((name, type(e).__name__, f"{Path(frame.filename).name}:{frame.lineno}"),
                            f"{e!s:.200}")


def run_inspect(path: Path, *extra: str) -> None:
    """The inspect CLI (table and JSON) on a checkpoint: exit 0, or exit 2 with one ``error:`` line."""
    for args in ([], ["--json"]):
        res = CliRunner().invoke(main, ["inspect", "--checkpoint", str(path), *args, *extra])
        if res.exception is not None and not isinstance(res.exception, SystemExit):
            raise res.exception
        assert res.exit_code in (0, 2), (res.exit_code, res.output)
        if res.exit_code == 2:
            lines = res.stderr.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr


@pytest.fixture(scope="module", autouse=True)
def memory_cap():
    """A case that allocates without bound (``num_blocks: 2147483647`` once took 16 GB) becomes a MemoryError,
    i.e. a finding, instead of taking the machine down: the data segment may grow 3 GiB while fuzzing."""
    try:
        import resource

        vm_data = next(int(ln.split()[1]) * 1024 for ln in open("/proc/self/status") if ln.startswith("VmData:"))
        soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
        cap = vm_data + 3 * 2**30
        if hard != resource.RLIM_INFINITY:
            cap = min(cap, hard)
        resource.setrlimit(resource.RLIMIT_DATA, (cap, hard))
    except (ImportError, OSError, StopIteration, ValueError):
        yield
        return
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_DATA, (soft, hard))


@pytest.fixture(scope="module")
def workdir():
    d = Path(tempfile.mkdtemp(prefix="xlstm-fuzz-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def fresh(workdir: Path, name: str) -> Path:
    d = workdir / name
    if d.exists():
        shutil.rmtree(d)
    d.mkdir()
    return d


# -- value strategies ------------------------------------------------------------------------------
TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=10)
INTS = st.one_of(st.integers(-3, 9), st.sampled_from([16, 63, 64, 65, 97, 128, 2**31 - 1, 2**31, 2**53 + 1,
                                                     2**63, 2**64, -2**63, 10**30]),
                 st.integers(-2**70, 2**70))
FLOATS = st.one_of(st.sampled_from([0.0, -0.0, 1e-12, 0.5, 1.0, 1.3, 2.667, -1.0, 1e300, 1e308, -1e308,
                                    math.inf, -math.inf, math.nan, 5e-324]),
                   st.floats(allow_nan=True, allow_infinity=True))
WORDS = st.sampled_from(["cuda", "vanilla", "swish", "gelu", "relu", "silu", "sigmoid", "tanh", "fused", "single",
                         "layernorm", "rmsnorm", "mlstm", "slstm", "all", "", "hybrid", "large", "q", "k", "xlstm",
                         "llama", "ffn_gated", "BSGNH", "slstm", "bfloat16", "xlstm-export-profile/1", "0", "1e3",
                         "null", "true"])
SCALARS = st.one_of(st.none(), st.booleans(), INTS, FLOATS, WORDS, TEXT)
JSON_VALUES = st.recursive(SCALARS, lambda c: st.lists(c, max_size=3) | st.dictionaries(TEXT | WORDS, c, max_size=3),
                           max_leaves=6)
# field names worth adding: real fields of the various schemas (valid in one place, unknown in another)
KNOWN_KEYS = st.sampled_from([
    "num_heads", "embedding_dim", "hidden_size", "num_blocks", "num_hidden_layers", "vocab_size", "slstm_at",
    "mlstm_block", "slstm_block", "mlstm", "slstm", "feedforward", "proj_factor", "conv1d_kernel_size",
    "qkv_proj_blocksize", "backend", "act_fn", "model_type", "weight_mode", "tie_weights", "tie_word_embeddings",
    "use_bias", "bias", "gate_soft_cap", "output_logit_soft_cap", "qk_dim_factor", "v_dim_factor",
    "ffn_proj_factor", "ffn_round_up_to_multiple_of", "round_proj_up_to_multiple_of", "add_out_norm",
    "add_post_blocks_norm", "kind", "form", "ffn", "norm", "head_norm", "up_dim", "inner_dim", "head_dim",
    "qk_head_dim", "v_head_dim", "cell_eps", "eps", "norm_eps", "format", "family", "blocks", "out_norm",
    "weight_offset", "qk_scale_on", "qkv_blocksize", "conv_kernel", "activation", "context_length",
    "group_norm_weight", "function", "num_gates", "forward_clipval", "ff_type", "_proj_up_dim"])


def _paths(obj: Any, prefix: tuple = ()) -> list[tuple]:
    out = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.append(prefix + (k,))
            out += _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out.append(prefix + (i,))
            out += _paths(v, prefix + (i,))
    return out


def _tweak(draw, v: Any) -> Any:
    if isinstance(v, bool):
        return draw(st.sampled_from([not v, int(v), str(v).lower(), None]))
    if isinstance(v, int):
        return draw(st.sampled_from([0, -1, 1, v + 1, v - 1, 2 * v, v // 2, -v, v * 1000, 3, 5, 7, float(v),
                                     str(v), 2**62]))
    if isinstance(v, float):
        return draw(st.sampled_from([0.0, -v, v * 1e300, math.nan, math.inf, -math.inf, int(v) if math.isfinite(v)
                                     else 0, str(v), 1e-300]))
    if isinstance(v, str):
        return draw(WORDS | TEXT)
    if isinstance(v, list):
        if v and draw(st.booleans()):
            return v[:-1]
        return v + [draw(SCALARS)]
    if isinstance(v, dict):
        return {} if draw(st.booleans()) else None
    return draw(JSON_VALUES)


def mutate(draw, cfg: Any, n_ops: int) -> Any:
    """Apply ``n_ops`` random mutations (drop / rename / retype / tweak / add a field) anywhere in ``cfg``."""
    cfg = copy.deepcopy(cfg)
    for _ in range(n_ops):
        paths = _paths(cfg)
        op = draw(st.sampled_from(["drop", "rename", "retype", "tweak", "tweak", "add", "whole"]))
        if op == "whole":
            if draw(st.integers(0, 9)) == 0:  # rarely: the config is not a mapping at all
                cfg = draw(JSON_VALUES)
            continue
        if op == "add" or not paths:
            containers = [()] + [p for p in paths if isinstance(_get(cfg, p), dict)]
            where = draw(st.sampled_from(containers))
            target = _get(cfg, where)
            if isinstance(target, dict):
                target[draw(KNOWN_KEYS | TEXT)] = draw(JSON_VALUES)
            continue
        path = draw(st.sampled_from(paths))
        parent, key = _get(cfg, path[:-1]), path[-1]
        if op == "drop":
            del parent[key]
        elif op == "rename" and isinstance(parent, dict):
            v = parent.pop(key)
            parent[draw(KNOWN_KEYS | TEXT | st.just(f"{key}_"))] = v
        elif op == "retype":
            parent[key] = draw(JSON_VALUES)
        else:
            parent[key] = _tweak(draw, parent[key])
    return cfg


def _get(obj: Any, path: tuple) -> Any:
    for k in path:
        obj = obj[k]
    return obj


def serialise(draw, cfg: Any, kind: str) -> bytes:
    if kind == "yaml":
        text = yaml.safe_dump(cfg, sort_keys=False, allow_unicode=draw(st.booleans()))
    else:
        text = json.dumps(cfg, indent=draw(st.sampled_from([None, 2])))  # NaN/Infinity as Python writes them
    raw = text.encode("utf-8")
    corrupt = draw(st.integers(0, 11))
    if corrupt == 0 and raw:  # half-written
        raw = raw[:draw(st.integers(0, len(raw) - 1))]
    elif corrupt == 1 and raw:  # one flipped byte
        i = draw(st.integers(0, len(raw) - 1))
        raw = raw[:i] + bytes([raw[i] ^ draw(st.integers(1, 255))]) + raw[i + 1:]
    return raw


# -- the valid configs the mutations start from -------------------------------------------------------
@pytest.fixture(scope="module")
def sources(checkpoint_factory, workdir):
    """Valid (config dict, weights path) per format; a profile from both families."""
    out = {}
    hf = checkpoint_factory("hf")
    out["hf"] = (json.loads((hf / "config.json").read_text()), hf / "model.safetensors")
    large = checkpoint_factory("large")
    out["large"] = (yaml.safe_load((large / "config.yaml").read_text()), large / "model.safetensors")
    hyb = checkpoint_factory("hybrid")
    out["hybrid"] = (yaml.safe_load((hyb / "config.yaml").read_text()), hyb / "model.safetensors")
    for name in ("hybrid_slstm_only", "hybrid_mlstm_only"):
        d = checkpoint_factory(name)
        out[name] = (yaml.safe_load((d / "config.yaml").read_text()), d / "model.safetensors")
    for fam, name in (("profile_hybrid", "hybrid"), ("profile_large", "large_bias")):
        p = save_profile_checkpoint(load_checkpoint(checkpoint_factory(name)), workdir / fam)
        out[fam] = (json.loads((p / "profile.json").read_text()), p / "model.safetensors")
    return out


def _write_checkpoint(d: Path, cfg_name: str, raw: bytes, weights: Path) -> None:
    (d / cfg_name).write_bytes(raw)
    (d / "model.safetensors").symlink_to(weights)


def _check_loaded(d: Path, fmt: str | None) -> None:
    g = load_checkpoint(d, format=fmt)
    g.validate()
    g.to_profile()
    g.state_contract(2)
    assert g.num_params > 0


def _config_case(name: str, workdir: Path, data, sources: dict, choices: list[str], cfg_name: Callable, fmt: str):
    src = data.draw(st.sampled_from(choices))
    cfg, weights = sources[src]
    n_ops = data.draw(st.integers(1, 4))
    kind = "yaml" if cfg_name(src).endswith(".yaml") else "json"
    raw = serialise(data.draw, mutate(data.draw, cfg, n_ops), kind)
    d = fresh(workdir, name)
    _write_checkpoint(d, cfg_name(src), raw, weights)
    forced = data.draw(st.booleans())
    expect_clean(name, lambda: _check_loaded(d, fmt if forced else None))
    if data.draw(st.integers(0, 3)) == 0:
        expect_clean(name, lambda: run_inspect(d), count=False)


@fuzz_settings("config_hf")
@given(data=st.data())
def test_fuzz_hf_config(workdir, sources, data):
    _config_case("config_hf", workdir, data, sources, ["hf"], lambda s: "config.json", "hf")


@fuzz_settings("config_large")
@given(data=st.data())
def test_fuzz_large_config(workdir, sources, data):
    _config_case("config_large", workdir, data, sources, ["large"], lambda s: "config.yaml", "large")


@fuzz_settings("config_hybrid")
@given(data=st.data(), as_json=st.booleans())
def test_fuzz_hybrid_config(workdir, sources, data, as_json):
    _config_case("config_hybrid", workdir, data, sources, ["hybrid", "hybrid_slstm_only", "hybrid_mlstm_only"],
                 lambda s: "config.json" if as_json else "config.yaml", "hybrid")


@fuzz_settings("config_profile")
@given(data=st.data())
def test_fuzz_profile(workdir, sources, data):
    _config_case("config_profile", workdir, data, sources, ["profile_hybrid", "profile_large"],
                 lambda s: "profile.json", "profile")


# -- safetensors headers ---------------------------------------------------------------------------
DTYPE_TAGS = ["F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U8", "BOOL", "F8_E4M3", "U32", "Q7", "f32",
              ""]
ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


@st.composite
def header_entries(draw):
    """A header dict: tensors packed at consistent offsets, then some of them broken in one way."""
    n = draw(st.integers(0, 4))
    header: dict = {}
    off = 0
    for i in range(n):
        tag = draw(st.sampled_from(DTYPE_TAGS[:10]))
        shape = draw(st.lists(st.integers(0, 5), max_size=3))
        size = int(np.prod(shape, dtype=np.int64)) * ITEMSIZE[tag]
        header[draw(st.just(f"t{i}") | TEXT)] = {"dtype": tag, "shape": shape, "data_offsets": [off, off + size]}
        off += size
    names = list(header)
    for _ in range(draw(st.integers(0, 3))):
        if not names:
            break
        e = header[draw(st.sampled_from(names))]
        if not isinstance(e, dict) or not e:
            continue
        what = draw(st.sampled_from(["dtype", "shape", "offsets", "entry", "key", "extra"]))
        if what == "dtype":
            e["dtype"] = draw(st.sampled_from(DTYPE_TAGS) | JSON_VALUES)
        elif what == "shape":
            e["shape"] = draw(st.lists(INTS, max_size=4) | JSON_VALUES)
        elif what == "offsets":
            e["data_offsets"] = draw(st.lists(INTS, min_size=0, max_size=3) | JSON_VALUES)
        elif what == "entry":
            header[draw(st.sampled_from(names))] = draw(JSON_VALUES)
        elif what == "key":
            e.pop(draw(st.sampled_from(sorted(e))), None)
        else:
            e[draw(TEXT)] = draw(JSON_VALUES)
    meta = draw(st.sampled_from(["absent", "ok", "bad"]))
    if meta == "ok":
        header["__metadata__"] = {"format": "pt"}
    elif meta == "bad":
        header["__metadata__"] = draw(JSON_VALUES)
    return header


def _data_end(header: dict) -> int:
    end = 0
    for v in header.values():
        if isinstance(v, dict):
            o = v.get("data_offsets")
            if isinstance(o, list) and len(o) == 2 and all(isinstance(x, int) for x in o):
                end = max(end, min(max(o), 1 << 16))
    return end


def _read_all(path: Path) -> None:
    for h in open_safetensors(path).values():
        load_weight(h)


@fuzz_settings("header_structured")
@given(header=header_entries(), data=st.data())
def test_fuzz_safetensors_header(workdir, header, data):
    raw = json.dumps(header).encode("utf-8")
    raw += b" " * data.draw(st.integers(0, 7))
    length = len(raw)
    how = data.draw(st.integers(0, 9))
    if how == 0:
        length = data.draw(st.integers(0, 2**64 - 1))
    elif how == 1:
        length = max(0, length + data.draw(st.integers(-8, 8)))
    body = data.draw(st.binary(max_size=16)) if data.draw(st.booleans()) else b""
    data_len = max(0, _data_end(header) + data.draw(st.integers(-6, 6)))
    payload = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1))).bytes(data_len)
    blob = length.to_bytes(8, "little") + raw + body + payload
    if data.draw(st.integers(0, 5)) == 0:
        blob = blob[:data.draw(st.integers(0, len(blob)))]
    d = fresh(workdir, "header_structured")
    (d / "model.safetensors").write_bytes(blob)
    expect_clean("header_structured", lambda: _read_all(d / "model.safetensors"))


@fuzz_settings("header_raw")
@given(raw=st.one_of(st.binary(max_size=64), TEXT.map(lambda s: s.encode("utf-8")),
                     st.integers(1, 3000).map(lambda n: b"[" * n + b"]" * n),
                     st.integers(1, 3000).map(lambda n: b'{"a":' * n + b"1" + b"}" * n),
                     JSON_VALUES.map(lambda v: json.dumps(v).encode())),
       length_delta=st.integers(-3, 3))
def test_fuzz_safetensors_raw_header(workdir, raw, length_delta):
    d = fresh(workdir, "header_raw")
    p = d / "model.safetensors"
    p.write_bytes(max(0, len(raw) + length_delta).to_bytes(8, "little") + raw)
    expect_clean("header_raw", lambda: _read_all(p))


@pytest.fixture(scope="module")
def real_header(checkpoint_factory):
    """The hybrid fixture: its config and its safetensors split into (header dict, data bytes)."""
    d = checkpoint_factory("hybrid")
    blob = (d / "model.safetensors").read_bytes()
    n = int.from_bytes(blob[:8], "little")
    return d, json.loads(blob[8:8 + n]), blob[8 + n:]


@fuzz_settings("header_of_real_checkpoint")
@given(data=st.data())
def test_fuzz_header_of_real_checkpoint(workdir, real_header, data):
    """Half-downloaded or hand-edited shards of a real checkpoint, loaded as a whole checkpoint."""
    src, header, payload = real_header
    header = copy.deepcopy(header)
    names = sorted(k for k in header if k != "__metadata__")
    for _ in range(data.draw(st.integers(0, 3))):
        name = data.draw(st.sampled_from(names))
        op = data.draw(st.sampled_from(["drop", "rename", "dtype", "shape", "shift", "swap"]))
        if name not in header:
            continue
        if op == "drop":
            header.pop(name)
        elif op == "rename":
            header[data.draw(TEXT | st.just(name + ".x"))] = header.pop(name)
        elif op == "dtype":
            header[name]["dtype"] = data.draw(st.sampled_from(DTYPE_TAGS))
        elif op == "shape":
            s = list(header[name]["shape"])
            header[name]["shape"] = data.draw(st.sampled_from([s[::-1], s + [1], s[:-1], [int(np.prod(s))]]))
        elif op == "shift":
            o = header[name]["data_offsets"]
            k = data.draw(st.integers(-64, 64))
            header[name]["data_offsets"] = [o[0] + k, o[1] + k]
        else:
            other = data.draw(st.sampled_from(names))
            if other in header:
                header[name], header[other] = header[other], header[name]
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    blob = len(raw).to_bytes(8, "little") + raw + payload
    cut = data.draw(st.integers(0, 4))
    if cut == 0:
        blob = blob[:data.draw(st.integers(0, len(blob)))]
    elif cut == 1:  # a flipped byte in the data (may make a NaN)
        i = data.draw(st.integers(8 + len(raw), len(blob) - 1))
        blob = blob[:i] + bytes([blob[i] ^ data.draw(st.integers(1, 255))]) + blob[i + 1:]
    d = fresh(workdir, "header_of_real_checkpoint")
    shutil.copy(src / "config.yaml", d / "config.yaml")
    (d / "model.safetensors").write_bytes(blob)

    def case():
        g = load_checkpoint(d)
        g.validate()
        for n in g.weights:
            load_weight(g.weights[n])

    expect_clean("header_of_real_checkpoint", case)


@pytest.fixture(scope="module")
def pickle_blob(checkpoint_factory):
    return (checkpoint_factory("hybrid_pt") / "model.pt").read_bytes()


@fuzz_settings("pickle_bytes")
@given(data=st.data())
def test_fuzz_torch_state_dict_bytes(workdir, pickle_blob, data):
    """A damaged ``.pt`` (truncated, bytes flipped) is read with weights_only=True or refused in one line."""
    blob = bytearray(pickle_blob)
    if data.draw(st.booleans()):
        blob = blob[:data.draw(st.integers(0, len(blob) - 1))]
    else:
        for _ in range(data.draw(st.integers(1, 8))):
            i = data.draw(st.integers(0, len(blob) - 1))
            blob[i] ^= data.draw(st.integers(1, 255))
    d = fresh(workdir, "pickle_bytes")
    (d / "model.pt").write_bytes(bytes(blob))
    expect_clean("pickle_bytes", lambda: [load_weight(h) for h in open_torch_state_dict(d / "model.pt").values()])


# -- issue 14: YAML aliases and keys, weight dtypes, non-regular files -------------------------------------
@contextlib.contextmanager
def time_limit(seconds: int, what: str):
    """A case that blocks (a FIFO opened for reading) or runs away becomes a TimeoutError, i.e. a finding."""
    def on_alarm(signum, frame):
        raise TimeoutError(f"{what} took more than {seconds} s (a hang)")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


ODD_KEYS = ["1", "-7", "2.5", "null", "~", "true", "no", "2001-01-01", "[1, 2]", "{a: 1}", "0x1F", ".inf"]


@st.composite
def alias_defs(draw) -> tuple[str, int, int]:
    """A flow list of anchors ``&a0 .. &a{n-1}``, each holding ``fan`` aliases of the one before:
    (text, levels, fan); the last anchor stands for fan**levels values."""
    levels, fan = draw(st.integers(1, 10)), draw(st.integers(1, 12))
    parts = ["&a0 [" + ",".join(["1"] * fan) + "]"]
    parts += [f"&a{i} [" + ",".join([f"*a{i - 1}"] * fan) + "]" for i in range(1, levels)]
    return "[" + ", ".join(parts) + "]", levels, fan


def _yaml_with_aliases(draw, cfg: dict) -> str:
    """``cfg`` as YAML, with alias bombs used as values, merge keys, self-references and non-string keys placed
    at random mappings (placeholders in a safe_dump, replaced in the text). The anchors are defined in a
    top-level ``_anchors`` list (first, or rarely after their uses: an undefined alias) or inline at their
    first use in a field."""
    cfg = copy.deepcopy(cfg)
    defs, levels, _ = draw(alias_defs())
    where_defs = draw(st.sampled_from(["inline", "inline", "first", "last"]))
    subs: dict[str, str] = {}
    aliases: list[str] = []
    for i in range(draw(st.integers(1, 4))):
        mappings = [()] + [p for p in _paths(cfg) if isinstance(_get(cfg, p), dict)]
        where = _get(cfg, draw(st.sampled_from(mappings)))
        op = draw(st.sampled_from(["alias-value", "alias-value", "odd-key", "self", "merge"]))
        ph = f"__PH{i}__"
        if op == "alias-value":
            key = draw(st.sampled_from(sorted(where) or ["x"]) | KNOWN_KEYS)
            where[key] = ph
            aliases.append(ph)
            subs[ph] = f"*a{draw(st.integers(0, levels - 1))}"
        elif op == "odd-key":
            where[ph] = draw(JSON_VALUES.filter(lambda v: not isinstance(v, (dict, list))))
            subs[ph] = draw(st.sampled_from(ODD_KEYS))
        elif op == "self":
            where[ph] = {"inner": f"__SELF{i}__"}
            subs[ph + ":"] = f"selfref{i}: &self{i}"
            subs[f"__SELF{i}__"] = f"*self{i}"
        else:
            where[ph] = {f"m{i}": 1}
            subs[ph + ":"] = f"merged{i}:"
            subs[f"m{i}: 1"] = f"<<: {{a: 1, b: {i}}}"
    doc = cfg
    if where_defs == "first" or (where_defs == "inline" and not aliases):
        doc = {"__DEFS__": "__DEFS_VALUE__", **cfg}
    elif where_defs == "last":
        doc = {**cfg, "__DEFS__": "__DEFS_VALUE__"}
    text = yaml.safe_dump(doc, sort_keys=False, width=10**6)
    text = text.replace("__DEFS__:", "_anchors:", 1).replace("__DEFS_VALUE__", defs, 1)
    used = [ph for ph in aliases if ph in text]  # a later edit may have dropped one
    if where_defs == "inline" and used:  # the anchors defined where the first alias is used, in text order
        subs[min(used, key=text.find)] = defs
    for ph, rep in subs.items():
        text = text.replace(ph, rep)
    return text


@fuzz_settings("yaml_aliases_and_keys")
@given(data=st.data())
def test_fuzz_yaml_aliases_and_keys(workdir, sources, data):
    """Anchors, aliases (up to 12**10 values in a few hundred bytes), merge keys, self-references and keys that
    are not strings, in the YAML configs: a result or one short error line, within seconds, never a traceback."""
    src = data.draw(st.sampled_from(["large", "hybrid", "hybrid_slstm_only", "hybrid_mlstm_only"]))
    cfg, weights = sources[src]
    if data.draw(st.booleans()):
        cfg = mutate(data.draw, cfg, data.draw(st.integers(1, 2)))
    if not isinstance(cfg, dict):
        cfg = {"value": cfg}
    text = _yaml_with_aliases(data.draw, cfg)
    d = fresh(workdir, "yaml_aliases_and_keys")
    _write_checkpoint(d, "config.yaml", text.encode("utf-8"), weights)

    def case():
        with time_limit(20, "loading a YAML config"):
            _check_loaded(d, data.draw(st.sampled_from([None, "large" if src == "large" else "hybrid"])))

    res = expect_clean("yaml_aliases_and_keys", case)
    if isinstance(res, XlstmExportError):
        assert len(str(res)) < 20_000, f"an error message of {len(str(res))} characters: quote input short"
    with time_limit(40, "inspect on a YAML config"):
        expect_clean("yaml_aliases_and_keys", lambda: run_inspect(d), count=False)


FLOAT_TAGS = {"float32", "float16", "float64", "bfloat16"}
NP_CASTS = ["int8", "int16", "int32", "int64", "uint8", "bool", "float16", "float64", "float32"]
TORCH_CASTS = ["int8", "int16", "int32", "int64", "uint8", "bool", "float16", "bfloat16", "float64"]


@pytest.fixture(scope="module")
def dtype_sources(checkpoint_factory):
    out = {}
    for name in ("hf", "large", "hybrid"):
        from safetensors.numpy import load_file

        d = checkpoint_factory(name)
        out[name] = (d, load_file(str(d / "model.safetensors")))
    import torch

    d = checkpoint_factory("hybrid_pt")
    out["hybrid_pt"] = (d, torch.load(d / "model.pt", weights_only=True))
    return out


@fuzz_settings("weight_dtypes")
@given(data=st.data())
def test_fuzz_weight_dtypes(workdir, dtype_sources, data):
    """Some tensors of a real checkpoint cast to other dtypes: float ones load (and read back as float32), and
    any integer or bool one is refused naming its file:tensor, before any tensor data is read."""
    src = data.draw(st.sampled_from(sorted(dtype_sources)))
    ck, sd = dtype_sources[src]
    names = sorted(sd)
    chosen = data.draw(st.lists(st.sampled_from(names), min_size=1, max_size=6, unique=True))
    d = fresh(workdir, "weight_dtypes")
    for f in ck.iterdir():
        if f.suffix not in (".safetensors", ".pt"):
            (d / f.name).symlink_to(f)
    casts = {}
    if src.endswith("_pt"):
        import torch

        new = dict(sd)
        for n in chosen:
            casts[n] = data.draw(st.sampled_from(TORCH_CASTS))
            new[n] = sd[n].to(getattr(torch, casts[n]))
        weights = d / "model.pt"
        torch.save(new, weights)
    else:
        from safetensors.numpy import save_file

        new = dict(sd)
        for n in chosen:
            casts[n] = data.draw(st.sampled_from(NP_CASTS))
            new[n] = sd[n].astype(casts[n])
        weights = d / "model.safetensors"
        save_file(new, str(weights))
    bad = sorted(n for n, t in casts.items() if t not in FLOAT_TAGS)
    COUNTS["weight_dtypes"] = COUNTS.get("weight_dtypes", 0) + 1
    if bad:
        with pytest.raises(XlstmExportError) as e:
            load_checkpoint(d)
        msg = str(e.value)
        assert "not a float dtype" in msg and any(f"{weights}:{n} is " in msg for n in bad), (bad, msg)
    else:
        g = load_checkpoint(d)
        for n in g.weights:
            assert load_weight(g.weights[n]).dtype == np.float32


def _make_non_regular(p: Path, kind: str) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p)
    elif p.exists() or p.is_symlink():
        p.unlink()
    if kind == "fifo":
        os.mkfifo(p)
    elif kind == "dev-zero":
        p.symlink_to("/dev/zero")
    elif kind == "dev-null":
        p.symlink_to("/dev/null")
    elif kind == "directory":
        p.mkdir()
    elif kind == "dangling-link":
        p.symlink_to(p.parent / "does-not-exist")
    elif kind == "link-loop":
        p.symlink_to(p)
    else:
        raise ValueError(kind)


@pytest.fixture(scope="module")
def layouts(checkpoint_factory, workdir):
    out = {n: checkpoint_factory(n) for n in ("hf", "hf_sharded", "large", "hybrid", "hybrid_pt")}
    out["profile"] = save_profile_checkpoint(load_checkpoint(checkpoint_factory("hybrid")), workdir / "nr-profile")
    return out


@fuzz_settings("non_regular_files")
@given(data=st.data())
def test_fuzz_non_regular_files(workdir, layouts, data):
    """One file of a checkpoint replaced by a FIFO, /dev/zero, /dev/null, a directory or a broken link: loading
    (and reading every tensor) ends within seconds in a result or one error line naming that file."""
    src = data.draw(st.sampled_from(sorted(layouts)))
    files = sorted(f.name for f in layouts[src].iterdir())
    victim = data.draw(st.sampled_from(files))
    kind = data.draw(st.sampled_from(["fifo", "dev-zero", "dev-null", "directory", "dangling-link", "link-loop"]))
    d = fresh(workdir, "non_regular_files")
    for f in files:
        shutil.copy(layouts[src] / f, d / f)
    _make_non_regular(d / victim, kind)

    def case():
        with time_limit(20, f"loading a checkpoint whose {victim} is a {kind}"):
            g = load_checkpoint(d)
            for n in g.weights:
                load_weight(g.weights[n])

    res = expect_clean("non_regular_files", case)
    used = victim not in ("generation_config.json",)
    if used and kind in ("fifo", "dev-zero", "dev-null") and not COLLECT:
        assert isinstance(res, XlstmExportError), f"{victim} as a {kind} was accepted"
        assert victim in str(res) or kind == "dev-null", str(res)


# -- regressions: unhandled exceptions (tracebacks) the fuzzers found, now one clear line -------------------
def _one_line_exit_2(path: Path, *needles: str) -> str:
    res = CliRunner().invoke(main, ["inspect", "--checkpoint", str(path)])
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    lines = res.stderr.strip().splitlines()
    assert res.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: "), res.output
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def _copy(checkpoint_factory, tmp_path, name) -> Path:
    d = tmp_path / name
    shutil.copytree(checkpoint_factory(name), d)
    return d


@pytest.mark.parametrize("patch,needles", [
    ({"num_heads": 0}, ["num_heads", "positive"]),  # was ZeroDivisionError (large_block)
    ({"ffn_round_up_to_multiple_of": 0}, ["ffn_round_up_to_multiple_of", "positive"]),  # ZeroDivisionError
    ({"qk_dim_factor": math.inf}, ["qk_dim_factor", "finite"]),  # OverflowError (int(inf))
    ({"v_dim_factor": math.nan}, ["v_dim_factor", "finite"]),  # ValueError (int(nan))
    ({"ffn_proj_factor": 1e308}, ["ffn_proj_factor", "positive size"]),  # OverflowError (product is inf)
    ({"ffn_proj_factor": 10**400}, ["ffn_proj_factor", "finite"]),  # OverflowError (int -> float)
    # not crashes before, but the line did not name the file / the real problem:
    ({"hidden_size": -128, "embedding_dim": -128}, ["hidden_size", "positive"]),
    ({"num_heads": 2**64}, ["num_heads", "out of range"]),
])
def test_regression_hf_config_values(checkpoint_factory, tmp_path, patch, needles):
    d = _copy(checkpoint_factory, tmp_path, "hf")
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(patch)
    (d / "config.json").write_text(json.dumps(cfg))
    _one_line_exit_2(d, "config.json", *needles)


@pytest.mark.parametrize("patch,needles", [
    ({"qk_dim_factor": math.nan}, ["qk_dim_factor", "finite"]),  # ValueError
    ({"ffn_proj_factor": math.inf}, ["ffn_proj_factor", "finite"]),  # OverflowError
    ({"ffn_round_up_to_multiple_of": 0}, ["ffn_round_up_to_multiple_of", "positive"]),  # ZeroDivisionError
    ({"v_dim_factor": -1.0}, ["v_dim_factor", "positive size"]),  # was a ConfigError naming no file
])
def test_regression_large_config_values(checkpoint_factory, tmp_path, patch, needles):
    d = _copy(checkpoint_factory, tmp_path, "large")
    cfg = yaml.safe_load((d / "config.yaml").read_text())
    cfg.update(patch)
    (d / "config.yaml").write_text(yaml.safe_dump(cfg))
    _one_line_exit_2(d, "config.yaml", *needles)


@pytest.mark.parametrize("factor", [1e308, math.inf])
def test_regression_hybrid_proj_factor_overflow(checkpoint_factory, tmp_path, factor):
    d = _copy(checkpoint_factory, tmp_path, "hybrid")
    cfg = yaml.safe_load((d / "config.yaml").read_text())
    cfg["mlstm_block"]["mlstm"]["proj_factor"] = factor  # was OverflowError (math.ceil(inf))
    (d / "config.yaml").write_text(yaml.safe_dump(cfg))
    _one_line_exit_2(d, "config.yaml", "mlstm_block.mlstm", "proj_factor")


@pytest.mark.parametrize("name,cfg_file,edit", [
    ("hf", "config.json", lambda c: c.update(num_hidden_layers=2**31 - 1, num_blocks=2**31 - 1)),
    ("large", "config.yaml", lambda c: c.update(num_blocks=2**31 - 1)),
    ("hybrid", "config.yaml", lambda c: c.update(num_blocks=2**31 - 1)),
    ("hybrid_slstm_only", "config.yaml", lambda c: c.update(num_blocks=2**31 - 1)),  # slstm_at: all
])
def test_regression_absurd_num_blocks_is_refused_at_once(checkpoint_factory, tmp_path, name, cfg_file, edit):
    """was: a tuple of 2**31 blocks (16 GB, minutes); now one line before anything is built."""
    import time

    d = _copy(checkpoint_factory, tmp_path, name)
    p = d / cfg_file
    cfg = json.loads(p.read_text()) if cfg_file.endswith(".json") else yaml.safe_load(p.read_text())
    edit(cfg)
    p.write_text(json.dumps(cfg) if cfg_file.endswith(".json") else yaml.safe_dump(cfg))
    t0 = time.time()
    _one_line_exit_2(d, cfg_file, "2147483647", "the checkpoint holds only")
    assert time.time() - t0 < 5


def test_regression_huge_embedding_without_group_norm_weight(checkpoint_factory, tmp_path):
    """was: np.zeros(embedding_dim) allocated eagerly for group_norm_weight: false (MemoryError for 2**40)."""
    d = _copy(checkpoint_factory, tmp_path, "hybrid_slstm_only")
    cfg = yaml.safe_load((d / "config.yaml").read_text())
    cfg["embedding_dim"] = 2**40
    cfg["slstm_block"]["slstm"]["group_norm_weight"] = False
    (d / "config.yaml").write_text(yaml.safe_dump(cfg))
    _one_line_exit_2(d, "weights do not match the config")


def test_regression_unhashable_dtype_in_header(tmp_path):
    (tmp_path / "ck").mkdir()
    raw = json.dumps({"w": {"dtype": ["F32"], "shape": [1], "data_offsets": [0, 4]}}).encode()
    (tmp_path / "ck" / "model.safetensors").write_bytes(len(raw).to_bytes(8, "little") + raw + b"\0" * 4)
    from xlstm_export.errors import CheckpointError

    with pytest.raises(CheckpointError, match=r"tensor 'w': dtype must be a string"):  # was TypeError
        open_safetensors(tmp_path / "ck" / "model.safetensors")


def test_regression_deeply_nested_json_and_yaml(checkpoint_factory, tmp_path):
    d = _copy(checkpoint_factory, tmp_path, "hybrid")
    deep = b"[" * 100_000 + b"]" * 100_000
    (d / "model.safetensors").write_bytes(len(deep).to_bytes(8, "little") + deep)  # was RecursionError
    _one_line_exit_2(d, "model.safetensors", "nested too deeply")
    d = _copy(checkpoint_factory, tmp_path, "hf")
    (d / "config.json").write_bytes(deep)
    _one_line_exit_2(d, "config.json", "nested too deeply")
    d = _copy(checkpoint_factory, tmp_path, "large")
    (d / "config.yaml").write_bytes(b"a: " + b"[" * 5000 + b"]" * 5000)
    _one_line_exit_2(d, "config.yaml")


def test_regression_profile_block_kind_unhashable(checkpoint_factory, tmp_path):
    out = save_profile_checkpoint(load_checkpoint(checkpoint_factory("hybrid")), tmp_path / "p")
    prof = json.loads((out / "profile.json").read_text())
    prof["blocks"][0]["kind"] = ["mlstm"]  # was TypeError (dict lookup of a list)
    (out / "profile.json").write_text(json.dumps(prof))
    _one_line_exit_2(out, "blocks[0]", "kind")


def test_regression_corrupt_pickle_memo(checkpoint_factory, tmp_path):
    """A .pt whose pickle refers to a memo entry it never stored: torch raises KeyError (was a traceback)."""
    import pickle
    import zipfile

    d = _copy(checkpoint_factory, tmp_path, "hybrid_pt")
    src = d / "model.pt"
    with zipfile.ZipFile(src) as z:
        names = z.namelist()
        data = {n: z.read(n) for n in names}
    pkl = next(n for n in names if n.endswith("data.pkl"))
    data[pkl] = pickle.PROTO + bytes([2]) + pickle.BINGET + bytes([200]) + pickle.STOP  # memo 200 is empty
    with zipfile.ZipFile(src, "w", zipfile.ZIP_STORED) as z:
        for n in names:
            z.writestr(n, data[n])
    _one_line_exit_2(d, "model.pt", "not a readable torch state dict")


def test_fuzz_count_reached():
    """Runs last: the fuzz tests above together ran at least the requested number of cases."""
    if len(COUNTS) < len(SHARES):
        pytest.skip("not every fuzz test ran in this session")
    total = sum(COUNTS.values())
    print(f"\nfuzz: {total} cases (requested {TOTAL}): " + ", ".join(f"{k} {v}" for k, v in sorted(COUNTS.items())))
    for (test, etype, where), example in sorted(FINDINGS.items()):
        print(f"FINDING {test}: {etype} at {where}: {example}")
    assert not FINDINGS, f"{len(FINDINGS)} distinct unhandled exceptions (printed above)"
    assert total >= TOTAL
