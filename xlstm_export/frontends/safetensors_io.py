"""Our own lazy safetensors reader (and a streaming writer), plus a torch state-dict reader.

Reading a file parses only its 8-byte header length and JSON header; every tensor becomes a
:class:`WeightHandle` whose loader reads just that tensor's bytes when ``load()`` is called, with
ordinary reads into a fresh array (a memory map over a file truncated meanwhile would kill the process
with SIGBUS) after checking that the file is still the one whose header was read.
No torch is imported for safetensors. Only regular files are opened (a FIFO or a device is refused, never
read). Every problem is one ``CheckpointError`` line naming the file and, where there is one, the tensor.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable

import numpy as np

from ..errors import CheckpointError, OutputError, first_line, short
from ..graphs.weights import WeightHandle
from ..quiet import quiet

# safetensors dtype tag -> (our dtype name, numpy dtype used to map the bytes, itemsize)
_DTYPES: dict[str, tuple[str, str, int]] = {
    "F64": ("float64", "<f8", 8),
    "F32": ("float32", "<f4", 4),
    "F16": ("float16", "<f2", 2),
    "BF16": ("bfloat16", "<u2", 2),
    "I64": ("int64", "<i8", 8),
    "I32": ("int32", "<i4", 4),
    "I16": ("int16", "<i2", 2),
    "I8": ("int8", "i1", 1),
    "U8": ("uint8", "u1", 1),
    "BOOL": ("bool", "?", 1),
}
_TAG_OF = {v[0]: k for k, v in _DTYPES.items()}
# dtypes the format knows but we do not read
_KNOWN_UNSUPPORTED = ("F8_E4M3", "F8_E5M2", "U16", "U32", "U64", "F8_E8M0", "F4", "F6_E2M3", "F6_E3M2")
MAX_HEADER_BYTES = 100 * 1024 * 1024  # the format's own limit


def bf16_to_float32(raw_u16: np.ndarray) -> np.ndarray:
    """Widen bfloat16 bit patterns (uint16) to float32 exactly."""
    wide = raw_u16.astype(np.uint32)
    wide <<= 16  # in place: one fp32-sized buffer, not two
    return wide.view(np.float32)


def float32_to_bf16_bits(arr: np.ndarray) -> np.ndarray:
    """Round-to-nearest-even float32 -> bfloat16 bit patterns (exact for widened bf16)."""
    a = np.ascontiguousarray(arr, dtype=np.float32).view(np.uint32)
    rounding = ((a >> 16) & 1) + np.uint32(0x7FFF)
    out = ((a + rounding) >> 16).astype(np.uint16)
    nan = np.isnan(arr)
    if nan.any():
        out[nan] = 0x7FC0
    return out


def _identity(st: os.stat_result) -> tuple:
    """What must not change between reading a file's header and reading its tensors."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def read_header(path: str | os.PathLike) -> tuple[dict[str, dict], int]:
    """Parse and validate a safetensors header. Returns (entries, data_start); reads no tensor data."""
    entries, data_start, _ = _read_header(Path(path))
    return entries, data_start


