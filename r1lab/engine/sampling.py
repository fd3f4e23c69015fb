"""Sampling settings and the batched sampler.

`SamplingParams` follows the OpenAI/vLLM names. Validation happens at construction, with messages that name the
field and its allowed range, so the server can return them to clients as 400 errors.

The sampler applies, in order: repetition penalty (divide positive logits / multiply negative ones of tokens
seen in prompt or output), presence and frequency penalties (subtract from logits of generated tokens), temperature,
top-k, top-p; then draws with the request's own generator, so a seeded request is reproducible whatever else
shares its batch. Temperature 0 means greedy.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class SamplingParams:
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    max_tokens: int = 256
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logprobs: bool = False
    top_logprobs: int = 0
    n: int = 1

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        self.stop = list(self.stop or [])
        self.stop_token_ids = list(self.stop_token_ids or [])
        checks = [
            ("temperature", 0 <= self.temperature <= 100, "must be between 0 and 100 (0 = greedy)"),
            ("top_p", 0 < self.top_p <= 1, "must be in (0, 1]"),
            ("top_k", isinstance(self.top_k, int) and self.top_k >= 0, "must be an integer >= 0 (0 = off)"),
            ("max_tokens", isinstance(self.max_tokens, int) and self.max_tokens >= 1, "must be an integer >= 1"),
            ("seed", self.seed is None or isinstance(self.seed, int), "must be an integer or null"),
            ("stop", all(isinstance(s, str) and s for s in self.stop) and len(self.stop) <= 4,
             "must be at most 4 non-empty strings"),
            ("stop_token_ids", all(isinstance(t, int) and t >= 0 for t in self.stop_token_ids),
             "must be non-negative integers"),
            ("presence_penalty", -2 <= self.presence_penalty <= 2, "must be between -2 and 2"),
            ("frequency_penalty", -2 <= self.frequency_penalty <= 2, "must be between -2 and 2"),
            ("repetition_penalty", 0 < self.repetition_penalty <= 10, "must be in (0, 10]"),
            ("top_logprobs", isinstance(self.top_logprobs, int) and 0 <= self.top_logprobs <= 20,
             "must be an integer between 0 and 20"),
            ("n", isinstance(self.n, int) and 1 <= self.n <= 64, "must be an integer between 1 and 64"),
        ]
        for name, ok, message in checks:
            if not ok:
                raise ValueError(f"{name}={getattr(self, name)!r}: {message}")
        if self.top_logprobs and not self.logprobs:
            self.logprobs = True

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def apply_penalties(logits: torch.Tensor, params: SamplingParams, prompt_ids: list[int],
                    output_ids: list[int]) -> torch.Tensor:
    """Penalties for one sequence (logits [V], returns a new tensor)."""
    if params.repetition_penalty != 1.0:
        seen = torch.tensor(sorted(set(prompt_ids) | set(output_ids)), dtype=torch.long)
        if len(seen):
            values = logits[seen]
            logits = logits.clone()
            logits[seen] = torch.where(values > 0, values / params.repetition_penalty,
                                       values * params.repetition_penalty)
    if output_ids and (params.presence_penalty or params.frequency_penalty):
        ids, counts = torch.tensor(output_ids).unique(return_counts=True)
        logits = logits.clone()
        logits[ids] -= params.presence_penalty + params.frequency_penalty * counts.to(logits.dtype)
    return logits


def filtered_probs(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Temperature, top-k and top-p applied to one sequence's logits [V]; returns probabilities."""
    logits = logits.float() / max(params.temperature, 1e-6)
    if params.top_k and params.top_k < logits.shape[-1]:
        kth = logits.topk(params.top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if params.top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        # keep the smallest prefix whose mass reaches top_p (the token that crosses the line stays)
        drop = sorted_probs.cumsum(-1) - sorted_probs >= params.top_p
        sorted_probs = sorted_probs.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
        probs = probs / probs.sum()
    return probs


@dataclass
class Sample:
    token: int
    logprob: float | None = None
    top_logprobs: list[tuple[int, float]] | None = None


def sample_one(logits: torch.Tensor, params: SamplingParams, prompt_ids: list[int], output_ids: list[int],
               generator: torch.Generator | None) -> Sample:
    logits = apply_penalties(logits, params, prompt_ids, output_ids)
    if params.greedy:
        token = int(logits.argmax())
    else:
        token = int(torch.multinomial(filtered_probs(logits, params), 1, generator=generator))
    if not params.logprobs:
        return Sample(token)
    # Log-probabilities of the model's distribution (after penalties, before temperature), as OpenAI reports.
    logp = torch.log_softmax(logits.float(), dim=-1)
    top = []
    if params.top_logprobs:
        values, ids = logp.topk(params.top_logprobs)
        top = list(zip(ids.tolist(), values.tolist(), strict=True))
    return Sample(token, float(logp[token]), top)
