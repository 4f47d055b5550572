"""Node names are the same in every graph target: the ONNX step graph's node names and the saved Core ML
program's op names, after the documented mapping (``core_ml_name``: ``.`` -> ``_``), are one set, apart
from precision/storage ops (the ``io`` marker) and what coremltools itself adds or fuses (docs/ARCHITECTURE.md).
"""

from __future__ import annotations

import re

import onnx
import pytest

from xlstm_export.coreml import CoreMLOptions
from xlstm_export.coreml import emit as coreml_emit
from xlstm_export.frontends import load_checkpoint
from xlstm_export.lowering import core_ml_name, is_marked
from xlstm_export.onnx import OnnxOptions
from xlstm_export.onnx import emit as onnx_emit

OURS = re.compile(r"^(blocks_\d+_|embedding|out_norm|lm_head|logits)")  # coremltools names its own ops cast_3, ...


def coreml_names(path) -> set:
    """Non-const op names of the saved program; a ``silu`` that coremltools fused from our sigmoid + mul
    (``mil_backend::fuse_activation_silu``, not switchable through ct.convert) stands for both."""
    import coremltools as ct

    spec = ct.utils.load_spec(str(path))
    fn = spec.mlProgram.functions["main"]
    names = set()
    for op in fn.block_specializations[fn.opset].operations:
        if op.type == "const":
            continue
        name = op.attributes["name"].immediateValue.tensor.strings.values[0]
        names.add(name)
        if op.type == "silu":
            names.add(f"{name}_sigmoid")
    return {n for n in names if OURS.match(n) and not is_marked(n, "_")}


@pytest.mark.parametrize("fixture", ["hf", "hybrid"])
def test_onnx_and_coreml_name_the_same_computations(checkpoint_factory, tmp_path, fixture):
    graph = load_checkpoint(checkpoint_factory(fixture))
    onnx_path = onnx_emit(graph, OnnxOptions(precision="fp16"), tmp_path / "m.onnx").path
    cm_path = coreml_emit(graph, CoreMLOptions(precision="fp16", swift=False), tmp_path / "m.mlpackage").path
    m = onnx.load(str(onnx_path))
    on = {core_ml_name(n.name) for n in m.graph.node if not is_marked(n.name)}
    cm = coreml_names(cm_path)
    block0 = lambda names: {n for n in names if n.startswith("blocks_0_")}  # noqa: E731
    assert len(block0(on)) > 40
    assert block0(on) == block0(cm), (sorted(block0(on) - block0(cm)), sorted(block0(cm) - block0(on)))
    assert on == cm, (sorted(on - cm), sorted(cm - on))  # the whole step, not only block 0
    marked = [n.name for n in m.graph.node if is_marked(n.name)]
    assert marked and all(n.split(".io.")[1] in ("cast", "next") for n in marked)  # only precision ops carry it
