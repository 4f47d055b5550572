"""ONNX target: a decode step graph for ORT's Core ML EP, a Scan sequence graph and a chunkwise prefill graph (``emit.py``), the runner over ONNX Runtime (``runner.py``), the declaration (``target.py``).

Importing this package is cheap: its modules load when first used.
"""

from .._lazy import lazy_exports

__getattr__, __all__ = lazy_exports(__name__, {'Artifact': 'emit', 'OnnxOptions': 'emit', 'OnnxRunner': 'runner', 'open_runner': 'verify'})
