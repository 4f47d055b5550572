"""ONNX emitter: a decode step graph (default) or a Scan sequence graph, written by hand from the IR.

Step graph (``target "onnx"``), static shapes, for ORT's Core ML EP::

    input_ids (B, 1) int64 --Gather(embedding)--> (B, E) --block 0..N-1--> head --> logits (B, 1, V) fp32
    <state> (contract shape)  ------------------------^   \\--> <state>.next (contract shape)

Only the Gather of the embedding lies outside the Core ML EP's op set; every other node is one
partition (``onnxruntime.tools.check_onnx_model_mobile_usability`` checks it in the tests).

Scan graph (``target "onnx-scan"``), T dynamic::

    input_ids (B, T) -> Gather -> (B, T, E) -> Transpose (T, B, E) -> Scan(body: blocks on (B, E), carrying
    the states) -> (T, B, E) -> Transpose -> head -> logits (B, T, V);  final states -> <state>.next

Prefill graph (``--prefill-chunk T``), written *with* the step graph, the weights once in one shared data
file (``model.onnx`` + ``model.prefill.onnx`` + ``model.onnx.data``)::

    input_ids (B, T) int64, T static --Gather--> rows (B*T, E) --blocks, chunkwise--> head --> logits (B, T, V)
    <state> (the step graph's contract) ------------------------^  \\--> <state>.next

mLSTM blocks run the chunkwise form (``lowering.layers.mlstm_chunk``: the cumulative gate sum is a
matmul with a constant lower-triangular matrix, the causal mask a constant), sLSTM blocks are unrolled
over the T steps. Like the step graph, only the embedding Gather lies outside the Core ML EP's op set.
A prompt of L tokens is floor(L / T) prefill calls, then L mod T step calls, then decoding; the step
graph's contract names its prefill companion (``"prefill"``), so runners and ``validate`` use both.
``--last-logits-only``: the prefill graph returns logits (B, 1, V) of the chunk's last position.

All are built by the shared lowering (``lowering/``) over the ONNX backend (``backend.py``); the Scan
body runs ``lowering.model.blocks`` (the step lowerings), the head runs once over all B*T rows.

Precision: ``fp32``, or ``fp16`` weights and activations with the recurrent cells and states in fp32
(Casts around each cell; norm reductions are fp32 in both, as in the reference). Chosen by a one-off
measurement during development (not re-run by the tests, which bound fp16 at 3e-2 over a prompt +
decode steps): Scan graphs over 768 tokens of the test fixtures, against the fp32 reference, max rel logits / states
were <= 3.1e-3 / 1.5e-3 with fp32 cells and <= 1.0e-2 / 9.1e-3 with fp16 cells and states (the
stabilizer m and the normaliser n lose most); fp32 cells cost a few Casts per block.
A measurement can pass a ``PrecisionPolicy`` of its own (``OnnxOptions.policy``). Logits are always
fp32; the states' dtype is in the contract (``xlstm_export.io``).

Compressed weights (``compression``, ``--quantize int8|int4``): the weights the compression's policy
compresses are stored as codes + block scales (``quant.py``): ``MatMulNBits`` nodes (com.microsoft; ORT's
CPU and mobile EPs) or, with ``quantize_format="qdq"``, blocked ``DequantizeLinear -> MatMul`` (opset 21,
for EPs that take QDQ graphs); the embedding is a Gather of int8 codes in both. The contract declares the
compression (``"quantize"``, ``"quantize_format"``), the runner decodes the weights (``compressed_weights``).

Files: ``model.onnx``, plus ``model.onnx.data`` when the weights reach ``external_data_threshold``
(2 GB; protobuf cannot hold more), written one tensor at a time.
"""

from __future__ import annotations

import time
import weakref
from collections import OrderedDict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional, Tuple

import onnx
from onnx import helper

