"""The reference model, built from a Graph (not from upstream's classes). TorchScript-compatible.

    input_ids (B, T) -> embedding -> [block 0 .. block N-1] -> out_norm -> lm_head -> soft cap -> logits

States are one flat ``List[Tensor]`` in the graph's state-contract order (``graph.state_contract``),
so the same list maps one to one onto ONNX inputs/outputs and Core ML states.
Weights are in ``dtype`` (fp32 default); cell math and states are always fp32.
"""

from __future__ import annotations

import weakref
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UnsupportedError, first_line
from ..frontends import load_weight
from ..graphs import SLSTM_GATES, FFNSpec, Graph, MLSTMBlock, NormSpec, SLSTMBlock, WeightStore
from . import kernels

_KERNELS = ("chunkwise", "sequence")

# nn.Linear -> the canonical prefix of its weight (``blocks.0.mlstm.q``): filled as the model is built; what
# users of the reference model key per-Linear statistics by (GPTQ calibration, ``compress.calibrate``). Weak,
# so it never keeps a model alive.
LINEAR_NAMES: "weakref.WeakKeyDictionary[nn.Linear, str]" = weakref.WeakKeyDictionary()


class _Weights:
    """Materialises canonical tensors one at a time as torch parameters."""

    def __init__(self, store: WeightStore, dtype: torch.dtype, device: torch.device):
        self.store, self.dtype, self.device = store, dtype, device
        self._cache: dict[int, nn.Parameter] = {}

    def param(self, name: str, offset: float = 0.0, dtype: Optional[torch.dtype] = None) -> nn.Parameter:
        h = self.store[name]
        key = id(h.loader)
        if offset == 0.0 and dtype is None and key in self._cache:
            return self._cache[key]  # tied weights stay one parameter
        arr = load_weight(h)  # float32, refused with the tensor's name if NaN/Inf
        t = torch.from_numpy(arr if arr.flags.writeable else arr.copy())  # memory-mapped: copy once
        if offset != 0.0:
            t = t + offset  # folded in fp32, as upstream computes 1 + weight
        p = nn.Parameter(t.to(device=self.device, dtype=dtype or self.dtype), requires_grad=False)
        if offset == 0.0 and dtype is None:
            self._cache[key] = p
        return p

    def linear(self, prefix: str, bias: bool) -> nn.Linear:
        w = self.store[f"{prefix}.weight"]
        lin = nn.Linear(w.shape[1], w.shape[0], bias=bias, device="meta")
        lin.weight = self.param(f"{prefix}.weight")
        if bias:
            lin.bias = self.param(f"{prefix}.bias")
        LINEAR_NAMES[lin] = prefix
        return lin


