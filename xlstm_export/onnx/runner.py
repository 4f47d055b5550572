"""Validation runner over an exported ONNX graph, through ONNX Runtime.

    runner = OnnxRunner("model.onnx")                  # CPU EP (+ Core ML EP on macOS when present)
    logits, states = runner.run(ids, runner.init_states())

Reads the artifact's ``xlstm_export.io`` contract for state names, shapes and dtypes; exchanges numpy
float32 states in contract order (casting to/from the artifact's state dtype). The step graph takes one
token per call (``max_tokens_per_call = 1``; ``run`` loops over longer inputs itself); the Scan graph
any number. A step graph exported with ``--prefill-chunk`` names its prefill companion in its contract:
the runner (kind ``onnx-prefill``) opens both and runs a prompt as prefill chunks + step calls (opening
the ``.prefill.onnx`` file opens its step graph the same way).

An artifact with compressed weights (its contract's ``"quantize"``) is judged at ``fp32+int4`` and the
like (``runner.precision``); :meth:`OnnxRunner.compressed_weights` decodes its compressed initializers
with numpy (``quant.decode``), so validation can run the reference on the weights the artifact holds.
Whether the graph is what xlstm-export writes for its declaration is ``verify.py``'s question.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import ArtifactError, UnsupportedError, first_line
from ..graphs import Graph
from ..graphs.io import IO_KEY
from ..contract import TRUST_HINT, parse_contract, prefill_plan
from ..runner import ArtifactRunner, declared_compression
from .names import COREML_MAX_DIM, TARGET_SCAN, TARGET_STEP

PROVIDERS = ("auto", "cpu", "coreml")


def _providers(which: str) -> list:
    import onnxruntime as ort

    available = ort.get_available_providers()
    if which not in PROVIDERS:
        raise UnsupportedError(f"onnx runner: providers must be one of {PROVIDERS}, got {which!r}")
    if which == "cpu":
        return ["CPUExecutionProvider"]
    if which == "coreml" and "CoreMLExecutionProvider" not in available:
        raise UnsupportedError("onnx: the Core ML execution provider is not available in this onnxruntime "
                               f"(available: {available}); it exists on macOS builds only")
    if "CoreMLExecutionProvider" in available and which in ("auto", "coreml"):
        return [("CoreMLExecutionProvider", {"ModelFormat": "MLProgram"}), "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def _regular(path: Path, what: str) -> None:
    """``path`` is a regular file (a FIFO would block the reader, a device never end)."""
    import os
    import stat

    try:
        mode = os.stat(path).st_mode
    except OSError as e:
        raise ArtifactError(f"{path}: {what} cannot be read ({e.strerror or e})") from None
    if not stat.S_ISREG(mode):
        raise ArtifactError(f"{path}: {what} is not a regular file")


def _read_proto(path: Path):
    """The model without its external data (onnx's parser), after checking that it and every data file it
    names are regular files: what onnxruntime would block or spin on is refused before it opens them."""
    import onnx

    _regular(path, "the ONNX file")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # onnx's parser raises its own types for what is not a model
        raise ArtifactError(f"{path}: not a readable ONNX model ({first_line(e)})") from None
    graphs, locations = [model.graph], set()
    while graphs:  # initializers of the main graph and of any subgraph (Scan bodies)
        g = graphs.pop()
        for t in g.initializer:
            locations.update(e.value for e in t.external_data if e.key == "location")
        graphs.extend(a.g for n in g.node for a in n.attribute if a.HasField("g"))
    for loc in sorted(locations):
        _regular(path.parent / loc, f"its external data {loc!r}")
    return model


def _open(path: Path, chosen: list, threads: int):
    """An InferenceSession over ``path``, its parsed contract and its ModelProto without external data
    (ArtifactError if any is unreadable)."""
    import onnxruntime as ort

    where = str(path)
    if not path.exists():
        raise ArtifactError(f"{where}: no such ONNX file")
    proto = _read_proto(path)
    so = ort.SessionOptions()
    so.log_severity_level = 3
    # ORT fuses a blocked DequantizeLinear -> MatMul (the qdq form) into MatMulNBits and by default lets
    # it quantize the activations to int8 (accuracy level 4): validation judges the weights the graph
    # stores, so the fused node computes in the activations' own precision, as MatMulNBits nodes we write
    so.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "0")
    if threads:
        so.intra_op_num_threads = threads
    try:
        session = ort.InferenceSession(str(path), so, providers=chosen)
    except Exception as e:  # onnxruntime raises its own exception types for unloadable models
        raise ArtifactError(f"{where}: onnxruntime cannot load it ({first_line(e)})") from None
    return session, parse_contract(session.get_modelmeta().custom_metadata_map.get(IO_KEY), where), proto


class OnnxRunner(ArtifactRunner):
    """The Runner protocol (``xlstm_export/runner.py``) over an ``.onnx`` file."""

    noun = "graph"
    needs_vocab = False  # a step or Scan graph runs without it; a prefill companion needs it (_open_prefill)
    batch_error = (ArtifactError, "{where}: exported for batch size {have}, asked for {asked} (re-export with "
                                  "--batch-size {asked})")

    def __init__(self, path: str | Path, graph: Optional[Graph] = None, batch_size: Optional[int] = None,
                 providers: str = "auto", threads: int = 0):
        self._chosen = _providers(providers)  # UnsupportedError for one this onnxruntime lacks, not "cannot load it"
        self._threads = threads
        super().__init__(path, graph, batch_size)

    def _open(self) -> dict:
        self.session, contract, self.proto = _open(self.path, self._chosen, self._threads)
        step = contract.get("step")
        if step is not None:  # a prefill graph: open its step graph, which names this one
            name = step.get("path") if isinstance(step, dict) else None
            if not isinstance(name, str) or not name or "/" in name or "\\" in name or name in (".", ".."):
                raise ArtifactError(f"{self.path}: the contract's 'step' entry must name the step graph's file, "
                                    f"got {str(step)[:80]}")
            self.path = self.path.with_name(name)
            self.session, contract, self.proto = _open(self.path, self._chosen, self._threads)
            if contract.get("step") is not None:
                raise ArtifactError(f"{self.path}: a prefill graph's 'step' entry names another prefill graph")
        return contract

    def _start(self) -> None:
        self._check_session(self.where)
        self.kind = str(self.contract.get("target", TARGET_STEP))
        self.max_tokens_per_call = None if self.kind == TARGET_SCAN else 1
        self.providers: List[str] = self.session.get_providers()
        import onnxruntime as ort

        self.runtime = f"ONNX Runtime {ort.__version__} ({self.providers[0]})"
        self.prefill_session = self.prefill_proto = None
        if self.prefill is not None:
            self._open_prefill()

    def _open_prefill(self) -> None:
        """The companion prefill graph: same states, T = the plan's chunk; the runner then takes any length."""
        plan, where = self.prefill, self.where
        if self.kind != TARGET_STEP or self.vocab_size is None:
            raise ArtifactError(f"{where}: only a step graph with a vocabulary-sized logits output has a prefill "
                                f"companion (kind {self.kind!r})")
        path = self.path.with_name(plan.where)
        if not path.exists():
            raise ArtifactError(f"{where}: its prefill graph {path} is missing (export both with --prefill-chunk)")
        self.prefill_session, contract, self.prefill_proto = _open(path, self._chosen, self._threads)
        other = prefill_plan(contract, str(path))
        ids = next((i for i in contract["inputs"] if i.get("name") == "input_ids"), {})
        if (other != plan or ids.get("shape") != [self.batch_size, plan.chunk]
                or contract["states"] != self.contract["states"] or contract.get("profile") != self.contract["profile"]):
            raise ArtifactError(f"{path}: not the prefill graph of {self.path.name} (its contract's chunk, input "
                                f"shape, states or profile differ)")
        names = {i.name for i in self.prefill_session.get_inputs()} | {o.name for o in self.prefill_session.get_outputs()}
        missing = [n for n in ["input_ids", "logits"] + [x for s in self.slots for x in (s.input, s.output)]
                   if n not in names]
        if missing:
            raise ArtifactError(f"{path}: the prefill graph lacks {missing[:4]}")

    def _check_session(self, where: str) -> None:
        """The contract's names and dtypes are the model's: else ``run`` would fail inside onnxruntime."""
        self._dtypes = []
        for s in self.slots:
            try:
                self._dtypes.append(np.dtype(s.dtype))
            except (TypeError, ValueError):
                raise ArtifactError(f"{where}: the contract's state {s.input!r} has dtype {s.dtype!r}, not a numpy "
                                    f"dtype") from None
        inputs = {i.name for i in self.session.get_inputs()}
        outputs = {o.name for o in self.session.get_outputs()}
        missing = [n for n in ["input_ids"] + [s.input for s in self.slots] if n not in inputs]
        missing += [n for n in ["logits"] + [s.output for s in self.slots] if n not in outputs]
        if missing:
            raise ArtifactError(f"{where}: the contract names {missing}, which the ONNX graph does not have as "
                                f"inputs/outputs (inputs {sorted(inputs)}, outputs {sorted(outputs)})")

    def _release(self) -> None:
        self.proto = self.prefill_proto = None  # parsed for verify only (inline weights)

    def compressed_weights(self, graph: Graph) -> Dict[str, np.ndarray]:
        """Canonical weight name -> the dense float32 weight the graph computes with, for each weight its
        contract's compression compresses (:func:`compressed_weights`)."""
        return compressed_weights(self, graph)

    @property
    def state_names(self) -> List[str]:
        return [s.input for s in self.slots]

    def _call(self, ids: np.ndarray, states: Sequence[np.ndarray]) -> Tuple[np.ndarray, List[np.ndarray]]:
        return self._run_session(self.session, ids, states)

    def _call_prefill(self, ids: np.ndarray, states: Sequence[np.ndarray]) -> Tuple[np.ndarray, List[np.ndarray]]:
        return self._run_session(self.prefill_session, ids, states)

    def _run_session(self, session, ids: np.ndarray, states: Sequence[np.ndarray]) -> Tuple[np.ndarray, List[np.ndarray]]:
        feed = {"input_ids": np.ascontiguousarray(ids, dtype=np.int64)}
        for slot, dtype, s in zip(self.slots, self._dtypes, states):
            if tuple(np.shape(s)) != tuple(slot.shape):  # a state the graph itself returned: the artifact is inconsistent
                raise ArtifactError(f"{self.path}: state {slot.input!r} has shape {tuple(np.shape(s))}, expected "
                                    f"{tuple(slot.shape)}")
            feed[slot.input] = np.ascontiguousarray(s, dtype=dtype)
        names = ["logits"] + [s.output for s in self.slots]
        try:
            outs = session.run(names, feed)
        except Exception as e:  # onnxruntime's own exception types (a graph that does not run as declared)
            raise ArtifactError(f"{self.path}: onnxruntime cannot run it ({first_line(e)})") from None
        return outs[0].astype(np.float32), [o.astype(np.float32) for o in outs[1:]]


def _declared_compression(contract: dict, where: str):
    """(Compression, format) the contract declares, or (None, None); ArtifactError naming the field if off."""
    from .quant import FORMATS

    comp = declared_compression(contract, where)
    if comp is None:
        if contract.get("quantize_format") is not None:
            raise ArtifactError(f"{where}: its contract declares a quantize_format but no quantize ({TRUST_HINT})")
        return None, None
    fmt = contract.get("quantize_format")
    if fmt not in FORMATS:
        raise ArtifactError(f"{where}: its contract's quantize_format must be one of {FORMATS}, got "
                            f"{str(fmt)[:40]!r} ({TRUST_HINT})")
    return comp, fmt


def _head_block(model, vocab: int) -> int:
    """The LM head's row block (``OnnxOptions.lm_head_block``) as written: the N of its first block."""
    for n in model.graph.node:
        if n.name == "lm_head.0" or n.name == "lm_head.0.matmul":
            if n.op_type == "MatMulNBits":
                return next(int(a.i) for a in n.attribute if a.name == "N")
            break
    inits = {i.name: [int(d) for d in i.dims] for i in model.graph.initializer}
    dims = inits.get("lm_head.weight.0")
    if dims is not None and len(dims) == 2 and dims[0] > 0:
        return dims[0]
    dims = inits.get("lm_head.weight.0.codes")  # qdq: (K, N); MatMulNBits: (N, K/b, blob); int8 rows: (N, K)
    if dims is not None and len(dims) in (2, 3) and min(dims) > 0:
        rows = any(n.op_type == "Cast" and "lm_head.weight.0.codes" in n.input for n in model.graph.node)
        return dims[1] if len(dims) == 2 and not rows else dims[0]
    return max(COREML_MAX_DIM, vocab)  # one block


def _compressed_specs(graph: Graph, contract: dict, batch_size: int, block: int, comp, fmt: str) -> list:
    """(spec, scheme) of every weight ``comp`` compresses, as the step graph holds them (LM head blocks)."""
    from .policy import policy_for
    from .quant import compressed_specs

    return compressed_specs(graph, policy_for(str(contract.get("precision"))), batch_size, block,
                            comp, fmt)


def _initializer_bytes(path: Path, t) -> bytes:
    """An initializer's raw bytes, inline or from its external data file (beside the model, regular)."""
    from onnx import TensorProto

    if t.data_location != TensorProto.EXTERNAL:
        if not t.HasField("raw_data"):
            raise ArtifactError(f"{path}: tensor {t.name!r} holds no raw data (xlstm-export writes raw data)")
        return t.raw_data
    ext = {e.key: e.value for e in t.external_data}
    loc = ext.get("location", "")
    if not loc or "/" in loc or "\\" in loc or loc in (".", ".."):
        raise ArtifactError(f"{path}: tensor {t.name!r} names external data {loc[:60]!r}, not a file beside it")
    try:
        offset, length = int(ext.get("offset", "0")), int(ext["length"])
    except (KeyError, ValueError):
        raise ArtifactError(f"{path}: tensor {t.name!r} has no valid external offset / length") from None
    _regular(path.parent / loc, f"its external data {loc!r}")
    with open(path.parent / loc, "rb") as f:
        f.seek(offset)
        raw = f.read(length)
    if len(raw) != length:
        raise ArtifactError(f"{path}: tensor {t.name!r}: its external data ends before offset + length")
    return raw


def compressed_weights(runner: OnnxRunner, graph: Graph) -> Dict[str, np.ndarray]:
    """Canonical weight name -> the dense float32 weight the graph computes with, for each weight its
    contract declares compressed: decoded from the step graph's initializers by our numpy code
    (``quant.decode``; nothing of the model runs). LM head row blocks are joined into the one weight."""
    from .quant import PARTS, decode, tensor_array

    where = str(runner.path)
    comp, fmt = _declared_compression(runner.contract, where)
    if comp is None:
        return {}
    model = runner.proto if runner.proto is not None else _read_proto(runner.path)
    inits = {t.name: t for t in model.graph.initializer}
    block = _head_block(model, graph.config.vocab_size)
    out: Dict[str, np.ndarray] = {}
    for spec, scheme in _compressed_specs(graph, runner.contract, runner.batch_size, block, comp, fmt):
        arrays = {}
        for part in PARTS:
            t = inits.get(f"{spec.key}.{part}")
            if t is not None:
                arrays[part] = tensor_array(int(t.data_type), tuple(int(d) for d in t.dims),
                                            _initializer_bytes(runner.path, t), f"{where}: tensor {t.name!r}")
        if "codes" not in arrays or len(spec.sources) != 1:
            raise ArtifactError(f"{where}: no compressed weight {spec.key!r} in the graph")
        dense = decode(spec, scheme, fmt, arrays, where)
        name = spec.sources[0]
        if spec.rows is None:
            out[name] = dense.reshape(graph.weights[name].shape)
        else:
            full = out.setdefault(name, np.zeros(graph.weights[name].shape, dtype=np.float32))
            full[spec.rows[0]:spec.rows[1]] = dense
    return out


__all__ = ["OnnxRunner", "compressed_weights", "contract_of", "PROVIDERS"]


def contract_of(path: Path) -> dict:
    """The graph's I/O contract from its metadata (parsed without its weights; nothing is run)."""
    where = str(path)
    if not Path(path).exists():
        raise ArtifactError(f"{where}: no such ONNX file")
    model = _read_proto(Path(path))
    return parse_contract(next((p.value for p in model.metadata_props if p.key == IO_KEY), None), where)
