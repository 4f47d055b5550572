"""The target registry: every export target, registered once; the CLI, the demo, validation, the
benchmarks and the reliability tests iterate it. Importing it loads no target package.

    TARGETS["onnx"]                         # a Target: name, suffixes, options, kinds, emit, runner
    artifact_kind("onnx-scan")              # an artifact kind: the target plus the options selecting it
    target_for_path("model.mlpackage")      # by suffix (what ``validate`` opens an artifact with)

A target is a package exposing an options dataclass, ``emit(graph, options, out)`` and a runner
factory; registering it is one :func:`register` call below. Each artifact *kind* a target writes (ONNX
writes ``onnx`` step graphs and ``onnx-scan`` Scan graphs) carries its tolerance per precision and
the lowering modes it needs (the parity-matrix test checks every kind x block kind x mode).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

from .errors import ArtifactError, RegistryError, UnsupportedError
from .tolerances import BF16, FP16, FP32, INT8, Tolerance


@dataclass(frozen=True)
class Option:
    """A target-specific export option: one CLI flag and one field of the target's options dataclass."""

    flag: str  # "--precision"
    dest: str  # the options field: "precision"
    help: str
    default: Any = None
    choices: Tuple[str, ...] = ()  # a choice option
    is_flag: bool = False
    min: Optional[int] = None  # an int option's range
    max: Optional[int] = None
    text: bool = False  # a free-text option (else an int, a choice or a flag)


@dataclass(frozen=True)
class Kind:
    """An artifact kind: what a target writes with some of its options fixed (``onnx-scan`` = onnx, scan)."""

    name: str
    target: str
    fixed: Mapping[str, Any]  # options that select this kind
    tolerances: Mapping[str, Tolerance]  # by precision
    modes: Tuple[str, ...]  # lowering modes it is built from (empty: built from the reference module)
    demo_precision: str
    filename: str  # what the demo calls its file
    sweep: bool = True  # exported by what sweeps the registry (demo, parity matrix, reliability); else tested alone

    def cli_words(self) -> list:
        """The CLI words that export this kind: ``["onnx", "--scan"]``, ``["onnx", "--prefill-chunk", "8"]``."""
        words = [self.target]
        for f, v in self.fixed.items():
            if v is True:
                words.append(f"--{f.replace('_', '-')}")
            elif v not in (False, None):
                words += [f"--{f.replace('_', '-')}", str(v)]
        return words

    def emit(self, graph, out: str | os.PathLike, **options):
        """Export ``graph`` as this kind (``options`` are the target's, e.g. ``precision="fp16"``)."""
        return TARGETS[self.target].emit(graph, out, **{**options, **self.fixed})


