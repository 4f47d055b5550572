"""TorchScript artifacts against upstream, loaded with plain ``torch.jit.load`` in a process that never
imports xlstm_export (issue 4's acceptance). Figures are printed with -s.

One artifact per fixture (built once), one subprocess for all of them. Upstream's side is its own
recurrent decode (transformers cache, xLSTMLarge state, xLSTMLMModel.step) and its full-sequence forward.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile

import pytest
import torch

from xlstm_export.frontends import load_checkpoint
from xlstm_export.graphs.io import IO_FORMAT
from xlstm_export.torchscript.emit import TorchScriptOptions, emit
from xlstm_export.validation import tolerance_for
from xlstm_export.validation.compare import max_rel

FIXTURES = ["hf", "large", "hybrid", "hybrid_slstm_only", "hybrid_pt"]
PROMPT_LEN, STEPS, SPLIT = 12, 10, 7  # 12-token prompt + 10 greedy steps; two pieces: 7 + 15 tokens
REL_TOL = tolerance_for("torchscript", "fp32").max_rel  # 1e-4, the bound

# Runs in a fresh interpreter; imports torch only. xlstm_export is made unimportable first.
CHILD = r"""
import sys
sys.modules["xlstm_export"] = None  # any import of our package now fails
import torch
cases = torch.load(sys.argv[1])
out = {}
with torch.no_grad():
    for name, c in cases.items():
        extra = {"xlstm_export.io": ""}
        m = torch.jit.load(c["path"], _extra_files=extra)
        prompt, tokens, k = c["prompt"], c["tokens"], c["split"]
        seq = torch.cat([prompt, tokens], 1)
        B = seq.shape[0]
        a, st = m.forward_with_states(seq[:, :k], m.init_states(B))
        b, st = m.forward_with_states(seq[:, k:], st)
        lg, st = m.forward_with_states(prompt, m.init_states(B))
        steps = [lg]
        for t in range(tokens.shape[1]):
            lg, st = m.forward_with_states(tokens[:, t:t + 1], st)
            steps.append(lg)
        out[name] = {"full": m(seq), "pieces": torch.cat([a, b], 1), "decode": torch.cat(steps, 1),
                     "generated": m.generate_greedy(prompt, tokens.shape[1]), "io": extra["xlstm_export.io"],
                     "num_states": len(m.init_states(1))}
out["imported"] = sorted(k for k, v in sys.modules.items() if k.startswith("xlstm_export") and v is not None)
torch.save(out, sys.argv[2])
"""


def rel_per_step(got: torch.Tensor, ref: torch.Tensor) -> float:
    """Worst over the prefill (first PROMPT_LEN positions) and each decode position of max|d| / max|ref|."""
    parts = [slice(0, PROMPT_LEN)] + [slice(t, t + 1) for t in range(PROMPT_LEN, ref.shape[1])]
    return max(max_rel(got[:, s], ref[:, s]) for s in parts)


@torch.no_grad()
def upstream_decode(name: str, model, prompt: torch.Tensor, n: int):
    """Upstream's own recurrent greedy decode: logits (B, T + n, V) of the prompt and each fed token, and
    the n new tokens."""
    if name.startswith("hf"):
        out = model(prompt, use_cache=True)
        logits, state = out.logits, out.cache_params

        def step(tok, s):
            o = model(tok, cache=s, use_cache=True)
            return o.logits, o.cache_params
    elif name.startswith("large"):
        logits, state = model(prompt)
        step = model
    else:  # xLSTMLMModel: step() through the prompt too
        state, parts = None, []
        for t in range(prompt.shape[1]):
            lg, state = model.step(prompt[:, t:t + 1], state)
            parts.append(lg)
        logits = torch.cat(parts, 1)
        step = model.step
    all_logits, tokens = [logits], []
    for _ in range(n):
        tok = all_logits[-1][:, -1].argmax(-1, keepdim=True)
        tokens.append(tok)
        logits, state = step(tok, state)
        all_logits.append(logits)
    return torch.cat(all_logits, 1).float(), torch.cat(tokens, 1)


@torch.no_grad()
def upstream_full(model, seq: torch.Tensor) -> torch.Tensor:
    out = model(seq)
    out = getattr(out, "logits", out)
    return (out[0] if isinstance(out, tuple) else out).float()


@pytest.fixture(scope="module")
def child_results(graph_of, exports, upstream_factory, tmp_path_factory):
    """Every fixture's export (the session's), run all in one torch-only subprocess, return (results, upstream)."""
    d = tmp_path_factory.mktemp("torchscript")
    cases, upstream = {}, {}
    for i, name in enumerate(FIXTURES):
        graph = graph_of(name)
        art = exports(name, "torchscript")
        prompt = torch.randint(0, graph.config.vocab_size, (2, PROMPT_LEN), generator=torch.Generator().manual_seed(i))
        model = upstream_factory(name)
        dec_logits, tokens = upstream_decode(name, model, prompt, STEPS)
        full = upstream_full(model, torch.cat([prompt, tokens], 1))
        cases[name] = {"path": str(art.path), "prompt": prompt, "tokens": tokens, "split": SPLIT}
        upstream[name] = {"decode": dec_logits, "full": full, "tokens": tokens, "graph": graph}
    torch.save(cases, d / "cases.pt")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", CHILD, str(d / "cases.pt"), str(d / "out.pt")], cwd=d, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return torch.load(d / "out.pt"), upstream


def test_child_never_imported_xlstm_export(child_results):
    results, _ = child_results
    assert results["imported"] == []


@pytest.mark.parametrize("name", FIXTURES)
def test_logits_match_upstream(child_results, name):
    results, upstream = child_results
    got, ref = results[name], upstream[name]
    errs = {
        "forward vs upstream forward": rel_per_step(got["full"], ref["full"]),
        "forward_with_states in two pieces vs upstream forward": rel_per_step(got["pieces"], ref["full"]),
        "prefill + 10 steps vs upstream decode": rel_per_step(got["decode"], ref["decode"]),
    }
    print(f"\n[{name}] " + "; ".join(f"{k}: {v:.2e}" for k, v in errs.items()))
    for label, err in errs.items():
        assert err <= REL_TOL, f"{name}: {label}: rel {err:.2e} > {REL_TOL}"


@pytest.mark.parametrize("name", FIXTURES)
def test_generate_greedy_continues_as_upstream(child_results, name):
    results, upstream = child_results
    assert results[name]["generated"].tolist() == upstream[name]["tokens"].tolist()


@pytest.mark.parametrize("name", FIXTURES)
def test_io_contract_extra_file(child_results, name):
    results, upstream = child_results
    c = json.loads(results[name]["io"])
    graph = upstream[name]["graph"]
    assert c["format"] == IO_FORMAT and c["target"] == "torchscript" and c["precision"] == "fp32"
    assert [s["name"] for s in c["states"]] == [s.name for s in graph.state_contract(1)]
    assert [s["input"] for s in c["states"]] == [f"states[{i}]" for i in range(len(c["states"]))]
    assert all(s["output"] == s["input"] for s in c["states"])
    assert c["inputs"][0]["name"] == "input_ids" and c["outputs"][0]["name"] == "logits"
    assert c["profile"] == json.loads(json.dumps(graph.to_profile(informational=False)))
    assert results[name]["num_states"] == len(c["states"])


def test_is_scripted_not_traced(exports):
    """The archive carries the model's code (loops over blocks and steps), not a traced graph."""
    out = exports("hybrid", "torchscript")
    names = zipfile.ZipFile(out.path).namelist()
    code = b"".join(zipfile.ZipFile(out.path).read(n) for n in names if n.endswith(".py"))
    for method in (b"def forward_with_states", b"def init_states", b"def generate_greedy"):
        assert method in code


