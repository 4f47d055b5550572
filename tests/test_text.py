"""Text in, text out (issue 12): tokenizer and generation files carried by every artifact, Hub ids,
the shared sampling loop, ``generate --prompt`` and ``run ARTIFACT`` on every target against
transformers' own ``generate``.

One tiny HF checkpoint with a BPE tokenizer made by ``tokenizers`` (``fixtures.build_hf_text``; its
generation config's EOS ids include the 4th greedy token, so every path must stop there). Exports are
made once per module (``--no-validate``: validation is tested elsewhere) and shared.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from fixtures import TEXT_EOS_AT, TEXT_PROMPT, load_upstream

from xlstm_export.cli import main

NEW = 8  # max new tokens: more than the fixture's EOS position


def invoke(args, **env):
    return CliRunner().invoke(main, [str(a) for a in args], env=env or None)


def one_error_line(res, *parts):
    assert res.exit_code == 2, res.output
    lines = [l for l in res.output.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.output
    for p in parts:
        assert p in lines[0], (p, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def ck(checkpoint_factory):
    return checkpoint_factory("hf_text")


@pytest.fixture(scope="module")
def want(ck):
    """transformers' own tokenizer and greedy ``generate`` on the checkpoint: ids, new tokens, text."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(ck))
    ids = tok(TEXT_PROMPT)["input_ids"]
    model = load_upstream("hf", ck)
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=NEW, do_sample=False)
    new = out[0, len(ids):].tolist()
    return {"prompt_ids": ids, "tokens": new, "text": tok.decode(new, skip_special_tokens=True)}


EXPORTS = {"onnx": ["onnx"], "onnx-prefill": ["onnx", "--prefill-chunk", "4"], "torchscript": ["torchscript"],
           "coreml": ["coreml"]}
SUFFIX = {"onnx": ".onnx", "onnx-prefill": ".onnx", "torchscript": ".pt", "coreml": ".mlpackage"}


@pytest.fixture(scope="module")
def exported(ck, tmp_path_factory):
    root = tmp_path_factory.mktemp("text-exports")
    out = {}
    for kind, words in EXPORTS.items():
        path = root / kind / f"model{SUFFIX[kind]}"
        path.parent.mkdir()
        res = invoke([*words, "--checkpoint", ck, "-o", path, "--no-validate"])
        assert res.exit_code == 0, res.output
        assert ("; text: tokenizer.json + tokenizer_config.json + special_tokens_map.json + generation_config.json "
                "(bos 1, eos [2, ") in res.output
        out[kind] = path
    return out


def test_transformers_stops_at_the_fixture_eos(want):
    assert len(want["tokens"]) == TEXT_EOS_AT + 1 < NEW  # the EOS stop is exercised


def test_generate_prompt_equals_transformers(ck, want):
    res = invoke(["generate", "--checkpoint", ck, "--prompt", TEXT_PROMPT, "--max-new-tokens", NEW, "--json"])
    assert res.exit_code == 0, res.output
    got = json.loads(res.stdout)
    assert got == {**want, "stop": "eos"}
    res = invoke(["generate", "--checkpoint", ck, "--prompt", TEXT_PROMPT, "--max-new-tokens", NEW, "--stream"])
    assert res.exit_code == 0 and res.stdout == want["text"] + "\n", res.output


@pytest.mark.parametrize("kind", list(EXPORTS))
def test_run_equals_transformers(ck, want, exported, kind):
    path = exported[kind]
    args = ["run", path, "--prompt", TEXT_PROMPT, "--max-new-tokens", NEW, "--json"]
    if kind == "torchscript":  # its code is loaded only once checked against the checkpoint, or when trusted
        one_error_line(invoke(args), "runs its code", "--checkpoint", "--trust-artifact")
        args += ["--checkpoint", ck]
    res = invoke(args)
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout) == {**want, "stop": "eos"}, kind


