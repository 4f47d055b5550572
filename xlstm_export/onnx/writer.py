"""Writing a model one initializer at a time, so export memory stays about one tensor, not the model.

The ModelProto is built without initializer data; ``write_model`` streams the protobuf encoding of the
whole model to disk, materialising each :class:`~.builder.Initializer` only while it is written::

    ModelProto fields 1-6 | graph(7): [ node, name | initializer ... | inputs, outputs, ... ] | 8, 14, ...

Fields are written in field-number order, exactly as protobuf's own serializer orders them, so the
bytes equal ``SerializeToString()`` of the fully materialised model (a test checks it) and the same
graph gives the same bytes. Inline tensors carry ``raw_data``; with ``external`` every tensor of at
least ``EXTERNAL_MIN_BYTES`` goes to one data file beside the model instead (offsets 4096-aligned),
its TensorProto holding ``data_location = EXTERNAL`` and ``location`` / ``offset`` / ``length``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Dict, Iterable, List, Optional, Tuple

import onnx
from onnx import TensorProto

from .. import progress
from .builder import BuildError, Initializer

EXTERNAL_MIN_BYTES = 1024  # smaller tensors stay inline even in an external-data model (as onnx does)
EXTERNAL_ALIGN = 4096


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _key(field: int) -> bytes:
    return _varint((field << 3) | 2)  # wire type 2: length-delimited


@dataclass(frozen=True)
class External:
    """Where external data goes: the file written now, and the ``location`` recorded in the model."""

    path: Path
    location: str


def _split_fields(msg, field: int):
    """Two copies of ``msg``: fields numbered below ``field``, and fields numbered above it."""
    lo, hi = type(msg)(), type(msg)()
    lo.CopyFrom(msg)
    hi.CopyFrom(msg)
    for desc, _ in msg.ListFields():
        (hi if desc.number < field else lo).ClearField(desc.name)
    lo.ClearField(msg.DESCRIPTOR.fields_by_number[field].name)
    hi.ClearField(msg.DESCRIPTOR.fields_by_number[field].name)
    return lo, hi


def _header(init: Initializer, ext: Optional[Tuple[str, int]]) -> bytes:
    t = TensorProto()
    t.dims.extend(init.dims)
    t.data_type = init.data_type
    t.name = init.name
    if ext is not None:
        location, offset = ext
        for k, v in (("location", location), ("offset", str(offset)), ("length", str(init.nbytes))):
            e = t.external_data.add()
            e.key, e.value = k, v
        t.data_location = TensorProto.EXTERNAL
    return t.SerializeToString()


def plan_external(inits: Iterable[Initializer], location: str) -> dict[str, Tuple[str, int]]:
    """Offsets of the tensors that go to the data file (4096-aligned, in model order)."""
    plan: dict[str, Tuple[str, int]] = {}
    offset = 0
    for init in inits:
        if init.nbytes < EXTERNAL_MIN_BYTES:
            continue
        offset = -(-offset // EXTERNAL_ALIGN) * EXTERNAL_ALIGN
        plan[init.name] = (location, offset)
        offset += init.nbytes
    return plan


Shared = Dict[tuple, Tuple[str, int, int]]  # initializer identity -> (location, offset, nbytes) in a data file


def write_model(model: onnx.ModelProto, inits: List[Initializer], path: Path,
                external: Optional[External] = None, shared: Optional[Shared] = None) -> dict:
    """Write ``model`` with ``inits`` as its main graph's initializers to ``path`` (and the data file).

    ``model.graph`` must hold no initializers. ``shared``: tensors another model already wrote to a data
    file (its ``stats["external"]``): an initializer of the same identity refers to that data instead
    of being written again (how the step and prefill graphs hold their weights once). Returns figures:
    bytes inline / external / shared, tensors, and ``external``, the :data:`Shared` map of what went
    to the data file.
    """
    if len(model.graph.initializer):
        raise BuildError("write_model: the graph already holds initializers")
    plan = plan_external(inits, external.location) if external is not None else {}
    reused = {}
    for i in inits:
        ref = (shared or {}).get(i.ident) if i.ident is not None else None
        if ref is not None and i.name not in plan:
            if ref[2] != i.nbytes:
                raise BuildError(f"initializer {i.name!r}: {i.nbytes} bytes, the shared data holds {ref[2]}")
            plan[i.name] = (ref[0], ref[1])
            reused[i.name] = ref[2]
    headers = [_header(i, plan.get(i.name)) for i in inits]
    raw_key = _key(9)

    def tensor_len(init: Initializer, header: bytes) -> int:
        if init.name in plan:
            return len(header)
        return len(header) + len(raw_key) + len(_varint(init.nbytes)) + init.nbytes

    g_lo, g_hi = _split_fields(model.graph, 5)  # node, name | initializer | doc_string, input, ...
    g_lo_b, g_hi_b = g_lo.SerializeToString(), g_hi.SerializeToString()
    init_key = _key(5)
    graph_len = len(g_lo_b) + len(g_hi_b)
    for init, h in zip(inits, headers):
        n = tensor_len(init, h)
        graph_len += len(init_key) + len(_varint(n)) + n
    m_lo, m_hi = _split_fields(model, 7)  # ir_version ... doc_string | graph | opset_import, metadata ...

    stats = {"inline_bytes": 0, "external_bytes": 0, "shared_bytes": sum(reused.values()), "tensors": len(inits),
             "external": {i.ident: (*plan[i.name], i.nbytes) for i in inits
                          if i.ident is not None and i.name in plan and i.name not in reused}}
    data_f: Optional[BinaryIO] = open(external.path, "wb") if external is not None else None
    try:
        with open(path, "wb") as f:
            f.write(m_lo.SerializeToString())
            f.write(_key(7) + _varint(graph_len))
            f.write(g_lo_b)
            for k, (init, h) in enumerate(zip(inits, headers)):
                n = tensor_len(init, h)
                f.write(init_key + _varint(n) + h)
                if init.name in reused:
                    continue
                progress.note("writing weights: tensor", k + 1, len(inits))
                arr = init.materialize()
                if arr.nbytes != init.nbytes:
                    raise BuildError(f"initializer {init.name!r}: {arr.nbytes} bytes, declared {init.nbytes}")
                if init.name in plan:
                    _, offset = plan[init.name]
                    data_f.write(b"\0" * (offset - data_f.tell()))
                    data_f.write(memoryview(arr).cast("B"))
                    stats["external_bytes"] += arr.nbytes
                else:
                    f.write(raw_key + _varint(arr.nbytes))
                    f.write(memoryview(arr).cast("B"))
                    stats["inline_bytes"] += arr.nbytes
                del arr
            f.write(g_hi_b)
            f.write(m_hi.SerializeToString())
    finally:
        if data_f is not None:
            data_f.close()
    return stats
