"""`r1lab train pretrain|sft` and `r1lab plot`, merged into the main CLI through COMMANDS.

Every training flag is the dashed name of a TrainConfig field (`--batch-size` sets `batch_size`; `--config` is the
model's config.json, field `model_config`). Flags default to "not given" (argparse.SUPPRESS), so the precedence
defaults < resumed checkpoint < --settings file < flags is a plain dict merge.

    r1lab train pretrain --preset tiny --steps 300 --out runs/pretrain
    r1lab train pretrain --resume runs/pretrain --steps 600          # continue the same run to step 600
    r1lab train sft --init runs/pretrain --data sft.jsonl --steps 100 --out runs/sft
    torchrun --nproc_per_node 2 -m r1lab train pretrain --preset tiny --batch-size 4 --out runs/ddp
    r1lab plot runs/pretrain
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..config import PRESETS, ConfigError
from ..tasks import TRACE_STYLES
from .config import TrainConfig, read_settings

_EXAMPLES = """examples:
  pretrain the tiny model from scratch on the generated task corpus:
    r1lab train pretrain --preset tiny --steps 300 --out runs/pretrain
  continue that run to step 600 (settings, optimiser, data position come from its checkpoint):
    r1lab train pretrain --resume runs/pretrain --steps 600
  SFT (the cold start) from the pretrained weights and tokenizer, with settings from a file:
    r1lab train sft --init runs/pretrain --steps 100 --out runs/sft --settings sft.toml
  your own rows, as `r1lab data make` writes them:
    r1lab train sft --init runs/pretrain --data countdown.jsonl --data linear.jsonl --out runs/sft
  two data-parallel processes (gloo on CPU):
    torchrun --nproc_per_node 2 -m r1lab train pretrain --preset tiny --batch-size 4 --out runs/ddp

