"""The ExecuTorch target: ``.pte`` programs (XNNPACK on CPU, or the Core ML delegate), the reference model exported with ``torch.export``. See ``emit.py``; ``runner.py`` executes them with ``executorch.runtime``; ``target.py`` declares the target.

Importing this package is cheap: its modules load when first used.
"""

from .._lazy import lazy_exports

__getattr__, __all__ = lazy_exports(__name__, {'BACKENDS': 'emit', 'ExecuTorchOptions': 'emit', 'contract_for': 'emit'})
