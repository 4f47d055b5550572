"""Checkpoint frontends: each format is a name table + a config reader that builds a :class:`Graph`.

``load_checkpoint(path)`` detects the format from the files present; reading a config and building
the graph reads only safetensors headers (or a state dict's pickle), never tensor data.
"""

from __future__ import annotations

import json
import math
import os
import stat
from pathlib import Path
from typing import Any, BinaryIO, Optional

import numpy as np

from .. import progress
from ..errors import CheckpointError, ConfigError, cut, first_line, short
from ..graphs import Graph, WeightHandle
from ..graphs.weights import FLOAT_DTYPES

FORMATS = ("hf", "large", "hybrid", "profile")
# torch.save state dicts upstream's users keep (checkpoint input; loaded with weights_only=True)
STATE_DICT_SUFFIXES = (".pt", ".pth", ".bin")
HYBRID_KEYS = ("mlstm_block", "slstm_block", "slstm_at")
LARGE_REQUIRED = ("embedding_dim", "num_heads", "num_blocks", "vocab_size")
EXPECTED = ("a checkpoint directory holding config.json (model_type 'xlstm') + model.safetensors or shards "
            "(transformers xLSTM); config.yaml (xLSTMLargeConfig) + model.safetensors (xlstm_large); "
            "config.yaml/.json (xLSTMLMModelConfig: mlstm_block/slstm_block) + model.safetensors or a "
            f"{'/'.join(STATE_DICT_SUFFIXES)} state dict (xLSTMLMModel); or profile.json + model.safetensors "
            "(xlstm-export)")


def check_finite(handle: WeightHandle, arr: np.ndarray) -> np.ndarray:
    """Raise CheckpointError naming the tensor if ``arr`` (loaded from ``handle``) has NaN or Inf."""
    if arr.dtype.kind in "fc":
        finite = np.isfinite(arr)
        if not finite.all():
            bad = int(arr.size - np.count_nonzero(finite))
            raise CheckpointError(f"{handle.source}: tensor {short(handle.name, 200)} has {bad} non-finite value(s) "
                                  f"(NaN/Inf) of {arr.size}; the checkpoint is corrupt or diverged")
    return arr


def load_weight(handle: WeightHandle) -> np.ndarray:
    """``handle.load()`` as float32, checked finite. What emitters and the reference call.

    A parameter stored as an integer or bool type is refused naming the tensor (the graph's checks refuse
    it first; this holds for handles made by hand, too)."""
    arr = handle.load()
    if arr.dtype.kind != "f" or handle.dtype not in FLOAT_DTYPES:
        raise CheckpointError(f"{handle.source}: tensor {short(handle.name, 200)} is stored as "
                              f"{handle.dtype if handle.dtype not in FLOAT_DTYPES else arr.dtype}; a float "
                              f"parameter must be stored as {'/'.join(FLOAT_DTYPES)}")
    return check_finite(handle, arr)


# -- reading checkpoint files ----------------------------------------------------------------------
MAX_CONFIG_BYTES = 1 << 20  # config.json / config.yaml / profile.json: a few KB in practice
MAX_INDEX_BYTES = 16 << 20  # a sharded checkpoint's index: ~100 bytes per tensor
MAX_CONFIG_NODES = 10_000  # values in a config once YAML aliases are expanded (real configs: under 200)

_NOT_REGULAR = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                (stat.S_ISSOCK, "a socket"))


def file_kind(mode: int) -> str:
    """What a non-regular ``st_mode`` is, in words."""
    return next((what for test, what in _NOT_REGULAR if test(mode)), "not a regular file")


def path_exists(p: Path, error=CheckpointError) -> bool:
    """``p.exists()``, but a path the file system refuses (a name too long, no permission to look, a loop of
    links) is one ``error`` line instead of an OSError."""
    try:
        os.stat(p)
    except FileNotFoundError:
        return False
    except NotADirectoryError:
        return False
    except OSError as e:
        raise error(f"{cut(str(p), 200)}: cannot access: {e.strerror or e}") from None
    except ValueError:  # a NUL byte in the name
        raise error(f"{short(str(p), 200)}: not a usable path (it contains a NUL byte)") from None
    return True


