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
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import ArtifactError, UnsupportedError, first_line
from ..graphs import Graph
from ..graphs.io import IO_KEY
from ..validation.contract import check_run_args, contract_batch_size, judged_precision, parse_contract
from ..validation.runner import PrefillCalls, PrefillPlan, prefill_plan
from .emit import TARGET_SCAN, TARGET_STEP

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


class OnnxRunner(PrefillCalls):
    """The Runner protocol (``validation/runner.py``) over an ``.onnx`` file."""

    def __init__(self, path: str | Path, graph: Optional[Graph] = None, batch_size: Optional[int] = None,
                 providers: str = "auto", threads: int = 0):
        self.path = Path(path)
        chosen = _providers(providers)  # UnsupportedError for one this onnxruntime lacks, not "cannot load it"
        self.session, self.contract, self.proto = _open(self.path, chosen, threads)
        step = self.contract.get("step")
        if step is not None:  # a prefill graph: open its step graph, which names this one
            name = step.get("path") if isinstance(step, dict) else None
            if not isinstance(name, str) or not name or "/" in name or "\\" in name or name in (".", ".."):
                raise ArtifactError(f"{self.path}: the contract's 'step' entry must name the step graph's file, "
                                    f"got {str(step)[:80]}")
            self.path = self.path.with_name(name)
            self.session, self.contract, self.proto = _open(self.path, chosen, threads)
            if self.contract.get("step") is not None:
                raise ArtifactError(f"{self.path}: a prefill graph's 'step' entry names another prefill graph")
        where = str(self.path)
        if graph is not None:
            from ..validation.contract import check_contract, state_slots

            check_contract(self.contract, graph, where)
            slots = state_slots(self.contract, graph, where)
            self._states = [(s.input, s.output, tuple(s.shape), s.dtype) for s in slots]
        else:
            self._states = [(s["input"], s["output"], tuple(s["shape"]), s["dtype"])
                            for s in self.contract["states"]]
        self._check_session(where)
        self.kind = str(self.contract.get("target", "onnx"))
        self.precision = judged_precision(self.contract) if self.contract.get("precision") else "fp32"
        self.batch_size = contract_batch_size(self.contract, where)
        if batch_size is not None and batch_size != self.batch_size:
            raise ArtifactError(f"{where}: exported for batch size {self.batch_size}, asked for {batch_size} "
                                f"(re-export with --batch-size {batch_size})")
        self.max_tokens_per_call: Optional[int] = None if self.kind == TARGET_SCAN else 1
        self.providers: List[str] = self.session.get_providers()
        import onnxruntime as ort

        self.runtime = f"ONNX Runtime {ort.__version__} ({self.providers[0]})"
        logits = next((o for o in self.contract["outputs"] if o["name"] == "logits"), None)
        v = logits["shape"][-1] if logits is not None and logits["shape"] else None
        self.vocab_size: Optional[int] = v if isinstance(v, int) and v > 0 else None
        self.prefill: Optional[PrefillPlan] = prefill_plan(self.contract, where)
        self.prefill_session = self.prefill_proto = None
        if self.prefill is not None:
            self._open_prefill(chosen, threads)

    def _open_prefill(self, chosen: list, threads: int) -> None:
        """The companion prefill graph: same states, T = the plan's chunk; the runner then takes any length."""
        plan, where = self.prefill, str(self.path)
        if self.kind != TARGET_STEP or self.vocab_size is None:
            raise ArtifactError(f"{where}: only a step graph with a vocabulary-sized logits output has a prefill "
                                f"companion (kind {self.kind!r})")
        path = self.path.with_name(plan.where)
        if not path.exists():
            raise ArtifactError(f"{where}: its prefill graph {path} is missing (export both with --prefill-chunk)")
        self.prefill_session, contract, self.prefill_proto = _open(path, chosen, threads)
        other = prefill_plan(contract, str(path))
        ids = next((i for i in contract["inputs"] if i.get("name") == "input_ids"), {})
        if (other != plan or ids.get("shape") != [self.batch_size, plan.chunk]
                or contract["states"] != self.contract["states"] or contract.get("profile") != self.contract["profile"]):
            raise ArtifactError(f"{path}: not the prefill graph of {self.path.name} (its contract's chunk, input "
                                f"shape, states or profile differ)")
        names = {i.name for i in self.prefill_session.get_inputs()} | {o.name for o in self.prefill_session.get_outputs()}
        missing = [n for n in ["input_ids", "logits"] + [x for s in self._states for x in s[:2]] if n not in names]
        if missing:
            raise ArtifactError(f"{path}: the prefill graph lacks {missing[:4]}")
        self.kind = "onnx-prefill"
        self.max_tokens_per_call = None

    def _check_session(self, where: str) -> None:
        """The contract's names and dtypes are the model's: else ``run`` would fail inside onnxruntime."""
        for inp, _, _, dtype in self._states:
            try:
                np.dtype(dtype)
            except (TypeError, ValueError):
                raise ArtifactError(f"{where}: the contract's state {inp!r} has dtype {dtype!r}, not a numpy "
                                    f"dtype") from None
        inputs = {i.name for i in self.session.get_inputs()}
        outputs = {o.name for o in self.session.get_outputs()}
        missing = [n for n in ["input_ids"] + [s[0] for s in self._states] if n not in inputs]
        missing += [n for n in ["logits"] + [s[1] for s in self._states] if n not in outputs]
        if missing:
            raise ArtifactError(f"{where}: the contract names {missing}, which the ONNX graph does not have as "
                                f"inputs/outputs (inputs {sorted(inputs)}, outputs {sorted(outputs)})")

    def compressed_weights(self, graph: Graph) -> Dict[str, np.ndarray]:
        """Canonical weight name -> the dense float32 weight the graph computes with, for each weight its
        contract's compression compresses (:func:`compressed_weights`)."""
        return compressed_weights(self, graph)

    @property
    def state_names(self) -> List[str]:
        return [s[0] for s in self._states]

    def init_states(self) -> List[np.ndarray]:
        return [np.zeros(shape, dtype=np.float32) for _, _, shape, _ in self._states]

    def _call(self, ids: np.ndarray, states: Sequence[np.ndarray], session=None) -> Tuple[np.ndarray, List[np.ndarray]]:
        session = session or self.session
        feed = {"input_ids": np.ascontiguousarray(ids, dtype=np.int64)}
        for (inp, _, shape, dtype), s in zip(self._states, states):
            if tuple(np.shape(s)) != shape:  # a state the graph itself returned: the artifact is inconsistent
                raise ArtifactError(f"{self.path}: state {inp!r} has shape {tuple(np.shape(s))}, expected {shape}")
            feed[inp] = np.ascontiguousarray(s, dtype=np.dtype(dtype))
        names = ["logits"] + [out for _, out, _, _ in self._states]
        try:
            outs = session.run(names, feed)
        except Exception as e:  # onnxruntime's own exception types (a graph that does not run as declared)
            raise ArtifactError(f"{self.path}: onnxruntime cannot run it ({first_line(e)})") from None
        return outs[0].astype(np.float32), [o.astype(np.float32) for o in outs[1:]]

    def run(self, input_ids: np.ndarray, states: List[np.ndarray]) -> Tuple[np.ndarray, List[np.ndarray]]:
        """input_ids (B, T) int64 -> logits (B, T, V) float32, new states (float32, contract order)."""
        input_ids = check_run_args(str(self.path), self.batch_size, input_ids, states,
                                   [shape for _, _, shape, _ in self._states], self.vocab_size)
        if self.prefill is not None:
            return self.prefill.run(input_ids, states, self.vocab_size,
                                    lambda ids, st: self._call(ids, st, self.prefill_session), self._call)
        if self.max_tokens_per_call is None:
            return self._call(input_ids, states)
        logits = []
        for t in range(input_ids.shape[1]):
            lg, states = self._call(input_ids[:, t:t + 1], states)
            logits.append(lg)
        return np.concatenate(logits, axis=1), states


