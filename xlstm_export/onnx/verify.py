"""Is an ONNX graph what xlstm-export writes for what its contract declares? (``open_runner``: the
registry's factory, which opens a runner and checks it unless the caller trusts the artifact.)

The options the contract declares (target, precision, compression, batch size, opset, prefill chunk, the
LM head's row block) are read back, the graph(s) xlstm-export builds for them are built here (the
emitter's ``build``), and the runner's skeleton (``runner.verify_written``) compares the contract, the
graph's inputs and outputs, every initializer's name, element type and shape, and which weights are
computed with compressed (not their values, which validation measures). The declared precision picks the
tolerance, so it must be the precision of the actual tensors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict

from ..contract import declared_precision, parse_contract
from ..errors import ArtifactError, UnsupportedError, first_line
from ..graphs import Graph
from ..graphs.io import IO_KEY
from ..runner import ABSENT, Holding, open_verified, verify_written
from .names import TARGET_SCAN, TARGET_STEP
from .runner import OnnxRunner, _compressed_specs, _declared_compression, _head_block


def _signature(values) -> Dict[int, tuple]:
    """Position -> (name, element type, dims) of graph inputs or outputs; a dynamic dim as its parameter name."""
    out = {}
    for i, v in enumerate(values):
        t = v.type.tensor_type
        dims = [d.dim_param if d.HasField("dim_param") else int(d.dim_value) for d in t.shape.dim]
        out[i] = (v.name, int(t.elem_type), dims)
    return out


def _tname(t: int) -> str:
    from onnx import TensorProto

    return TensorProto.DataType.Name(t).lower() if t in TensorProto.DataType.values() else str(t)


def _graph_holdings(got, want, want_tensors: dict, want_nodes: Dict[str, str]) -> list:
    """The artifact's graph against the one xlstm-export builds for its declared options: inputs, outputs
    (position by position), every initializer's name, element type and shape, and the weights the declared
    compression compresses (the compressed nodes, and only those)."""
    out = []
    for label, a, b in (("inputs", _signature(got.graph.input), _signature(want.graph.input)),
                        ("outputs", _signature(got.graph.output), _signature(want.graph.output))):
        def io_line(i, x, y, others, label=label, a=a, b=b) -> str:
            if x is ABSENT or y is ABSENT:
                return (f"graph {label} {[n for n, _, _ in a.values()][:6]} differ from "
                        f"{[n for n, _, _ in b.values()][:6]}")
            return (f"graph {label[:-1]} {x[0]!r} is {_tname(x[1])} {x[2]}, xlstm-export writes {y[0]!r} "
                    f"{_tname(y[1])} {y[2]}")

        out.append(Holding(a, b, io_line, first=("wrong",)))

    def tensor_line(n, x, y, others) -> str:
        if y is ABSENT:
            return f"it has tensor {n!r}, which xlstm-export does not write"
        if x is ABSENT:
            return f"it lacks tensor {n!r}"
        return (f"tensor {n!r} is {_tname(x[0])} {x[1]}, xlstm-export writes {_tname(y[0])} {y[1]}"
                + (f" (and {others} more)" if others else ""))

    tensors = {i.name: (int(i.data_type), [int(d) for d in i.dims]) for i in got.graph.initializer}
    out.append(Holding(tensors, want_tensors, tensor_line, first=("wrong", "extra", "missing")))
    out.append(Holding(_compressed_nodes(got), want_nodes, lambda n, x, y, others: (
        f"weight {n!r} is {'not compressed' if x is ABSENT else x}, xlstm-export writes "
        f"{'it uncompressed' if y is ABSENT else y}")))
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
    from ..lowering import MAX_PREFILL_CHUNK
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
    options = OnnxOptions(scan=c.get("target") == TARGET_SCAN, batch_size=runner.batch_size, precision=precision,
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
        tensors = {i.name: (int(i.data_type), [int(d) for d in i.dims]) for i in ms.initializers}
        verify_written(str(path), what, runner.noun, actual, expected, _graph_holdings(got, want, tensors, want_nodes))


def open_runner(path: str | Path, graph: Graph, trust_artifact: bool = False, **opts) -> OnnxRunner:
    """The registry's factory: a runner checked against ``graph``'s contract and, unless ``trust_artifact``,
    checked to be what xlstm-export writes for the options it declares (:func:`verify`)."""
    return open_verified(OnnxRunner, verify, path, graph, trust_artifact, **opts)


__all__ = ["open_runner", "verify"]
