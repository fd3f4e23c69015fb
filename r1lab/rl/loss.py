"""The GRPO objective as one tensor-in, tensor-out function; its variants are arguments.

GRPO (DeepSeekMath, used for R1): sample G completions per prompt, score them by rules, and use the
group-normalised reward A_i = (r_i - mean r) / std r as every token's advantage; maximise the PPO-style clipped
surrogate min(rho A, clip(rho, 1 - eps_low, 1 + eps_high) A) minus beta times a KL penalty to a frozen reference
(the k3 estimator: pi_ref/pi - log(pi_ref/pi) - 1, always >= 0).

Variants (REFERENCE §8):
* `aggregation="sequence"` - GRPO as published: average over each completion's tokens, then over completions
  (long completions get less weight per token).
* `aggregation="token"` - DAPO: average over all tokens of the batch.
* `aggregation="dr_grpo"` - Dr. GRPO: sum over tokens divided by a constant (completions x max_tokens), so no
  per-sequence length normalisation; pair it with `group_advantages(..., scale_by_std=False)`.
* `eps_high > eps_low` - DAPO's clip-higher: more room for improbable tokens to grow, against entropy collapse.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

AGGREGATIONS = ("sequence", "token", "dr_grpo")


def group_advantages(rewards: torch.Tensor, scale_by_std: bool = True, eps: float = 1e-4) -> torch.Tensor:
    """Advantages for rewards shaped [prompts, G]: reward minus its group mean, optionally over the group std.

    >>> group_advantages(torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.5, 0.5, 0.5, 0.5]]))
    tensor([[ 0.8659, -0.8659, -0.8659,  0.8659],
            [ 0.0000,  0.0000,  0.0000,  0.0000]])
    """
    centred = rewards - rewards.mean(dim=1, keepdim=True)
    if not scale_by_std:
        return centred
    return centred / (rewards.std(dim=1, keepdim=True) + eps)


@dataclass
class LossStats:
    clip_fraction: float
    kl: float
    ratio_mean: float


def grpo_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
              ref_logp: torch.Tensor | None = None, eps_low: float = 0.2, eps_high: float = 0.2, beta: float = 0.0,
              aggregation: str = "token", max_tokens: int | None = None) -> tuple[torch.Tensor, LossStats]:
    """GRPO loss to minimise.

    logp, old_logp, ref_logp, mask: [N, T] per completion token (mask 1 on completion tokens, 0 on padding);
    advantages: [N] one per completion. `old_logp` comes from the policy that sampled the batch (detached);
    with one update per batch the ratio is 1 and only its gradient matters.
    """
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation={aggregation!r}: choose one of {AGGREGATIONS}")
    if beta > 0 and ref_logp is None:
        raise ValueError("beta > 0 needs ref_logp (log-probs under the frozen reference policy)")
    mask = mask.to(logp.dtype)
    adv = advantages.to(logp.dtype).unsqueeze(1)
    ratio = torch.exp(logp - old_logp)
    unclipped = ratio * adv
    clipped = ratio.clamp(1 - eps_low, 1 + eps_high) * adv
    per_token = -torch.minimum(unclipped, clipped)
    kl = torch.zeros_like(logp)
    if beta > 0:
        log_ref_over_pi = ref_logp - logp
        kl = torch.exp(log_ref_over_pi) - log_ref_over_pi - 1
        per_token = per_token + beta * kl
    if aggregation == "sequence":
        loss = ((per_token * mask).sum(1) / mask.sum(1).clamp(min=1)).mean()
    elif aggregation == "token":
        loss = (per_token * mask).sum() / mask.sum().clamp(min=1)
    else:
        constant = logp.shape[0] * (max_tokens or logp.shape[1])
        loss = (per_token * mask).sum() / constant
    with torch.no_grad():
        tokens = mask.sum().clamp(min=1)
        is_clipped = ((ratio < 1 - eps_low) & (adv < 0)) | ((ratio > 1 + eps_high) & (adv > 0))
        stats = LossStats(clip_fraction=float((is_clipped * mask).sum() / tokens),
                          kl=float((kl * mask).sum() / tokens), ratio_mean=float((ratio * mask).sum() / tokens))
    return loss, stats