def open_regular(path: str | os.PathLike, what: str = "checkpoint file", error=CheckpointError) -> BinaryIO:
    """``path`` opened for binary reading; it must be a regular file (links followed).

    The open does not block (a FIFO without a writer would hang it) and the check is made on the opened
    file (``fstat``), so a FIFO, a device such as ``/dev/zero``, a socket or a directory is one ``error`` line
    and is never read from.
    """
    where = cut(str(path), 200)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise error(f"{where}: cannot read: {e.strerror or e}") from None
    except ValueError:  # a NUL byte in the name
        raise error(f"{short(str(path), 200)}: not a usable path (it contains a NUL byte)") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise error(f"{where}: is {file_kind(mode)}, not a regular file; a {what} must be a regular file")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_bounded(path: Path, limit: int, what: str) -> bytes:
    """The bytes of regular file ``path``, refused (ConfigError) beyond ``limit`` bytes."""
    with open_regular(path, what, ConfigError) as f:
        try:
            size = os.fstat(f.fileno()).st_size
            data = f.read(limit + 1) if size <= limit else b""
        except OSError as e:
            raise ConfigError(f"{path}: cannot read: {e.strerror or e}") from None
    if size > limit or len(data) > limit:
        raise ConfigError(f"{path}: {max(size, len(data))} bytes is too large for a {what} (at most {limit} bytes "
                          f"are read); is this the right file?")
    return data


def _decode(path: Path, data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.start} cannot be decoded)") from None


def read_json(path: Path, limit: int = MAX_CONFIG_BYTES, what: str = "config file") -> Any:
    text = _decode(path, read_bounded(path, limit, what))
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON ({e})") from None
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply to be a config") from None
    except ValueError as e:  # an integer of more than 4300 digits
        raise ConfigError(f"{path}: not a usable JSON config ({first_line(e)})") from None


def _bounded_yaml_loader():
    import yaml

    class Loader(yaml.SafeLoader):
        """SafeLoader that bounds the work merge keys (``<<: [*a, *a]``) can multiply: each mapping's pairs
        after merging count against one budget per document."""

        budget = MAX_CONFIG_NODES

        def flatten_mapping(self, node):
            super().flatten_mapping(node)
            self.budget -= len(node.value)
            if self.budget < 0:
                raise yaml.constructor.ConstructorError(
                    None, None, f"more than {MAX_CONFIG_NODES} mapping entries (merge keys ('<<') copy theirs); "
                                f"a config has a few dozen", node.start_mark)

    return Loader


def read_yaml(path: Path, limit: int = MAX_CONFIG_BYTES, what: str = "config file") -> Any:
    import yaml

    text = _decode(path, read_bounded(path, limit, what))
    try:
        return yaml.load(text, Loader=_bounded_yaml_loader())  # noqa: S506 -- a SafeLoader subclass
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({cut(str(e), 300)})") from None
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply to be a config") from None


def check_config_tree(obj: Any, where: str, limit: int = MAX_CONFIG_NODES) -> None:
    """A parsed config is a tree of at most ``limit`` values (YAML aliases counted as often as they are used)
    whose mapping keys are all strings. Shared nodes are sized once (memoised), so a 1 KB alias bomb that
    stands for billions of values is measured in microseconds; a structure that contains itself is refused."""
    sizes: dict[int, int] = {}
    active: set[int] = set()

    def size(x: Any, at: str) -> int:
        if not isinstance(x, (dict, list)):
            return 1
        k = id(x)
        if k in sizes:
            return sizes[k]
        if k in active:
            raise ConfigError(f"{where}: {at} contains itself (a YAML alias to an enclosing node)")
        active.add(k)
        n = 1
        if isinstance(x, dict):
            for key, v in x.items():
                if not isinstance(key, str):
                    raise ConfigError(f"{where}: key {short(key, 60)} in {at} is a {type(key).__name__}; config "
                                      f"field names are strings")
                n += size(v, f"{at}.{cut(key, 40)}" if at != "the top level" else cut(key, 40))
                if n > limit:
                    break
        else:
            for i, v in enumerate(x):
                n += size(v, f"{at}[{i}]")
                if n > limit:
                    break
        active.discard(k)
        if n > limit:
            raise ConfigError(f"{where}: {at} holds more than {limit} values once YAML aliases are expanded; "
                              f"a config has a few dozen")
        sizes[k] = n
        return n

    try:
        size(obj, "the top level")
    except RecursionError:
        raise ConfigError(f"{where}: nested too deeply to be a config") from None


def read_config(path: Path) -> dict:
    d = read_yaml(path) if path.suffix in (".yaml", ".yml") else read_json(path)
    check_config_tree(d, str(path))
    if not isinstance(d, dict):
        raise ConfigError(f"{path}: expected a mapping of config fields, got {type(d).__name__}")
    return d


_MISSING = object()


