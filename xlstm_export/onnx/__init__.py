"""ONNX target: a decode step graph for ORT's Core ML EP, and a Scan sequence graph (``emit.py``)."""

from .emit import Artifact, OnnxOptions, build, emit
from .runner import OnnxRunner
from .verify import open_runner

__all__ = ["Artifact", "OnnxOptions", "build", "emit", "OnnxRunner", "open_runner"]
