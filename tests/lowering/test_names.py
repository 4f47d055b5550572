"""Node names are the same in every graph target: the ONNX step graph's node names and the saved Core ML
program's op names, after the documented mapping (``core_ml_name``: ``.`` -> ``_``), are one set, apart
from precision/storage ops (the ``io`` marker) and what coremltools itself adds or fuses (docs/ARCHITECTURE.md).
"""

from __future__ import annotations

import re

import onnx
import pytest

from xlstm_export.lowering import core_ml_name, is_marked
from xlstm_export.targets import KINDS

OURS = re.compile(r"^(blocks_\d+_|embedding|out_norm|lm_head|logits)")  # coremltools names its own ops cast_3, ...


def coreml_names(path, function: str = "main") -> set:
    """Non-const op names of the saved program; a ``silu`` that coremltools fused from our sigmoid + mul
    (``mil_backend::fuse_activation_silu``, not switchable through ct.convert) stands for both."""
    import coremltools as ct

    spec = ct.utils.load_spec(str(path))
    fn = spec.mlProgram.functions[function]
    names = set()
    for op in fn.block_specializations[fn.opset].operations:
        if op.type == "const":
            continue
        name = op.attributes["name"].immediateValue.tensor.strings.values[0]
        names.add(name)
        if op.type == "silu":
            names.add(f"{name}_sigmoid")
    return {n for n in names if OURS.match(n) and not is_marked(n, "_")}


@pytest.mark.parametrize("mode", ["step", "prefill"])
@pytest.mark.parametrize("fixture", ["hf", "hybrid"])
def test_onnx_and_coreml_name_the_same_computations(exports, fixture, mode):
    """The decode step (ONNX step graph vs Core ML ``main``) and the prefill chunk (``model.prefill.onnx`` vs
    the ``prefill`` function). The packages are the session's (tests/coreml's, the ``coreml-prefill`` kind's)."""
    chunk = 8 if mode == "prefill" else None
    art = exports(fixture, "onnx", precision="fp16", prefill_chunk=chunk)
    assert KINDS["coreml-prefill"].fixed == {"prefill_chunk": 8}
    cm_path = exports(fixture, "coreml-prefill" if chunk else "coreml", precision="fp16").path
    m = onnx.load(str(art.files[1] if chunk else art.path), load_external_data=False)
    on = {core_ml_name(n.name) for n in m.graph.node if not is_marked(n.name)}
    cm = coreml_names(cm_path, "prefill" if chunk else "main")
    # coremltools folds a transpose into the matmul or reshape next to it (``merge_consecutive_transposes``,
    # ``fuse_transpose_matmul``): the prefill's head-layout transposes may be absent from Core ML
    transposes = {core_ml_name(n.name) for n in m.graph.node if n.op_type == "Transpose"}
    # and it computes ops on constants at build time (the conv taps: slices of the conv weight)
    consts = {i.name for i in m.graph.initializer}
    folded = {core_ml_name(n.name) for n in m.graph.node if all(i in consts for i in n.input)}
    on -= (transposes | folded) - cm
    block0 = lambda names: {n for n in names if n.startswith("blocks_0_")}  # noqa: E731
    assert len(block0(on)) > 40
    assert block0(on) == block0(cm), (sorted(block0(on) - block0(cm)), sorted(block0(cm) - block0(on)))
    assert on == cm, (sorted(on - cm), sorted(cm - on))  # the whole step, not only block 0
    marked = [n.name for n in m.graph.node if is_marked(n.name)]
    assert marked and all(n.split(".io.")[1] in ("cast", "next") for n in marked)  # only precision ops carry it
