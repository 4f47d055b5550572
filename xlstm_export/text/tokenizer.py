"""Text <-> ids through ``tokenizers`` (``tokenizer.json``), and incremental decoding for ``--stream``."""

from __future__ import annotations

from typing import List

from ..errors import ConfigError


def encode(tokenizer, text: str, vocab_size: int, where: str) -> List[int]:
    """The ids of ``text`` (special tokens added as the tokenizer's post-processor says, as transformers'
    fast tokenizers do); ConfigError when it gives none or ids outside the model's vocabulary."""
    ids = list(tokenizer.encode(text, add_special_tokens=True).ids)
    if not ids:
        raise ConfigError(f"--prompt: the tokenizer of {where} turns {text[:40]!r} into no tokens; give a longer "
                          f"prompt")
    bad = [i for i in ids if not 0 <= i < vocab_size]
    if bad:
        raise ConfigError(f"--prompt: the tokenizer of {where} gives ids {bad[:4]} outside the model's vocabulary "
                          f"[0, {vocab_size})")
    return ids


def decode(tokenizer, ids: List[int]) -> str:
    return tokenizer.decode(list(ids), skip_special_tokens=True)


class TextStream:
    """Decode tokens as they come: ``push(token)`` returns the text they add. Holds back a piece that ends
    in U+FFFD (an incomplete UTF-8 sequence of byte-level tokens) until a later token completes it."""

    def __init__(self, tokenizer):
        self.tokenizer, self.ids, self.shown = tokenizer, [], ""

    def push(self, token: int) -> str:
        self.ids.append(int(token))
        text = decode(self.tokenizer, self.ids)
        if text.endswith("\ufffd") or not text.startswith(self.shown):
            return ""
        new, self.shown = text[len(self.shown):], text
        return new

    def flush(self) -> str:
        text = decode(self.tokenizer, self.ids)
        new = text[len(self.shown):] if text.startswith(self.shown) else ""
        self.shown = text
        return new


__all__ = ["encode", "decode", "TextStream"]
