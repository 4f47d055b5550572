"""PyTorch reference kernels for the mLSTM and sLSTM cells. TorchScript-compatible.

Layouts (the one used inside every target too):
    q, k   (B, NH, T, DQK)      v, h   (B, NH, T, DV)      i, f   (B, NH, T)  gate pre-activations
    C      (B, NH, DQK, DV)     n      (B, NH, DQK)        m      (B, NH, 1)
q (or k) arrives already scaled by DQK^-1/2; the cell does not scale.

mLSTM stabilized recurrence (one step; the other forms compute exactly this):

    f_log = logsigmoid(f)
    m'    = max(f_log + m, i)
    C'    = exp(f_log + m - m') C + exp(i - m') k v^T
    n'    = exp(f_log + m - m') n + exp(i - m') k
    h     = q^T C' / (max(|q . n'|, exp(-m')) + eps)

``mlstm_chunkwise`` unrolls that recurrence over chunks of L steps: with b_t the cumulative f_log
inside the chunk, m_t = max(b_t + m_0, max_{s<=t} b_t - b_s + i_s) is *the same* stabilizer as the
step's, so chunkwise == recurrent to rounding (no approximation), at O(L^2) per chunk.
``mlstm_parallel`` is upstream's quadratic form from an empty state (stabilizer max over s only,
as xlstm's ``parallel_stabilized_simple``); it differs from the recurrent form only in where eps
sits (relative ~eps).
"""

from __future__ import annotations

import contextlib
from typing import Iterator, List, Tuple

import torch
import torch.nn.functional as F


def logsigmoid(x: torch.Tensor) -> torch.Tensor:
    """The cells' log-sigmoid of the forget gate (``F.logsigmoid``, as upstream; see
    :func:`elementary_logsigmoid` for what an export may trace instead)."""
    return F.logsigmoid(x)


def _logsigmoid_elementary(x: torch.Tensor) -> torch.Tensor:
    return torch.clamp(x, max=0.0) - torch.log(1.0 + torch.exp(-torch.abs(x)))


@contextlib.contextmanager
def elementary_logsigmoid() -> Iterator[None]:
    """While active, the cells compute log-sigmoid as ``min(x, 0) - log(1 + exp(-|x|))``: ops a delegate takes
    (ExecuTorch's XNNPACK has no ``log1p``, and the decomposition of ``logsigmoid`` leaves a ``full``
    besides). ``log(1 + y)`` for ``log1p(y)``, ``y = exp(-|x|)`` in (0, 1]: an absolute error below 1.2e-7
    in the log domain (where ``1 + y`` rounds), i.e. relative 1.2e-7 in the forget gate. For tracing only
    (``torch.export``); not thread-safe."""
    global logsigmoid
    saved = logsigmoid
    logsigmoid = _logsigmoid_elementary
    try:
        yield
    finally:
        logsigmoid = saved


