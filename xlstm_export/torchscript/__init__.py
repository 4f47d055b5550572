"""TorchScript target: the reference model scripted whole, with the I/O contract as an extra file (``emit.py``), its runner and archive checks (``runner.py``, ``trust.py``), the declaration (``target.py``).

Importing this package is cheap: its modules load when first used.
"""

from .._lazy import lazy_exports

__getattr__, __all__ = lazy_exports(__name__, {'PRECISIONS': 'emit', 'Artifact': 'emit', 'TorchScriptOptions': 'emit', 'contract_for': 'emit', 'script_model': 'emit'})
