"""Core ML target: a hand-built stateful MIL decode program (``emit``), a Linux executor of saved
packages (``executor``), the validation runner (``runner``) and the Swift snippet (``swift``).

Importing this package is cheap; coremltools loads inside the functions that need it.
"""

from .emit import COMPUTE_UNITS, Artifact, CoreMLOptions, contract_for, emit
from .lower import LOWERINGS, PRECISIONS, core_ml_name

__all__ = ["Artifact", "COMPUTE_UNITS", "CoreMLOptions", "LOWERINGS", "PRECISIONS", "contract_for", "core_ml_name",
           "emit"]
