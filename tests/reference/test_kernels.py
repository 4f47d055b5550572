"""Our cell kernels against upstream's own kernels, and our forms against each other."""

import math

import pytest
import torch

from xlstm_export.reference import kernels as K
from xlstm_export.validation.compare import max_rel as rel

torch.manual_seed(0)


def _rand_cell(B=2, NH=2, T=37, DQK=8, DV=16, gate_scale=3.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, NH, T, DQK, generator=g)
    k = torch.randn(B, NH, T, DQK, generator=g)
    v = torch.randn(B, NH, T, DV, generator=g)
    i = torch.randn(B, NH, T, generator=g) * gate_scale
    f = torch.randn(B, NH, T, generator=g) * gate_scale + 2.0
    return q, k, v, i, f


def _zeros(B, NH, DQK, DV):
    return torch.zeros(B, NH, DQK, DV), torch.zeros(B, NH, DQK), torch.zeros(B, NH, 1)


@pytest.mark.parametrize("chunk", [1, 5, 16, 64])
def test_chunkwise_equals_sequence(chunk):
    q, k, v, i, f = _rand_cell()
    z = _zeros(2, 2, 8, 16)
    h_seq, c1, n1, m1 = K.mlstm_sequence(q, k, v, i, f, *z, eps=1e-6)
    h_chk, c2, n2, m2 = K.mlstm_chunkwise(q, k, v, i, f, *z, eps=1e-6, chunk_size=chunk)
    assert rel(h_chk, h_seq) < 1e-5
    assert rel(c2, c1) < 1e-5 and rel(n2, n1) < 1e-5
    assert (m2 - m1).abs().max().item() < 1e-5


def test_chunkwise_carries_state_across_calls():
    q, k, v, i, f = _rand_cell(T=40)
    z = _zeros(2, 2, 8, 16)
    h_all, *s_all = K.mlstm_chunkwise(q, k, v, i, f, *z, eps=1e-6, chunk_size=16)
    h_a, *s = K.mlstm_chunkwise(q[:, :, :13], k[:, :, :13], v[:, :, :13], i[:, :, :13], f[:, :, :13], *z,
                                eps=1e-6, chunk_size=16)
    h_b, *s = K.mlstm_chunkwise(q[:, :, 13:], k[:, :, 13:], v[:, :, 13:], i[:, :, 13:], f[:, :, 13:], *s,
                                eps=1e-6, chunk_size=16)
    assert rel(torch.cat([h_a, h_b], 2), h_all) < 1e-5
    for a, b in zip(s, s_all):
        assert (a - b).abs().max().item() < 1e-4 * max(1.0, b.abs().max().item())


def test_parallel_equals_upstream_parallel_and_recurrent():
    from xlstm.blocks.mlstm.backends import parallel_stabilized_simple

    q, k, v, i, f = _rand_cell(DQK=16, DV=16)
    DH = 16
    # upstream H-family cell scales k inside; ours takes pre-scaled inputs
    ref = parallel_stabilized_simple(q, k, v, i.unsqueeze(-1), f.unsqueeze(-1), eps=1e-6)
    ours = K.mlstm_parallel(q, k / math.sqrt(DH), v, i, f, eps=1e-6)
    assert rel(ours, ref) < 1e-5
    h_seq, *_ = K.mlstm_sequence(q, k / math.sqrt(DH), v, i, f, *_zeros(2, 2, 16, 16), eps=1e-6)
    assert rel(h_seq, ref) < 1e-4  # the forms differ only in where eps sits


def test_step_equals_upstream_hybrid_step():
    from xlstm.blocks.mlstm.backends import recurrent_step_stabilized_simple

    B, NH, DH = 2, 3, 8
    g = torch.Generator().manual_seed(1)
    c = torch.randn(B, NH, DH, DH, generator=g)
    n = torch.randn(B, NH, DH, 1, generator=g)
    m = torch.randn(B, NH, 1, 1, generator=g)
    q, k, v = (torch.randn(B, NH, 1, DH, generator=g) for _ in range(3))
    i, f = torch.randn(B, NH, 1, 1, generator=g), torch.randn(B, NH, 1, 1, generator=g)
    h_ref, (c_ref, n_ref, m_ref) = recurrent_step_stabilized_simple(
        c, n, m, q.clone(), k.clone(), v.clone(), i, f, eps=1e-6)
    h, c2, n2, m2 = K.mlstm_step(q[:, :, 0], k[:, :, 0] / math.sqrt(DH), v[:, :, 0], i[..., 0], f[..., 0],
                                 c, n[..., 0], m[..., 0], eps=1e-6)
    assert rel(h, h_ref[:, :, 0]) < 1e-6
    assert rel(c2, c_ref) < 1e-6 and rel(n2, n_ref[..., 0]) < 1e-6 and rel(m2, m_ref[..., 0]) < 1e-6