class Norm(nn.Module):
    """RMSNorm or LayerNorm over the last axis; or per head when ``num_heads`` > 1 (input (..., NH, D))."""

    def __init__(self, spec: NormSpec, w: _Weights, prefix: str, num_heads: int = 1):
        super().__init__()
        self.rms = spec.kind == "rmsnorm"
        self.eps = float(spec.eps)
        self.num_heads = num_heads
        weight = w.param(f"{prefix}.weight", offset=spec.weight_offset)
        bias = w.param(f"{prefix}.bias") if spec.bias else torch.zeros_like(weight)
        self.weight = nn.Parameter(weight.detach().reshape(num_heads, -1) if num_heads > 1 else weight,
                                   requires_grad=False)
        self.bias = nn.Parameter(bias.detach().reshape(num_heads, -1) if num_heads > 1 else bias,
                                 requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        if self.rms:
            x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        else:
            x = x - x.mean(-1, keepdim=True)
            x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return (x.to(dtype) * self.weight + self.bias)


def headwise(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Block-diagonal linear: x (..., nb*d_in), weight (nb, d_out, d_in) -> (..., nb*d_out)."""
    nb = weight.shape[0]
    xs = x.reshape(x.shape[:-1] + (nb, 1, weight.shape[2]))  # (..., nb, 1, d_in)
    y = torch.matmul(xs, weight.transpose(1, 2))  # (..., nb, 1, d_out): one matmul per block
    return y.reshape(x.shape[:-1] + (nb * weight.shape[1],))


def activation(x: torch.Tensor, name: str) -> torch.Tensor:
    if name == "silu":
        return F.silu(x)
    if name == "gelu":
        return F.gelu(x)
    if name == "relu":
        return F.relu(x)
    return torch.sigmoid(x)


class FFN(nn.Module):
    """``x -> down(act(gate(norm(x))) * up(norm(x)))`` (the residual add is the block's)."""

    def __init__(self, spec: FFNSpec, w: _Weights, prefix: str):
        super().__init__()
        self.norm = Norm(spec.norm, w, f"{prefix}.ffn_norm")
        self.gate = w.linear(f"{prefix}.ffn.gate", spec.bias)
        self.up = w.linear(f"{prefix}.ffn.up", spec.bias)
        self.down = w.linear(f"{prefix}.ffn.down", spec.bias)
        self.act = spec.activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x)
        return self.down(activation(self.gate(x), self.act) * self.up(x))


class NoFFN(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x)


def _cell(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, i: torch.Tensor, f: torch.Tensor,
          c: torch.Tensor, n: torch.Tensor, m: torch.Tensor, eps: float, kernel: str, chunk_size: int
          ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Dispatch over the cell forms. q/k/v (B, NH, T, D), i/f (B, NH, T)."""
    if q.shape[2] == 1:
        h, c, n, m = kernels.mlstm_step(q[:, :, 0], k[:, :, 0], v[:, :, 0], i, f, c, n, m, eps)
        return h.unsqueeze(2), c, n, m
    if kernel == "sequence":
        return kernels.mlstm_sequence(q, k, v, i, f, c, n, m, eps)
    return kernels.mlstm_chunkwise(q, k, v, i, f, c, n, m, eps, chunk_size)


class MLSTMLargeBlock(nn.Module):
    """L family block: ``x += out_proj(sigmoid(ogate) * head_norm(cell(q, k, v)))``; ``x += FFN(x)``."""

    def __init__(self, index: int, spec: MLSTMBlock, w: _Weights):
        super().__init__()
        p = f"blocks.{index}.mlstm"
        self.num_states = 3
        self.num_heads, self.dqk, self.dv = spec.num_heads, spec.qk_head_dim, spec.v_head_dim
        self.eps = float(spec.cell_eps)
        self.cap = float(spec.gate_soft_cap) if spec.gate_soft_cap is not None else 0.0
        self.scale = spec.qk_head_dim ** -0.5
        self.kernel = "chunkwise"
        self.chunk_size = 64
        self.norm = Norm(spec.norm, w, f"blocks.{index}.norm")
        self.q = w.linear(f"{p}.q", spec.bias)
        self.k = w.linear(f"{p}.k", spec.bias)
        self.v = w.linear(f"{p}.v", spec.bias)
        self.ogate = w.linear(f"{p}.ogate", spec.bias)
        self.igate = w.linear(f"{p}.igate", True)
        self.fgate = w.linear(f"{p}.fgate", True)
        self.head_norm = Norm(spec.head_norm, w, f"{p}.head_norm", spec.num_heads)
        self.out_proj = w.linear(f"{p}.out_proj", spec.bias)
        self.ffn = FFN(spec.ffn, w, f"blocks.{index}") if spec.ffn is not None else NoFFN()

    def forward(self, x: torch.Tensor, states: List[torch.Tensor]) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        B, T = x.shape[0], x.shape[1]
        NH = self.num_heads
        xn = self.norm(x)
        q = self.q(xn).view(B, T, NH, self.dqk).transpose(1, 2).float() * self.scale  # (B, NH, T, DQK)
        k = self.k(xn).view(B, T, NH, self.dqk).transpose(1, 2).float()
        v = self.v(xn).view(B, T, NH, self.dv).transpose(1, 2).float()  # (B, NH, T, DV)
        i = self.igate(xn).float()
        f = self.fgate(xn).float()
        if self.cap > 0.0:
            i = kernels.soft_cap(i, self.cap)
            f = kernels.soft_cap(f, self.cap)
        h, c, n, m = _cell(q, k, v, i.transpose(1, 2), f.transpose(1, 2), states[0], states[1], states[2],
                           self.eps, self.kernel, self.chunk_size)
        h = self.head_norm(h.transpose(1, 2)).reshape(B, T, NH * self.dv).to(x.dtype)  # (B, T, NH*DV)
        x = x + self.out_proj(torch.sigmoid(self.ogate(xn)) * h)
        x = x + self.ffn(x)
        return x, [c, n, m]


class MLSTMHybridBlock(nn.Module):
    """H family mLSTM block (upstream ``mLSTMLayer``)::

        x -> norm -> up_x ----> conv -> silu (xc) -> q, k (headwise)
                   |       \\-----------------------> v  (headwise)
                   \\-> up_z                 cell(q, k, v; gates from cat(q, k, v)) -> head_norm
        y = out_proj((head_norm(h) + skip * xc) * silu(z));  x += y
    """

    def __init__(self, index: int, spec: MLSTMBlock, w: _Weights):
        super().__init__()
        p = f"blocks.{index}.mlstm"
        self.num_states = 4 if spec.conv_kernel > 0 else 3
        self.has_conv = spec.conv_kernel > 0
        self.num_heads, self.dh, self.inner = spec.num_heads, spec.qk_head_dim, spec.inner_dim
        self.eps = float(spec.cell_eps)
        self.scale = spec.qk_head_dim ** -0.5
        self.kernel = "chunkwise"
        self.chunk_size = 64
        self.norm = Norm(spec.norm, w, f"blocks.{index}.norm")
        self.up_x = w.linear(f"{p}.up_x", spec.bias)
        self.up_z = w.linear(f"{p}.up_z", spec.bias)
        if self.has_conv:
            self.conv_w = w.param(f"{p}.conv.weight")
            self.conv_b = w.param(f"{p}.conv.bias")
        else:
            self.conv_w = nn.Parameter(torch.zeros(1, 1), requires_grad=False)
            self.conv_b = nn.Parameter(torch.zeros(1), requires_grad=False)
        self.q_w = w.param(f"{p}.q.weight")
        self.k_w = w.param(f"{p}.k.weight")
        self.v_w = w.param(f"{p}.v.weight")
        zeros = torch.zeros(spec.inner_dim, dtype=w.dtype, device=w.device)
        self.q_b = w.param(f"{p}.q.bias") if spec.bias else nn.Parameter(zeros, requires_grad=False)
        self.k_b = w.param(f"{p}.k.bias") if spec.bias else nn.Parameter(zeros.clone(), requires_grad=False)
        self.v_b = w.param(f"{p}.v.bias") if spec.bias else nn.Parameter(zeros.clone(), requires_grad=False)
        self.igate = w.linear(f"{p}.igate", True)
        self.fgate = w.linear(f"{p}.fgate", True)
        self.head_norm = Norm(spec.head_norm, w, f"{p}.head_norm", spec.num_heads)
        self.skip = w.param(f"{p}.skip.weight")
        self.out_proj = w.linear(f"{p}.out_proj", spec.bias)

    def forward(self, x: torch.Tensor, states: List[torch.Tensor]) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        B, T = x.shape[0], x.shape[1]
        NH, DH = self.num_heads, self.dh
        xn = self.norm(x)
        xm = self.up_x(xn)  # (B, T, inner)
        z = self.up_z(xn)
        if self.has_conv:
            xc, ring = kernels.causal_conv(xm, states[3].to(xm.dtype), self.conv_w, self.conv_b)
            xc = F.silu(xc)
        else:
            xc, ring = xm, states[0]
        q = headwise(xc, self.q_w) + self.q_b
        k = headwise(xc, self.k_w) + self.k_b
        v = headwise(xm, self.v_w) + self.v_b
        gates_in = torch.cat([q, k, v], dim=-1)
        i = self.igate(gates_in).float().transpose(1, 2)  # (B, NH, T)
        f = self.fgate(gates_in).float().transpose(1, 2)
        qh = q.view(B, T, NH, DH).transpose(1, 2).float()
        kh = k.view(B, T, NH, DH).transpose(1, 2).float() * self.scale
        vh = v.view(B, T, NH, DH).transpose(1, 2).float()
        c0 = states[0]
        n0 = states[1].reshape(B, NH, DH)  # contract (B, NH, DH, 1) -> (B, NH, DH)
        m0 = states[2].reshape(B, NH, 1)  # contract (B, NH, 1, 1) -> (B, NH, 1)
        h, c, n, m = _cell(qh, kh, vh, i, f, c0, n0, m0, self.eps, self.kernel, self.chunk_size)
        h = self.head_norm(h.transpose(1, 2)).reshape(B, T, self.inner).to(x.dtype)
        h = (h + self.skip * xc) * F.silu(z)
        x = x + self.out_proj(h)
        new_states = [c, n.reshape(B, NH, DH, 1), m.reshape(B, NH, 1, 1)]
        if self.has_conv:
            new_states.append(ring.float())
        return x, new_states


class SLSTMBlock_(nn.Module):
    """H family sLSTM block (upstream ``sLSTMLayer``)::

        x -> norm -> conv -> silu -> i, f (headwise)      recurrent R per head, per gate
                  \\------------------> z, o (headwise)    -> cell -> head_norm -> x += y; x += FFN(x)
    """

    def __init__(self, index: int, spec: SLSTMBlock, w: _Weights):
        super().__init__()
        p = f"blocks.{index}.slstm"
        self.has_conv = spec.conv_kernel > 0
        self.num_states = 2 if self.has_conv else 1
        self.num_heads, self.dh = spec.num_heads, spec.head_dim
        self.norm = Norm(spec.norm, w, f"blocks.{index}.norm")
        if self.has_conv:
            self.conv_w = w.param(f"{p}.conv.weight")
            self.conv_b = w.param(f"{p}.conv.bias")
        else:
            self.conv_w = nn.Parameter(torch.zeros(1, 1), requires_grad=False)
            self.conv_b = nn.Parameter(torch.zeros(1), requires_grad=False)
        gates = SLSTM_GATES
        self.w_in = nn.Parameter(torch.stack([w.param(f"{p}.{g}gate.weight") for g in gates]).detach(),
                                 requires_grad=False)  # (4, NH, DH, DH)
        self.r = nn.Parameter(torch.stack([w.param(f"{p}.{g}gate.recurrent", dtype=torch.float32)
                                           for g in gates]).detach(), requires_grad=False)  # (4, NH, DH, DH)
        self.b = nn.Parameter(torch.stack([w.param(f"{p}.{g}gate.bias", dtype=torch.float32)
                                           for g in gates]).detach(), requires_grad=False)  # (4, E)
        self.head_norm = Norm(spec.head_norm, w, f"{p}.head_norm", spec.num_heads)
        self.ffn = FFN(spec.ffn, w, f"blocks.{index}") if spec.ffn is not None else NoFFN()

    def forward(self, x: torch.Tensor, states: List[torch.Tensor]) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        B, T, E = x.shape[0], x.shape[1], x.shape[2]
        NH, DH = self.num_heads, self.dh
        xn = self.norm(x)
        if self.has_conv:
            xc, ring = kernels.causal_conv(xn, states[0].to(xn.dtype), self.conv_w, self.conv_b)
            xc = F.silu(xc)
            st = states[1]
        else:
            xc, ring = xn, states[0]
            st = states[0]
        wx = torch.stack([headwise(xc, self.w_in[0]), headwise(xc, self.w_in[1]),
                          headwise(xn, self.w_in[2]), headwise(xn, self.w_in[3])], dim=2)  # (B, T, 4, E)
        wx = (wx.float() + self.b).view(B, T, 4, NH, DH)
        s = st.view(4, B, NH, DH)
        ys: List[torch.Tensor] = []
        for t in range(T):
            s = kernels.slstm_step(wx[:, t], self.r, s)
            ys.append(s[0])
        y = torch.stack(ys, dim=1)  # (B, T, NH, DH)
        y = self.head_norm(y).reshape(B, T, E).to(x.dtype)
        x = x + y
        x = x + self.ffn(x)
        out = s.reshape(4, B, E)
        if self.has_conv:
            return x, [ring.float(), out]
        return x, [out]


class ReferenceModel(nn.Module):
    def __init__(self, graph: Graph, dtype: torch.dtype = torch.float32, device: str = "cpu"):
        super().__init__()
        cfg = graph.config
        w = _Weights(graph.weights, dtype, torch.device(device))
        self.embedding = w.param("embedding.weight")
        blocks: List[nn.Module] = []
        for i, b in enumerate(graph.blocks):
            if isinstance(b, SLSTMBlock):
                blocks.append(SLSTMBlock_(i, b, w))
            elif b.form == "hybrid":
                blocks.append(MLSTMHybridBlock(i, b, w))
            else:
                blocks.append(MLSTMLargeBlock(i, b, w))
        self.blocks = nn.ModuleList(blocks)
        self.out_norm = Norm(cfg.out_norm, w, "out_norm") if cfg.out_norm is not None else nn.Identity()
        self.lm_head = w.param("lm_head.weight")
        self.logit_cap = float(cfg.output_logit_soft_cap) if cfg.output_logit_soft_cap else 0.0
        # state shapes with the batch axis as -1 (sLSTM state: axis 1, others: axis 0)
        contract = graph.state_contract(1)
        self.state_shapes: List[List[int]] = [list(s.shape) for s in contract]
        self.state_batch_axis: List[int] = [1 if s.role == "slstm" else 0 for s in contract]
        self.state_names: List[str] = [s.name for s in contract]
        self.vocab_size = cfg.vocab_size

    @torch.jit.export
    def init_states(self, batch_size: int) -> List[torch.Tensor]:
        """Zeros: the empty context."""
        out: List[torch.Tensor] = []
        for shape, axis in zip(self.state_shapes, self.state_batch_axis):
            s = list(shape)
            s[axis] = batch_size
            out.append(torch.zeros(s, dtype=torch.float32, device=self.embedding.device))
        return out

    @torch.jit.export
    def forward_with_states(self, input_ids: torch.Tensor, states: List[torch.Tensor]
                            ) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """input_ids (B, T) int64, states in contract order -> logits (B, T, V) fp32, new states."""
        x = F.embedding(input_ids, self.embedding)
        new_states: List[torch.Tensor] = []
        offset = 0
        for block in self.blocks:
            k = block.num_states
            x, bs = block(x, states[offset:offset + k])
            new_states.extend(bs)
            offset += k
        x = self.out_norm(x)
        logits = F.linear(x, self.lm_head).float()
        if self.logit_cap > 0.0:
            logits = kernels.soft_cap(logits, self.logit_cap)
        return logits, new_states

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Logits (B, T, V) of the whole sequence from an empty state."""
        return self.forward_with_states(input_ids, self.init_states(input_ids.shape[0]))[0]

    @torch.jit.export
    def generate_greedy(self, input_ids: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
        """Greedy continuation: returns only the new tokens, (B, max_new_tokens) int64."""
        states = self.init_states(input_ids.shape[0])
        logits, states = self.forward_with_states(input_ids, states)
        out: List[torch.Tensor] = []
        for step in range(max_new_tokens):
            nxt = torch.argmax(logits[:, -1], dim=-1, keepdim=True)  # (B, 1)
            out.append(nxt)
            if step + 1 < max_new_tokens:
                logits, states = self.forward_with_states(nxt, states)
        if len(out) == 0:
            return torch.zeros(input_ids.shape[0], 0, dtype=torch.long, device=input_ids.device)
        return torch.cat(out, dim=1)

    def set_kernel(self, kernel: str, chunk_size: int = 64) -> "ReferenceModel":
        """Choose the mLSTM form used for T > 1: "chunkwise" (default, prefill) or "sequence"."""
        if kernel not in _KERNELS:
            raise UnsupportedError(f"reference: kernel must be one of {_KERNELS}, got {kernel!r}")
        if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1:
            raise UnsupportedError(f"reference: chunk size must be a positive integer, got {chunk_size!r}")
        for b in self.blocks:
            if hasattr(b, "kernel"):
                b.kernel = kernel
                b.chunk_size = chunk_size
        return self


def resolve_device(device: Optional[str] = None) -> str:
    """"auto"/None -> mps if available, else cuda, else cpu; an explicit name is taken as is, once
    checked (UnsupportedError for a name torch does not know or a device this machine lacks)."""
    if device not in (None, "auto"):
        _check_device(device)
        return device
    if _usable(lambda: getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()):
        return "mps"
    if _usable(lambda: torch.cuda.is_available() and torch.cuda.device_count() > 0):
        return "cuda"
    return "cpu"


def _usable(query) -> bool:
    """A device query that fails (a broken driver, a torch built without the backend) means: not usable."""
    try:
        return bool(query())
    except (RuntimeError, AssertionError, AttributeError, OSError):
        return False


def _check_device(device) -> None:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise UnsupportedError(f"reference: unknown device {device!r} ({first_line(e)}); "
                               f"use auto, cpu, cuda or mps") from None
    if dev.type == "cpu":
        return
    if dev.type == "cuda":
        try:
            n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        except (RuntimeError, AssertionError, OSError) as e:
            raise UnsupportedError(f"reference: device {device!r} is not usable on this machine ({first_line(e)}); "
                                   f"use auto or cpu") from None
        if n == 0 or (dev.index is not None and dev.index >= n):
            raise UnsupportedError(f"reference: device {device!r} is not available on this machine "
                                   f"({n} CUDA device(s)); use auto or cpu")
        return
    if dev.type == "mps":
        if not _usable(lambda: getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()):
            raise UnsupportedError(f"reference: device {device!r} is not available on this machine; use auto or cpu")
        return
    raise UnsupportedError(f"reference: device {device!r} is not supported; use auto, cpu, cuda or mps")


_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
           "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}


def build_model(graph: Graph, device: Optional[str] = None, dtype: str | torch.dtype = torch.float32
                ) -> ReferenceModel:
    """The reference model of ``graph`` on ``device`` (auto: mps, cuda, cpu), eval mode."""
    if isinstance(dtype, str):
        if dtype not in _DTYPES:
            raise UnsupportedError(f"reference: dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
        dtype = _DTYPES[dtype]
    model = ReferenceModel(graph, dtype=dtype, device=resolve_device(device))
    return model.eval()


__all__ = ["ReferenceModel", "build_model", "resolve_device", "headwise"]
