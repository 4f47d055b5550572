"""Tiny upstream checkpoints, built in the test session with fixed seeds, saved in native formats.

``FIXTURES[name](dir) -> Path`` builds one into ``dir`` and returns the checkpoint path;
``load_upstream(name, path)`` loads it back with the upstream library (eval mode, float32,
CPU-safe kernels; hybrids always with the vanilla sLSTM backend) for parity tests.

Upstream inits leave some weights zero (sLSTM recurrent kernels, mLSTM gate weights, LayerNorm
offsets); every parameter gets small seeded noise on top so that every weight matters.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Callable


SEED = 1234
NOISE = 0.05
VOCAB = 97

# kernels that run on CPU (mlstm_kernels' native torch implementations)
CPU_KERNELS = dict(chunkwise_kernel="chunkwise--native_autograd", sequence_kernel="native_sequence__native",
                   step_kernel="native", mode="inference", return_last_states=True)


class FixtureUnavailable(Exception):
    """The installed upstream cannot build this fixture (the reason says why)."""


def _perturb(model, seed: int) -> None:
    import torch

    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for _, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
            p.add_(torch.randn(p.shape, generator=g, dtype=torch.float32).to(p.dtype) * NOISE)


def _state_dict(model) -> dict:
    return {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}


# -- transformers --------------------------------------------------------------------------------
def _hf_model(**overrides):
    import torch
    from transformers import xLSTMConfig, xLSTMForCausalLM

    torch.manual_seed(SEED)
    kw = dict(vocab_size=VOCAB, hidden_size=128, num_heads=2, num_hidden_layers=2, **CPU_KERNELS)
    kw.update(overrides)
    model = xLSTMForCausalLM(xLSTMConfig(**kw))
    _perturb(model, SEED)
    return model.eval()


def build_hf(d: Path) -> Path:
    _hf_model().save_pretrained(d)
    return d


TEXT_PROMPT = "the cat sat on the mat"
TEXT_CORPUS = ["the cat sat on the mat", "a dog ran to the park", "the sun is warm today", "cats and dogs play",
               "on the mat the cat sleeps", "we ran to the sea"] * 4
TEXT_EOS_AT = 3  # the fixture's second EOS id is the greedy continuation's 4th token (both stop there)


def build_tokenizer(d: Path, vocab_size: int = 90):
    """A tiny BPE tokenizer made with ``tokenizers`` (Metaspace, BOS prepended), saved as tokenizer.json +
    tokenizer_config.json + special_tokens_map.json; returns the Tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "<s>", "</s>", "<unk>"])
    tok.train_from_iterator(TEXT_CORPUS, trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    d.mkdir(parents=True, exist_ok=True)
    tok.save(str(d / "tokenizer.json"))
    specials = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}
    (d / "tokenizer_config.json").write_text(json.dumps({**specials, "tokenizer_class": "PreTrainedTokenizerFast",
                                                         "model_max_length": 4096}, indent=2))
    (d / "special_tokens_map.json").write_text(json.dumps(specials, indent=2))
    return tok


def build_hf_text(d: Path) -> Path:
    """The ``hf`` model with a tokenizer (``build_tokenizer``) and a generation config whose EOS ids are
    ``</s>`` and the ``TEXT_EOS_AT``-th greedy token after ``TEXT_PROMPT`` (so generation stops at EOS)."""
    import torch

    model = _hf_model()
    model.save_pretrained(d)
    tok = build_tokenizer(d)
    ids = tok.encode(TEXT_PROMPT).ids
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=TEXT_EOS_AT + 1, do_sample=False,
                             eos_token_id=None, pad_token_id=0)
    eos = int(out[0, len(ids) + TEXT_EOS_AT])
    (d / "generation_config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": [2, eos],
                                                          "pad_token_id": 0}, indent=2))
    return d


def build_hf_sharded(d: Path) -> Path:
    _hf_model().save_pretrained(d, max_shard_size="300KB")
    if not (d / "model.safetensors.index.json").exists():
        raise AssertionError("save_pretrained did not shard the hf_sharded fixture")
    return d


