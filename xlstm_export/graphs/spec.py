"""The canonical IR: model config, block specs, and the state contract. Pure data.

Two model families share these specs:

* L ("large"): xLSTM-Large / xLSTM-7B. Every block is ``mlstm`` in ``form="large"`` with an FFN;
  norms are RMSNorm with weights as stored.
* H ("hybrid"): upstream's ``xLSTMLMModel``. Blocks are ``mlstm`` in ``form="hybrid"`` (up-projection,
  causal conv, headwise q/k/v, learnable skip; no FFN) or ``slstm`` (conv, recurrent gates, group norm,
  gated FFN). Norms are LayerNorm whose applied weight is ``1 + stored`` (``weight_offset=1``).

Canonical weight names and their shapes per block kind are in ``names.py``; the state contract
(which recurrent states a block has, their names, shapes and dtypes) is here, said once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Optional, Union

from ..errors import ConfigError, short

NormKind = Literal["rmsnorm", "layernorm"]
Activation = Literal["silu", "gelu", "relu", "sigmoid"]
ACTIVATIONS = ("silu", "gelu", "relu", "sigmoid")


@dataclass(frozen=True)
class NormSpec:
    """A normalisation over the last axis (or per head, for a head norm).

    applied weight = ``weight_offset + stored weight``; ``bias`` adds a stored bias.
    """

    kind: NormKind
    eps: float
    weight_offset: float = 0.0
    bias: bool = False
    force_float32: bool = True


@dataclass(frozen=True)
class FFNSpec:
    """Gated feed-forward: ``down(act(gate(x)) * up(x))`` after a pre-norm."""

    up_dim: int
    activation: Activation
    norm: NormSpec
    bias: bool = False


@dataclass(frozen=True)
class MLSTMBlock:
    """``x = x + mlstm(norm(x))`` (+ FFN when ``ffn`` is set).

    form "large": q/k/v/ogate are dense Linear(E -> NH*D); i/f gates Linear(E -> NH) soft-capped;
        ``y = out_proj(sigmoid(ogate) * head_norm(h))``.
    form "hybrid": proj_up splits into x and z (inner each); causal conv + SiLU on x feeds q, k; v
        from raw x; headwise q/k/v (block size ``qkv_blocksize``); i/f gates Linear(3*inner -> NH) on
        cat(q, k, v); ``y = out_proj((head_norm(h) + skip * conv_act) * silu(z))``.

    ``qk_scale_on`` says where 1/sqrt(DQK) is applied: "q" (mlstm_kernels, L family) or "k"
    (the H family's cell). Outputs are equal; the stored C and n differ by that factor.
    """

    num_heads: int
    qk_head_dim: int
    v_head_dim: int
    norm: NormSpec
    head_norm: NormSpec
    form: Literal["large", "hybrid"] = "large"
    cell_eps: float = 1e-6
    gate_soft_cap: Optional[float] = None
    bias: bool = False
    qk_scale_on: Literal["q", "k"] = "q"
    # hybrid form only
    inner_dim: int = 0
    conv_kernel: int = 0
    qkv_blocksize: int = 0
    ffn: Optional[FFNSpec] = None

    kind = "mlstm"


@dataclass(frozen=True)
class SLSTMBlock:
    """``x = x + slstm(norm(x))`` (+ FFN when ``ffn`` is set).

    conv + SiLU (when ``conv_kernel`` > 0) feeds the i and f gates, raw x feeds z and o; each gate
    is headwise Linear + block-diagonal recurrent R per head + bias; per-head group norm after.
    """

    num_heads: int
    head_dim: int
    norm: NormSpec
    head_norm: NormSpec
    conv_kernel: int = 4
    ffn: Optional[FFNSpec] = None

    kind = "slstm"


BlockSpec = Union[MLSTMBlock, SLSTMBlock]


@dataclass(frozen=True)
class ModelConfig:
    family: Literal["large", "hybrid"]
    vocab_size: int
    embedding_dim: int
    out_norm: Optional[NormSpec]
    tie_weights: bool = False
    output_logit_soft_cap: Optional[float] = None
    context_length: Optional[int] = None  # hybrid: what upstream's parallel forward is limited to


@dataclass(frozen=True)
class StateSpec:
    """One recurrent state tensor of the contract. A state of zeros is the empty context."""

    name: str  # canonical, e.g. "blocks.3.mlstm.c"
    block: int
    role: str  # c, n, m, conv, slstm
    shape: tuple[int, ...]
    dtype: str = "float32"

    def to_json(self) -> dict:
        return {"name": self.name, "block": self.block, "role": self.role,
                "shape": list(self.shape), "dtype": self.dtype}


def block_states(index: int, block: BlockSpec, batch_size: int) -> list[StateSpec]:
    """The state contract of one block, in a fixed order.

    mLSTM: ``c (B, NH, DQK, DV)``, ``n``, ``m`` and, with a conv, ``conv (B, K, inner)``.
        n / m are ``(B, NH, DQK)`` / ``(B, NH, 1)`` in the L family (mlstm_kernels, HF cache) and
        ``(B, NH, DH, 1)`` / ``(B, NH, 1, 1)`` in the H family (upstream ``step()``), so states can
        be compared with upstream's one to one.
    sLSTM: ``conv (B, K, E)`` (when K > 0) and ``slstm (4, B, E)``, rows y, c, n, m.
    Conv rings hold the last K inputs, like upstream's ``conv1d.step``.
    """
    B = batch_size
    p = f"blocks.{index}"
    if isinstance(block, MLSTMBlock):
        NH, DQK, DV = block.num_heads, block.qk_head_dim, block.v_head_dim
        if block.form == "hybrid":
            n_shape, m_shape = (B, NH, DQK, 1), (B, NH, 1, 1)
        else:
            n_shape, m_shape = (B, NH, DQK), (B, NH, 1)
        out = [
            StateSpec(f"{p}.mlstm.c", index, "c", (B, NH, DQK, DV)),
            StateSpec(f"{p}.mlstm.n", index, "n", n_shape),
            StateSpec(f"{p}.mlstm.m", index, "m", m_shape),
        ]
        if block.conv_kernel > 0:
            out.append(StateSpec(f"{p}.mlstm.conv", index, "conv", (B, block.conv_kernel, block.inner_dim)))
        return out
    E = block.num_heads * block.head_dim
    out = []
    if block.conv_kernel > 0:
        out.append(StateSpec(f"{p}.slstm.conv", index, "conv", (B, block.conv_kernel, E)))
    out.append(StateSpec(f"{p}.slstm.state", index, "slstm", (4, B, E)))
    return out


def check_positive(where: str, **values: float) -> None:
    for key, v in values.items():
        if v is None or v <= 0:
            raise ConfigError(f"{where}: field {key!r} must be positive, got {short(v)}")


# Values that cannot describe a working model are refused here (and, with the config's own field names, by
# the frontends): an eps that is not a small positive number, a soft cap <= 0 (cap * tanh(x / cap) divides by
# it) or beyond fp16's range (then inf * 0 = NaN in an fp16 export), a weight offset beyond fp16's range.
FP16_MAX = 65504.0


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def check_eps(where: str, key: str, v) -> None:
    """An epsilon: finite, 0 < eps <= 1 (it stabilises a division; larger ones swamp what they guard)."""
    if not (_number(v) and 0 < v <= 1):
        raise ConfigError(f"{where}: field {key!r} must be a small positive number (0 < {key} <= 1), "
                          f"got {short(v)}")


def check_cap(where: str, key: str, v) -> None:
    """A soft cap (``cap * tanh(x / cap)``): null for none, else 0 < cap <= 65504 (fp16's largest value)."""
    if v is not None and not (_number(v) and 0 < v <= FP16_MAX):
        raise ConfigError(f"{where}: field {key!r} must be a positive soft cap of at most {FP16_MAX:g} "
                          f"(fp16's range), or null for no cap; got {short(v)}")


def check_offset(where: str, key: str, v) -> None:
    """A norm's weight offset (applied weight = offset + stored): finite, within fp16's range."""
    if not (_number(v) and abs(v) <= FP16_MAX):
        raise ConfigError(f"{where}: field {key!r} must be a finite number of magnitude at most "
                          f"{FP16_MAX:g} (fp16's range), got {short(v)}")


def validate_norm(where: str, spec: NormSpec) -> None:
    if spec.kind not in ("rmsnorm", "layernorm"):
        raise ConfigError(f"{where}: field 'kind' must be 'rmsnorm' or 'layernorm', got {short(spec.kind)}")
    check_eps(where, "eps", spec.eps)
    check_offset(where, "weight_offset", spec.weight_offset)


def validate_block(index: int, block: BlockSpec, embedding_dim: int) -> None:
    """Invariants of one block spec; raises ConfigError naming the block and field."""
    where = f"block {index} ({block.kind})"
    validate_norm(f"{where} norm", block.norm)
    validate_norm(f"{where} head_norm", block.head_norm)
    if block.ffn is not None:
        validate_norm(f"{where} ffn norm", block.ffn.norm)
    if isinstance(block, MLSTMBlock):
        check_positive(where, num_heads=block.num_heads, qk_head_dim=block.qk_head_dim,
                       v_head_dim=block.v_head_dim)
        check_eps(where, "cell_eps", block.cell_eps)
        check_cap(where, "gate_soft_cap", block.gate_soft_cap)
        if block.form == "hybrid":
            check_positive(where, inner_dim=block.inner_dim, qkv_blocksize=block.qkv_blocksize)
            if block.inner_dim % block.num_heads:
                raise ConfigError(f"{where}: num_heads {block.num_heads} does not divide the inner "
                                  f"dim {block.inner_dim}")
            if block.inner_dim % block.qkv_blocksize:
                raise ConfigError(f"{where}: qkv_proj_blocksize {block.qkv_blocksize} does not divide "
                                  f"the inner dim {block.inner_dim}")
            head = block.inner_dim // block.num_heads
            if block.qk_head_dim != head or block.v_head_dim != head:
                # the hybrid cell's heads split the inner dim; the weights' shapes do not show these
                raise ConfigError(f"{where}: qk_head_dim {block.qk_head_dim} and v_head_dim {block.v_head_dim} "
                                  f"must both be inner dim {block.inner_dim} / num_heads {block.num_heads} = {head}")
            if block.conv_kernel < 0:
                raise ConfigError(f"{where}: conv1d_kernel_size must be >= 0, got {block.conv_kernel}")
        elif block.form != "large":
            raise ConfigError(f"{where}: form must be 'large' or 'hybrid', got {short(block.form)}")
        elif block.conv_kernel != 0:
            # the large form has no conv: a conv_kernel would add a state no target has
            raise ConfigError(f"{where}: conv_kernel must be 0 for form 'large' (it has no conv), "
                              f"got {block.conv_kernel}")
    else:
        check_positive(where, num_heads=block.num_heads, head_dim=block.head_dim)
        if block.num_heads * block.head_dim != embedding_dim:
            raise ConfigError(f"{where}: num_heads {block.num_heads} x head_dim {block.head_dim} "
                              f"must equal embedding_dim {embedding_dim}")
        if block.conv_kernel < 0:
            raise ConfigError(f"{where}: conv1d_kernel_size must be >= 0, got {block.conv_kernel}")
    if block.ffn is not None:
        check_positive(f"{where} ffn", up_dim=block.ffn.up_dim)
        if block.ffn.activation not in ACTIVATIONS:
            raise ConfigError(f"{where} ffn: activation must be one of {ACTIVATIONS}, "
                              f"got {short(block.ffn.activation)}")
