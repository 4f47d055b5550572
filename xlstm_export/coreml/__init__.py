"""Core ML target: a stateful MIL decode program built by the shared lowering over the MIL backend
(``backend``, ``emit``), a Linux executor of saved packages (``executor``), the validation runner
(``runner``) and the Swift snippet (``swift``).

Importing this package is cheap; coremltools loads inside the functions that need it.
"""

from .emit import COMPUTE_UNITS, Artifact, CoreMLOptions, contract_for, emit

__all__ = ["Artifact", "COMPUTE_UNITS", "CoreMLOptions", "contract_for", "emit"]