A settings file (.toml or .yaml) holds TrainConfig fields by name, e.g. `lr = 3e-4` and `steps = 500`;
flags override it. Output: DIR/metrics.jsonl, DIR/step-NNNNNN/ (HF weights and tokenizer, plus
training_state/) and the link DIR/checkpoint to the newest; `r1lab plot DIR` draws the curves."""

_KINDS = {
    "pretrain": ("next-token pretraining on packed task traces and problems (or your JSONL)",
                 "Pretrain on documents packed into seq_len blocks: for each task row its <think> trace and its "
                 "plain question/answer. Without --data the corpus is generated from the task library."),
    "sft": ("supervised fine-tuning on chat-formatted traces (the R1 cold start)",
            "Fine-tune on DeepSeek-R1 chat turns: the prompt through the chat template, the <think> trace as the "
            "assistant's reply; loss on assistant tokens only. Usually started with --init from a pretrained run."),
}


def _flags(p: argparse.ArgumentParser) -> None:
    S = argparse.SUPPRESS
    g = p.add_argument_group("model and run directory")
    source = g.add_mutually_exclusive_group()
    source.add_argument("--preset", choices=sorted(PRESETS), default=S, help="a built-in model configuration")
    source.add_argument("--config", dest="model_config", metavar="PATH", default=S,
                        help="a model config.json (or a directory holding one)")
    start = g.add_mutually_exclusive_group()
    start.add_argument("--init", metavar="DIR", default=S,
                       help="start from these HF-format weights (a checkpoint or run directory): new optimiser, step 0")
    start.add_argument("--resume", metavar="DIR", default=S,
                       help="continue the run in DIR exactly where its checkpoint left off (--out defaults to DIR)")
    g.add_argument("--out", metavar="DIR", default=S, help="run directory for metrics and checkpoints")
    g.add_argument("--settings", metavar="FILE", default=S, help="a .toml or .yaml file of TrainConfig settings")
    g.add_argument("--tokenizer", metavar="DIR", default=S,
                   help="tokenizer directory (default: the --init/--resume checkpoint's, else one trained on the data)")
    g = p.add_argument_group("data")
    g.add_argument("--data", action="append", metavar="FILE.jsonl", default=S,
                   help="training rows (repeatable); fields task, difficulty, prompt, answer, solution as written by "
                        "`r1lab data make` (pretraining also takes `text`). Default: generated from the task library")
    g.add_argument("--tasks", nargs="+", metavar="NAME", default=S, help="task families of the generated corpus")
    g.add_argument("--difficulties", nargs="+", type=int, metavar="D", default=S,
                   help="difficulty levels of the generated corpus (default: all)")
    g.add_argument("--per-level", type=int, metavar="N", default=S,
                   help="generated problems per family and difficulty (default 100)")
    g.add_argument("--traces", choices=TRACE_STYLES, default=S,
                   help="generated corpus: learn each problem from its reference trace (default), search traces "
                        "(tries, dead ends, a final check; countdown and linear), guess-and-check traces (whole "
                        "attempts compared with the target; countdown, else reference) or reference + search (both)")
    g.add_argument("--traces-per-problem", type=int, metavar="N", default=S,
                   help="generated corpus: distinct search traces per problem (default 1)")
    g.add_argument("--seq-len", type=int, metavar="T", default=S, help="tokens per sequence (default 256)")
    g.add_argument("--group-by-length", action="store_true", default=S,
                   help="SFT: batch examples of similar length (less padding; batches of a mix then hold one family)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--steps", type=int, metavar="N", default=S,
                   help="total optimiser steps of the run; with --resume, the step to continue to (default 100)")
    g.add_argument("--batch-size", type=int, metavar="B", default=S, help="sequences per micro-batch per rank (8)")
    g.add_argument("--grad-accum", type=int, metavar="K", default=S, help="micro-batches per optimiser step (1)")
    g.add_argument("--lr", type=float, default=S, help="peak learning rate (1e-3)")
    g.add_argument("--min-lr-ratio", type=float, metavar="R", default=S, help="final lr as a fraction of peak (0.1)")
    g.add_argument("--warmup-steps", type=int, metavar="N", default=S, help="linear warmup steps (10)")
    g.add_argument("--decay-steps", type=int, metavar="N", default=S,
                   help="length of warmup + cosine (default: --steps of the run that started it; kept on resume)")
    g.add_argument("--weight-decay", type=float, metavar="WD", default=S, help="AdamW weight decay on matrices (0.1)")
    g.add_argument("--beta1", type=float, metavar="B1", default=S, help="AdamW beta1 (0.9)")
    g.add_argument("--beta2", type=float, metavar="B2", default=S, help="AdamW beta2 (0.95)")
    g.add_argument("--clip", type=float, metavar="NORM", default=S, help="max gradient norm, 0 = off (1.0)")
    g.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=S,
                   help="bf16 autocast for the forward pass (default off)")
    g = p.add_argument_group("losses and expert balancing")
    g.add_argument("--mtp-weight", type=float, metavar="LAMBDA", default=S, help="MTP loss weight (0.3)")
    g.add_argument("--balance-alpha", type=float, metavar="ALPHA", default=S,
                   help="sequence-wise balance loss weight (1e-4)")
    g.add_argument("--bias-gamma", type=float, metavar="GAMMA", default=S,
                   help="aux-loss-free routing-bias step per optimiser step (1e-3)")
    g = p.add_argument_group("bookkeeping")
    g.add_argument("--seed", type=int, metavar="S", default=S,
                   help="seed of weights, data order and generated corpus (0)")
    g.add_argument("--save-every", type=int, metavar="N", default=S, help="also checkpoint every N steps (0 = end)")
    g.add_argument("--keep-checkpoints", type=int, metavar="N", default=S, help="step directories kept (1)")
    g.add_argument("--device", metavar="DEV", default=S, help="auto, cpu, cuda or cuda:N (auto)")
    g.add_argument("--no-progress", dest="progress", action="store_false", default=S,
                   help="no progress bar or messages")


def add_train(sub) -> None:
    p = sub.add_parser("train", help="pretrain or fine-tune (SFT) a model; torchrun-ready",
                       description="Train with AdamW, warmup + cosine, MTP and DeepSeek-V3 expert balancing. "
                                   "Checkpoints are HF-format directories with the training state beside them.")
    kinds = p.add_subparsers(dest="train_kind", metavar="KIND", required=True)
    for kind, (help_text, description) in _KINDS.items():
        _flags(kinds.add_parser(kind, help=help_text, description=description, epilog=_EXAMPLES,
                                formatter_class=argparse.RawDescriptionHelpFormatter))


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Merge defaults < resumed checkpoint's settings < --settings file < flags into one TrainConfig."""
    from .state import read_state, resolve_checkpoint, run_dir_of

    given = {k: v for k, v in vars(args).items() if k in TrainConfig.__dataclass_fields__}
    settings = read_settings(args.settings) if getattr(args, "settings", None) else {}
    merged: dict = {}
    resume = given.get("resume", settings.get("resume"))
    if resume:
        checkpoint = resolve_checkpoint(resume)
        saved = read_state(checkpoint)["config"]
        # Weights and tokenizer now come from the checkpoint itself, not from what the old run started from; the
        # progress display and the device belong to this invocation.
        inherited = set(saved) - {"init", "resume", "tokenizer", "preset", "model_config", "progress", "device"}
        merged = {k: saved[k] for k in inherited}
        merged["out"] = str(run_dir_of(checkpoint))
    merged |= settings
    merged |= given
    merged["kind"] = args.train_kind
    if not merged.get("out"):
        raise ConfigError("--out DIR is required (the run directory), unless --resume names one")
    return TrainConfig.from_dict(merged, source="train settings")


def train(args: argparse.Namespace) -> int:
    from .trainer import train as run

    path = run(config_from_args(args))
    if int(os.environ.get("RANK", "0")) == 0:
        print(path)
    return 0


def add_plot(sub) -> None:
    p = sub.add_parser("plot", help="draw a training run's curves and expert-load heatmap as PNGs",
                       description="Read DIR/metrics.jsonl and write loss.png, lr.png, throughput.png, "
                                   "expert_load.png (per-layer heatmap of each expert's share of tokens over the "
                                   "steps) and load_imbalance.png into DIR/plots (or --out).",
                       epilog="example: r1lab plot runs/pretrain")
    p.add_argument("run", metavar="DIR", help="a run directory written by `r1lab train`")
    p.add_argument("--out", metavar="DIR", help="where to write the PNGs (default DIR/plots)")


def plot(args: argparse.Namespace) -> int:
    from .plot import plot_run

    if not Path(args.run).is_dir():
        raise FileNotFoundError(f"no run directory at {args.run}")
    try:
        paths = plot_run(args.run, args.out)
    except ModuleNotFoundError as e:
        raise ValueError(str(e)) from None
    for path in paths:
        print(path)
    return 0


COMMANDS = {"train": (add_train, train), "plot": (add_plot, plot)}
