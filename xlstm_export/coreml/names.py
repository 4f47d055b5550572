"""What the Core ML emitter and runner both name: the target, the package's functions, the compute units.
The runner imports these from here, never from the emitter."""

TARGET = "coreml"
MAIN_FUNCTION = "main"  # one decode step
PREFILL_FUNCTION = "prefill"  # with --prefill-chunk T: T prompt tokens per prediction, same states
COMPUTE_UNITS = ("all", "cpu_and_gpu", "cpu_only", "cpu_and_ne")

__all__ = ["COMPUTE_UNITS", "MAIN_FUNCTION", "PREFILL_FUNCTION", "TARGET"]
