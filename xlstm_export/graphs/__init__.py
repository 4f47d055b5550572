"""The canonical IR of xLSTM block schedules. Pure data: imports neither torch, onnx nor coremltools."""

from .graph import PROFILE_FORMAT, Graph, config_from_profile
from .names import SLSTM_GATES, block_weights, model_weights
from .spec import (
    BlockSpec,
    FFNSpec,
    MLSTMBlock,
    ModelConfig,
    NormSpec,
    SLSTMBlock,
    StateSpec,
    block_states,
)
from .weights import WeightHandle, WeightStore, constant

__all__ = [
    "PROFILE_FORMAT", "Graph", "config_from_profile", "SLSTM_GATES", "block_weights", "model_weights",
    "BlockSpec", "FFNSpec", "MLSTMBlock", "ModelConfig", "NormSpec", "SLSTMBlock", "StateSpec",
    "block_states", "WeightHandle", "WeightStore", "constant",
]