def mlstm_step(
    q: torch.Tensor,  # (B, NH, DQK)
    k: torch.Tensor,  # (B, NH, DQK)
    v: torch.Tensor,  # (B, NH, DV)
    i: torch.Tensor,  # (B, NH, 1)
    f: torch.Tensor,  # (B, NH, 1)
    c: torch.Tensor,  # (B, NH, DQK, DV)
    n: torch.Tensor,  # (B, NH, DQK)
    m: torch.Tensor,  # (B, NH, 1)
    eps: float,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One recurrent step. Returns h (B, NH, DV), C', n', m'."""
    f_log = logsigmoid(f)
    m_new = torch.maximum(f_log + m, i)  # (B, NH, 1)
    f_act = torch.exp(f_log + m - m_new)
    i_act = torch.exp(i - m_new)
    c_new = f_act.unsqueeze(-1) * c + i_act.unsqueeze(-1) * (k.unsqueeze(-1) * v.unsqueeze(-2))
    n_new = f_act * n + i_act * k
    h_num = torch.matmul(q.unsqueeze(-2), c_new).squeeze(-2)  # (B, NH, DV)
    qn = torch.matmul(q.unsqueeze(-2), n_new.unsqueeze(-1)).squeeze(-1)  # (B, NH, 1), a matmul as upstream
    h_den = torch.maximum(qn.abs(), torch.exp(-m_new)) + eps
    return h_num / h_den, c_new, n_new, m_new


def mlstm_sequence(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, i: torch.Tensor, f: torch.Tensor,
    c: torch.Tensor, n: torch.Tensor, m: torch.Tensor, eps: float,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The step applied T times. Returns h (B, NH, T, DV) and the final C, n, m."""
    hs: List[torch.Tensor] = []
    for t in range(q.shape[2]):
        h, c, n, m = mlstm_step(q[:, :, t], k[:, :, t], v[:, :, t], i[:, :, t:t + 1], f[:, :, t:t + 1],
                                c, n, m, eps)
        hs.append(h)
    return torch.stack(hs, dim=2), c, n, m


def _mlstm_chunk(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, i: torch.Tensor, f: torch.Tensor,
    c: torch.Tensor, n: torch.Tensor, m: torch.Tensor, eps: float,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One chunk of L steps, exactly the recurrence, computed in parallel inside the chunk."""
    L = q.shape[2]
    b = torch.cumsum(logsigmoid(f), dim=-1)  # (B, NH, L) cumulative log forget
    # log weight of step s's input seen from step t: b_t - b_s + i_s, for s <= t
    log_d = b.unsqueeze(-1) - b.unsqueeze(-2) + i.unsqueeze(-2)  # (B, NH, L, L)
    causal = torch.ones(L, L, dtype=torch.bool, device=q.device).tril()
    log_d = log_d.masked_fill(~causal, float("-inf"))
    log_state = (b + m).unsqueeze(-1)  # (B, NH, L, 1) log weight of the initial state seen from t
    m_t = torch.maximum(log_state, log_d.amax(dim=-1, keepdim=True))  # (B, NH, L, 1) == recurrent m_t
    d = torch.exp(log_d - m_t)  # (B, NH, L, L)
    w_state = torch.exp(log_state - m_t)  # (B, NH, L, 1)
    qk = torch.matmul(q, k.transpose(-1, -2)) * d  # (B, NH, L, L)
    h_num = torch.matmul(qk, v) + w_state * torch.matmul(q, c)  # (B, NH, L, DV)
    qn = qk.sum(-1, keepdim=True) + w_state * torch.matmul(q, n.unsqueeze(-1))  # (B, NH, L, 1)
    h = h_num / (torch.maximum(qn.abs(), torch.exp(-m_t)) + eps)
    # state after the chunk: row t = L-1 of the same weights
    m_new = m_t[:, :, -1]  # (B, NH, 1)
    w_in = d[:, :, -1, :].unsqueeze(-1)  # (B, NH, L, 1) weights of each step's k v^T
    w_c = w_state[:, :, -1]  # (B, NH, 1)
    c_new = w_c.unsqueeze(-1) * c + torch.matmul((k * w_in).transpose(-1, -2), v)
    n_new = w_c * n + (k * w_in).sum(2)
    return h, c_new, n_new, m_new


def mlstm_chunkwise(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, i: torch.Tensor, f: torch.Tensor,
    c: torch.Tensor, n: torch.Tensor, m: torch.Tensor, eps: float, chunk_size: int = 64,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Prefill form: chunks of ``chunk_size`` (the last may be shorter); any T; carries states."""
    T = q.shape[2]
    hs: List[torch.Tensor] = []
    for s in range(0, T, chunk_size):
        e = min(s + chunk_size, T)
        h, c, n, m = _mlstm_chunk(q[:, :, s:e], k[:, :, s:e], v[:, :, s:e], i[:, :, s:e], f[:, :, s:e],
                                  c, n, m, eps)
        hs.append(h)
    return torch.cat(hs, dim=2), c, n, m


def mlstm_parallel(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, i: torch.Tensor, f: torch.Tensor, eps: float,
) -> torch.Tensor:
    """Quadratic form from an empty state, as upstream's ``parallel_stabilized_simple``."""
    T = q.shape[2]
    b = torch.cumsum(logsigmoid(f), dim=-1)
    log_d = b.unsqueeze(-1) - b.unsqueeze(-2) + i.unsqueeze(-2)
    causal = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
    log_d = log_d.masked_fill(~causal, float("-inf"))
    max_d = log_d.max(dim=-1, keepdim=True).values
    qk = torch.matmul(q, k.transpose(-1, -2)) * torch.exp(log_d - max_d)
    norm = torch.maximum(qk.sum(-1, keepdim=True).abs(), torch.exp(-max_d))
    return torch.matmul(qk / (norm + eps), v)


def slstm_step(
    wx: torch.Tensor,  # (B, 4, NH, DH) input contributions i, f, z, o (bias included)
    r: torch.Tensor,  # (4, NH, DH_out, DH_in) recurrent kernels
    state: torch.Tensor,  # (4, B, NH, DH) rows y, c, n, m
) -> torch.Tensor:
    """One sLSTM step (upstream's vanilla pointwise, without its first-step special case, which
    changes m but not outputs). Returns the new state (4, B, NH, DH); row 0 is the output y."""
    y, c, n, m = state[0], state[1], state[2], state[3]
    # R y per gate and head: (1, 4, NH, DH_out, DH_in) @ (B, 1, NH, DH_in, 1) -> (B, 4, NH, DH)
    ry = torch.matmul(r.unsqueeze(0), y.unsqueeze(1).unsqueeze(-1)).squeeze(-1)
    raw = wx + ry
    i_raw, f_raw, z_raw, o_raw = raw[:, 0], raw[:, 1], raw[:, 2], raw[:, 3]
    log_f_plus_m = m + logsigmoid(f_raw)
    m_new = torch.maximum(i_raw, log_f_plus_m)
    i_act = torch.exp(i_raw - m_new)
    f_act = torch.exp(log_f_plus_m - m_new)
    c_new = f_act * c + i_act * torch.tanh(z_raw)
    n_new = f_act * n + i_act
    y_new = torch.sigmoid(o_raw) * c_new / n_new
    return torch.stack([y_new, c_new, n_new, m_new], dim=0)


def causal_conv(
    x: torch.Tensor,  # (B, T, D)
    ring: torch.Tensor,  # (B, K, D) the last K inputs, oldest first
    weight: torch.Tensor,  # (K, D); tap K-1 multiplies the newest frame
    bias: torch.Tensor,  # (D,)
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Depthwise causal conv over a sequence, continuing from ``ring``. Returns y (B, T, D), new ring."""
    T = x.shape[1]
    full = torch.cat([ring[:, 1:], x], dim=1)  # (B, K-1+T, D)
    y = F.conv1d(full.transpose(1, 2), weight.t().unsqueeze(1), bias, groups=x.shape[2])  # (B, D, T)
    new_ring = torch.cat([ring, x], dim=1)[:, T:]  # (B, K, D)
    return y.transpose(1, 2), new_ring


def soft_cap(x: torch.Tensor, cap: float) -> torch.Tensor:
    return cap * torch.tanh(x / cap)
