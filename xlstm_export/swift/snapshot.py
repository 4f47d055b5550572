"""State snapshots in the Swift core's format (``Core/StateSnapshot.swift``), so a context saved by one side is
restored by the other, bit for bit. One flat little-endian file:

    b"XLSTMST1"
    count                                   u32
    per state: name length u32, name (UTF-8), rank u32, dims u64 x rank, byte count u64, bytes

The bytes are the array's elements in C order (``np.ascontiguousarray(a).tobytes()``), little-endian; the dtype
is the reader's to know (Core ML states are float16).
"""

from __future__ import annotations

import struct
from typing import List, Sequence, Tuple

import numpy as np

from ..errors import ArtifactError

MAGIC = b"XLSTMST1"


def write_snapshot(states: Sequence[Tuple[str, np.ndarray]]) -> bytes:
    """``(name, array)`` pairs -> the snapshot's bytes."""
    out = [MAGIC, struct.pack("<I", len(states))]
    for name, a in states:
        a = np.asarray(a)
        data = a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes(order="C")
        raw = name.encode("utf-8")
        out += [struct.pack("<I", len(raw)), raw, struct.pack("<I", a.ndim), struct.pack(f"<{a.ndim}Q", *a.shape),
                struct.pack("<Q", len(data)), data]
    return b"".join(out)


def read_snapshot(data: bytes, where: str = "state snapshot") -> List[Tuple[str, Tuple[int, ...], bytes]]:
    """The snapshot's ``(name, shape, bytes)`` entries; ArtifactError naming ``where`` when it is not one."""
    if len(data) < 12 or data[:8] != MAGIC:
        raise ArtifactError(f"{where}: not a state snapshot (expected it to start with {MAGIC!r})")
    at = 8

    def take(n: int) -> bytes:
        nonlocal at
        if n < 0 or at + n > len(data):
            raise ArtifactError(f"{where}: truncated at byte {at} (needs {n} more, has {len(data) - at})")
        at += n
        return data[at - n:at]

    entries = []
    for _ in range(struct.unpack("<I", take(4))[0]):
        name = take(struct.unpack("<I", take(4))[0]).decode("utf-8", "replace")
        rank = struct.unpack("<I", take(4))[0]
        shape = struct.unpack(f"<{rank}Q", take(8 * rank))
        entries.append((name, tuple(int(d) for d in shape), take(struct.unpack("<Q", take(8))[0])))
    if at != len(data):
        raise ArtifactError(f"{where}: {len(data) - at} bytes after the last state")
    return entries


__all__ = ["MAGIC", "read_snapshot", "write_snapshot"]
