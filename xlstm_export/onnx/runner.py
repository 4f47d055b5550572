"""Validation runner over an exported ONNX graph, through ONNX Runtime.

    runner = OnnxRunner("model.onnx")                  # CPU EP (+ Core ML EP on macOS when present)
    logits, states = runner.run(ids, runner.init_states())

Reads the artifact's ``xlstm_export.io`` contract for state names, shapes and dtypes; exchanges numpy
float32 states in contract order (casting to/from the artifact's state dtype). The step graph takes one
token per call (``max_tokens_per_call = 1``; ``run`` loops over longer inputs itself); the Scan graph
any number. A step graph exported with ``--prefill-chunk`` names its prefill companion in its contract:
the runner (kind ``onnx-prefill``) opens both and runs a prompt as prefill chunks + step calls (opening
the ``.prefill.onnx`` file opens its step graph the same way).
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np

from ..errors import ArtifactError, UnsupportedError, first_line
from ..graphs import Graph
from ..graphs.io import IO_KEY
from ..validation.contract import check_run_args, contract_batch_size, parse_contract
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
        self.precision = str(self.contract.get("precision", "fp32"))
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


def verify(runner: OnnxRunner, graph: Graph) -> None:
    """Raise ArtifactError unless the runner's graph(s) are what xlstm-export writes for the options their
    contract declares (target, precision, batch size, opset, prefill chunk): the contract itself, the
    graph's inputs and outputs, and the element type and shape of every weight. The declared precision
    picks the tolerance, so it must be the precision of the actual tensors."""
    import onnx

    from ..lowering import MAX_PREFILL_CHUNK
    from ..validation.contract import check_contract_is, declared_precision
    from .emit import COREML_MAX_DIM, MAX_OPSET, MIN_OPSET, OnnxOptions, build

    where, c, plan, model = str(runner.path), runner.contract, runner.prefill, runner.proto
    precision = declared_precision(c, where, "onnx", ("fp32", "fp16"))
    opset = next((int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is None or not MIN_OPSET <= opset <= MAX_OPSET:
        raise ArtifactError(f"{where}: opset {opset}; xlstm-export writes opsets {MIN_OPSET}..{MAX_OPSET}")
    if plan is not None and plan.chunk > MAX_PREFILL_CHUNK:
        raise ArtifactError(f"{where}: its contract declares a prefill chunk of {plan.chunk} tokens; xlstm-export "
                            f"writes at most {MAX_PREFILL_CHUNK}")
    head = next((i for i in model.graph.initializer if i.name == "lm_head.weight.0"), None)
    block = int(head.dims[0]) if head is not None and len(head.dims) == 2 and head.dims[0] > 0 else max(
        COREML_MAX_DIM, graph.config.vocab_size)  # LM head split in row blocks (an API option)
    options = OnnxOptions(scan=c.get("target") == "onnx-scan", batch_size=runner.batch_size, precision=precision,
                          opset=opset, lm_head_block=block, prefill_chunk=plan.chunk if plan else None,
                          last_logits_only=plan.last_logits_only if plan else False)
    what = (f"its declaration ({c.get('target')} {precision}, batch {runner.batch_size}"
            + (f", prefill chunk {plan.chunk}" if plan else "") + ")")
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


def open_runner(path: str | Path, graph: Graph, trust_artifact: bool = False, **opts) -> OnnxRunner:
    """The validation registry's factory: a runner checked against ``graph``'s contract and, unless
    ``trust_artifact``, checked to be what xlstm-export writes for the options it declares (:func:`verify`)."""
    runner = OnnxRunner(path, graph, **opts)
    runner.trusted = bool(trust_artifact)
    if not trust_artifact:
        verify(runner, graph)
    runner.proto = runner.prefill_proto = None  # parsed for the checks only (inline weights)
    return runner


__all__ = ["OnnxRunner", "open_runner", "verify", "PROVIDERS"]


def contract_of(path: Path) -> dict:
    """The graph's I/O contract from its metadata (parsed without its weights; nothing is run)."""
    where = str(path)
    if not Path(path).exists():
        raise ArtifactError(f"{where}: no such ONNX file")
    model = _read_proto(Path(path))
    return parse_contract(next((p.value for p in model.metadata_props if p.key == IO_KEY), None), where)