def _read_header(path: Path) -> tuple[dict[str, dict], int, tuple]:
    from . import open_regular

    with open_regular(path, "safetensors file") as f:
        try:
            st = os.fstat(f.fileno())
            size = st.st_size
            head = f.read(9)
            if len(head) < 8:
                raise CheckpointError(f"{path}: not a safetensors file: {size} bytes, shorter than the "
                                      f"8-byte header length (truncated or empty?)")
            n = int.from_bytes(head[:8], "little")
            if n > MAX_HEADER_BYTES or 8 + n > size:
                if head[8:9] != b"{":  # not even the start of a JSON header: do not quote its bytes as a number
                    raise CheckpointError(f"{path}: not a safetensors file ({size} bytes that do not start with "
                                          f"an 8-byte header length and a JSON header)")
                raise CheckpointError(f"{path}: safetensors header length {n} is impossible for a file of "
                                      f"{size} bytes (truncated or not a safetensors file)")
            f.seek(8)
            raw = f.read(n)
        except OSError as e:
            raise CheckpointError(f"{path}: cannot read: {e.strerror or e}") from None
    if len(raw) != n:
        raise CheckpointError(f"{path}: the file shrank while its header was read (being written or truncated?)")
    try:
        header = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise CheckpointError(f"{path}: safetensors header is not valid JSON (not UTF-8 at byte {8 + e.start})") \
            from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: safetensors header is not valid JSON ({e})") from None
    except RecursionError:
        raise CheckpointError(f"{path}: safetensors header is nested too deeply to be a tensor index "
                              f"(corrupt or not a safetensors file)") from None
    except ValueError as e:  # an integer of more than 4300 digits
        raise CheckpointError(f"{path}: safetensors header is not a usable tensor index ({first_line(e)})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: safetensors header must be a JSON object, got {type(header).__name__}")
    data_start = 8 + n
    data_size = size - data_start
    entries: dict[str, dict] = {}
    spans = []
    for name, info in header.items():
        if name == "__metadata__":
            if info is not None and not isinstance(info, dict):
                raise CheckpointError(f"{path}: '__metadata__' must be an object")
            continue
        where = f"{path}: tensor {short(name, 200)}"
        if not isinstance(info, dict) or set(info) - {"dtype", "shape", "data_offsets"} \
                or not {"dtype", "shape", "data_offsets"} <= set(info):
            raise CheckpointError(f"{where}: header entry must have exactly dtype, shape, data_offsets; "
                                  f"got {short(info)}")
        tag = info["dtype"]
        if not isinstance(tag, str):
            raise CheckpointError(f"{where}: dtype must be a string such as 'F32', got {short(tag)}")
        if tag not in _DTYPES:
            if tag in _KNOWN_UNSUPPORTED:
                raise CheckpointError(f"{where}: dtype {tag} is not supported (supported: {sorted(_DTYPES)})")
            raise CheckpointError(f"{where}: unknown dtype {short(tag, 40)} (supported: {sorted(_DTYPES)})")
        shape = info["shape"]
        if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                                  for d in shape):
            raise CheckpointError(f"{where}: shape must be a list of non-negative integers, got {short(shape)}")
        offs = info["data_offsets"]
        if (not isinstance(offs, list) or len(offs) != 2
                or not all(isinstance(o, int) and not isinstance(o, bool) for o in offs)
                or offs[0] < 0 or offs[1] < offs[0]):
            raise CheckpointError(f"{where}: data_offsets must be [begin, end] with 0 <= begin <= end, "
                                  f"got {short(offs)}")
        _, _, itemsize = _DTYPES[tag]
        numel = 1
        for d in shape:
            numel *= d
        if offs[1] - offs[0] != numel * itemsize:
            raise CheckpointError(f"{where}: data_offsets {short(offs)} span {offs[1] - offs[0]} bytes, but shape "
                                  f"{short(shape)} x {tag} needs {numel * itemsize}")
        if offs[1] > data_size:
            raise CheckpointError(f"{where}: data ends at byte {offs[1]} but the file has only {data_size} "
                                  f"data bytes (truncated or half-written file)")
        spans.append((offs[0], offs[1], name))
        entries[name] = {"dtype": tag, "shape": tuple(shape), "begin": offs[0], "end": offs[1]}
    spans.sort()
    prev = None  # the non-empty span reaching furthest so far
    for b, e, n in spans:
        if e == b:
            continue
        if prev is not None and b < prev[1]:
            raise CheckpointError(f"{path}: tensors {short(prev[2])} [{prev[0]}, {prev[1]}) and {short(n)} [{b}, {e}) "
                                  f"overlap")
        if prev is None or e > prev[1]:
            prev = (b, e, n)
    return entries, data_start, _identity(st)


def _file_changed(path: Path, identity: tuple) -> str | None:
    """Why ``path`` is no longer the file whose header was read (None when it still is)."""
    try:
        st = os.stat(path)
    except OSError as e:
        return f"it can no longer be read ({e.strerror or e})"
    now = _identity(st)
    if now == identity:
        return None
    if now[:2] != identity[:2]:
        return "it was replaced by another file"
    if now[2] < identity[2]:
        return f"it was truncated from {identity[2]} to {now[2]} bytes"
    return "it was modified"