def field(d: dict, key: str, types, where: str, default: Any = _MISSING, *, optional: bool = False) -> Any:
    """``d[key]`` checked against ``types`` (int accepted for float; bool never for numbers)."""
    if key not in d:
        if default is _MISSING:
            raise ConfigError(f"{where}: field {key!r} is missing")
        return default
    v = d[key]
    if v is None and optional:
        return None
    if types is float and isinstance(v, int) and not isinstance(v, bool):
        try:
            v = float(v)
        except OverflowError:
            raise ConfigError(f"{where}: field {key!r} must be a finite number, got {short(v)}") from None
    ok = isinstance(v, types) and not (isinstance(v, bool) and types in (int, float))
    if not ok:
        tname = getattr(types, "__name__", None) or "/".join(t.__name__ for t in types)
        raise ConfigError(f"{where}: field {key!r} must be {tname}{' or null' if optional else ''}, got {short(v)}")
    if isinstance(v, float) and not math.isfinite(v):
        raise ConfigError(f"{where}: field {key!r} must be a finite number, got {v!r}")
    if isinstance(v, int) and not isinstance(v, bool) and not -2**63 <= v < 2**63:
        raise ConfigError(f"{where}: field {key!r} is out of range (a 64-bit integer), got {short(v)}")
    return v


def check_num_blocks(nb: int, n_tensors: int, where: str, key: str = "num_blocks") -> None:
    """Every block has several tensors: more blocks than the checkpoint has tensors is a broken config
    (and would make an absurdly large schedule: ``num_blocks: 2147483647`` must not eat the memory)."""
    if nb > n_tensors:
        raise ConfigError(f"{where}: field {key!r} is {nb}, but the checkpoint holds only {n_tensors} tensors "
                          f"(every block has several); the config does not belong to these weights")


# -- detection -----------------------------------------------------------------------------------
def _dir_and_file(path: Path) -> tuple[Path, Optional[Path]]:
    try:
        exists, is_dir = path.exists(), path.is_dir()
    except OSError as e:  # a name too long for the file system, a loop of links...
        raise CheckpointError(f"{cut(str(path), 200)}: cannot access: {e.strerror or e}") from None
    if not exists:
        raise CheckpointError(f"{path}: no such file or directory; expected {EXPECTED}")
    if is_dir:
        return path, None
    return path.parent, path


def list_dir(d: Path) -> list[Path]:
    """The entries of checkpoint directory ``d``, sorted (CheckpointError if it cannot be listed)."""
    try:
        return sorted(d.iterdir())
    except OSError as e:
        raise CheckpointError(f"{d}: cannot list the directory: {e.strerror or e}") from None


def detect_format(path: str | os.PathLike) -> str:
    path = Path(path)
    d, file = _dir_and_file(path)
    if path_exists(d / "profile.json") or (file is not None and file.name == "profile.json"):
        return "profile"
    cj, cy = d / "config.json", d / "config.yaml"
    if path_exists(cj):
        cfg = read_config(cj)
        if cfg.get("model_type") == "xlstm":
            return "hf"
        if any(k in cfg for k in HYBRID_KEYS):
            return "hybrid"
    if path_exists(cy):
        cfg = read_config(cy)
        if any(k in cfg for k in HYBRID_KEYS):
            return "hybrid"
        if all(k in cfg for k in LARGE_REQUIRED):
            return "large"
    entries = list_dir(d)
    if file is None and not entries:
        raise CheckpointError(f"{d}: the directory is empty; expected {EXPECTED}")
    found = [cut(p.name, 40) for p in entries][:8]
    raise CheckpointError(f"{path}: no recognisable checkpoint (found {found}); expected {EXPECTED}")


def load_checkpoint(path: str | os.PathLike, format: Optional[str] = None, revision: Optional[str] = None) -> Graph:
    """Read a checkpoint's config and tensor headers into a validated Graph (no tensor data read), with
    its tokenizer and generation files (``graph.text``, checked: see ``xlstm_export.text.files``).
    ``path`` may be a Hugging Face Hub id (``org/name``, at ``revision``): see ``frontends.hub``."""
    import dataclasses

    from .hub import resolve_checkpoint

    path = resolve_checkpoint(path, revision)
    if format is not None and format not in FORMATS:
        raise CheckpointError(f"unknown checkpoint format {format!r}; choose one of {list(FORMATS)}")
    fmt = format or detect_format(path)
    d, file = _dir_and_file(path)
    progress.note(f"reading checkpoint {path} ({fmt})")
    if fmt == "hf":
        from .hf import load_hf
        graph = load_hf(d, file)
    elif fmt == "large":
        from .xlstm_large import load_large
        graph = load_large(d, file)
    elif fmt == "hybrid":
        from .hybrid import load_hybrid
        graph = load_hybrid(d, file)
    else:
        from .profile import load_profile
        graph = load_profile(d, file)
    from .text import read_text_bundle

    text = read_text_bundle(d, graph.config.vocab_size)
    return graph if text is None else dataclasses.replace(graph, text=text)


__all__ = ["FORMATS", "load_checkpoint", "detect_format", "check_finite", "load_weight", "open_regular",
           "path_exists", "read_config", "read_json", "read_yaml"]
