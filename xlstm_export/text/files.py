"""A checkpoint's tokenizer and generation files, carried beside every artifact and read back from it.

They are read from the checkpoint and checked by ``frontends/text.py`` (``read_text_bundle``) into
``graph.text``.

Where an artifact keeps them is its target's rule (``Target.text_paths``; the contract names them by file
name only, so it holds no path and does not depend on what the output is called): by default beside a
single-file artifact as ``<artifact file name>.<name>``; a package target may keep them inside (the export
pipeline writes them with the artifact, in the same ``atomic_outputs``).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from ..errors import ArtifactError, ConfigError
from ..graphs.text import MAX_TEXT_FILE_BYTES, TEXT_FILES, TOKENIZER_FILE

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
    from ..frontends.text import json_object, load_tokenizer

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
            generation = json_object(paths["generation_config.json"], data["generation_config.json"])
        except ConfigError as e:
            raise ArtifactError(str(e)) from None
    return ArtifactText(tokenizer, (ids["bos_token_id"] or [None])[0], tuple(ids["eos_token_id"]),
                        (ids["pad_token_id"] or [None])[0], generation)


__all__ = ["ArtifactText", "artifact_text"]