from .. import __version__, lowering, progress
from ..errors import UnsupportedError
from ..graphs import Graph
from ..graphs.io import IO_KEY, dumps, io_contract
from ..lowering import PrecisionPolicy, check_prefill_chunk
from .policy import policy_for
from ..lowering.inventory import weight_specs
from ..lowering.precision import STATE_ROLES
from ..lowering.quant import Compression, check_blocks
from ..contract import judged_precision
from ..outputs import Artifact
from ..target import Build
from .target import DATA_SUFFIX, prefill_path_for
from .backend import ELEM, OnnxOps
from .builder import COREML_OPS, DTYPE_NAME, I64, BuildError, GraphBuilder, ModelState
from .names import COREML_MAX_DIM, TARGET_SCAN, TARGET_STEP
from .quant import FORMATS, QuantCache, check_compression, opset_for
from .writer import External, write_model

MIN_OPSET, MAX_OPSET = 17, 26  # 17: LayerNormalization (GELU needs 20); 26: what ORT 1.31 loads
DEFAULT_OPSET = 20
EXTERNAL_DATA_THRESHOLD = 2_000_000_000  # bytes of weights from which the data goes to a side file


@dataclass(frozen=True)
class OnnxOptions:
    scan: bool = False  # the Scan sequence graph instead of the decode step
    batch_size: int = 1
    precision: str = "fp32"  # weights / activations; norms, cells and states stay fp32 (onnx/policy.py)
    opset: int = DEFAULT_OPSET
    force: bool = False  # replace an existing output
    lm_head_block: int = COREML_MAX_DIM  # LM head row blocks (split when V is larger)
    external_data: Optional[bool] = None  # None: when the weights reach external_data_threshold
    external_data_threshold: int = EXTERNAL_DATA_THRESHOLD
    policy: Optional[PrecisionPolicy] = None  # measurements only (benchmarks/): replaces the named policy
    prefill_chunk: Optional[int] = None  # T: also write the chunkwise prefill graph (<stem>.prefill.onnx)
    last_logits_only: bool = False  # the prefill graph returns the chunk's last logits only
    compression: Optional[Compression] = None  # --quantize: compressed weights (lowering/quant.py, quant.py)
    quantize_format: str = "matmulnbits"  # how a compressed Linear is written: quant.FORMATS


def state_output_name(name: str) -> str:
    """The output carrying a state's new value: ``blocks.0.mlstm.c`` -> ``blocks.0.mlstm.c.next``."""
    return f"{name}.next"


def check_options(options: OnnxOptions) -> PrecisionPolicy:
    if not isinstance(options.batch_size, int) or isinstance(options.batch_size, bool) or options.batch_size < 1:
        raise UnsupportedError(f"onnx: batch size must be a positive integer, got {options.batch_size!r}")
    if not isinstance(options.opset, int) or not MIN_OPSET <= options.opset <= MAX_OPSET:
        raise UnsupportedError(f"onnx: opset must be in [{MIN_OPSET}, {MAX_OPSET}] (ORT 1.31 loads <= 26; "
                               f"LayerNormalization needs >= {MIN_OPSET}), got {options.opset!r}")
    if not isinstance(options.lm_head_block, int) or options.lm_head_block < 1:
        raise UnsupportedError(f"onnx: lm_head_block must be a positive integer, got {options.lm_head_block!r}")
    if options.prefill_chunk is not None and options.scan:
        raise UnsupportedError("onnx: --prefill-chunk and --scan are two sequence graphs; choose one")
    if options.last_logits_only and options.prefill_chunk is None:
        raise UnsupportedError("onnx: --last-logits-only applies to the prefill graph; add --prefill-chunk T")
    check_compression(options.compression, options.quantize_format)
    if options.compression is None and options.quantize_format != "matmulnbits":
        raise UnsupportedError(f"onnx: --quantize-format {options.quantize_format} applies to compressed weights; "
                               f"add --quantize int8|int4")
    policy = policy_for(options.precision, options.policy)
    dtypes = {policy.storage(r).dtype for r in STATE_ROLES}
    if len(dtypes) != 1 or any(policy.storage(r).split for r in STATE_ROLES):
        raise UnsupportedError(f"onnx: policy {policy.name!r} stores states unevenly or split; ONNX states are "
                               f"plain tensors of one dtype")
    return policy


def state_dtype(policy: PrecisionPolicy) -> int:
    return ELEM[policy.storage("c").dtype]