@dataclass(frozen=True)
class Target:
    name: str  # CLI command and artifact kind
    summary: str  # the command's help line
    suffixes: Tuple[str, ...]  # artifact path suffixes; the first is what exports write
    package: str  # "xlstm_export.coreml": exposes ``emit`` and the options class
    options_class: str
    runner: str  # "module:function" (path, graph, **opts) -> Runner
    requires: Tuple[str, ...]  # third-party modules it needs
    extra: str  # the pip extra that installs them
    options: Tuple[Option, ...]
    kinds: Tuple[Kind, ...] = field(default=())
    contract_reader: str = ""  # "module:function" (path) -> the artifact's I/O contract, without running it
    runs_code: bool = False  # loading an artifact runs code it carries (TorchScript): never unchecked untrusted

    def contract_graph(self, path: Path):
        """A weightless graph from the artifact's own contract profile: the state contract and vocabulary its
        runner needs when no checkpoint is at hand (``xlstm-export run``)."""
        from .graphs import Graph, WeightStore, config_from_profile

        self._require()
        contract = _resolve(self.contract_reader)(Path(path))
        try:
            config, blocks = config_from_profile(contract["profile"], f"{path}: contract profile")
        except (KeyError, TypeError) as e:
            raise ArtifactError(f"{path}: its contract's profile is not a model profile ({e})") from None
        return Graph(config, tuple(blocks), WeightStore({}), source=f"{path} (contract profile)")

    @property
    def compresses(self) -> bool:
        """Whether the target takes the compression options of ``lowering/quant.py`` (``_quant_options``)."""
        return any(o.dest == "quant_method" for o in self.options)

    def _require(self) -> None:
        for mod in self.requires:  # installed? (found, not imported: coremltools' import logs noise on Linux)
            try:
                found = importlib.util.find_spec(mod) is not None
            except (ImportError, ValueError):  # a finder refusing it; a module entry of None
                found = False
            if not found:
                raise UnsupportedError(f"{self.name}: needs the {mod!r} package; install it with "
                                       f"pip install 'xlstm-export[{self.extra}]'") from None

    def make_options(self, **values):
        self._require()
        cls = getattr(importlib.import_module(self.package), self.options_class)
        known = {f for f in cls.__dataclass_fields__}
        bad = sorted(set(values) - known)
        if bad:
            raise UnsupportedError(f"{self.name}: unknown option(s) {bad}; known: {sorted(known)}")
        return cls(**values)

    def emit(self, graph, out: str | os.PathLike, **options):
        """Write the artifact of ``graph`` at ``out``; returns the emitter's ``Artifact``. The compression
        options (``quantize``, ``block_size``, ... : ``compress.QUANT_FIELDS``) become the emitter's
        ``compression`` (calibrated first when GPTQ is asked for)."""
        from .compress import QUANT_FIELDS, compression_for

        # the targets whose weights go through lowering/quant.py (ExecuTorch has its own --quantize)
        quant = {k: options.pop(k) for k in QUANT_FIELDS if k in options} if self.compresses else {}
        if quant:
            self.make_options(**options)  # the other options are checked before any calibration
            options["compression"] = compression_for(graph, self.name, **quant)
        opts = self.make_options(**options)
        return importlib.import_module(self.package).emit(graph, opts, out)

    def open_runner(self, path: Path, graph, **opts):
        self._require()
        return _resolve(self.runner)(path, graph, **opts)


def describe_artifact(art) -> str:
    """The line an export prints: files, kind, precision, batch, states, the emitter's key figures, and the
    text files the artifact carries (or that it takes token ids only)."""
    c = art.contract
    B = c["inputs"][0]["shape"][0]
    n, extra = len(c["states"]), len(c.get("extra_states", []))
    parts = [art.kind, art.precision, f"batch {B}",
             f"{n} states" + (f" in {n + extra} fp16 buffers" if extra else "")]
    for key, label in (("nodes", "nodes"), ("ops_per_step", "ops per step")):
        if key in art.stats:
            parts.append(f"{art.stats[key]} {label}")
    text = c.get("text") or {}
    if text.get("tokenizer"):
        ids = [f"{k} {v}" for k, v in (("bos", text.get("bos_token_id")), ("eos", text.get("eos_token_id") or None),
                                       ("pad", text.get("pad_token_id"))) if v is not None]
        parts.append("text: " + " + ".join(f["name"] for f in text["files"]) + (f" ({', '.join(ids)})" if ids else ""))
    else:  # a checkpoint without a tokenizer still exports, and the line says so
        parts.append("no tokenizer.json in the checkpoint: token ids only")
    return f"wrote {' + '.join(str(f) for f in art.files)} ({'; '.join([', '.join(parts[:-1]), parts[-1]])})"


def _resolve(ref: str) -> Callable:
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


TARGETS: Dict[str, Target] = {}
KINDS: Dict[str, Kind] = {}


def swept_kinds() -> Dict[str, Kind]:
    """The kinds the demo, the parity matrix and the reliability sweep export (``Kind.sweep``)."""
    return {n: k for n, k in KINDS.items() if k.sweep}


