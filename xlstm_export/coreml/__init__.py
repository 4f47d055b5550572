"""Core ML target: a stateful MIL decode program built by the shared lowering over the MIL backend
(``backend``, ``emit``), a Linux executor of saved packages (``executor``), the validation runner
(``runner``), the Swift snippet (``swift``) and the target's declaration (``target``).

Importing this package is cheap: its modules load when first used, coremltools inside the functions that
need it.
"""

import importlib

_LAZY = {"Artifact": "emit", "COMPUTE_UNITS": "emit", "CoreMLOptions": "emit", "contract_for": "emit"}


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(_LAZY)