def test_reproducible_across_processes_hash_seeds_and_folders(checkpoint_factory, tmp_path):
    """Two CLI exports (fresh interpreters) with other hash seeds, from other working folders, give identical
    bytes (TorchScript orders Final constants by a set; the emitter sorts them and drops the debug records
    that hold source paths)."""
    ckpt = checkpoint_factory("hybrid")
    outs = []
    for seed in ("1", "12345"):
        d = tmp_path / seed
        d.mkdir()
        proc = subprocess.run([sys.executable, "-m", "xlstm_export", "torchscript", "--checkpoint", str(ckpt),
                               "-o", "m.pt", "--precision", "fp16", "--no-validate"], cwd=d,
                              env=dict(os.environ, PYTHONHASHSEED=seed), capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        outs.append((d / "m.pt").read_bytes())
    assert outs[0] == outs[1]
    assert not any(n.endswith(".debug_pkl") for n in zipfile.ZipFile(tmp_path / "1" / "m.pt").namelist())


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_reduced_precision_weights_fp32_states(exports, precision):
    art = exports("hf", "torchscript", precision=precision)
    m = torch.jit.load(str(art.path))
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}[precision]
    assert m.embedding.dtype == dtype
    with torch.no_grad():
        logits, states = m.forward_with_states(torch.tensor([[1, 2, 3]]), m.init_states(1))
    assert logits.dtype == torch.float32 and all(s.dtype == torch.float32 for s in states)
    assert art.contract["precision"] == precision


def test_emit_refuses_to_clobber_and_bad_options(checkpoint_factory, tmp_path):
    from xlstm_export.errors import OutputError, UnsupportedError

    graph = load_checkpoint(checkpoint_factory("hf"))
    (tmp_path / "m.pt").write_bytes(b"keep")
    with pytest.raises(OutputError):
        emit(graph, TorchScriptOptions(), tmp_path / "m.pt")
    assert (tmp_path / "m.pt").read_bytes() == b"keep"
    with pytest.raises(UnsupportedError):
        emit(graph, TorchScriptOptions(precision="int8"), tmp_path / "n.pt")
    with pytest.raises(OutputError, match="not an artifact of xlstm-export"):  # --force replaces only ours
        emit(graph, TorchScriptOptions(force=True), tmp_path / "m.pt")
    assert (tmp_path / "m.pt").read_bytes() == b"keep"
    emit(graph, TorchScriptOptions(), tmp_path / "o.pt")
    emit(graph, TorchScriptOptions(force=True), tmp_path / "o.pt")
    assert zipfile.is_zipfile(tmp_path / "o.pt")

