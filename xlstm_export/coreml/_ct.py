"""coremltools, imported once with its import-time notes held back.

On Linux coremltools logs a warning per missing Core ML framework binding, and one about the torch
version, every time it is imported; neither concerns this tool (it builds MIL by hand and never runs
the framework off macOS). Later warnings keep their normal level.
"""

from __future__ import annotations

from ..quiet import quiet


def ct():
    with quiet():
        import coremltools
    return coremltools
