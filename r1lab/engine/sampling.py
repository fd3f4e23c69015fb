"""Sampling settings and the batched sampler.

`SamplingParams` follows the OpenAI/vLLM names. Validation happens at construction, with messages that name the
field and its allowed range, so the server can return them to clients as 400 errors.

The sampler applies, in order: repetition penalty (divide positive logits / multiply negative ones of tokens
seen in prompt or output), presence and frequency penalties (subtract from logits of generated tokens), temperature,
top-k, top-p; then draws with the request's own generator, so a seeded request is reproducible whatever else
shares its batch. Temperature 0 means greedy. All rows of a step are sampled together (`sample_rows`): a
per-row sampler costs tens of microseconds a row, which at a few hundred rollouts per step outweighs the model.
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


@dataclass
class Sample:
    token: int
    logprob: float | None = None
    top_logprobs: list[tuple[int, float]] | None = None


def sample_rows(logits: torch.Tensor, params: list[SamplingParams], histories: list[tuple[list[int], list[int]]],
                generators: list[torch.Generator | None]) -> list[Sample]:
    """One token per row of logits [B, V]; row i follows params[i], its (prompt_ids, output_ids) history (for
    penalties) and its own generator (seeded requests).

    The rows are sampled together: penalties per row where set, then temperature, top-k and top-p as batched
    tensor ops, then one inverse-CDF draw per row. Each row's uniform number comes from the row's own generator
    when it has one, so a seeded request gives the same tokens whatever else shares its batch.
    """
    logits = logits.float()
    penalised = [i for i, p in enumerate(params)
                 if p.repetition_penalty != 1.0 or p.presence_penalty or p.frequency_penalty]
    if penalised:
        logits = logits.clone()
        for i in penalised:
            logits[i] = apply_penalties(logits[i], params[i], *histories[i])
    tokens = logits.argmax(-1).tolist()  # greedy rows keep these
    sampled = [i for i, p in enumerate(params) if not p.greedy]
    if sampled:
        rows = torch.tensor(sampled)
        row_params = [params[i] for i in sampled]
        temperature = torch.tensor([p.temperature for p in row_params]).unsqueeze(-1)
        probs = torch.softmax(logits.index_select(0, rows) / temperature, dim=-1)
        order = None
        if any(p.top_k or p.top_p < 1.0 for p in row_params):
            probs, order = probs.sort(dim=-1, descending=True)
            rank = torch.arange(probs.shape[-1])
            top_k = torch.tensor([p.top_k or probs.shape[-1] for p in row_params]).unsqueeze(-1)
            top_p = torch.tensor([p.top_p for p in row_params]).unsqueeze(-1)
            # keep the k most likely, and the smallest prefix whose mass reaches top_p (the token that crosses
            # the line stays)
            drop = (rank >= top_k) | (probs.cumsum(-1) - probs >= top_p)
            probs = probs.masked_fill(drop, 0.0)
        cdf = probs.cumsum(-1)
        unseeded = [j for j, i in enumerate(sampled) if generators[i] is None]
        uniform = torch.empty(len(sampled))
        if unseeded:
            uniform[unseeded] = torch.rand(len(unseeded))
        for j, i in enumerate(sampled):
            if generators[i] is not None:
                uniform[j] = torch.rand(1, generator=generators[i])
        # the first token whose cumulative mass exceeds u * total: a zero-probability token is never picked
        picks = torch.searchsorted(cdf, (uniform * cdf[:, -1]).unsqueeze(-1), right=True)
        picks = picks.clamp_(max=cdf.shape[-1] - 1)
        if order is not None:
            picks = order.gather(-1, picks)
        for i, token in zip(sampled, picks.squeeze(-1).tolist(), strict=True):
            tokens[i] = token
    samples = []
    for i, (p, token) in enumerate(zip(params, tokens, strict=True)):
        if not p.logprobs:
            samples.append(Sample(token))
            continue
        # Log-probabilities of the model's distribution (after penalties, before temperature), as OpenAI reports.
        logp = torch.log_softmax(logits[i], dim=-1)
        top = []
        if p.top_logprobs:
            values, ids = logp.topk(p.top_logprobs)
            top = list(zip(ids.tolist(), values.tolist(), strict=True))
        samples.append(Sample(token, float(logp[token]), top))
    return samples
