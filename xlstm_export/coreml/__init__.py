"""Core ML target: a stateful MIL decode program built by the shared lowering over the MIL backend
(``backend``, ``emit``), a Linux executor of saved packages (``executor``), the validation runner
(``runner``), the Swift snippet (``swift``) and the target's declaration (``target``).

Importing this package is cheap: its modules load when first used, coremltools inside the functions that
need it.
"""

from .._lazy import lazy_exports

__getattr__, __all__ = lazy_exports(__name__, {"Artifact": "emit", "COMPUTE_UNITS": "emit", "CoreMLOptions": "emit", "contract_for": "emit"})
