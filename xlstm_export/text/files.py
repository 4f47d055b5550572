"""A checkpoint's tokenizer and generation files: read, checked, carried beside every artifact.

Read from the checkpoint folder (``TEXT_FILES``, those present): each must be a regular file of valid
UTF-8 JSON, and ``tokenizer.json`` must load in ``tokenizers`` -- a malformed one is one ConfigError line
(exit 2) before anything is written. Special ids come from ``generation_config.json``, else
``config.json``, else the special tokens named in ``tokenizer_config.json`` / ``special_tokens_map.json``
looked up in the tokenizer; every id must lie in the vocabulary.

Where an artifact keeps them is its target's rule (``Target.text_paths``; the contract names them by file
name only, so it holds no path and does not depend on what the output is called): by default beside a
single-file artifact as ``<artifact file name>.<name>``; a package target may keep them inside (the export
pipeline writes them with the artifact, in the same ``atomic_outputs``).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from ..errors import ArtifactError, ConfigError, first_line
from ..graphs.text import TEXT_FILES, TOKENIZER_FILE, TextBundle

MAX_TEXT_FILE_BYTES = 64 << 20  # a tokenizer.json of a 256k vocabulary is ~20 MB


# -- reading a checkpoint's ------------------------------------------------------------------------
def _json_object(path: Path, data: bytes) -> dict:
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
    from ..frontends import path_exists, read_bounded

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
            parsed[name] = _json_object(p, data)
        files.append((name, data))
    if not files:
        return None
    config: dict = {}
    if path_exists(d / "config.json", ConfigError):
        try:
            config = _json_object(d / "config.json", read_bounded(d / "config.json", MAX_TEXT_FILE_BYTES, "config"))
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


# -- reading an artifact's ------------------------------------------------------------------------------
class ArtifactText:
    """The text side of an artifact: its tokenizer (or None), special ids and generation config."""

    def __init__(self, tokenizer, bos: Optional[int], eos: Tuple[int, ...], pad: Optional[int], generation: dict):
        self.tokenizer, self.bos_token_id, self.eos_token_ids, self.pad_token_id = tokenizer, bos, eos, pad
        self.generation_config = generation


def _entry_error(where: str, what: str) -> ArtifactError:
    return ArtifactError(f"{where}: the contract's 'text' entry {what}; re-export the artifact with this tool")


def artifact_text(artifact: str | os.PathLike, contract: dict, vocab_size: Optional[int],
                  paths_for: Callable[[Sequence[str]], Dict[str, Path]]) -> Optional[ArtifactText]:
    """Read and check the text files an artifact's contract names (untrusted input: every field is
    checked, each file's size and sha256 must be the contract's); ``paths_for(names)`` says where the
    artifact keeps them (its target's ``text_paths``). None when the contract has no entry."""
    where = str(artifact)
    entry = contract.get("text")
    if entry is None:
        return None
    if not isinstance(entry, dict) or not isinstance(entry.get("files"), list):
        raise _entry_error(where, "must be an object with a 'files' list")
    specs = {}
    for f in entry["files"]:
        if not (isinstance(f, dict) and f.get("name") in TEXT_FILES and isinstance(f.get("sha256"), str)
                and isinstance(f.get("bytes"), int) and not isinstance(f.get("bytes"), bool)
                and 0 <= f["bytes"] <= MAX_TEXT_FILE_BYTES):
            raise _entry_error(where, f"lists {str(f)[:100]}; expected {{'name': one of {list(TEXT_FILES)}, "
                                      f"'bytes', 'sha256'}}")
        specs[f["name"]] = f
    ids: Dict[str, List[int]] = {}
    for key in ("bos_token_id", "pad_token_id", "eos_token_id"):
        v = entry.get(key)
        vals = v if key == "eos_token_id" and isinstance(v, list) else [v]
        if any(x is not None and (isinstance(x, bool) or not isinstance(x, int) or x < 0
                                  or (vocab_size is not None and x >= vocab_size)) for x in vals):
            raise _entry_error(where, f"has {key} {str(v)[:60]}, not a token id of the vocabulary")
        ids[key] = [x for x in vals if x is not None]
    from ..frontends import read_bounded

    paths = paths_for(list(specs))
    data = {}
    for name, f in specs.items():
        p = paths[name]
        if not p.exists():
            raise ArtifactError(f"{p}: missing; the artifact's contract names it (copy it along with the artifact, "
                                f"or re-export)")
        try:
            b = read_bounded(p, MAX_TEXT_FILE_BYTES, name)
        except ConfigError as e:
            raise ArtifactError(str(e)) from None
        if len(b) != f["bytes"] or hashlib.sha256(b).hexdigest() != f["sha256"]:
            raise ArtifactError(f"{p}: is not the file the artifact was exported with (its size or sha256 differs "
                                f"from the contract's); re-export, or restore the file")
        data[name] = b
    tokenizer = None
    if entry.get("tokenizer") is not None:
        if entry["tokenizer"] != TOKENIZER_FILE or TOKENIZER_FILE not in data:
            raise _entry_error(where, f"names tokenizer {str(entry['tokenizer'])[:60]} that it does not list")
        try:
            tokenizer = load_tokenizer(data[TOKENIZER_FILE], str(paths[TOKENIZER_FILE]))
        except ConfigError as e:
            raise ArtifactError(str(e)) from None
    generation = {}
    if "generation_config.json" in data:
        try:
            generation = _json_object(paths["generation_config.json"], data["generation_config.json"])
        except ConfigError as e:
            raise ArtifactError(str(e)) from None
    return ArtifactText(tokenizer, (ids["bos_token_id"] or [None])[0], tuple(ids["eos_token_id"]),
                        (ids["pad_token_id"] or [None])[0], generation)


__all__ = ["ArtifactText", "MAX_TEXT_FILE_BYTES", "artifact_text", "load_tokenizer", "read_text_bundle"]
