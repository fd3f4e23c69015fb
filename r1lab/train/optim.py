"""AdamW with decoupled weight decay on matrices only, and a warmup + cosine learning-rate schedule.

The schedule is a pure function of the step (no scheduler object with hidden state), so resuming needs only the
step count and the settings, and a plot can redraw it. Its length is `decay_steps`, fixed when a run starts
(default: that run's `--steps`) and kept on resume: a run stopped halfway and resumed gets exactly the rates an
uninterrupted one would, and a finished run extended with `--resume --steps` more continues at the final rate
instead of jumping back up the cosine. Pass `--decay-steps` to choose the horizon explicitly.

Norm weights (and any other 1-D parameter) are not decayed: shrinking a norm's gain towards zero is not the
regularisation weight decay is meant to be. The routing correction bias is a buffer, never seen by AdamW.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .config import TrainConfig


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> tuple[torch.optim.AdamW, list[str]]:
    """AdamW over the model's trainable parameters, and their names in the optimiser's index order."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append((name, p))
    groups = [{"params": [p for _, p in decay], "weight_decay": cfg.weight_decay},
              {"params": [p for _, p in no_decay], "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps)
    return optimizer, [n for n, _ in decay] + [n for n, _ in no_decay]


def apply_hyperparameters(optimizer: torch.optim.AdamW, cfg: TrainConfig) -> None:
    """Set betas, eps and weight decay from `cfg` (a resumed run may change them; loading restored the old ones)."""
    for group in optimizer.param_groups:
        group["betas"], group["eps"] = (cfg.beta1, cfg.beta2), cfg.eps
    optimizer.param_groups[0]["weight_decay"] = cfg.weight_decay  # group 1 holds the never-decayed 1-D weights


def lr_at(step: int, peak: float, warmup_steps: int, decay_steps: int, min_lr: float) -> float:
    """The learning rate of optimiser step `step` (0-based): linear warmup to `peak`, cosine down to `min_lr`.

    >>> [round(lr_at(s, 1.0, 2, 6, 0.1), 3) for s in range(8)]
    [0.5, 1.0, 1.0, 0.868, 0.55, 0.232, 0.1, 0.1]
    """
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, decay_steps - warmup_steps))
    return min_lr + (peak - min_lr) * 0.5 * (1 + math.cos(math.pi * progress))
