"""ExecuTorch emitter: the reference model's decode step (and a chunkwise prefill method) as a ``.pte``.

    graph --build_model--> ReferenceModel --torch.export (no_grad, static shapes)--> ExportedProgram(s)
          --to_edge_transform_and_lower(XNNPACK | Core ML partitioner)--> ExecuTorch program --> model.pte

Methods of the program::

    forward(input_ids (B, 1) int64, *states) -> (logits (B, 1, V) float32, *next states)      the decode step
    prefill(input_ids (B, T) int64, *states) -> (logits (B, T, V), *next states)                with prefill_chunk
    xlstm_export_io() -> str                                                                    the I/O contract

States are explicit inputs and outputs in contract order (the contract's state ``input`` is
``inputs[i]``, ``output`` ``outputs[i]``; zeros are the empty context), not mutable buffers: one state
contract across every target, a context that an app can save, restore or fork by keeping tensors, and the
prefill and step methods sharing states without relying on ExecuTorch sharing mutable buffers across
methods. What it costs: the states are copied in and out per call (at 100M parameters 1.2 M floats per
step against 100 M weights read; ``benchmarks/`` measures the step).

Like the TorchScript target, the program is the reference model itself (exported, not re-lowered per block
kind): it computes the reference's math, the mLSTM prefill in the reference's chunkwise form with chunk T.
For XNNPACK, three export-time changes, same values to fp32 rounding, make the step what XNNPACK runs fastest:
``passes.py`` rewrites view-like ops and norm means into forms XNNPACK takes before partitioning; the cells'
log-sigmoid is traced in elementary ops (``reference.kernels.elementary_logsigmoid``: XNNPACK has no
``log1p``), so an mLSTM step is one XNNPACK partition (the 2-block ``hf`` step was 18, then 5); and in an
fp32 program the linear layers that read one tensor are one fully connected op (``fuse.py``: at 100M
parameters 49 ops per step instead of 121; the step 1.07x and 1.2x the ONNX step graph's speed on ORT in two runs, 2 threads;
``benchmarks/executorch_bench.py``). ``--quantize 8da8w|8da4w`` quantizes linear weights first
(``quantize.py``).
Backends: ``xnnpack`` (CPU: Android, iOS, Linux, macOS; runs here through ``executorch.runtime``), ``coreml``
(the Core ML delegate, iOS 18 / macOS 15, fp16 compute and states: it builds here, runs only on macOS).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from .. import progress
from ..errors import OutputError, UnsupportedError, first_line
from ..graphs import Graph
from ..graphs.io import dumps, io_contract
from ..lowering.model import check_prefill_chunk
from ..reference.kernels import elementary_logsigmoid
from ..quiet import quiet
from ..outputs import Artifact
from ..target import Build
from .fuse import fuse_shared_input_linears
from .passes import xnnpack_friendly_pass
from .names import BACKENDS, CONTRACT_METHOD, PRECISION, PREFILL_METHOD, STEP_METHOD, TARGET, import_executorch
from .quantize import check_scheme, int8_part, parse_keep, plan, quantize_model


@dataclass(frozen=True)
class ExecuTorchOptions:
    backend: str = "xnnpack"
    batch_size: int = 1  # static: the program is exported for one batch size
    prefill_chunk: Optional[int] = None  # T: add the ``prefill`` method of T tokens (same states)
    precision: Optional[str] = None  # None: the backend's (xnnpack fp32, coreml fp16), or the --quantize scheme
    quantize: str = "none"  # none | 8da8w | 8da4w (XNNPACK; see quantize.py)
    group_size: Optional[int] = None  # 8da4w: input channels per int4 group (default 32, a multiple of 32)
    keep: Optional[str] = None  # comma-separated weight name patterns kept fp32 (None: quantize.DEFAULT_KEEP)
    force: bool = False


def check_options(options: ExecuTorchOptions) -> str:
    """The options are valid; returns the precision: the backend's, or the quantization scheme."""
    if options.backend not in BACKENDS:
        raise UnsupportedError(f"executorch: backend must be one of {BACKENDS}, got {options.backend!r}")
    if isinstance(options.batch_size, bool) or not isinstance(options.batch_size, int) or options.batch_size < 1:
        raise UnsupportedError(f"executorch: batch size must be a positive integer, got {options.batch_size!r}")
    check_scheme(options.quantize, options.group_size, options.keep, options.backend)
    precision = PRECISION[options.backend] if options.quantize == "none" else options.quantize
    if options.precision not in (None, precision):
        what = (f"the {options.backend} backend computes in {precision}" if options.quantize == "none" else
                f"--quantize {options.quantize} makes an {precision} program")
        raise UnsupportedError(f"executorch: {what}; got precision {options.precision!r}")
    return precision


def group_size_of(options: ExecuTorchOptions) -> Optional[int]:
    return check_scheme(options.quantize, options.group_size, options.keep, options.backend)


def contract_for(graph: Graph, options: ExecuTorchOptions) -> dict:
    index = {s.name: i for i, s in enumerate(graph.state_contract(options.batch_size))}
    io = io_contract(
        graph, batch_size=options.batch_size, seq_len=1, ids_dtype="int64", logits_dtype="float32",
        state_dtype="float32", state_input=lambda n: f"inputs[{index[n] + 1}]",
        state_output=lambda n: f"outputs[{index[n] + 1}]", target=TARGET, precision=check_options(options))
    io["backend"] = options.backend
    if options.quantize != "none":  # what the program's weights are (verify rebuilds it from these)
        gs = group_size_of(options)
        names = plan(graph, options.quantize, gs, options.keep)
        io["quantization"] = {"scheme": options.quantize, "group_size": gs, "keep": list(parse_keep(options.keep)),
                              "weights": names, "int8_weights": int8_part(options.quantize, names)}
    if options.prefill_chunk is not None:
        io["prefill"] = {"function": PREFILL_METHOD, "chunk": options.prefill_chunk, "last_logits_only": False}
    return io


