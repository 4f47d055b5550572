"""Is a ``.mlpackage`` what xlstm-export writes for what its contract declares? (``open_runner``: the
registry's factory, which opens a runner and checks it unless the caller trusts the artifact.)

The options the contract declares (precision, compression, batch size, prefill chunk) are read back; the
contract xlstm-export writes for them, each function's inputs, outputs and states, the weights the
declared compression compresses and the dtype and shape of every constant the lowering makes
(``lowering.inventory``) are compared with the package's by the runner's skeleton
(``runner.verify_written``), not their values, which validation measures. The declared precision picks
the tolerance, so it must be the precision of the actual tensors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, List, Optional, Tuple

import numpy as np

from ..contract import declared_precision
from ..graphs import Graph
from ..runner import ABSENT, Holding, declared_compression, open_verified, verify_written
from .names import MAIN_FUNCTION, PREFILL_FUNCTION, TARGET
from .runner import CoreMLRunner, function_description


def _feature(f) -> Tuple[str, Optional[List[int]]]:
    """(data type name, shape) of a multi-array input/output or a state of a function description."""
    from coremltools.proto import FeatureTypes_pb2 as ft

    which = f.type.WhichOneof("Type")
    arr = f.type.multiArrayType if which == "multiArrayType" else (
        f.type.stateType.arrayType if which == "stateType" else None)
    if arr is None:
        return str(which), None
    try:
        name = ft.ArrayFeatureType.ArrayDataType.Name(arr.dataType)
    except ValueError:
        name = str(arr.dataType)
    return name, [int(d) for d in arr.shape]


def _holdings(runner: CoreMLRunner, graph: Graph, policy, compression, last: bool) -> Iterator[Holding]:
    """Each function's inputs, outputs and states; then (the program read) the compressed weights and the
    constants, against what xlstm-export writes."""
    from ..lowering import core_ml_name
    from ..lowering.inventory import constants
    from ..lowering.quant import compressed_weights_of
    from .backend import stored_states
    from .executor import _np_dtype, load_program

    plan, B, V = runner.prefill, runner.batch_size, graph.config.vocab_size
    states = {cm: ("FLOAT16", list(shape)) for _, cm, shape, _ in stored_states(graph, B, policy)}
    for fname, T in ((MAIN_FUNCTION, 1), (PREFILL_FUNCTION, plan.chunk if plan else None)):
        if T is None:
            continue
        fn = function_description(runner.spec, fname)
        want = {"input": {"input_ids": ("INT32", [B, T])},
                "output": {"logits": ("FLOAT32", [B, 1 if fname != MAIN_FUNCTION and last else T, V])},
                "state": states}
        for kind, expected in want.items():
            got = {f.name: _feature(f) for f in getattr(fn, kind)} if fn is not None else {}
            yield Holding(got, expected, lambda n, x, y, others, fname=fname, kind=kind: (
                f"function {fname!r} {kind} {n!r} is {'missing' if x is ABSENT else x}, xlstm-export writes "
                f"{'none' if y is ABSENT else y}"))
    prog = runner._executor.prog if getattr(runner, "_executor", None) is not None else load_program(runner.path)[0]
    found, compressed = {}, {}
    for func in prog.functions.values():
        for op in func.operations:
            val = op.outputs[0].val if op.op_type == "const" else None
            if isinstance(val, np.ndarray):
                found.setdefault(op.name, (str(val.dtype), tuple(val.shape)))
            elif op.op_type.startswith("constexpr_"):
                out = op.outputs[0]
                found.setdefault(op.name, (str(np.dtype(_np_dtype(out))), tuple(int(d) for d in out.shape)))
                compressed[op.name] = op.op_type
    # the weights the declared compression compresses, and only those
    want = {} if compression is None else {
        core_ml_name(owner.key): ("constexpr_lut_to_dense" if sch.is_lut else "constexpr_blockwise_shift_scale")
        for _, sch, owner in compressed_weights_of(graph, policy, compression, B)}

    def weight_line(n, x, y, others) -> str:
        if compression is None:
            return f"weight {n!r} is compressed ({x}), but its contract declares no quantization"
        return (f"weight {n!r} is {'not compressed' if x is ABSENT else x}, xlstm-export writes "
                f"{'it uncompressed' if y is ABSENT else y}")

    yield Holding(compressed, want, weight_line)
    names = {"fp16": "float16", "fp32": "float32"}
    table = constants(graph, policy, B, plan.chunk if plan else None, last)
    keys = {core_ml_name(k): k for k in table}
    wanted = {core_ml_name(k): (names[dtype], tuple(shape)) for k, (dtype, shape) in table.items()}

    def constant_line(n, x, y, others) -> str:
        if x is ABSENT:
            return f"it lacks the constant {n!r}"
        return f"constant {n!r} is {x[0]} {list(x[1])}, xlstm-export writes {y[0]} {list(y[1])}"

    # in the lowering's order of canonical names; constants the lowering does not list are not judged
    yield Holding(found, wanted, constant_line, extra_allowed=True,
                  order=lambda ns: sorted(ns, key=lambda n: keys.get(n, n)))


def verify(runner: CoreMLRunner, graph: Graph) -> None:
    """Raise ArtifactError unless the package is what xlstm-export writes for the options its contract
    declares (precision, batch size, prefill chunk): the contract itself, each function's inputs, outputs
    and states, and the dtype and shape of every weight and constant the lowering makes
    (``lowering.inventory``; not their values, which validation measures). The declared precision picks
    the tolerance, so it must be the precision of the actual tensors."""
    from .emit import CoreMLOptions, contract_for
    from .policy import policy_for

    where, plan, B = str(runner.path), runner.prefill, runner.batch_size
    precision = declared_precision(runner.contract, where, TARGET, ("fp16", "fp32"))
    last = bool(plan.last_logits_only) if plan else False
    compression = declared_compression(runner.contract, where)
    options = CoreMLOptions(batch_size=B, precision=precision, prefill_chunk=plan.chunk if plan else None,
                            last_logits_only=last, compression=compression)
    what = f"its declaration ({TARGET} {precision}, batch {B}" + (f", prefill chunk {plan.chunk})" if plan else ")")
    verify_written(where, what, runner.noun, runner.contract, contract_for(graph, options),
                   _holdings(runner, graph, policy_for(precision), compression, last))


def open_runner(path: str | Path, graph: Graph, trust_artifact: bool = False, **opts) -> CoreMLRunner:
    """The registry's factory for ``.mlpackage`` artifacts: checked against ``graph``'s contract and, unless
    ``trust_artifact``, checked to be what xlstm-export writes for what it declares (:func:`verify`)."""
    return open_verified(CoreMLRunner, verify, path, graph, trust_artifact, **opts)


__all__ = ["open_runner", "verify"]