def _changed_error(path: Path, name: str, why: str) -> CheckpointError:
    return CheckpointError(f"{path}: tensor {short(name, 200)} cannot be read: {why} after the checkpoint was opened; "
                           f"do not modify a checkpoint while it is being exported, and run the command again")


def read_span(path: Path, name: str, identity: tuple, offset: int, out: np.ndarray) -> None:
    """Fill ``out`` with the bytes at ``offset`` of ``path`` by ordinary reads (not a memory map: a map over a
    file truncated meanwhile kills the process with SIGBUS). The file must still be the one whose header
    was read (same device, inode, size and modification time), else one CheckpointError line."""
    from . import open_regular

    why = _file_changed(path, identity)
    if why is not None:
        raise _changed_error(path, name, why)
    buf = memoryview(out.reshape(-1).view(np.uint8))
    with open_regular(path, "safetensors file") as f:
        try:
            if _identity(os.fstat(f.fileno())) != identity:  # replaced between the stat and the open
                raise _changed_error(path, name, _file_changed(path, identity) or "it was replaced")
            f.seek(offset)
            got = 0
            while got < len(buf):
                k = f.readinto(buf[got:])
                if not k:
                    raise _changed_error(path, name, f"it ended at byte {offset + got}, before the tensor's "
                                                     f"{len(buf)} bytes from byte {offset} (truncated)")
                got += k
        except OSError as e:
            raise CheckpointError(f"{path}: cannot read tensor {short(name, 200)}: {e.strerror or e}") from None


def _make_loader(path: Path, name: str, tag: str, shape: tuple[int, ...], offset: int, identity: tuple):
    _, np_dtype, _ = _DTYPES[tag]

    def loader() -> np.ndarray:
        arr = np.empty(shape, dtype=np_dtype)
        if arr.size:
            read_span(path, name, identity, offset, arr)
        if tag == "BF16":
            arr = bf16_to_float32(arr)
        return arr

    return loader


def open_safetensors(path: str | os.PathLike) -> dict[str, WeightHandle]:
    """name -> lazy handle, for every tensor of one safetensors file (header only is read)."""
    path = Path(path)
    entries, data_start, identity = _read_header(path)
    out = {}
    for name, e in entries.items():
        out[name] = WeightHandle(name=name, shape=e["shape"], dtype=_DTYPES[e["dtype"]][0],
                                 source=f"{path}:{name}",
                                 loader=_make_loader(path, name, e["dtype"], e["shape"], data_start + e["begin"],
                                                     identity))
    return out