def test_sequence_equals_mlstm_kernels_native():
    from mlstm_kernels.torch.recurrent.native_sequence import mlstm_recurrent_sequence__native_fw

    q, k, v, i, f = _rand_cell(DQK=8, DV=16, T=20)
    h_ref, (c_ref, n_ref, m_ref) = mlstm_recurrent_sequence__native_fw(
        q, k, v, i, f, return_last_states=True, eps=1e-6)
    h, c, n, m = K.mlstm_sequence(q * 8 ** -0.5, k, v, i, f, *_zeros(2, 2, 8, 16), eps=1e-6)
    assert rel(h, h_ref) < 1e-5
    assert rel(c, c_ref) < 1e-5 and rel(n, n_ref) < 1e-5 and rel(m, m_ref) < 1e-5


def test_slstm_step_equals_upstream_vanilla_pointwise():
    """Against upstream's vanilla forward over a sequence (incl. its first-step special case)."""
    from xlstm.blocks.slstm.src.vanilla import slstm_forward, slstm_pointwise_function_registry

    B, NH, DH, T = 2, 2, 4, 9
    E = NH * DH
    g = torch.Generator().manual_seed(2)
    wx = torch.randn(T, B, 4 * E, generator=g) * 2  # layout (G, NH, DH) on the last axis
    r_int = torch.randn(NH, 4 * DH, DH, generator=g) * 0.3  # vanilla internal [h, g*DH+out, in]
    b = torch.randn(4 * E, generator=g)
    states_all, last, _ = slstm_forward(wx, torch.zeros(4, B, E), r_int, b,
                                        slstm_pointwise_function_registry["slstm"])
    r = r_int.view(NH, 4, DH, DH).permute(1, 0, 2, 3)  # (4, NH, out, in)
    s = torch.zeros(4, B, NH, DH)
    ys = []
    for t in range(T):
        s = K.slstm_step((wx[t] + b).view(B, 4, NH, DH), r, s)
        ys.append(s[0].reshape(B, E))
    assert rel(torch.stack(ys), states_all[0, 1:]) < 1e-5


def test_causal_conv_equals_upstream_step_and_forward():
    from xlstm.components.conv import CausalConv1d, CausalConv1dConfig

    torch.manual_seed(3)
    D, Kk, T = 6, 4, 7
    conv = CausalConv1d(CausalConv1dConfig(feature_dim=D, kernel_size=Kk))
    x = torch.randn(2, T, D)
    with torch.no_grad():
        y_ref = conv(x)
        w = conv.conv.weight[:, 0, :].t()
        y, ring = K.causal_conv(x, torch.zeros(2, Kk, D), w, conv.conv.bias)
        assert rel(y, y_ref) < 1e-6
        state = None
        for t in range(T):
            _, state = conv.step(x[:, t:t + 1], conv_state=state)
        assert torch.allclose(ring, state[0], atol=1e-7)


def test_elementary_logsigmoid_is_logsigmoid_to_fp32_rounding_and_is_restored():
    """What the ExecuTorch export traces instead of F.logsigmoid (XNNPACK has no log1p): within 1.2e-7 absolute
    (log(1 + y) for log1p(y)) plus one fp32 rounding of the result of torch's own fp32 log-sigmoid, over the
    gate range, and only while the context is active."""
    x = torch.cat([torch.linspace(-40, 40, 20001), torch.tensor([0.0, -1e-8, 1e-8, 88.0, -88.0])])
    want = torch.nn.functional.logsigmoid(x)
    with K.elementary_logsigmoid():
        got = K.logsigmoid(x)
    excess = (got - want).abs() - torch.finfo(torch.float32).eps * want.abs()
    assert float(excess.max()) <= 1.2e-7
    assert K.logsigmoid is not K._logsigmoid_elementary
    assert torch.equal(K.logsigmoid(x), torch.nn.functional.logsigmoid(x))