def _signature(values) -> list:
    """(name, element type, dims) of graph inputs or outputs; a dynamic dim as its parameter name."""
    out = []
    for v in values:
        t = v.type.tensor_type
        dims = [d.dim_param if d.HasField("dim_param") else int(d.dim_value) for d in t.shape.dim]
        out.append((v.name, int(t.elem_type), dims))
    return out


def _tensors(graph_proto) -> dict:
    return {i.name: (int(i.data_type), [int(d) for d in i.dims]) for i in graph_proto.initializer}


def _compare_graph(path: Path, got, want, want_tensors: dict, what: str) -> None:
    """The artifact's graph against the one xlstm-export builds for its declared options: inputs, outputs,
    and every initializer's name, element type and shape (not its values, which validation measures)."""
    from onnx import TensorProto

    from ..validation.contract import TRUST_HINT

    def tname(t: int) -> str:
        return TensorProto.DataType.Name(t).lower() if t in TensorProto.DataType.values() else str(t)

    why = None
    for label, a, b in (("inputs", _signature(got.graph.input), _signature(want.graph.input)),
                        ("outputs", _signature(got.graph.output), _signature(want.graph.output))):
        if a != b:
            diff = next(((x, y) for x, y in zip(a, b) if x != y), None)
            why = (f"graph {label} {[n for n, _, _ in a][:6]} differ from {[n for n, _, _ in b][:6]}" if diff is None
                   else f"graph {label[:-1]} {diff[0][0]!r} is {tname(diff[0][1])} {diff[0][2]}, xlstm-export writes "
                        f"{diff[1][0]!r} {tname(diff[1][1])} {diff[1][2]}")
            break
    if why is None:
        a, b = _tensors(got.graph), want_tensors
        extra, missing = sorted(set(a) - set(b)), sorted(set(b) - set(a))
        wrong = sorted(n for n in set(a) & set(b) if a[n] != b[n])
        if wrong:
            n = wrong[0]
            why = (f"tensor {n!r} is {tname(a[n][0])} {a[n][1]}, xlstm-export writes {tname(b[n][0])} {b[n][1]}"
                   + (f" (and {len(wrong) - 1} more)" if len(wrong) > 1 else ""))
        elif extra or missing:
            why = (f"it has tensor {extra[0]!r}, which xlstm-export does not write" if extra
                   else f"it lacks tensor {missing[0]!r}")
    if why is not None:
        raise ArtifactError(f"{path}: not the graph xlstm-export writes for {what}: {why}; its tolerance "
                            f"is chosen by that declaration (re-export it, or {TRUST_HINT})")