def _step_module(model):
    """``forward(input_ids, *states) -> (logits, *states)`` over the reference model (what is exported)."""
    import torch

    class Step(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.m = model

        def forward(self, input_ids, *states):
            logits, new = self.m.forward_with_states(input_ids, list(states))
            return (logits, *new)

    return Step()


def export_program(graph: Graph, options: ExecuTorchOptions):
    """The lowered ExecuTorch program (``ExecutorchProgramManager``) of ``graph``."""
    import torch
    from torch.export import export

    to_edge_transform_and_lower = import_executorch().to_edge_transform_and_lower

    from ..reference import build_model

    model = build_model(graph, device="cpu").eval()
    if options.quantize != "none":
        gs = group_size_of(options)
        names = plan(graph, options.quantize, gs, options.keep)
        progress.note(f"quantizing {len(names)} linear weights ({options.quantize}"
                      + (f", groups of {gs}" if gs else ", per channel") + ")")
        with quiet():  # torchao's deprecations
            quantize_model(graph, model, options.quantize, gs, names)
    xnnpack = options.backend == "xnnpack"
    if xnnpack and options.quantize == "none":
        fuse_shared_input_linears(model)  # fewer, larger fully connected ops (fuse.py)
    B = options.batch_size
    states = model.init_states(B)
    methods = {}
    with torch.no_grad(), (elementary_logsigmoid() if xnnpack else contextlib.nullcontext()):
        step = _step_module(model)
        progress.note("torch.export of the decode step")
        with quiet():  # torch.export's notes and deprecations
            methods[STEP_METHOD] = export(step, (torch.zeros(B, 1, dtype=torch.long), *states), strict=False)
        if options.prefill_chunk is not None:
            T = options.prefill_chunk
            model.set_kernel("chunkwise", T)
            progress.note(f"torch.export of the prefill method ({T} tokens, chunkwise)")
            with quiet():
                methods[PREFILL_METHOD] = export(step, (torch.zeros(B, T, dtype=torch.long), *states),
                                                 strict=False)
        progress.note(f"lowering to ExecuTorch ({options.backend})")
        try:
            with quiet():  # the lowering's own prints and logging (coremltools' progress bars, XNNPACK notes)
                return to_edge_transform_and_lower(
                    methods, partitioner=[_partitioner(options.backend)],
                    transform_passes=[xnnpack_friendly_pass()] if options.backend == "xnnpack" else None,
                    constant_methods={CONTRACT_METHOD: dumps(contract_for(graph, options))}).to_executorch()
        except Exception as e:  # the backend's own errors (an op it cannot lower): one line, nothing written
            raise UnsupportedError(f"executorch: the {options.backend} backend cannot lower this model "
                                   f"({type(e).__name__}: {first_line(e)[:300]})") from None


def _partitioner(backend: str):
    if backend == "xnnpack":
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner

        return XnnpackPartitioner()
    import coremltools as ct
    from executorch.backends.apple.coreml.compiler import CoreMLBackend
    from executorch.backends.apple.coreml.partition import CoreMLPartitioner

    spec = CoreMLBackend.generate_compile_specs(minimum_deployment_target=ct.target.iOS18,
                                                compute_precision=ct.precision.FLOAT16)
    return CoreMLPartitioner(compile_specs=spec)


def build(graph: Graph, options: ExecuTorchOptions, out_path: Path) -> Build:
    """The ``.pte`` program of ``graph``: the decode step as method ``forward``, with
    ``options.prefill_chunk`` a ``prefill`` method, the I/O contract as the constant method
    ``xlstm_export_io``; exported and lowered here, written by the returned :class:`Build`."""
    precision = check_options(options)
    check_prefill_chunk(graph, options.prefill_chunk, TARGET)
    contract = contract_for(graph, options)
    program = export_program(graph, options)
    data = program.buffer
    if not data:
        raise OutputError(f"{out_path}: ExecuTorch produced an empty program")
    stats = {"bytes": len(data), "weight_bytes": graph.weight_bytes, "backend": options.backend,
             "quantized_weights": len(contract.get("quantization", {}).get("weights", [])),
             "methods": sorted([STEP_METHOD, CONTRACT_METHOD] + ([PREFILL_METHOD] if options.prefill_chunk else []))}
    kind = TARGET if options.prefill_chunk is None else f"{TARGET}-prefill"

    def write(tmps):
        tmps[0].write_bytes(data)

    return Build((out_path,), contract, kind, precision, write, stats)


def emit(graph: Graph, options: ExecuTorchOptions, out_path: str | os.PathLike) -> Artifact:
    """Write the ``.pte`` of ``graph`` at ``out_path`` (atomically, no clobber without ``options.force``): the
    export pipeline of :class:`~xlstm_export.target.Target` over :func:`build`."""
    from .target import TARGET as _TARGET

    return _TARGET.write(graph, options, out_path)


__all__ = ["ExecuTorchOptions", "BACKENDS", "TARGET", "build", "emit", "contract_for", "export_program", "CONTRACT_METHOD",
           "PREFILL_METHOD"]