def open_torch_state_dict(path: str | os.PathLike) -> dict[str, WeightHandle]:
    """name -> handle for a ``.pt/.pth/.bin`` state dict, loaded with ``weights_only=True`` (mmap'd).

    Only dense CPU tensors of the dtypes we read are accepted (sparse, meta, quantized, nested ...: one error
    line naming the tensor). Each handle copies its tensor out of the map after checking that the file is
    still the one that was loaded (a map over a truncated file would kill the process with SIGBUS)."""
    from . import open_regular

    path = Path(path)
    import pickle

    import torch  # lazily: only this format needs it

    with open_regular(path, "torch state dict") as f:  # a FIFO or a device is refused before torch opens it
        identity = _identity(os.fstat(f.fileno()))

    def _load(mmap: bool):
        with quiet():  # torch's own warnings (sparse beta, deprecated dtypes): not the user's concern
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)

    try:
        try:
            obj = _load(True)
        except RuntimeError as e:
            if "mmap" not in str(e) and "zipfile" not in str(e):
                raise
            obj = _load(False)  # legacy (non-zip) serialisation cannot be mmap'd
    except pickle.UnpicklingError as e:
        import re

        text = " ".join(str(e).split())
        found = re.search(r"(Unsupported global: GLOBAL [\w.]+|Unsupported operand \d+|[^.]*not an allowed global[^.]*)",
                          text)
        reason = found.group(1) if found else text[:160]
        raise CheckpointError(f"{path}: refused to unpickle: it needs more than plain weights ({reason}), so "
                              f"it was refused and not run; only weights_only=True state dicts are loaded") from None
    except Exception as e:  # anything else torch.load raises on a corrupt file (RuntimeError, EOFError, KeyError...)
        first = first_line(e)
        raise CheckpointError(f"{path}: not a readable torch state dict ({first})") from None
    if isinstance(obj, dict) and len(obj) == 1 and next(iter(obj)) in ("state_dict", "model") \
            and isinstance(next(iter(obj.values())), dict):
        obj = next(iter(obj.values()))
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a state dict (name -> tensor), got {type(obj).__name__}")
    out = {}
    names_of: dict[tuple, str] = {}
    for name, t in obj.items():
        if not isinstance(name, str) or not isinstance(t, torch.Tensor):
            raise CheckpointError(f"{path}: entry {short(name, 200)} is not a tensor ({type(t).__name__})")
        odd = _odd_tensor(t, torch)
        if odd:
            raise CheckpointError(f"{path}: tensor {short(name, 200)}: expected a dense tensor with data, got {odd}")
        dtype = str(t.dtype).replace("torch.", "")
        if dtype not in _TAG_OF:
            raise CheckpointError(f"{path}: tensor {short(name, 200)}: dtype {dtype} is not supported "
                                  f"(supported: {sorted(_TAG_OF)})")

        def loader(t=t, name=name) -> np.ndarray:
            why = _file_changed(path, identity)
            if why is not None:
                raise _changed_error(path, name, why)
            try:
                if t.dtype == torch.bfloat16:
                    return t.detach().to(torch.float32).numpy()
                return np.array(t.detach().numpy(force=True), copy=True)  # out of the map, now
            except RuntimeError as e:
                raise CheckpointError(f"{path}: tensor {short(name, 200)} cannot be read ({first_line(e)})") from None

        # tensors sharing storage (tied weights) share one loader, so they are counted once
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()))
        if key in names_of and t.numel() > 0:
            first = out[names_of[key]]
            out[name] = WeightHandle(name, first.shape, dtype, f"{path}:{name}", first.loader)
            continue
        names_of[key] = name
        out[name] = WeightHandle(name=name, shape=tuple(int(d) for d in t.shape), dtype=dtype,
                                 source=f"{path}:{name}", loader=loader)
    return out


def _odd_tensor(t, torch) -> str:
    """What makes ``t`` something other than a plain dense CPU tensor with data ('' when it is one)."""
    if t.layout != torch.strided:
        return f"layout {str(t.layout).replace('torch.', '')} (a sparse or other non-dense tensor)"
    if t.device.type != "cpu":
        return f"a tensor on device {t.device.type}" + (" (no data at all)" if t.device.type == "meta" else "")
    if getattr(t, "is_nested", False):
        return "a nested tensor"
    if t.is_quantized:
        return f"a quantized tensor ({str(t.dtype).replace('torch.', '')})"
    if type(t) not in (torch.Tensor, torch.nn.Parameter):
        return f"a tensor subclass {type(t).__name__}"
    return ""


def write_safetensors(path: str | os.PathLike, handles: Iterable[tuple[str, WeightHandle]],
                      metadata: dict[str, str] | None = None) -> None:
    """Stream ``(name, handle)`` pairs into a safetensors file, one tensor in memory at a time.

    Written to ``path + '.tmp'`` and renamed into place, so a reader never sees a half-written file.
    Stored dtypes are kept (bfloat16 stays bfloat16). Each tensor is checked finite as it is loaded.
    """
    from . import check_finite

    path = Path(path)
    items = list(handles)
    header: dict = {}
    if metadata:
        header["__metadata__"] = dict(metadata)
    off = 0
    for name, h in items:
        tag = _TAG_OF.get(h.dtype, "F32")
        n = h.numel * _DTYPES[tag][2]
        header[name] = {"dtype": tag, "shape": list(h.shape), "data_offsets": [off, off + n]}
        off += n
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(len(raw).to_bytes(8, "little"))
            f.write(raw)
            for name, h in items:
                tag = _TAG_OF.get(h.dtype, "F32")
                arr = h.load(keep_dtype=True)
                check_finite(h, arr)
                if tag == "BF16":
                    arr = float32_to_bf16_bits(arr)
                else:
                    arr = np.ascontiguousarray(arr, dtype=_DTYPES[tag][1])
                f.write(arr.tobytes(order="C"))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise OutputError(f"{path}: cannot write: {e.strerror or e}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
