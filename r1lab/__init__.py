"""r1lab: the DeepSeek-R1 system, from the MoE/MLA network to the reasoning recipe, engine, server and eval."""

from .checkpoint import CheckpointError, load_model
from .config import ConfigError, ModelConfig, count_parameters, preset
from .model import DeepseekV3ForCausalLM, LatentCache

__all__ = [
    "CheckpointError", "ConfigError", "DeepseekV3ForCausalLM", "LatentCache", "ModelConfig", "count_parameters",
    "load_model", "preset",
]
__version__ = "0.1.0"
