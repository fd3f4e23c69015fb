"""Training: one trainer for pretraining and SFT (the R1 cold start), with MTP, expert balancing and exact resume.

    config.py       TrainConfig: every setting, validated; TOML/YAML settings files
    data.py         task rows and JSONL -> packed pretraining blocks or chat SFT examples; the resumable cursor
    loss.py         CE + lambda * MTP CE normalised by the global loss-token count
    optim.py        AdamW (no decay on norms) and the warmup + cosine schedule
    state.py        atomic checkpoints: HF model dir + training_state/ (optimizer safetensors, state JSON)
    distributed.py  torchrun/DDP process group and collectives
    metrics.py      metrics.jsonl
    trainer.py      Trainer and train()
    plot.py         `r1lab plot`
    cli.py          `r1lab train pretrain|sft` and `r1lab plot`

Python use (what later stages call):

    from r1lab.train import TrainConfig, train
    ckpt = train(TrainConfig(kind="sft", init="runs/pretrain", out="runs/sft", steps=200))
"""

from .config import TrainConfig, read_settings
from .data import (
    DataCursor,
    Examples,
    pack_documents,
    pretrain_documents,
    read_rows,
    sft_examples,
    sft_pairs,
    task_rows,
)
from .loss import objective, summed_cross_entropy
from .optim import build_optimizer, lr_at
from .state import resolve_checkpoint, save_checkpoint
from .trainer import Trainer, train

__all__ = [
    "DataCursor", "Examples", "TrainConfig", "Trainer", "build_optimizer", "lr_at", "objective", "pack_documents",
    "pretrain_documents", "read_rows", "read_settings", "resolve_checkpoint", "save_checkpoint", "sft_examples",
    "sft_pairs", "summed_cross_entropy", "task_rows", "train",
]
