"""Inference engine: continuous batching over a paged MLA latent cache, prefix caching, MTP speculation."""

from .config import EngineConfig
from .llm_engine import (
    AsyncLLMEngine,
    CompletionOutput,
    LLMEngine,
    QueueFullError,
    RequestOutput,
    tokenizer_from_dir,
)
from .sampling import SamplingParams

__all__ = ["AsyncLLMEngine", "CompletionOutput", "EngineConfig", "LLMEngine", "QueueFullError", "RequestOutput",
           "SamplingParams", "tokenizer_from_dir"]