def register(target: Target) -> Target:
    if target.name in TARGETS:
        raise RegistryError(f"target {target.name!r} is already registered")
    for s in target.suffixes:
        owner = next((t.name for t in TARGETS.values() if s in t.suffixes), None)
        if owner:
            raise RegistryError(f"target {target.name!r}: suffix {s!r} already belongs to {owner!r}")
    for k in target.kinds:
        if k.name in KINDS:
            raise RegistryError(f"artifact kind {k.name!r} is already registered")
    TARGETS[target.name] = target
    KINDS.update({k.name: k for k in target.kinds})
    return target


def artifact_kind(name: str) -> Kind:
    try:
        return KINDS[name]
    except KeyError:
        raise UnsupportedError(f"unknown artifact kind {name!r}; registered: {sorted(KINDS)}") from None


def target_for_path(path: str | os.PathLike) -> Target:
    p = Path(path)
    for t in TARGETS.values():
        if p.suffix.lower() in t.suffixes:
            return t
    known = ", ".join(f"{s} ({t.name})" for t in TARGETS.values() for s in t.suffixes)
    raise ArtifactError(f"{p}: unknown artifact kind from its suffix {p.suffix or '(none)'!r}; expected one of {known}")


def check_suffix(target: str, out: str | os.PathLike) -> None:
    """An export's output path must carry its target's suffix (checked before any work)."""
    t, p = TARGETS[target], Path(out)
    if p.suffix.lower() not in t.suffixes:
        raise UnsupportedError(f"{p}: a {target} artifact's path must end in {' or '.join(t.suffixes)}")


def _kind(name: str, target: str, tolerances: Mapping[str, Tolerance], modes: Tuple[str, ...], demo_precision: str,
          filename: str, sweep: bool = True, **fixed) -> Kind:
    return Kind(name, target, fixed, tolerances, modes, demo_precision, filename, sweep)


_BATCH = Option("--batch-size", "batch_size", "Static batch size of the artifact.", 1, min=1)
MAX_PREFILL_CHUNK = 1024  # lowering.MAX_PREFILL_CHUNK (a test ties them; importing lowering here would load numpy)
DEMO_PREFILL_CHUNK = 8  # the demo's and the parity matrix's chunk: its prompts are and are not multiples of it


def _quant_options(schemes: Tuple[str, ...], what: str) -> Tuple[Option, ...]:
    return (Option("--quantize", "quantize", f"Compress weights: {what}. Gate projections, norms, conv, biases stay "
                   "full precision; the embedding int8 (docs/COMPRESSION.md has the measured policy).", "none",
                   choices=("none",) + schemes),
            Option("--block-size", "block_size", "Weights per scale along the input axis (int8/int4).", 32, min=8,
                   max=4096),
            Option("--keep", "keep", "Comma-separated name patterns (fnmatch, canonical names as `inspect` lists "
                   "them) of weights kept at full precision, e.g. 'blocks.0.*,lm_head.weight'.", text=True),
            Option("--quant-method", "quant_method", "auto: GPTQ with --calibration, else round-to-nearest with a "
                   "per-block clipping search.", "auto", choices=("auto", "rtn", "gptq")),
            Option("--calibration", "calibration", "Calibration text for GPTQ (tokenized with the checkpoint's "
                   "tokenizer.json), or a .ids file of token ids.", text=True),
            Option("--asymmetric", "asymmetric", "int4 with a zero point per block (codes 0..15) instead of "
                   "symmetric codes -8..7.", False, is_flag=True))


def _prefill_options(what: str) -> Tuple[Option, ...]:
    return (Option("--prefill-chunk", "prefill_chunk", f"Also {what} of T prompt tokens per call (chunkwise mLSTM, "
                   f"unrolled sLSTM), same states; prompts run as floor(L/T) prefill calls + L mod T steps.",
                   None, min=1, max=MAX_PREFILL_CHUNK),
            Option("--last-logits-only", "last_logits_only", "The prefill returns the logits of the chunk's last "
                   "position only (B, 1, V): what generation needs, T times less head work.", False, is_flag=True))

