"""The training objective: next-token cross-entropy + lambda * MTP cross-entropy + alpha * sequence balance loss.

Cross-entropies are returned as sums with their token counts rather than as means. The trainer divides by the
number of loss tokens in the whole optimiser step (all micro-batches, all ranks), so the objective is the mean
over every loss token of the global batch however it is split: one rank with batch 2b, two ranks with batch b,
or batch b with two accumulation steps all compute the same number. A mean per micro-batch would weight the
tokens of short SFT batches more than those of long ones.

The MTP term follows DeepSeek-V3: the mean over depths of each depth's cross-entropy; depth d at position i
predicts label i + 1 + d (`r1lab.model.mtp_loss` is the per-batch mean of the same quantity).

The balance loss and the expert loads are computed here too, from the gate's routing over real tokens only. The
model's own `balance_loss` counts every position, padding included, so with right-padded SFT batches it (and the
loads behind the bias update) would depend on how long the longest sequence of the micro-batch happens to be.
`sequence_balance_sum` is the model's `sequence_balance_loss` restricted to each sequence's real tokens and summed
over sequences, so the trainer can divide by the global number of sequences.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .data import IGNORE


def loss_token_counts(labels: torch.Tensor, mtp_depths: int) -> torch.Tensor:
    """[1 + depths] counts: targets of the main head, then of each MTP depth (float64, for all-reduce)."""
    counts = [(labels[:, 1 + d:] != IGNORE).sum() for d in range(mtp_depths + 1)]
    return torch.stack(counts).to(torch.float64)


def summed_cross_entropy(logits: torch.Tensor, mtp_logits: list[torch.Tensor], labels: torch.Tensor
                         ) -> torch.Tensor:
    """[1 + depths] summed cross-entropies: the main head (position i -> label i+1), then each MTP depth."""
    sums = [F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=IGNORE,
                            reduction="sum")]
    for depth, depth_logits in enumerate(mtp_logits, start=1):
        target = labels[:, depth + 1:]
        sums.append(F.cross_entropy(depth_logits[:, : target.shape[1]].flatten(0, 1).float(), target.flatten(),
                                    ignore_index=IGNORE, reduction="sum"))
    return torch.stack(sums)


def objective(sums: torch.Tensor, counts: torch.Tensor, mtp_weight: float) -> torch.Tensor:
    """CE_main + mtp_weight * mean_d CE_d, each CE a sum divided by its global token count."""
    means = sums / counts.clamp(min=1).to(sums.dtype)
    if means.numel() == 1:
        return means[0]
    return means[0] + mtp_weight * means[1:].mean()


def sequence_balance_sum(scores: torch.Tensor, experts: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sum over sequences of sum_i f_i * P_i over each sequence's real tokens (mask [B, T], True = real).

    scores [B, T, E] are the gate's sigmoid affinities, experts [B, T, k] the selected experts. With every token
    real it is `r1lab.model.sequence_balance_loss` times B.
    """
    batch, seq, num_experts = scores.shape
    k = experts.shape[-1]
    real = mask.to(scores.dtype)
    n = real.sum(1).clamp(min=1)
    weight = real.unsqueeze(-1).expand(batch, seq, k).reshape(batch, -1)
    counts = torch.zeros(batch, num_experts, dtype=scores.dtype, device=scores.device).scatter_add_(
        1, experts.reshape(batch, -1), weight)
    f = counts * num_experts / (k * n[:, None])
    p = ((scores / scores.sum(-1, keepdim=True)) * real.unsqueeze(-1)).sum(1) / n[:, None]
    return (f * p).sum()


def expert_loads(experts: torch.Tensor, mask: torch.Tensor, num_experts: int) -> torch.Tensor:
    """Tokens routed to each expert, real tokens only: experts [B, T, k], mask [B, T] -> [E]."""
    return torch.bincount(experts[mask].flatten(), minlength=num_experts)
