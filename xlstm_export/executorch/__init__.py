"""The ExecuTorch target: ``.pte`` programs (XNNPACK on CPU, or the Core ML delegate), the reference model exported with ``torch.export``. See ``emit.py``; ``runner.py`` executes them with ``executorch.runtime``; ``target.py`` declares the target.

Importing this package is cheap: its modules load when first used.
"""

import importlib

_LAZY = {'BACKENDS': 'emit', 'ExecuTorchOptions': 'emit', 'contract_for': 'emit'}


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(_LAZY)
