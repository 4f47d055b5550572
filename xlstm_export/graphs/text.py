"""What a checkpoint says about text: its tokenizer and generation files and its special token ids.

Pure data (no tokenizer library here): ``frontends/text.py`` reads and checks the files and builds
this; every artifact carries the files beside it and names them in its I/O contract under ``"text"``
(:func:`contract_entry`), so an artifact alone takes and gives text (``xlstm-export run``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Optional, Tuple

# the files that travel with an artifact, in this order, when the checkpoint has them
TEXT_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json")
TOKENIZER_FILE = "tokenizer.json"
MAX_TEXT_FILE_BYTES = 64 << 20  # a tokenizer.json of a 256k vocabulary is ~20 MB


@dataclass(frozen=True)
class TextBundle:
    """The checkpoint's text files (name, bytes) and special ids; ``eos_token_ids`` may hold several."""

    files: Tuple[Tuple[str, bytes], ...]
    bos_token_id: Optional[int] = None
    eos_token_ids: Tuple[int, ...] = ()
    pad_token_id: Optional[int] = None

    @property
    def has_tokenizer(self) -> bool:
        return any(n == TOKENIZER_FILE for n, _ in self.files)

    def names(self) -> Tuple[str, ...]:
        return tuple(n for n, _ in self.files)


def contract_entry(bundle: TextBundle) -> dict:
    """The contract's ``"text"`` entry: each file by its name (where it lies is the target's rule, see
    ``xlstm_export.text.files``) with its size and sha256, the tokenizer file (or null) and the ids."""
    return {
        "files": [{"name": n, "bytes": len(b), "sha256": hashlib.sha256(b).hexdigest()} for n, b in bundle.files],
        "tokenizer": TOKENIZER_FILE if bundle.has_tokenizer else None,
        "bos_token_id": bundle.bos_token_id,
        "eos_token_id": list(bundle.eos_token_ids),
        "pad_token_id": bundle.pad_token_id,
    }


__all__ = ["MAX_TEXT_FILE_BYTES", "TEXT_FILES", "TOKENIZER_FILE", "TextBundle", "contract_entry"]
