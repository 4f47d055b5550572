"""xlstm-export: compile xLSTM checkpoints to on-device formats with parity validation.

Importing the package is cheap: heavy dependencies (torch, onnx, coremltools) load only where used.
"""

__version__ = "0.1.0"