def contract_for(graph: Graph, options: OnnxOptions, out_path: Optional[Path] = None, prefill: bool = False) -> dict:
    """The I/O contract of the step (or Scan) graph; ``prefill``: of the prefill graph. With a prefill chunk
    both name each other: ``"prefill": {"path", "chunk", "last_logits_only"}`` in the step graph's,
    ``"step": {"path"}`` in the prefill graph's (paths relative to the graph's folder)."""
    policy = policy_for(options.precision, options.policy)
    T = options.prefill_chunk
    io = io_contract(
        graph, batch_size=options.batch_size, seq_len=T if prefill else (None if options.scan else 1),
        ids_dtype="int64", logits_dtype="float32", state_dtype=DTYPE_NAME[state_dtype(policy)],
        state_input=lambda n: n, state_output=state_output_name, target=TARGET_SCAN if options.scan else TARGET_STEP,
        precision=options.precision if options.policy is None else policy.name)
    if T is not None:
        out_path = Path(out_path or "model.onnx")
        if prefill:
            io["outputs"][0]["shape"][1] = 1 if options.last_logits_only else T
            io["step"] = {"path": out_path.name}
        io["prefill"] = {"path": prefill_path_for(out_path).name, "chunk": T,
                         "last_logits_only": bool(options.last_logits_only)}
    if options.compression is not None:
        io["quantize"] = options.compression.to_json()
        io["quantize_format"] = options.quantize_format
    return io


# The last graphs built (the lowering run once per export): an export followed by its validation in the same
# process verifies the written files against these instead of lowering again. Only uncompressed graphs of the
# package's own policies (their options compare by value); keyed by the Graph object itself (held weakly).
_RECENT: "OrderedDict[tuple, tuple]" = OrderedDict()
_RECENT_SIZE = 2


def _recent_key(graph: Graph, options: OnnxOptions, prefill: bool, out_path: Optional[Path]) -> Optional[tuple]:
    if options.compression is not None or options.policy is not None:
        return None
    return (id(graph), replace(options, force=False), prefill, out_path.name if out_path is not None else None)


def build(graph: Graph, options: OnnxOptions, prefill: bool = False,
          out_path: Optional[Path] = None, quant_cache: Optional[QuantCache] = None
          ) -> Tuple[onnx.ModelProto, ModelState]:
    """The ModelProto (no initializer data) and its lazy initializers: the step or Scan graph, or with
    ``prefill`` the prefill graph of ``options.prefill_chunk`` tokens. ``quant_cache``: shared by the
    graphs written together (each compressed weight quantized once). The same graph and options built last
    (an export, then its verification) are not lowered again: the built graph is returned as it was."""
    key = _recent_key(graph, options, prefill, out_path)
    hit = _RECENT.get(key) if key is not None else None
    if hit is not None and hit[0]() is graph:
        _RECENT.move_to_end(key)
        return hit[1], hit[2]
    model, ms = _build(graph, options, prefill, out_path, quant_cache)
    if key is not None:
        _RECENT[key] = (weakref.ref(graph), model, ms)
        while len(_RECENT) > _RECENT_SIZE:
            _RECENT.popitem(last=False)
    return model, ms


