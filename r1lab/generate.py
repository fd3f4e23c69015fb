"""A minimal batched, KV-cached sampler over the absorbed MLA cache.

This is the reference decoder used by tests and the demo until (and beside) the inference engine: one
prefill forward, then one forward per new token over `LatentCache`. All prompts in a batch share one length.
"""

from __future__ import annotations

import torch

from .model import DeepseekV3ForCausalLM, LatentCache


@torch.no_grad()
def generate(model: DeepseekV3ForCausalLM, input_ids: torch.Tensor, max_new_tokens: int,
             temperature: float = 0.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """Return [B, max_new_tokens] sampled token ids (greedy when temperature == 0)."""
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens}: must be >= 1")
    if temperature < 0:
        raise ValueError(f"temperature={temperature}: must be >= 0")
    batch, prompt_len = input_ids.shape
    cache = LatentCache(model.config, batch, prompt_len + max_new_tokens, dtype=model.dtype, device=model.device)
    logits = model(input_ids, cache=cache, logits_to_keep=1).logits[:, -1]
    out = []
    for step in range(max_new_tokens):
        if temperature == 0:
            token = logits.argmax(-1)
        else:
            probs = torch.softmax(logits.float() / temperature, dim=-1)
            token = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
        out.append(token)
        if step + 1 < max_new_tokens:
            logits = model(token[:, None], cache=cache).logits[:, -1]
    return torch.stack(out, dim=1)