def test_run_prefill_graph_path_and_ids(want, exported):
    """The prefill graph's own path runs the pair; --prompt-ids takes the ids; --ignore-eos runs to the end."""
    res = invoke(["run", exported["onnx-prefill"].with_name("model.prefill.onnx"), "--prompt-ids",
                  ",".join(map(str, want["prompt_ids"])), "--max-new-tokens", NEW, "--json", "--ignore-eos"])
    assert res.exit_code == 0, res.output
    got = json.loads(res.stdout)
    assert got["tokens"][:len(want["tokens"])] == want["tokens"] and len(got["tokens"]) == NEW
    assert got["stop"] == "length"


def test_sampling_is_shared_and_seeded(ck, exported):
    """generate and run pick with the same sampler: the same seed gives the same sampled tokens."""
    opts = ["--prompt", TEXT_PROMPT, "--max-new-tokens", 6, "--temperature", "1.5", "--top-k", "20", "--top-p",
            "0.95", "--ignore-eos", "--json"]
    runs = [json.loads(invoke(["generate", "--checkpoint", ck, *opts, "--seed", s]).stdout)["tokens"] for s in (1, 1, 2)]
    assert runs[0] == runs[1] and runs[0] != runs[2]
    art = json.loads(invoke(["run", exported["onnx"], *opts, "--seed", 1]).stdout)["tokens"]
    assert art == runs[0]


def test_pick_greedy_topk_topp_and_distribution():
    from xlstm_export.text.generation import Sampling, pick
    from xlstm_export.text.rng import SplitMix64

    logits = np.array([0.0, 2.0, 1.0, 2.0, -1.0], dtype=np.float32)
    assert pick(logits, Sampling()) == 1  # the first maximum, as torch.argmax
    distinct = np.array([0.0, 2.5, 1.0, 2.0, -1.0], dtype=np.float32)
    assert all(pick(distinct, Sampling(temperature=5, top_k=1, seed=s)) == 1 for s in range(5))
    assert all(pick(distinct, Sampling(temperature=1, top_p=0.01, seed=s)) == 1 for s in range(5))
    tie_rng = SplitMix64(0)  # top-k keeps every token tied with the k-th, as transformers' does
    assert set(pick(logits, Sampling(temperature=5, top_k=1), tie_rng) for _ in range(50)) == {1, 3}
    rng = SplitMix64(0)
    s = Sampling(temperature=0.7)
    counts = np.bincount([pick(logits, s, rng) for _ in range(4000)], minlength=5) / 4000
    p = np.exp(logits / 0.7) / np.exp(logits / 0.7).sum()
    assert np.abs(counts - p).max() < 0.03, (counts, p)
    s = Sampling(temperature=1, top_k=2)
    assert set(pick(logits, s, rng) for _ in range(200)) == {1, 3}
    with pytest.raises(Exception, match="top-p"):
        Sampling(top_p=0)


def test_contract_names_the_text_files_and_they_lie_where_the_rule_says(exported):
    import coremltools as ct

    from xlstm_export.coreml.runner import contract_of
    from xlstm_export.targets import target_for_path

    pkg = exported["coreml"]
    c = contract_of(pkg)["text"]
    assert c["tokenizer"] == "tokenizer.json" and c["bos_token_id"] == 1 and c["pad_token_id"] == 0
    assert c["eos_token_id"][0] == 2 and len(c["eos_token_id"]) == 2
    names = [f["name"] for f in c["files"]]
    for kind, path in exported.items():
        for n, p in target_for_path(path).text_paths(path, names).items():
            assert p.is_file(), (kind, p)
    manifest = json.loads((pkg / "Manifest.json").read_text())
    assert any(e["path"] == "com.xlstm-export/text" for e in manifest["itemInfoEntries"].values())
    spec = ct.models.MLModel(str(pkg), skip_model_load=True).get_spec()  # coremltools reads the package
    assert spec.WhichOneof("Type") == "mlProgram"


@pytest.mark.parametrize("kind", ["onnx-prefill", "torchscript"])
def test_validation_does_not_judge_the_text_files(ck, exported, tmp_path, kind):
    """An artifact carrying a tokenizer validates against a copy of its checkpoint without one (the check that
    it is what xlstm-export writes compares everything but the text entry)."""
    bare = tmp_path / "bare"
    shutil.copytree(ck, bare)
    for n in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json"):
        (bare / n).unlink()
    res = invoke(["validate", exported[kind], "--checkpoint", bare, "--report", tmp_path / "r", "--steps", 2])
    assert res.exit_code == 0 and "validation PASS" in res.output, res.output


