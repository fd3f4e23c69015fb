"""Inference engine: continuous batching over a paged MLA latent cache, prefix caching, MTP speculation."""

from .config import EngineConfig
from .llm_engine import AsyncLLMEngine, CompletionOutput, LLMEngine, QueueFullError, RequestOutput
from .sampling import SamplingParams

__all__ = ["AsyncLLMEngine", "CompletionOutput", "EngineConfig", "LLMEngine", "QueueFullError", "RequestOutput",
           "SamplingParams"]
