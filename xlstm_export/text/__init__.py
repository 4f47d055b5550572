"""Text in, text out: the checkpoint's tokenizer and generation files, carried by every artifact, and the
one generation loop (sampling included) that ``generate`` (the reference) and ``run`` (an artifact) share.

- ``files``: read back from an artifact the checkpoint's tokenizer / generation files (``artifact_text``;
  ``frontends/text.py`` reads and checks them into ``graph.text``; where an artifact keeps them is its
  target's ``text_paths``).
- ``tokenizer``: ``tokenizers``' Tokenizer over ``tokenizer.json``, with incremental decoding for ``--stream``.
- ``generation``: :class:`Sampling`, :func:`pick` (the one sampling function), :func:`generate_tokens`
  over a "feed ids, get the last logits" step, and steps for the reference and for any runner.
"""

REFERENCE_CHUNK = 512  # prompt tokens per reference call: a long prompt never holds (T, V) logits at once
