"""Target-neutral lowering: one function per (block kind, form, mode), written against the ops protocol
that each graph backend (``coreml/backend.py``, ``onnx/backend.py``) implements. See
``docs/ARCHITECTURE.md``.

    ops.py        the protocol, the naming rule (canonical names; MARK for precision/storage ops)
    precision.py  the precision policies, as data
    weights.py    WeightSpec and prepare_weight, the one per-weight hook
    states.py     typed per-block states from the state contract
    registry.py   LOWERINGS, keyed by (kind, form, mode)
    layers.py     norm, linear, gates, conv ring, the mLSTM and sLSTM cells, FFN
    blocks.py     the block lowerings
    model.py      embedding, blocks, head: the whole step or prefill chunk
"""

from . import blocks as _blocks  # noqa: F401  (registers the block lowerings)
from .model import MAX_PREFILL_CHUNK, check_prefill_chunk, prefill, step
from .ops import MARK, Ops, core_ml_name, is_marked, marked
from .precision import FULL_PRECISION, LOW_SCALE, LOW_SUFFIX, PrecisionPolicy, StateStorage, choose_policy, state_storage
from .registry import KINDS, LOWERINGS, MODES, kind_form
from .states import MLSTMStates, SLSTMStates, block_states
from .weights import WeightSpec, prepare_weight

__all__ = ["step", "prefill", "check_prefill_chunk", "MAX_PREFILL_CHUNK", "MARK", "Ops", "core_ml_name", "is_marked", "marked", "LOW_SCALE", "LOW_SUFFIX", "FULL_PRECISION",
           "PrecisionPolicy", "StateStorage", "choose_policy", "state_storage", "KINDS", "LOWERINGS", "MODES", "kind_form",
           "MLSTMStates", "SLSTMStates", "block_states", "WeightSpec", "prepare_weight"]
