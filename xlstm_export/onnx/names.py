"""What the ONNX emitter and runner both name: the contract's targets of the two graphs and the LM head's
row block. The runner imports these from here, never from the emitter."""

TARGET_STEP = "onnx"  # the decode step graph (and its prefill companion)
TARGET_SCAN = "onnx-scan"  # the Scan sequence graph
COREML_MAX_DIM = 16384  # the LM head's rows per block (ORT's Core ML EP takes no larger dim)

__all__ = ["COREML_MAX_DIM", "TARGET_SCAN", "TARGET_STEP"]
