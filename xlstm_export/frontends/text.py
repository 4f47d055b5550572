"""A checkpoint's tokenizer and generation files, read and checked into ``graph.text`` (a
``graphs.text.TextBundle``); ``text/files.py`` says where an artifact carries them and reads them back.

Read from the checkpoint folder (``TEXT_FILES``, those present): each must be a regular file of valid
UTF-8 JSON, and ``tokenizer.json`` must load in ``tokenizers`` -- a malformed one is one ConfigError line
(exit 2) before anything is written. Special ids come from ``generation_config.json``, else
``config.json``, else the special tokens named in ``tokenizer_config.json`` / ``special_tokens_map.json``
looked up in the tokenizer; every id must lie in the vocabulary.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from ..errors import ConfigError, first_line
from ..graphs.text import MAX_TEXT_FILE_BYTES, TEXT_FILES, TOKENIZER_FILE, TextBundle
from . import path_exists, read_bounded


def json_object(path: Path, data: bytes) -> dict:
    try:
        obj = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.start} cannot be decoded); fix or remove the file") from None
    except (ValueError, RecursionError) as e:
        raise ConfigError(f"{path}: not valid JSON ({first_line(e)}); fix or remove the file") from None
    if not isinstance(obj, dict):
        raise ConfigError(f"{path}: expected a JSON object, got {type(obj).__name__}; fix or remove the file")
    return obj


def load_tokenizer(data: bytes, where: str):
    """``tokenizers.Tokenizer`` from the bytes of a tokenizer.json (ConfigError, one line, if it does not load)."""
    try:
        from tokenizers import Tokenizer
    except ImportError:  # pragma: no cover - a core dependency
        raise ConfigError(f"{where}: reading a tokenizer needs the 'tokenizers' package (pip install tokenizers)") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{where}: not UTF-8 text (byte {e.start} cannot be decoded); not a tokenizer.json") from None
    try:
        return Tokenizer.from_str(text)
    except Exception as e:  # tokenizers raises its own Exception type for every malformed file
        raise ConfigError(f"{where}: not a tokenizer.json that the tokenizers library loads "
                          f"({first_line(e)[:200]})") from None


def _ids(value: Any, key: str, where: Path) -> List[int]:
    """A config's id field (an int, a list of ints or null) as a list."""
    vals = value if isinstance(value, list) else [value]
    out = []
    for v in vals:
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, int):
            raise ConfigError(f"{where}: field {key!r} must be a token id (an integer) or a list of them, got {v!r}")
        out.append(v)
    return out


def _token_name(value: Any) -> Optional[str]:
    """A special token as tokenizer_config / special_tokens_map write it: a string or {"content": ...}."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    return None


def read_text_bundle(d: Path, vocab_size: int) -> Optional[TextBundle]:
    """The text files of checkpoint folder ``d`` (None when it has none), checked; see the module doc."""
    files: List[Tuple[str, bytes]] = []
    parsed: Dict[str, dict] = {}
    tok = None
    for name in TEXT_FILES:
        p = d / name
        if not path_exists(p, ConfigError):
            continue
        data = read_bounded(p, MAX_TEXT_FILE_BYTES, name)
        if name == TOKENIZER_FILE:
            tok = load_tokenizer(data, str(p))
        else:
            parsed[name] = json_object(p, data)
        files.append((name, data))
    if not files:
        return None
    config: dict = {}
    if path_exists(d / "config.json", ConfigError):
        try:
            config = json_object(d / "config.json", read_bounded(d / "config.json", MAX_TEXT_FILE_BYTES, "config"))
        except ConfigError:
            config = {}  # the frontend reads config.json itself and has said what is wrong with it
    gen = parsed.get("generation_config.json", {})
    names = {**parsed.get("special_tokens_map.json", {}), **parsed.get("tokenizer_config.json", {})}

    def special(key: str) -> List[int]:
        for src, where in ((gen, d / "generation_config.json"), (config, d / "config.json")):
            if src.get(f"{key}_token_id") is not None:
                return _ids(src[f"{key}_token_id"], f"{key}_token_id", where)
        token = _token_name(names.get(f"{key}_token"))
        if token is not None and tok is not None:
            i = tok.token_to_id(token)
            return [i] if i is not None else []
        return []

    bos, eos, pad = special("bos"), special("eos"), special("pad")
    for key, ids in (("bos", bos), ("eos", eos), ("pad", pad)):
        bad = [i for i in ids if not 0 <= i < vocab_size]
        if bad:
            raise ConfigError(f"{d}: {key}_token_id {bad[0]} is outside the vocabulary [0, {vocab_size}) of the "
                              f"checkpoint; fix generation_config.json / config.json")
    if tok is not None and tok.get_vocab_size(with_added_tokens=True) > vocab_size:
        raise ConfigError(f"{d / TOKENIZER_FILE}: the tokenizer has {tok.get_vocab_size(with_added_tokens=True)} "
                          f"tokens, more than the model's vocabulary of {vocab_size}; not this model's tokenizer")
    return TextBundle(tuple(files), bos[0] if bos else None, tuple(dict.fromkeys(eos)), pad[0] if pad else None)


__all__ = ["json_object", "load_tokenizer", "read_text_bundle"]
