"""TorchScript target: the reference model scripted whole, with the I/O contract as an extra file (``emit.py``), its runner and archive checks (``runner.py``, ``trust.py``), the declaration (``target.py``).

Importing this package is cheap: its modules load when first used.
"""

import importlib

_LAZY = {'PRECISIONS': 'emit', 'Artifact': 'emit', 'TorchScriptOptions': 'emit', 'contract_for': 'emit', 'script_model': 'emit'}


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(_LAZY)