def _declared_compression(contract: dict, where: str):
    """(Compression, format) the contract declares, or (None, None); ArtifactError naming the field if off."""
    from ..lowering.quant import Compression
    from ..validation.contract import TRUST_HINT
    from .quant import FORMATS

    q = contract.get("quantize")
    if q is None:
        if contract.get("quantize_format") is not None:
            raise ArtifactError(f"{where}: its contract declares a quantize_format but no quantize ({TRUST_HINT})")
        return None, None
    try:
        comp = Compression.from_json(q)
    except UnsupportedError as e:
        raise ArtifactError(f"{where}: its contract's {first_line(e)} ({TRUST_HINT})") from None
    fmt = contract.get("quantize_format")
    if fmt not in FORMATS:
        raise ArtifactError(f"{where}: its contract's quantize_format must be one of {FORMATS}, got "
                            f"{str(fmt)[:40]!r} ({TRUST_HINT})")
    return comp, fmt


def _head_block(model, vocab: int) -> int:
    """The LM head's row block (``OnnxOptions.lm_head_block``) as written: the N of its first block."""
    from .emit import COREML_MAX_DIM

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


def _compressed_nodes(model) -> Dict[str, str]:
    """Weight key -> how the graph computes with it compressed: ``MatMulNBits/<bits>``,
    ``DequantizeLinear/<code type>`` or ``Gather/<code type>`` (an embedding), from the nodes that read a
    ``<key>.codes`` initializer."""
    from onnx import TensorProto

    types = {t.name: TensorProto.DataType.Name(t.data_type).lower() for t in model.graph.initializer}
    found: Dict[str, str] = {}
    for g in [model.graph] + [a.g for n in model.graph.node for a in n.attribute if a.HasField("g")]:
        for n in g.node:
            for i in n.input:
                if i.endswith(".codes") and i in types:
                    if n.op_type == "MatMulNBits":
                        bits = next((int(a.i) for a in n.attribute if a.name == "bits"), 4)
                        found[i[:-len(".codes")]] = f"MatMulNBits/{bits}"
                    else:
                        found[i[:-len(".codes")]] = f"{n.op_type}/{types[i]}"
    return found


def _want_nodes(specs, fmt: str) -> Dict[str, str]:
    from .quant import form_of

    want = {}
    for spec, scheme in specs:
        form = form_of(spec, fmt, scheme)
        if form == "embedding":
            want[spec.key] = "Gather/int8"
        elif form == "int8rows":
            want[spec.key] = "Cast/int8"
        elif form == "matmulnbits":
            want[spec.key] = f"MatMulNBits/{scheme.bits}"
        else:
            code = "int8" if scheme.kind == "int8" else ("int4" if scheme.symmetric else "uint4")
            want[spec.key] = f"DequantizeLinear/{code}"
    return want