def build_hf_fused(d: Path) -> Path:
    """``weight_mode: fused``. transformers cannot initialise a fused xLSTM (its ``_init_weights``
    fails on ``ifgate_preact``), so the single-mode model's weights are fused with upstream's own
    ``convert_single_weights_to_fused_weights``: canonical weights equal the ``hf`` fixture's."""
    from safetensors.torch import save_file
    from xlstm.xlstm_large.utils import convert_single_weights_to_fused_weights

    model = _hf_model()
    model.save_pretrained(d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["weight_mode"] = "fused"
    (d / "config.json").write_text(json.dumps(cfg, indent=2))
    sd = convert_single_weights_to_fused_weights(_state_dict(model))
    save_file({k: v.contiguous() for k, v in sd.items()}, str(d / "model.safetensors"), metadata={"format": "pt"})
    return d


def build_hf_tied(d: Path) -> Path:
    model = _hf_model(tie_word_embeddings=True)
    if model.lm_head.weight is not model.backbone.embeddings.weight:
        import transformers

        raise FixtureUnavailable(
            f"transformers {transformers.__version__}: xLSTMForCausalLM does not tie lm_head to the "
            f"embeddings (no _tied_weights_keys), so tie_word_embeddings=True has no effect")
    model.save_pretrained(d)
    return d


# -- xlstm_large ---------------------------------------------------------------------------------
def _large_config(**overrides):
    from xlstm.xlstm_large.model import xLSTMLargeConfig

    kw = dict(embedding_dim=64, num_heads=2, num_blocks=2, vocab_size=VOCAB, **CPU_KERNELS)
    kw.update(overrides)
    return xLSTMLargeConfig(**kw)


def _build_large(d: Path, **overrides) -> Path:
    import dataclasses

    import torch
    import yaml
    from safetensors.torch import save_file
    from xlstm.xlstm_large.model import xLSTMLarge

    torch.manual_seed(SEED)
    cfg = _large_config(**overrides)
    model = xLSTMLarge(cfg)
    _perturb(model, SEED)
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.yaml").write_text(yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False))
    save_file(_state_dict(model), str(d / "model.safetensors"))
    return d


def build_large(d: Path) -> Path:
    return _build_large(d)


def build_large_bias(d: Path) -> Path:
    return _build_large(d, use_bias=True, add_out_norm=False, ffn_proj_factor=1.5)


# -- xLSTMLMModel --------------------------------------------------------------------------------
MLSTM_BLOCK = {"mlstm": {"conv1d_kernel_size": 4, "qkv_proj_blocksize": 4, "num_heads": 4}}
SLSTM_BLOCK = {"slstm": {"backend": "vanilla", "num_heads": 4, "conv1d_kernel_size": 4,
                         "bias_init": "powerlaw_blockdependent"},
               "feedforward": {"proj_factor": 1.3, "act_fn": "gelu"}}


def hybrid_config_dict(name: str) -> dict:
    base = {"vocab_size": VOCAB, "context_length": 32, "embedding_dim": 64}
    if name in ("hybrid", "hybrid_pt", "hybrid_cuda_layout"):
        cfg = dict(base, mlstm_block=copy.deepcopy(MLSTM_BLOCK), slstm_block=copy.deepcopy(SLSTM_BLOCK),
                   num_blocks=3, slstm_at=[1])
        if name == "hybrid_pt":
            cfg["tie_weights"] = True
        return cfg
    if name == "hybrid_slstm_only":
        s = copy.deepcopy(SLSTM_BLOCK)
        s["feedforward"]["act_fn"] = "swish"
        return dict(base, mlstm_block=None, slstm_block=s, num_blocks=2, slstm_at="all")
    if name == "hybrid_mlstm_only":
        return dict(base, mlstm_block=copy.deepcopy(MLSTM_BLOCK), num_blocks=2, slstm_at=[])
    raise KeyError(name)


def make_hybrid_model(cfg: dict):
    """Build upstream's xLSTMLMModel from a README-style config dict, exactly as upstream does
    (dacite strict), with every sLSTM on the vanilla backend."""
    from dacite import Config, from_dict
    from xlstm import xLSTMLMModel, xLSTMLMModelConfig

    cfg = copy.deepcopy(cfg)
    if cfg.get("slstm_block"):
        cfg["slstm_block"].setdefault("slstm", {})["backend"] = "vanilla"
    config = from_dict(data_class=xLSTMLMModelConfig, data=cfg, config=Config(strict=True))
    return xLSTMLMModel(config)


def slstm_cells(model):
    from xlstm.blocks.slstm.block import sLSTMBlock

    return {i: b.xlstm.slstm_cell for i, b in enumerate(model.xlstm_block_stack.blocks) if isinstance(b, sLSTMBlock)}


def convert_slstm_layout(model, sd: dict, to: str) -> dict:
    """Re-store the sLSTM recurrent kernels / biases of ``sd`` (vanilla layout <-> cuda layout) with
    upstream's own ext2int / int2ext methods (``sLSTMCell_cuda(..., skip_backend_init=True)``)."""
    from xlstm.blocks.slstm.cell import sLSTMCell_cuda

    sd = dict(sd)
    for i, cell in slstm_cells(model).items():
        cuda = sLSTMCell_cuda(copy.deepcopy(cell.config), skip_backend_init=True)
        src, dst = (cell, cuda) if to == "cuda" else (cuda, cell)
        p = f"xlstm_block_stack.blocks.{i}.xlstm.slstm_cell."
        sd[p + "_recurrent_kernel_"] = dst._recurrent_kernel_ext2int(
            src._recurrent_kernel_int2ext(sd[p + "_recurrent_kernel_"])).contiguous()
        sd[p + "_bias_"] = dst._bias_ext2int(src._bias_int2ext(sd[p + "_bias_"])).contiguous()
    return sd


def _build_hybrid(name: str, d: Path) -> Path:
    import torch
    import yaml
    from safetensors.torch import save_file

    torch.manual_seed(SEED)
    cfg = hybrid_config_dict(name)
    model = make_hybrid_model(cfg)
    _perturb(model, SEED)
    d.mkdir(parents=True, exist_ok=True)
    if name == "hybrid_pt":
        (d / "config.json").write_text(json.dumps(cfg, indent=2))
        torch.save(model.state_dict(), d / "model.pt")
        return d
    sd = _state_dict(model)
    if name == "hybrid_cuda_layout":
        cfg["slstm_block"]["slstm"]["backend"] = "cuda"
        sd = convert_slstm_layout(model, sd, "cuda")
    (d / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    save_file(sd, str(d / "model.safetensors"))
    return d


def _hybrid_builder(name: str) -> Callable[[Path], Path]:
    def build(d: Path) -> Path:
        return _build_hybrid(name, d)

    build.__name__ = f"build_{name}"
    return build


FIXTURES: dict[str, Callable[[Path], Path]] = {
    "hf": build_hf,
    "hf_sharded": build_hf_sharded,
    "hf_fused": build_hf_fused,
    "hf_tied": build_hf_tied,
    "large": build_large,
    "large_bias": build_large_bias,
    "hf_text": build_hf_text,
    **{n: _hybrid_builder(n) for n in ("hybrid", "hybrid_slstm_only", "hybrid_mlstm_only", "hybrid_pt",
                                       "hybrid_cuda_layout")},
}


# -- loading back with upstream ------------------------------------------------------------------
def load_upstream(name: str, path: Path):
    import torch

    path = Path(path)
    if name.startswith("hf"):
        from transformers import xLSTMForCausalLM

        from unittest import mock

        from transformers.models.xlstm.modeling_xlstm import xLSTMPreTrainedModel

        # transformers' _init_weights crashes on fused gates; loading overwrites every weight anyway
        with mock.patch.object(xLSTMPreTrainedModel, "_init_weights", lambda self, module: None):
            model = xLSTMForCausalLM.from_pretrained(path, dtype=torch.float32)
    elif name.startswith("large"):
        from xlstm.xlstm_large.from_pretrained import load_from_pretrained

        model = load_from_pretrained(path, return_last_states=True, chunkwise_kernel_name=CPU_KERNELS["chunkwise_kernel"],
                                     sequence_kernel_name=CPU_KERNELS["sequence_kernel"],
                                     step_kernel_name=CPU_KERNELS["step_kernel"], backend_mode="inference")
    elif name.startswith("hybrid"):
        import yaml

        cfg_file = path / "config.yaml" if (path / "config.yaml").exists() else path / "config.json"
        cfg = yaml.safe_load(cfg_file.read_text())
        backend = (cfg.get("slstm_block") or {}).get("slstm", {}).get("backend", "cuda")
        model = make_hybrid_model(cfg)
        if (path / "model.safetensors").exists():
            from safetensors.torch import load_file

            sd = load_file(str(path / "model.safetensors"))
        else:
            sd = torch.load(next(path.glob("*.pt")), map_location="cpu", weights_only=True)
        if backend == "cuda" and slstm_cells(model):
            sd = convert_slstm_layout(model, sd, "vanilla")
        model.load_state_dict(sd)
    else:
        raise KeyError(name)
    return model.float().eval()


def load_graph(checkpoint_factory, name: str, root: Path):
    """The named fixture's graph; ``profile``: the ``hybrid`` fixture saved in our profile format (JSON
    profile + canonical safetensors) under ``root`` and loaded back, so the profile frontend is exercised."""
    from xlstm_export.frontends import load_checkpoint
    from xlstm_export.frontends.profile import save_profile_checkpoint

    if name != "profile":
        return load_checkpoint(checkpoint_factory(name))
    d = root / "profile-checkpoint"
    if not d.exists():
        save_profile_checkpoint(load_checkpoint(checkpoint_factory("hybrid")), d)
    return load_checkpoint(d)


def artifact_moved(art, src: Path, dst: Path):
    """``art`` (an ``Artifact``) with its paths under folder ``src`` moved to folder ``dst``."""
    import dataclasses

    def move(p):
        return dst / Path(p).relative_to(src)

    return dataclasses.replace(art, path=move(art.path), files=tuple(move(p) for p in art.files))


def copy_of(art, folder: Path):
    """A private copy of a cached artifact (``conftest.exports``) for a test that modifies, moves or deletes it:
    everything in the artifact's folder (the artifact, its external data, Swift package, text files) copied into
    ``folder`` (created); returns the Artifact of the copy."""
    import shutil

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    src = Path(art.path).parent
    for p in src.iterdir():
        (shutil.copytree if p.is_dir() else shutil.copy2)(p, folder / p.name)
    return artifact_moved(art, src, folder)
