"""The tolerance table lives in ``xlstm_export/tolerances.py`` (importable without numpy, so the target
registry and the CLI's ``--help`` stay light); validation reads it from here."""

from ..tolerances import BF16, FP16, FP32, REFERENCE, Tolerance, tolerance_for, tolerances

__all__ = ["BF16", "FP16", "FP32", "REFERENCE", "Tolerance", "tolerance_for", "tolerances"]