def _build(graph: Graph, options: OnnxOptions, prefill: bool, out_path: Optional[Path],
           quant_cache: Optional[QuantCache]) -> Tuple[onnx.ModelProto, ModelState]:
    policy = check_options(options)
    B, E, V = options.batch_size, graph.config.embedding_dim, graph.config.vocab_size
    contract = graph.state_contract(B)
    selem = state_dtype(policy)
    opset = opset_for(options.opset, options.compression, options.quantize_format)
    ms = ModelState(opset)
    name = "xlstm_prefill" if prefill else ("xlstm_scan" if options.scan else "xlstm_step")
    b = GraphBuilder(ms, name)
    T = options.prefill_chunk if prefill else ("T" if options.scan else 1)
    ops = OnnxOps(b, graph, policy, B, options.lm_head_block, tokens=T if prefill else 1,
                  compression=options.compression, quantize_format=options.quantize_format, quant_cache=quant_cache)
    ids = b.input("input_ids", I64, [B, T])
    states = {s.name: b.input(s.name, selem, s.shape) for s in contract}
    if prefill:
        ops.state_in = states
        logits = lowering.prefill(ops, ids, options.last_logits_only)  # (B, T | 1, V)
        new_states = ops.state_out
    elif not options.scan:
        ops.state_in = states
        logits = lowering.step(ops, ids)  # (B, 1, V)
        new_states = ops.state_out
    else:
        x = lowering.model.embed_sequence(ops, ids)  # (T, B, E)
        body = GraphBuilder(ms, f"{name}_body")
        body_ops = ops.on(body)
        body_ops.state_in = {s.name: body.input(f"scan.{s.name}", selem, s.shape) for s in contract}
        x_t = body.input("scan.x", ELEM[policy.stream], [B, E])
        y_t = lowering.model.blocks(body_ops, x_t, "step")
        for s in contract:
            body.output(body_ops.state_out[s.name], f"scan.{state_output_name(s.name)}", s.shape)
        body.output(y_t, "scan.y", [B, E])
        outs = b.op("Scan", [states[s.name] for s in contract] + [x], "scan", n_out=len(contract) + 1,
                    body=body.to_graph("one decode step of every block on a (B, E) time slice"),
                    num_scan_inputs=1)
        ms.dtypes[outs[-1]] = ELEM[policy.stream]
        new_states = {s.name: v for s, v in zip(contract, outs[:-1])}
        x = b.reshape(b.transpose(outs[-1], [1, 0, 2], "scan.batch_major"), [-1, E], "head.rows")  # (B*T, E)
        logits = lowering.model.head(ops, x, (B, -1))  # (B, T, V)
    b.output(logits, "logits", [B, 1 if prefill and options.last_logits_only else T, V])
    for s in contract:
        b.output(new_states[s.name], state_output_name(s.name), s.shape)

    io = contract_for(graph, options, out_path, prefill)
    doc = _doc(graph, options, prefill)
    imports = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, v) for d, v in sorted(ms.domains.items())]
    model = helper.make_model(
        b.to_graph(doc), opset_imports=imports,
        producer_name="xlstm-export", producer_version=__version__, doc_string=doc,
        ir_version=helper.find_min_ir_version_for([helper.make_opsetid("", opset)]))
    helper.set_model_props(model, {IO_KEY: dumps(io)})
    if not options.scan:
        _check_coreml_ops(model, name, options.compression is not None)
    return model, ms


def _doc(graph: Graph, options: OnnxOptions, prefill: bool = False) -> str:
    cfg = graph.config
    B, T = options.batch_size, options.prefill_chunk
    n = len(graph.state_contract(B))
    if prefill:
        kind = (f"chunkwise prefill of T = {T} tokens: input_ids (B, {T}) int64 -> logits "
                f"{'(B, 1, V) of the last position' if options.last_logits_only else f'(B, {T}, V)'} float32; "
                f"a prompt's remainder (length mod {T}) and the decoding go through the step graph")
    elif options.scan:
        kind = "Scan sequence graph: input_ids (B, T) int64, T dynamic -> logits (B, T, V) float32"
    else:
        kind = "decode step: input_ids (B, 1) int64 -> logits (B, 1, V) float32"
    return (f"xLSTM ({cfg.family} family, {len(graph.blocks)} blocks, vocab {cfg.vocab_size}, "
            f"embedding {cfg.embedding_dim}) {kind}, B = {B}. Every one of the {n} recurrent states is an "
            f"input under its canonical name and an output under '<name>.next'; zeros are the empty "
            f"context; feed each call's outputs to the next. Precision {options.precision}. The I/O "
            f"contract is the JSON in metadata_props['{IO_KEY}']. Written by xlstm-export {__version__}."
            + (f" Weights compressed: {options.compression.label()}"
               f"{'' if options.compression.symmetric else ' asymmetric'} ({options.quantize_format}); the "
               f"contract's 'quantize' says which." if options.compression is not None else ""))


