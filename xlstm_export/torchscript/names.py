"""What the TorchScript emitter, runner and archive check all name. The runner imports these from here,
never from the emitter."""

from ..graphs.io import IO_KEY

TARGET = "torchscript"
PRECISIONS = ("fp32", "fp16", "bf16")
CONTRACT_RECORD = f"extra/{IO_KEY}"  # the archive record holding the I/O contract (an extra file)

__all__ = ["CONTRACT_RECORD", "PRECISIONS", "TARGET"]
