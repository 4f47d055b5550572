"""coremltools, imported once with its import-time warnings silenced.

On Linux coremltools logs a warning per missing Core ML framework binding, and one about the torch
version, every time it is imported; neither concerns this tool (it builds MIL by hand and never runs
the framework off macOS). Later warnings keep their normal level.
"""

from __future__ import annotations

import logging


def ct():
    log = logging.getLogger("coremltools")
    prev = log.level
    log.setLevel(logging.ERROR)
    try:
        import coremltools
    finally:
        log.setLevel(prev)
    return coremltools