def test_a_changed_text_file_is_refused(exported, tmp_path):
    src = exported["onnx"]
    d = tmp_path / "copy"
    shutil.copytree(src.parent, d)
    (d / "model.onnx.tokenizer.json").write_text((d / "model.onnx.tokenizer.json").read_text().replace("cat", "cot"))
    one_error_line(invoke(["run", d / "model.onnx", "--prompt", "the"]), "model.onnx.tokenizer.json",
                   "not the file the artifact was exported with")


def test_checkpoint_without_tokenizer_exports_ids_only(checkpoint_factory, tmp_path):
    out = tmp_path / "m.onnx"
    res = invoke(["onnx", "--checkpoint", checkpoint_factory("hf"), "-o", out, "--no-validate"])
    assert res.exit_code == 0, res.output
    assert sum("no tokenizer.json in the checkpoint" in l for l in res.output.splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.onnx.generation_config.json"]
    one_error_line(invoke(["run", out, "--prompt", "hi"]), "carries no tokenizer.json", "--prompt-ids")
    res = invoke(["run", out, "--prompt-ids", "1,2,3", "--max-new-tokens", 3, "--json"])
    assert res.exit_code == 0 and len(json.loads(res.stdout)["tokens"]) == 3, res.output


@pytest.mark.parametrize("file,damage,says", [
    ("tokenizer.json", "not json", "not a tokenizer.json that the tokenizers library loads"),
    ("tokenizer.json", '{"model": {"type": "BPE", "vocab": 3}}', "not a tokenizer.json"),
    ("tokenizer.json", "\xff", "not UTF-8"),
    ("generation_config.json", "{", "not valid JSON"),
    ("generation_config.json", '{"eos_token_id": 500}', "outside the vocabulary [0, 97)"),
    ("generation_config.json", '{"eos_token_id": "x"}', "must be a token id"),
])
def test_malformed_text_file_is_one_line_and_writes_nothing(ck, tmp_path, file, damage, says):
    d = tmp_path / "ck"
    shutil.copytree(ck, d)
    (d / file).write_bytes(damage.encode("latin-1"))
    out = tmp_path / "out"
    out.mkdir()
    one_error_line(invoke(["onnx", "--checkpoint", d, "-o", out / "m.onnx", "--no-validate"]), file, says)
    assert list(out.iterdir()) == []


# -- Hub ids ------------------------------------------------------------------------------------------------
def _cache(ck: Path, root: Path, repo: str = "tiny-org/tiny-xlstm") -> Path:
    """The huggingface_hub cache layout holding ``ck`` as ``repo`` at main."""
    rev = "0123456789abcdef0123456789abcdef01234567"
    base = root / "hub" / f"models--{repo.replace('/', '--')}"
    shutil.copytree(ck, base / "snapshots" / rev)
    (base / "refs").mkdir()
    (base / "refs" / "main").write_text(rev)
    return root / "hub"


def test_hub_id_offline_from_a_populated_cache(ck, tmp_path, monkeypatch, want):
    hub = _cache(ck, tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    res = invoke(["generate", "--checkpoint", "tiny-org/tiny-xlstm", "--prompt", TEXT_PROMPT, "--max-new-tokens",
                  NEW, "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["tokens"] == want["tokens"]
    out = tmp_path / "m.onnx"
    res = invoke(["onnx", "--checkpoint", "tiny-org/tiny-xlstm", "-o", out, "--no-validate"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "m.onnx.tokenizer.json").is_file()
    one_error_line(invoke(["inspect", "--checkpoint", "tiny-org/tiny-xlstm", "--revision", "v9"]),
                   "tiny-org/tiny-xlstm", "not in the Hugging Face cache", "HF_HUB_OFFLINE", "--revision v9")
    one_error_line(invoke(["inspect", "--checkpoint", "tiny-org/missing"]), "tiny-org/missing",
                   "not in the Hugging Face cache", "hf download tiny-org/missing")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    one_error_line(invoke(["inspect", "--checkpoint", "tiny-org/tiny-xlstm"]), "tiny-org/tiny-xlstm",
                   "HF_HOME / HF_HUB_CACHE")
    one_error_line(invoke(["inspect", "--checkpoint", ck, "--revision", "main"]), "--revision applies to")


def test_hub_unreachable_falls_back_to_the_cache(ck, tmp_path, monkeypatch):
    """Online (no HF_HUB_OFFLINE) with the Hub unreachable: what the cache holds is used; what it lacks is one line."""
    hub = _cache(ck, tmp_path)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # connection refused
    res = invoke(["inspect", "--checkpoint", "tiny-org/tiny-xlstm", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["source"].startswith(str(hub))
    one_error_line(invoke(["inspect", "--checkpoint", "tiny-org/other"]), "tiny-org/other",
                   "the Hub cannot be reached")


def test_python_api_run_and_generate(ck, want, exported):
    import xlstm_export as xe

    pieces = []
    gen = xe.run(exported["onnx"], TEXT_PROMPT, max_new_tokens=NEW, on_text=pieces.append)
    assert (gen.prompt_ids, gen.tokens, gen.text, gen.stop) == (want["prompt_ids"], want["tokens"], want["text"], "eos")
    assert "".join(pieces) == want["text"]
    assert xe.generate(ck, prompt_ids=want["prompt_ids"], max_new_tokens=NEW).tokens == want["tokens"]


# -- Swift --------------------------------------------------------------------------------------------------
def test_swift_package_structure(exported):
    """Checked as text here (tests/test_swift.py compiles and tests it): a SwiftPM package on swift-transformers'
    Tokenizers, the compiled model cached with the async API, async predictions with MLState, compute units from
    the metadata, EOS ids from the generation config, the shared core's sampling, no force unwraps."""
    from xlstm_export.coreml.runner import contract_of
    from xlstm_export.swift import core_sources

    pkg = exported["coreml"]
    folder = pkg.with_name("model-swift")
    assert sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) == sorted(
        ["Package.swift", "README.md", "Sources/XLSTMModel/XLSTMModel.swift",
         *(f"Sources/XLSTMModel/Core/{n}" for n in core_sources())])
    manifest = (folder / "Package.swift").read_text()
    lines = manifest.splitlines()
    assert lines[0] == "// swift-tools-version: 6.0" and "generated by xlstm-export" in lines[1]
    assert 'url: "https://github.com/huggingface/swift-transformers", from: "1.0.0"' in manifest
    assert '.product(name: "Tokenizers", package: "swift-transformers")' in manifest
    assert '"Transformers"' not in manifest
    assert ".iOS(.v18), .macOS(.v15)" in manifest
    src = (folder / "Sources/XLSTMModel/XLSTMModel.swift").read_text()
    eos = contract_of(pkg)["text"]["eos_token_id"]
    for needle in ["import Tokenizers", "AutoTokenizer.from(modelFolder: folder)",
                   "try await MLModel.compileModel(at: packageURL)", "try await MLModel.load(contentsOf: compiled",
                   "await model.prediction(from: input, using: state)", "SHA256.hash(data: manifest)",
                   ".cachesDirectory", "public static let defaultComputeUnits: MLComputeUnits = .all",
                   f"public static let eosTokenIds: Set<Int> = [{', '.join(map(str, sorted(eos)))}]",
                   "Generation.run(promptIds, model: &stepper, options: options, eosTokenIds: Self.eosTokenIds",
                   '"Data/com.xlstm-export/text"', "public static let vocabSize = 97"]:
        assert needle in src, needle
    code = re.sub(r'"(?:[^"\\]|\\.)*"', '""', "\n".join(l.split("//")[0] for l in src.splitlines()))
    assert not re.search(r"[\w)\]]!(?!=)", code), re.findall(r".{20}[\w)\]]!(?!=).{10}", code)  # no force unwraps
    assert "try!" not in code and "as!" not in code
    assert src.count("{") == src.count("}") and src.count("(") == src.count(")")