def verify(runner: OnnxRunner, graph: Graph) -> None:
    """Raise ArtifactError unless the runner's graph(s) are what xlstm-export writes for the options their
    contract declares (target, precision, batch size, opset, prefill chunk): the contract itself, the
    graph's inputs and outputs, and the element type and shape of every weight. The declared precision
    picks the tolerance, so it must be the precision of the actual tensors."""
    import onnx

    from ..lowering import MAX_PREFILL_CHUNK
    from ..validation.contract import TRUST_HINT, check_contract_is, declared_precision
    from .emit import MAX_OPSET, MIN_OPSET, OnnxOptions, build, check_options

    where, c, plan, model = str(runner.path), runner.contract, runner.prefill, runner.proto
    precision = declared_precision(c, where, TARGET_STEP, ("fp32", "fp16"), kinds=(TARGET_SCAN,))
    comp, fmt = _declared_compression(c, where)
    opset = next((int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is None or not MIN_OPSET <= opset <= MAX_OPSET:
        raise ArtifactError(f"{where}: opset {opset}; xlstm-export writes opsets {MIN_OPSET}..{MAX_OPSET}")
    if plan is not None and plan.chunk > MAX_PREFILL_CHUNK:
        raise ArtifactError(f"{where}: its contract declares a prefill chunk of {plan.chunk} tokens; xlstm-export "
                            f"writes at most {MAX_PREFILL_CHUNK}")
    block = _head_block(model, graph.config.vocab_size)  # LM head split in row blocks (an API option)
    options = OnnxOptions(scan=c.get("target") == "onnx-scan", batch_size=runner.batch_size, precision=precision,
                          opset=opset, lm_head_block=block, prefill_chunk=plan.chunk if plan else None,
                          last_logits_only=plan.last_logits_only if plan else False, compression=comp,
                          quantize_format=fmt or "matmulnbits")
    what = (f"its declaration ({c.get('target')} {precision}"
            + (f", weights {comp.label()} {fmt}" if comp is not None else "") + f", batch {runner.batch_size}"
            + (f", prefill chunk {plan.chunk}" if plan else "") + ")")
    try:
        check_options(options)
    except UnsupportedError as e:
        raise ArtifactError(f"{where}: its contract declares what xlstm-export does not write: {first_line(e)}"
                            ) from None
    want_nodes = _want_nodes(_compressed_specs(graph, c, runner.batch_size, block, comp, fmt), fmt) if comp else {}
    graphs = [(runner.path, model, False)]
    if plan is not None:
        graphs.append((runner.path.with_name(plan.where), runner.prefill_proto, True))
    for path, got, prefill in graphs:
        want, ms = build(graph, options, prefill=prefill, out_path=runner.path)
        expected = parse_contract(next(p.value for p in want.metadata_props if p.key == IO_KEY), "xlstm-export")
        actual = parse_contract(next((p.value for p in got.metadata_props if p.key == IO_KEY), None), str(path))
        for key in ("prefill", "step"):  # companion file names: the runner has opened and matched them
            if isinstance(actual.get(key), dict) and isinstance(expected.get(key), dict):
                expected[key]["path"] = actual[key].get("path")
        check_contract_is(actual, expected, str(path), what)
        _compare_graph(path, got, want, {i.name: (int(i.data_type), [int(d) for d in i.dims])
                                         for i in ms.initializers}, what)
        # the weights the declared compression compresses are the compressed nodes, and only those
        found = _compressed_nodes(got)
        if found != want_nodes:
            bad = next(n for n in sorted(set(want_nodes) | set(found)) if want_nodes.get(n) != found.get(n))
            raise ArtifactError(f"{path}: not the graph xlstm-export writes for {what}: weight {bad!r} is "
                                f"{found.get(bad, 'not compressed')}, xlstm-export writes "
                                f"{want_nodes.get(bad, 'it uncompressed')}; its tolerance is chosen by that "
                                f"declaration (re-export it, or {TRUST_HINT})")


def open_runner(path: str | Path, graph: Graph, trust_artifact: bool = False, **opts) -> OnnxRunner:
    """The validation registry's factory: a runner checked against ``graph``'s contract and, unless
    ``trust_artifact``, checked to be what xlstm-export writes for the options it declares (:func:`verify`)."""
    runner = OnnxRunner(path, graph, **opts)
    runner.trusted = bool(trust_artifact)
    if not trust_artifact:
        verify(runner, graph)
    runner.proto = runner.prefill_proto = None  # parsed for the checks only (inline weights)
    return runner


__all__ = ["OnnxRunner", "compressed_weights", "contract_of", "open_runner", "verify", "PROVIDERS"]


def contract_of(path: Path) -> dict:
    """The graph's I/O contract from its metadata (parsed without its weights; nothing is run)."""
    where = str(path)
    if not Path(path).exists():
        raise ArtifactError(f"{where}: no such ONNX file")
    model = _read_proto(Path(path))
    return parse_contract(next((p.value for p in model.metadata_props if p.key == IO_KEY), None), where)
