"""What a target is: the :class:`Target` a target package declares, and the one export pipeline.

A target package (``xlstm_export/coreml``, ``onnx``, ``executorch``, ``torchscript``, or one of yours)
declares one :class:`Target` subclass instance in its ``target.py``; ``xlstm_export/targets.py`` registers
it (one line). Generic code (outputs, validation, text, the API, the CLI) asks the Target and names no
target and no artifact suffix:

    t.files_of(path)            # every file of the artifact at ``path`` (what a runner opens, what its size is)
    t.foreign_reason(p, is_dir) # None if the existing ``p`` is an output of this target (--force may replace it)
    t.text_paths(path, names)   # where the artifact keeps its tokenizer / generation files
    t.contract_of(path)         # its I/O contract, read without running it
    t.open_runner(path, graph)  # a runner over it (validation, ``run``)
    t.emit(graph, out, **opts)  # the export pipeline below

The export pipeline (:meth:`Target.write`), the same for every target::

    check the output path (suffix, exists?)  ->  target.build(graph, options, out): options checked, the
    lowering run once  ->  every output path checked  ->  atomic_outputs(build.files + text files):
    build.write(temporaries), the text files beside  ->  build.done()  ->  Artifact

Importing this module loads no target package and no heavy library.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from .errors import ArtifactError, UnsupportedError
from . import outputs
from .outputs import Artifact, check_output_path, plain_file
from .tolerances import Tolerance


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
    owner: Optional["Target"] = field(default=None, compare=False, repr=False)  # set by the Target declaring it

    def cli_words(self) -> list:
        """The CLI words that export this kind: ``[target, "--scan"]``, ``[target, "--prefill-chunk", "8"]``."""
        words = [self.target]
        for f, v in self.fixed.items():
            if v is True:
                words.append(f"--{f.replace('_', '-')}")
            elif v not in (False, None):
                words += [f"--{f.replace('_', '-')}", str(v)]
        return words

    def emit(self, graph, out: str | os.PathLike, **options):
        """Export ``graph`` as this kind (``options`` are the target's, e.g. ``precision="fp16"``)."""
        return self.owner.emit(graph, out, **{**options, **self.fixed})


def kind(name: str, target: str, tolerances: Mapping[str, Tolerance], modes: Tuple[str, ...], demo_precision: str,
         filename: str, sweep: bool = True, **fixed) -> Kind:
    """A :class:`Kind`, its fixed options as keywords."""
    return Kind(name, target, fixed, tolerances, modes, demo_precision, filename, sweep)


@dataclass
class Build:
    """What a target's :meth:`Target.build` returns: everything known before a byte is written, and the
    writer. ``files``: the artifact first, then its companions (external data, a prefill graph, a Swift
    package); ``write(temporaries)`` writes each into its temporary (same order) and returns figures for
    ``Artifact.stats``; ``done()`` runs once the files are in place."""

    files: Tuple[Path, ...]
    contract: dict
    kind: str
    precision: str
    write: Callable[[List[Path]], Optional[dict]]
    stats: dict = field(default_factory=dict)
    done: Optional[Callable[[], None]] = None


MAX_PREFILL_CHUNK = 1024  # lowering.MAX_PREFILL_CHUNK (a test ties them; importing lowering here would load numpy)
DEMO_PREFILL_CHUNK = 8  # the demo's and the parity matrix's chunk: its prompts are and are not multiples of it


class Target:
    """One export target. The declaration (name, suffixes, options, kinds, ...) is data; the behaviour is
    methods a target package overrides where its artifacts differ from the defaults (a single file, its text
    files beside it, any regular file recognised as ours). ``builder``, ``runner`` and ``contract_reader``
    name the functions :meth:`build`, :meth:`open_runner` and :meth:`contract_of` call by default."""

    def __init__(self, name: str, summary: str, suffixes: Tuple[str, ...], options: Tuple[Option, ...],
                 kinds: Tuple[Kind, ...], options_class: Callable[[], type] | str, requires: Tuple[str, ...] = (),
                 extra: str = "", runs_code: bool = False, quant_schemes: Tuple[str, ...] = (), builder: str = "",
                 runner: str = "", contract_reader: str = "", policies: str = ""):
        self.name = name  # CLI command and artifact kind
        self.summary = summary  # the command's help line
        self.suffixes = suffixes  # artifact path suffixes; the first is what exports write
        self.options = options
        self.kinds = tuple(replace(k, owner=self) for k in kinds)
        # "module:attr" references, imported when first used (the declaration imports no heavy library):
        self._options_class = options_class  # the options dataclass (or a function returning it)
        self.builder = builder  # (graph, options, out) -> Build
        self.runner = runner  # (path, graph, **opts) -> a runner
        self.contract_reader = contract_reader  # (path) -> the contract
        self.policies = policies  # precision name -> lowering PrecisionPolicy (targets built by the lowering)
        self.requires = requires  # third-party modules it needs
        self.extra = extra  # the pip extra that installs them
        self.runs_code = runs_code  # loading an artifact runs code it carries: never unchecked untrusted
        self.quant_schemes = quant_schemes  # the weight compressions of lowering/quant.py it takes (--quantize)

    def __repr__(self) -> str:
        return f"<Target {self.name} {'/'.join(self.suffixes)}>"

    @property
    def package(self) -> str:
        """The package that declares this target (where everything it knows lives)."""
        return type(self).__module__.rpartition(".")[0] or type(self).__module__

    # -- what is it ------------------------------------------------------------------------------------
    @property
    def compresses(self) -> bool:
        """Whether the target takes the compression options of ``lowering/quant.py`` (``--quantize`` ...)."""
        return bool(self.quant_schemes)

    def claims(self, path: str | os.PathLike) -> bool:
        """Whether ``path``'s suffix is one of this target's artifacts'."""
        return Path(path).suffix.lower() in self.suffixes

    def check_path(self, out: Path) -> None:
        """An export's output path must carry the target's suffix (checked before any work)."""
        if not self.claims(out):
            raise UnsupportedError(f"{out}: a {self.name} artifact's path must end in {' or '.join(self.suffixes)}")

    def files_of(self, path: Path) -> List[Path]:
        """Every file the artifact at ``path`` consists of, as far as they exist or are named by convention:
        what a runner opens (each must be a regular file) and what its size on disk counts."""
        return [Path(path)]

    def recognise(self, path: Path, is_dir: bool) -> Optional[str]:
        """``None`` if the existing ``path`` (one of the names :meth:`build` writes) is recognisably this
        target's output, else why not. The default: a regular file, not a folder."""
        return plain_file(path, is_dir)

    def foreign_reason(self, path: Path, is_dir: bool) -> Optional[str]:
        """What ``outputs.atomic_outputs`` asks before ``--force`` replaces ``path``: the target's own files by
        :meth:`recognise`; the text files beside an artifact need only be regular files."""
        if self.claims_output(path):
            return self.recognise(path, is_dir)
        return plain_file(path, is_dir)

    def claims_output(self, path: Path) -> bool:
        """Whether ``path`` is a name this target's :meth:`recognise` judges (by default: its suffixes)."""
        return self.claims(path)

    def precision_policies(self) -> dict:
        """The lowering's precision policies this target offers, by precision name (none for a target built
        from the reference module)."""
        return dict(resolve(self.policies)) if self.policies else {}

    # -- text files ------------------------------------------------------------------------------------
    text_beside = True  # the tokenizer / generation files are written beside the artifact (else inside it)

    def text_paths(self, artifact: Path, names: Sequence[str]) -> Dict[str, Path]:
        """Where the artifact at ``artifact`` keeps each text file: ``<artifact name>.<file>`` beside it."""
        p = Path(artifact)
        return {n: p.with_name(f"{p.name}.{n}") for n in names}

    # -- options ---------------------------------------------------------------------------------------
    def _require(self) -> None:
        for mod in self.requires:  # installed? (found, not imported: some log noise when imported)
            try:
                found = importlib.util.find_spec(mod) is not None
            except (ImportError, ValueError):  # a finder refusing it; a module entry of None
                found = False
            if not found:
                raise UnsupportedError(f"{self.name}: needs the {mod!r} package; install it with "
                                       f"pip install 'xlstm-export[{self.extra}]'") from None

    def make_options(self, **values):
        self._require()
        cls = resolve(self._options_class) if isinstance(self._options_class, str) else self._options_class()
        known = {f for f in cls.__dataclass_fields__}
        bad = sorted(set(values) - known)
        if bad:
            raise UnsupportedError(f"{self.name}: unknown option(s) {bad}; known: {sorted(known)}")
        return cls(**values)

    # -- export ----------------------------------------------------------------------------------------
    def emit(self, graph, out: str | os.PathLike, **options) -> Artifact:
        """Write the artifact of ``graph`` at ``out``; returns its :class:`Artifact`. ``options`` are the fields
        of the target's options dataclass; the compression options (``quantize``, ``block_size``, ... :
        ``compress.QUANT_FIELDS``) become its ``compression`` (calibrated first when GPTQ is asked for)."""
        out = Path(out)
        self.check_path(out)  # before reading a weight
        if self.compresses:
            from .compress import QUANT_FIELDS, compression_for

            quant = {k: options.pop(k) for k in QUANT_FIELDS if k in options}
            if quant:
                self.make_options(**options)  # the other options are checked before any calibration
                options["compression"] = compression_for(graph, self.name, **quant, schemes=self.quant_schemes)
        return self.write(graph, self.make_options(**options), out)

    def planned_files(self, out: Path, options) -> Tuple[Path, ...]:
        """The files an export at ``out`` writes, as far as known before building (checked before the build:
        an existing output without ``--force`` fails at once, not after minutes)."""
        return (out,)

    def build(self, graph, options, out: Path) -> Build:
        """Check ``options`` against ``graph``, run what the artifact is made from (the lowering, once) and
        return the :class:`Build` whose ``write`` puts it into files. Default: the ``builder`` reference."""
        return resolve(self.builder)(graph, options, out)

    def write(self, graph, options, out: str | os.PathLike) -> Artifact:
        """The export pipeline (module doc), with the target's options object; ``options.force`` replaces an
        existing output that is recognisably this tool's."""
        out = Path(out)
        self.check_path(out)
        force = bool(getattr(options, "force", False))
        texts: List[Tuple[Path, bytes]] = []
        if self.text_beside and graph.text is not None:
            where = self.text_paths(out, graph.text.names())
            texts = [(where[n], data) for n, data in graph.text.files]
        for p in (*self.planned_files(out, options), *(p for p, _ in texts)):
            check_output_path(p, force, self.foreign_reason)  # fail before the build
        build = self.build(graph, options, out)
        files = list(build.files)
        with outputs.atomic_outputs(files + [p for p, _ in texts], force, self.foreign_reason) as tmps:
            stats = build.write(tmps[:len(files)])
            for (_, data), tmp in zip(texts, tmps[len(files):]):
                tmp.write_bytes(data)
        if build.done is not None:
            build.done()
        return Artifact(out, build.kind, build.precision, build.contract, tuple(files) + tuple(p for p, _ in texts),
                        {**build.stats, **(stats or {})})

    # -- reading one back ------------------------------------------------------------------------------
    def contract_of(self, path: Path) -> dict:
        """The artifact's I/O contract, read without running it (``ArtifactError`` if it has none). Default: the
        ``contract_reader`` reference."""
        return resolve(self.contract_reader)(Path(path))

    def open_runner(self, path: Path, graph, **opts):
        """A runner (``runtime.Runner``) over the artifact at ``path``, its contract checked against ``graph``
        and (unless ``trust_artifact=True``) the artifact against what this tool writes for that contract.
        Default: the ``runner`` reference."""
        self._require()
        return resolve(self.runner)(Path(path), graph, **opts)

    def contract_graph(self, path: Path):
        """A weightless graph from the artifact's own contract profile: the state contract and vocabulary its
        runner needs when no checkpoint is at hand (``xlstm-export run``)."""
        from .graphs import Graph, WeightStore, config_from_profile

        self._require()
        contract = self.contract_of(Path(path))
        try:
            config, blocks = config_from_profile(contract["profile"], f"{path}: contract profile")
        except (KeyError, TypeError) as e:
            raise ArtifactError(f"{path}: its contract's profile is not a model profile ({e})") from None
        return Graph(config, tuple(blocks), WeightStore({}), source=f"{path} (contract profile)")


def resolve(ref: str) -> Callable:
    """``"module:attr"`` -> the attribute (imported now)."""
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


def prefill_options(what: str) -> Tuple[Option, ...]:
    """``--prefill-chunk`` and ``--last-logits-only``, for targets with a chunkwise prefill."""
    return (Option("--prefill-chunk", "prefill_chunk", f"Also {what} of T prompt tokens per call (chunkwise mLSTM, "
                   f"unrolled sLSTM), same states; prompts run as floor(L/T) prefill calls + L mod T steps.",
                   None, min=1, max=MAX_PREFILL_CHUNK),
            Option("--last-logits-only", "last_logits_only", "The prefill returns the logits of the chunk's last "
                   "position only (B, 1, V): what generation needs, T times less head work.", False, is_flag=True))


def quant_options(schemes: Tuple[str, ...], what: str) -> Tuple[Option, ...]:
    """The compression options of ``lowering/quant.py`` (``--quantize`` ... ``--asymmetric``)."""
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


BATCH = Option("--batch-size", "batch_size", "Static batch size of the artifact.", 1, min=1)

__all__ = ["Build", "Kind", "Option", "Target", "kind", "resolve", "prefill_options", "quant_options", "BATCH",
           "MAX_PREFILL_CHUNK", "DEMO_PREFILL_CHUNK"]
