"""TorchScript target: the reference model scripted whole, with the I/O contract as an extra file."""

from .emit import PRECISIONS, Artifact, TorchScriptOptions, contract_for, emit, script_model

__all__ = ["PRECISIONS", "Artifact", "TorchScriptOptions", "contract_for", "emit", "script_model"]