def _check_coreml_ops(model: onnx.ModelProto, what: str, compressed: bool = False) -> None:
    """Every node but the embedding's Gathers (and, with compressed weights, the compressed Linears:
    MatMulNBits, DequantizeLinear) is an op the Core ML EP takes (a bug otherwise)."""
    nodes = list(model.graph.node)
    outside = {"MatMulNBits", "DequantizeLinear"} if compressed else set()
    bad = [f"{n.op_type}:{n.name}" for n in nodes
           if n.op_type not in COREML_OPS and n.op_type not in outside
           and not (n.op_type == "Gather" and n.name.split(".")[0] == "embedding")]
    if nodes[0].op_type != "Gather" or bad:
        raise BuildError(f"onnx {what} graph: nodes outside the Core ML EP's op set: {bad[:8]}")


def build_artifact(graph: Graph, options: OnnxOptions, out_path: Path) -> Build:
    """The ONNX graph of ``graph`` (and with ``prefill_chunk`` the prefill graph ``<stem>.prefill.onnx``, both
    over one data file), lowered once, and its writer: the data go to ``.data`` beside the graph when
    external (a prefill graph, or weights from ``external_data_threshold`` bytes)."""
    t0 = time.perf_counter()
    policy = check_options(options)
    check_prefill_chunk(graph, options.prefill_chunk, TARGET_STEP)
    comp = options.compression
    if comp is not None:
        if comp.method == "gptq" and not comp.hessians:
            raise UnsupportedError("onnx: --quant-method gptq needs calibration (api.calibrate or --calibration)")
        check_blocks(graph, comp, weight_specs(graph, policy, options.batch_size, options.lm_head_block))
    prefill_path = prefill_path_for(out_path) if options.prefill_chunk is not None else None
    cache = QuantCache()
    model, ms = build(graph, options, out_path=out_path, quant_cache=cache)
    pre = None if prefill_path is None else build(graph, options, prefill=True, out_path=out_path, quant_cache=cache)
    weight_bytes = sum(i.nbytes for i in ms.initializers)
    external = prefill_path is not None or (options.external_data if options.external_data is not None else (
        weight_bytes >= options.external_data_threshold))
    data_path = out_path.with_name(out_path.name + DATA_SUFFIX)
    # the step graph (the artifact) first: it moves into place last
    files = (out_path,) if not external else (out_path, data_path) if pre is None else (out_path, prefill_path,
                                                                                      data_path)

    def write(tmps):
        progress.note(f"writing {out_path.name}" + (f" and {data_path.name}" if external else ""))
        stats = write_model(model, ms.initializers, tmps[0], External(tmps[-1], data_path.name) if external else None)
        if pre is not None:
            pstats = write_model(pre[0], pre[1].initializers, tmps[1], shared=stats["external"])
            stats.update(prefill_nodes=len(pre[0].graph.node), prefill_chunk=options.prefill_chunk,
                         prefill_inline_bytes=pstats["inline_bytes"], prefill_shared_bytes=pstats["shared_bytes"])
        stats.pop("external", None)
        stats.update(nodes=len(model.graph.node), weight_bytes=weight_bytes, external=bool(external),
                     seconds=round(time.perf_counter() - t0, 3))
        if comp is not None:
            stats.update(quantize=comp.label(), quantize_format=options.quantize_format,
                         compressed_nodes=sum(n.op_type in ("MatMulNBits", "DequantizeLinear")
                                              for n in model.graph.node))
        return stats

    io = contract_for(graph, options, out_path)
    kind = "onnx-prefill" if pre is not None else io["target"]
    return Build(files, io, kind, judged_precision(io), write)


def emit(graph: Graph, options: OnnxOptions, out_path: str | Path) -> Artifact:
    """Write the ONNX graph of ``graph`` to ``out_path`` (atomically; ``.data`` beside it if external): the
    export pipeline of :class:`~xlstm_export.target.Target` over :func:`build_artifact`."""
    from .target import TARGET

    return TARGET.write(graph, options, out_path)


__all__ = ["OnnxOptions", "Artifact", "emit", "build", "build_artifact", "contract_for", "state_output_name", "prefill_path_for",
           "TARGET_STEP", "TARGET_SCAN", "MIN_OPSET", "MAX_OPSET", "DEFAULT_OPSET", "FORMATS"]
