"""Name tables: checkpoint name pattern (``{i}`` = block index) -> canonical name(s), with lazy transforms.

A frontend lists :class:`Rule` s; :func:`apply_rules` turns a checkpoint's handles into canonical
handles and collects every problem (missing, misshaped source, unexpected) instead of stopping at
the first; :func:`build_graph` adds the canonical shape check and raises all of them in one error.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Union

from ..errors import ConfigError
from ..graphs import Graph, WeightHandle, WeightStore
from ..graphs.spec import BlockSpec, ModelConfig

# fn(handle, canonical names, block spec or None) -> handles (one per canonical name)
Transform = Callable[[WeightHandle, Sequence[str], Optional[BlockSpec]], list]


class Misshaped(Exception):
    """Raised by a transform whose source tensor does not have the shape the config implies."""


@dataclass(frozen=True)
class Rule:
    ckpt: str
    canon: Union[str, tuple[str, ...]]
    fn: Optional[Transform] = None
    when: Optional[Callable[[Optional[BlockSpec]], bool]] = None
    # when the checkpoint lacks it: None = missing (an error); else a canonical source to reuse
    fallback: Optional[Callable[[dict, tuple], Optional[list]]] = None

    def names(self, i: Optional[int]) -> tuple[str, tuple[str, ...]]:
        canon = (self.canon,) if isinstance(self.canon, str) else self.canon
        if i is None:
            return self.ckpt, canon
        return self.ckpt.format(i=i), tuple(c.format(i=i) for c in canon)


# -- transforms --------------------------------------------------------------------------------
def split_rows(*sizes_of: Callable[[BlockSpec], int]) -> Transform:
    """Split axis 0 into consecutive chunks, sizes given by functions of the block spec."""

    def fn(h: WeightHandle, names: Sequence[str], block) -> list:
        sizes = [s(block) for s in sizes_of]
        if not h.shape or h.shape[0] != sum(sizes):
            raise Misshaped(f"first axis must be {' + '.join(map(str, sizes))} = {sum(sizes)}")
        out, start = [], 0
        for name, n in zip(names, sizes):
            out.append(h.rows(name, start, start + n))
            start += n
        return out

    return fn


def check_shape(h: WeightHandle, shape: tuple[int, ...]) -> None:
    if tuple(h.shape) != tuple(shape):
        raise Misshaped(f"expected {list(shape)}")


def conv_weight(dim_of: Callable[[BlockSpec], int]) -> Transform:
    """torch depthwise Conv1d weight (D, 1, K) -> canonical (K, D)."""

    def fn(h: WeightHandle, names: Sequence[str], block) -> list:
        check_shape(h, (dim_of(block), 1, block.conv_kernel))
        K, D = block.conv_kernel, dim_of(block)
        return [h.derive(names[0], (K, D), lambda a: a[:, 0, :].T)]

    return fn


def _rx(pattern: str) -> re.Pattern:
    return re.compile("^" + re.escape(pattern).replace(re.escape("{i}"), r"(\d+)") + "$")


# -- applying a table --------------------------------------------------------------------------
@dataclass
class Mapped:
    handles: dict
    missing: list
    misshaped: list
    consumed: set
    reported: set = None  # canonical names already covered by a missing / misshaped entry

    def __post_init__(self):
        if self.reported is None:
            self.reported = set()


def apply_rules(ckpt: dict[str, WeightHandle], rules: Sequence[Rule], blocks: Sequence[BlockSpec],
                block_rules: Callable[[BlockSpec], Sequence[Rule]], mapped: Optional[Mapped] = None) -> Mapped:
    """Model-level ``rules`` (no ``{i}``) and per-block rules for each block."""
    m = mapped or Mapped({}, [], [], set())
    work: list[tuple[Rule, Optional[int], Optional[BlockSpec]]] = [(r, None, None) for r in rules]
    for i, b in enumerate(blocks):
        work.extend((r, i, b) for r in block_rules(b))
    for rule, i, block in work:
        if rule.when is not None and not rule.when(block):
            continue
        ck, names = rule.names(i)
        h = ckpt.get(ck)
        if h is None:
            fb = rule.fallback(m.handles, names) if rule.fallback else None
            if fb is None:
                m.missing.append(f"{ck} (-> {', '.join(names)})")
                m.reported.update(names)
            else:
                for x in fb:
                    m.handles[x.name] = x
            continue
        m.consumed.add(ck)
        if rule.fn is None:
            m.handles[names[0]] = h.rename(names[0])
            continue
        try:
            for x in rule.fn(h, names, block):
                m.handles[x.name] = x
        except Misshaped as e:
            m.misshaped.append(f"{ck} (-> {', '.join(names)}): {e}, got {list(h.shape)}")
            m.reported.update(names)
    return m


def build_graph(config: ModelConfig, blocks: tuple[BlockSpec, ...], ckpt: dict[str, WeightHandle],
                mapped: Mapped, source: str, ignore: Sequence[str] = (),
                config_source: Optional[str] = None) -> Graph:
    """One error listing every missing / misshaped / non-float / unexpected tensor; else the validated graph.
    An inconsistent config is a ConfigError that names ``config_source`` (the config file)."""
    from ..graphs.graph import not_float_weights, raise_weight_mismatch, validate_config

    try:
        validate_config(config, blocks)
    except ConfigError as e:
        raise ConfigError(f"{config_source or source}: {e}") from None
    graph = Graph(config=config, blocks=blocks, weights=WeightStore(mapped.handles), source=source)
    expected = graph.expected_weights()
    missing = list(mapped.missing)
    misshaped = list(mapped.misshaped)
    for n, shape in expected.items():
        h = mapped.handles.get(n)
        if h is None:
            if n not in mapped.reported:
                missing.append(f"{n} {list(shape)}")
        elif tuple(h.shape) != tuple(shape):
            misshaped.append(f"{h.source.rsplit(':', 1)[-1]} (-> {n}): expected {list(shape)}, got {list(h.shape)}")
    ign = [_rx(p) for p in ignore]
    unexpected = sorted(n for n in ckpt if n not in mapped.consumed and not any(r.match(n) for r in ign))
    unexpected += sorted(n for n in mapped.handles if n not in expected)
    read = [ckpt[c] for c in sorted(mapped.consumed) if c in ckpt]  # a tied lm_head.weight too
    raise_weight_mismatch(source, missing, misshaped, unexpected, not_float_weights(mapped.handles, expected, read))
    return graph  # every check of Graph.validate() was made above, with checkpoint names
