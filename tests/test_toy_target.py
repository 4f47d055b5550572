"""A target is one package plus one registration: the toy target of ``tests/toy_target`` is registered here
and exported, validated and run through the CLI and the API, with no generic module of xlstm_export knowing
it (``test_target_boundaries.py`` checks they name no target)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

import xlstm_export as xe
from xlstm_export import targets
from xlstm_export.cli import main

from toy_target.target import TARGET


@pytest.fixture()
def toy():
    targets.register(TARGET)  # the one registration
    yield TARGET
    targets.unregister(TARGET.name)
    main.commands.pop(TARGET.name, None)


def test_the_toy_target_exports_validates_and_runs_through_the_api(toy, checkpoint_factory, tmp_path):
    ckpt = checkpoint_factory("hf_text")
    art = xe.export(ckpt, "npz", tmp_path / "m.npz")
    assert art.kind == "npz" and art.files[0] == tmp_path / "m.npz"
    assert (tmp_path / "m.npz.tokenizer.json").is_file()  # the text files beside it, by the default rule
    res = xe.validate(art.path, ckpt, steps=3, prompts=2)
    assert res.passed, res.summary_line()
    assert res.report["artifact"]["kind"] == "npz"
    ref = xe.generate(ckpt, "the cat", max_new_tokens=4, ignore_eos=True)
    got = xe.run(art.path, "the cat", max_new_tokens=4, ignore_eos=True)  # its own contract and tokenizer
    assert got.tokens == ref.tokens and got.text == ref.text
    with pytest.raises(xe.errors.OutputError, match="already exists"):
        xe.export(ckpt, "npz", tmp_path / "m.npz")
    (tmp_path / "x.npz").write_bytes(b"not ours")
    with pytest.raises(xe.errors.OutputError, match="not an artifact of xlstm-export"):
        xe.export(ckpt, "npz", tmp_path / "x.npz", force=True)
    assert xe.export(ckpt, "npz", tmp_path / "m.npz", force=True).path == art.path


def test_the_toy_target_has_its_cli_command(toy, checkpoint_factory, tmp_path):
    ckpt = checkpoint_factory("hf_text")
    cli = CliRunner()
    res = cli.invoke(main, ["--help"])
    assert " npz " in res.output
    res = cli.invoke(main, ["npz", "--checkpoint", str(ckpt), "-o", str(tmp_path / "m.npz"), "--steps", "2",
                            "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output.strip().splitlines()[-1])
    assert out["artifact"]["kind"] == "npz" and out["validation"]["passed"] is True
    res = cli.invoke(main, ["run", str(tmp_path / "m.npz"), "--prompt-ids", "1,5,7", "--max-new-tokens", "3",
                            "--ignore-eos", "--json"])
    assert res.exit_code == 0, res.output
    assert len(json.loads(res.output.strip().splitlines()[-1])["tokens"]) == 3
    with np.load(tmp_path / "m.npz", allow_pickle=False) as z:
        assert "embedding.weight" in z.files or any(k.startswith("embedding") for k in z.files)
