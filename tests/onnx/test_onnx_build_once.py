"""An export followed by its validation lowers the model once: verification compares the written graphs with
the graphs the export built (the same graph object and options), and lowers again for anything else."""

from __future__ import annotations

import pytest

pytest.importorskip("onnxruntime")

import xlstm_export as xe  # noqa: E402
from xlstm_export import lowering  # noqa: E402


def test_export_and_validate_lower_each_graph_once(graph_of, tmp_path, monkeypatch):
    calls = {"step": 0, "prefill": 0}
    for mode in calls:
        real = getattr(lowering, mode)

        def counted(*a, _real=real, _mode=mode, **k):
            calls[_mode] += 1
            return _real(*a, **k)

        monkeypatch.setattr(lowering, mode, counted)
    graph = graph_of("hf")
    done = xe.export_and_validate(graph, "onnx", tmp_path / "m.onnx", prefill_chunk=4, steps=2)
    assert done.validation.passed, done.validation.summary_line()
    assert calls == {"step": 1, "prefill": 1}
    # another graph object of the same checkpoint is verified against its own lowering
    other = xe.load_checkpoint(graph.source)
    assert xe.validate(tmp_path / "m.onnx", other, steps=1, prompts=1).passed
    assert calls == {"step": 2, "prefill": 2}
