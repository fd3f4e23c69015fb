"""Per-request state: token ids, cache progress, sampling state and what to report back."""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field

import torch

from .sampling import SamplingParams


class Status(enum.Enum):
    WAITING = "waiting"  # queued, or partly prefilled
    RUNNING = "running"  # prefill done, decoding
    FINISHED = "finished"


@dataclass(eq=False)  # identity: the scheduler removes sequences from its queues by identity
class Sequence:
    request_id: str
    index: int  # which of the request's n samples
    prompt_ids: list[int]
    params: SamplingParams
    output_ids: list[int] = field(default_factory=list)
    status: Status = Status.WAITING
    block_table: list[int] = field(default_factory=list)
    num_computed: int = 0  # tokens whose latents are in the cache
    num_cached_prompt: int = 0  # prompt tokens served from the prefix cache (set at first allocation)
    num_hashed_blocks: int = 0
    finish_reason: str | None = None
    text: str = ""
    # incremental detokenization: output_ids[prefix_offset:read_offset] are the last tokens already in `text`
    prefix_offset: int = 0
    read_offset: int = 0
    logprobs: list = field(default_factory=list)  # per output token: (logprob, [(id, logprob), ...])
    generator: torch.Generator | None = None
    arrival: float = field(default_factory=time.perf_counter)
    first_token_time: float | None = None
    # MTP speculation: hidden state of the last computed position and the drafted token(s).
    draft_ids: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.params.seed is not None:
            self.generator = torch.Generator().manual_seed(self.params.seed + self.index)

    @property
    def all_ids(self) -> list[int]:
        return self.prompt_ids + self.output_ids

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_ids) + len(self.output_ids)

    @property
    def num_pending(self) -> int:
        """Tokens not yet in the cache (the last sampled token during decode, the prompt rest during prefill)."""
        return self.num_tokens - self.num_computed

    @property
    def finished(self) -> bool:
        return self.status is Status.FINISHED