register(Target(
    "coreml", "Export a stateful Core ML decode step (.mlpackage, iOS 18 / macOS 15) and its Swift snippet.",
    (".mlpackage",), "xlstm_export.coreml", "CoreMLOptions", "xlstm_export.coreml.verify:open_runner",
    ("coremltools",), "coreml",
    (Option("--precision", "precision", "fp16: fp16 weights and matmuls, fp32 residual stream and cell math; fp32: all "
            "fp32. States are fp16 either way (Core ML).", "fp16", choices=("fp16", "fp32")),
     Option("--batch-size", "batch_size", "Fixed batch size (Core ML states have a fixed shape).", 1, min=1),
     Option("--compute-units", "compute_units", "Recorded in the package metadata; what validation on macOS runs on.",
            "all", choices=("all", "cpu_and_gpu", "cpu_only", "cpu_and_ne")),
     *_prefill_options("write a 'prefill' function (multifunction package, weights shared)"),
     *_quant_options(("int8", "int4", "lut4", "lut6"), "int8/int4 per block (constexpr_blockwise_shift_scale) "
                     "or 16/64-entry palettes per row (constexpr_lut_to_dense), iOS 18"),
     Option("--author", "author", "Package metadata: author (default: xlstm-export and its version).", text=True),
     Option("--license", "license", "Package metadata: license (default: the checkpoint's, from its README's "
            "'license:' front matter, else 'same as the source checkpoint').", text=True),
     Option("--version", "version", "Package metadata: model version string (default 1.0).", text=True),
     Option("--description", "description", "Package metadata: short description (default: what the package "
            "computes and how to feed it).", text=True)),
    (_kind("coreml", "coreml", {"fp16": FP16, "fp32": FP32}, ("step",), "fp16", "model.mlpackage"),
     _kind("coreml-prefill", "coreml", {"fp16": FP16, "fp32": FP32}, ("step", "prefill"), "fp16",
           "model.prefill.mlpackage", prefill_chunk=DEMO_PREFILL_CHUNK)), contract_reader="xlstm_export.coreml.runner:contract_of"))

register(Target(
    "onnx", "Export an ONNX graph for ONNX Runtime: the decode step (Core ML EP: one partition) or --scan.",
    (".onnx",), "xlstm_export.onnx", "OnnxOptions", "xlstm_export.onnx.verify:open_runner",
    ("onnx", "onnxruntime"), "onnx",
    (Option("--scan", "scan", "The Scan sequence graph (input_ids (B, T), T dynamic) instead of the one-token decode "
            "step.", False, is_flag=True),
     _BATCH,
     Option("--precision", "precision", "Weights and activations; norms, recurrent cells and states stay fp32.", "fp32",
            choices=("fp32", "fp16")),
     Option("--opset", "opset", "ONNX opset (17..26; GELU FFNs need 20; ORT 1.31 loads <= 26).", 20, min=17, max=26),
     *_prefill_options("write <stem>.prefill.onnx, a static graph (weights in one data file with the step's)"),
     *_quant_options(("int8", "int4"), "int8/int4 per block"),
     Option("--quantize-format", "quantize_format", "matmulnbits: com.microsoft MatMulNBits (ORT CPU and mobile, "
            "fast int4); qdq: blocked DequantizeLinear -> MatMul (opset 21). ORT's Core ML EP takes neither "
            "(docs/COMPRESSION.md): on Apple devices use the coreml target.", "matmulnbits",
            choices=("matmulnbits", "qdq"))),
    (_kind("onnx", "onnx", {"fp32": FP32, "fp16": FP16}, ("step",), "fp32", "model.onnx", scan=False),
     _kind("onnx-scan", "onnx", {"fp32": FP32, "fp16": FP16}, ("step",), "fp32", "model.onnx", scan=True),
     _kind("onnx-prefill", "onnx", {"fp32": FP32, "fp16": FP16}, ("step", "prefill"), "fp32", "model.onnx",
           prefill_chunk=DEMO_PREFILL_CHUNK)), contract_reader="xlstm_export.onnx.runner:contract_of"))

