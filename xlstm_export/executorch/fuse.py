"""Export-time fusion of the linear layers that read the same tensor: one fully connected op instead of several.

The decode step is a chain of matrix-vector products (at 100M parameters, 121 of XNNPACK's fully connected
ops per step, ~85% of its time: measured with ExecuTorch's profiler). Per op, XNNPACK pays a dispatch to its
thread pool and a ramp-up over the weight stream that a large op amortises better than a small one (2
threads, one op: 768 -> 1536 at 0.64x ORT's MLAS speed, 768 -> 3072 at 0.88x). Layers fed by one tensor
become one op on their rows stacked, whose output is sliced:

* the L-family mLSTM block: ``q, k, v, ogate, igate, fgate`` (all of the normed input) -> one op;
* the FFN: ``gate, up`` (of the FFN's normed input) -> one op;
* the H-family mLSTM block: ``up_x, up_z``; ``igate, fgate`` (of ``cat(q, k, v)``) -> one op each.

Same values: every output is the same dot product over the same inputs (a fully connected kernel sums over
the input dim per output, whichever rows sit beside it), and a layer without bias in a group with one gets
a zero bias (``0 + s`` is exact). Applied to the module before ``torch.export``, to programs whose weights
stay fp32 (a quantized program's weights are quantized per layer, as ``quantize.py`` plans them).
"""

from __future__ import annotations

import itertools
from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

# class name -> groups of nn.Linear attributes called on one tensor in that class's forward
GROUPS = {
    "MLSTMLargeBlock": (("q", "k", "v", "ogate", "igate", "fgate"),),
    "FFN": (("gate", "up"),),
    "MLSTMHybridBlock": (("up_x", "up_z"), ("igate", "fgate")),
}


def fuse_shared_input_linears(model) -> int:
    """Replace each group of :data:`GROUPS` in ``model`` (in place) by one linear op and slices of its output;
    returns how many groups were fused."""
    fused = 0
    for module in list(model.modules()):
        for group in GROUPS.get(type(module).__name__, ()):
            layers = [getattr(module, name, None) for name in group]
            if not all(isinstance(m, nn.Linear) for m in layers):
                continue
            if len({m.in_features for m in layers}) != 1 or len({m.weight.dtype for m in layers}) != 1:
                continue
            stacked = Stacked(layers)
            setattr(module, "_".join(group), stacked)  # registered once, under its owner
            for name, (start, stop) in zip(group, stacked.spans):
                setattr(module, name, Rows(stacked, start, stop))
            fused += 1
    return fused


def _spans(sizes: Sequence[int]) -> List[Tuple[int, int]]:
    ends = list(itertools.accumulate(sizes))
    return [(end - n, end) for n, end in zip(sizes, ends)]


class Stacked(nn.Module):
    """``linear(x, cat(W_i), cat(b_i))``, computed once per input tensor however many parts ask for it."""

    def __init__(self, layers: Sequence[nn.Linear]):
        super().__init__()
        w = torch.cat([m.weight.detach() for m in layers], 0)
        self.weight = nn.Parameter(w, requires_grad=False)
        self.bias = None
        if any(m.bias is not None for m in layers):
            self.bias = nn.Parameter(torch.cat([m.bias.detach() if m.bias is not None else
                                                torch.zeros(m.out_features, dtype=w.dtype) for m in layers]),
                                     requires_grad=False)
        self.spans = _spans([m.out_features for m in layers])
        self._last: tuple = ()  # (input, output) of the last call: the parts share one product

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._last and self._last[0] is x:
            return self._last[1]
        y = F.linear(x, self.weight, self.bias)
        self._last = (x, y)
        return y


class Rows(nn.Module):
    """One former layer: its rows of the stacked product."""

    def __init__(self, stacked: Stacked, start: int, stop: int):
        super().__init__()
        self._stacked = (stacked,)  # a tuple: not registered again under each part
        self.start, self.stop = start, stop

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._stacked[0](x)[..., self.start:self.stop]


__all__ = ["GROUPS", "fuse_shared_input_linears", "Stacked", "Rows"]
