"""ONNX target: a decode step graph for ORT's Core ML EP, a Scan sequence graph and a chunkwise prefill graph (``emit.py``), the runner over ONNX Runtime (``runner.py``), the declaration (``target.py``).

Importing this package is cheap: its modules load when first used.
"""

import importlib

_LAZY = {'Artifact': 'emit', 'OnnxOptions': 'emit', 'OnnxRunner': 'runner', 'open_runner': 'runner'}


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(_LAZY)