# Quantized programs (precision = the scheme) are judged against the eager module they were exported from:
# the same quantized weights, activations quantized to int8 per token the same way (validation/validate.py).
# What still differs is int8 activation rounding: where an activation sits within fp32 rounding of an int8
# step, summation order (and the reference's chunkwise prefill against the program's calls) tips it one
# step, and the tipped steps compound over blocks and tokens. Measured against their modules: hf-recall
# 8da4w 4.4e-6 and 8da8w 2.4e-3 of max |logit|; the trained LM (pylm), step programs 8da4w 1.1e-2 and 8da8w
# 1.0e-2, prefill programs with prompts up to 197 tokens 3.5e-2 (8da4w all-int4) and 2.4e-2 (8da8w; min
# cosine 0.99984): within the int8 entry for either scheme.
_ET_TOLERANCES = {"fp32": FP32, "fp16": FP16, "8da8w": INT8, "8da4w": INT8}

register(Target(
    "executorch", "Export an ExecuTorch program (.pte): the decode step (and --prefill-chunk T) lowered to XNNPACK or "
    "the Core ML delegate.",
    (".pte",), "xlstm_export.executorch", "ExecuTorchOptions", "xlstm_export.executorch.verify:open_runner",
    ("executorch",), "executorch",
    (Option("--backend", "backend", "xnnpack: CPU (Android, iOS, Linux, macOS), fp32, runs here; coreml: the Core ML "
            "delegate (iOS 18 / macOS 15), fp16, runs only on macOS.", "xnnpack", choices=("xnnpack", "coreml")),
     _BATCH,
     Option("--prefill-chunk", "prefill_chunk", "Also a 'prefill' method of T prompt tokens per call (the reference's "
            "chunkwise form), same states; prompts run as floor(L/T) prefill calls + L mod T steps.", None, min=1,
            max=MAX_PREFILL_CHUNK),
     Option("--quantize", "quantize", "XNNPACK only: linear weights int8 per channel (8da8w) or int4 in groups "
            "(8da4w; each block's out_proj and ffn.down int8), activations int8 per token at run time (torchao); "
            "states and cell math stay fp32.", "none",
            choices=("none", "8da8w", "8da4w")),
     Option("--group-size", "group_size", "8da4w: input channels per int4 group (default 32; XNNPACK needs a "
            "multiple of 32 that divides each quantized weight's input dim).", None, min=1, max=1 << 20),
     Option("--keep", "keep", "With --quantize: comma-separated patterns (fnmatch, canonical weight names as "
            "'inspect' shows them) of linear weights kept fp32, replacing the default '*.igate.*,*.fgate.*,"
            "lm_head.*' (the exponential gates' projections and the LM head); 'none' quantizes them all.",
            text=True)),
    # executorch-prefill (the prefill method) is not swept: each .pte export spends ~30 s in XNNPACK
    # lowering; tests/executorch covers it.
    (_kind("executorch", "executorch", _ET_TOLERANCES, (), "fp32", "model.pte"),
     _kind("executorch-prefill", "executorch", _ET_TOLERANCES, (), "fp32", "model.prefill.pte",
           prefill_chunk=DEMO_PREFILL_CHUNK, sweep=False)), contract_reader="xlstm_export.executorch.runner:contract_of"))

register(Target(
    "torchscript", "Export a scripted module: forward, init_states, forward_with_states, generate_greedy.",
    (".pt", ".ts"), "xlstm_export.torchscript", "TorchScriptOptions", "xlstm_export.torchscript.trust:open_runner",
    (), "torchscript",
    (Option("--precision", "precision", "Weight precision; states and cell math stay fp32.", "fp32",
            choices=("fp32", "fp16", "bf16")),
     Option("--batch-size", "batch_size", "Batch size recorded in the I/O contract (the module itself takes any).", 1,
            min=1)),
    (_kind("torchscript", "torchscript", {"fp32": FP32, "fp16": FP16, "bf16": BF16}, (), "fp32", "model.pt"),),
    contract_reader="xlstm_export.torchscript.trust:read_contract", runs_code=True))

__all__ = ["Option", "Kind", "Target", "TARGETS", "KINDS", "register", "artifact_kind", "target_for_path",
           "check_suffix", "describe_artifact"]
