"""Engine settings, checked at construction."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class EngineConfig:
    max_num_seqs: int = 64  # sequences decoded together in one step
    max_num_batched_tokens: int = 2048  # prompt tokens per prefill step (longer prompts are chunked)
    block_size: int = 16  # tokens per KV block
    num_blocks: int | None = None  # None: derived from cache_memory_mb
    cache_memory_mb: float = 256.0
    max_model_len: int | None = None  # None: the model's max_position_embeddings
    enable_prefix_caching: bool = True
    speculative_mtp: bool = False  # draft with the MTP module, verify with the main model (greedy requests)
    compile: bool = False  # torch.compile the decode step (first steps pay seconds of compilation)
    max_waiting: int | None = None  # queue limit; add_request raises QueueFullError beyond it
    dtype: str = "float32"
    threads: int | None = None

    def __post_init__(self) -> None:
        positive = ("max_num_seqs", "max_num_batched_tokens", "block_size")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r}: must be an integer >= 1")
        if self.num_blocks is not None and self.num_blocks < 1:
            raise ValueError(f"num_blocks={self.num_blocks!r}: must be >= 1 or None")
        if self.cache_memory_mb <= 0:
            raise ValueError(f"cache_memory_mb={self.cache_memory_mb!r}: must be > 0")
        if self.max_model_len is not None and self.max_model_len < 2:
            raise ValueError(f"max_model_len={self.max_model_len!r}: must be >= 2")
        if self.max_waiting is not None and self.max_waiting < 0:
            raise ValueError(f"max_waiting={self.max_waiting!r}: must be >= 0")
