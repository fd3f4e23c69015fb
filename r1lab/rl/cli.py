"""`r1lab grpo` (reasoning RL) and `r1lab reject` (rejection sampling into SFT data)."""

from __future__ import annotations

import json


def add_grpo(sub) -> None:
    from .grpo import GRPOConfig

    d = GRPOConfig.__dataclass_fields__
    p = sub.add_parser("grpo", help="GRPO reasoning RL with rule rewards, starting from a checkpoint",
                       description="Sample G completions per training prompt, reward them by the task verifier "
                                   "(+ format), and update the policy with the clipped GRPO objective. Writes "
                                   "OUT/metrics.jsonl and the final policy to OUT/final.")
    p.add_argument("--init", required=True, help="checkpoint (or run) directory to start from")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--mode", choices=["r1", "r1-zero"], default="r1",
                   help="r1: chat template (after SFT); r1-zero: plain 'problem + <think>' from a base model")
    p.add_argument("--mix", nargs="+", metavar="LEVEL", default=[],
                   help="levels to train on, FAMILY:DIFFICULTY, e.g. countdown:2 linear:3 (default: every "
                        "--tasks x --difficulties pair)")
    p.add_argument("--tasks", nargs="+", default=d["tasks"].default_factory())
    p.add_argument("--difficulties", nargs="+", type=int, default=d["difficulties"].default_factory())
    p.add_argument("--no-curriculum", action="store_true",
                   help="draw levels uniformly instead of by pass rate p(1 - p)")
    for name in ("steps", "prompts_per_step", "group_size", "max_tokens", "updates_per_batch", "micro_batch",
                 "max_refill_rounds", "overlong_buffer", "seed"):
        p.add_argument("--" + name.replace("_", "-"), type=int, default=d[name].default)
    for name in ("temperature", "top_p", "lr", "eps_low", "eps_high", "beta", "format_weight", "bias_gamma",
                 "grad_clip", "weight_decay", "negative_weight"):
        p.add_argument("--" + name.replace("_", "-"), type=float, default=d[name].default)
    p.add_argument("--aggregation", choices=["token", "sequence", "dr_grpo"], default="token",
                   help="token (DAPO), sequence (GRPO as published) or dr_grpo (constant normaliser)")
    p.add_argument("--no-std-scaling", action="store_true", help="Dr. GRPO advantages: r - mean, no std division")
    p.add_argument("--no-dynamic-sampling", action="store_true", help="keep groups whose rewards are all equal")
    p.add_argument("--mask-truncated", action="store_true",
                   help="DAPO's overlong filtering: completions cut at --max-tokens add nothing to the loss")
    p.add_argument("--no-progress", action="store_true")


def grpo(args) -> int:
    from .grpo import GRPOConfig, train_grpo

    fields = GRPOConfig.__dataclass_fields__
    values = {k: getattr(args, k) for k in fields if hasattr(args, k)}
    values.update(scale_by_std=not args.no_std_scaling, dynamic_sampling=not args.no_dynamic_sampling,
                  progress=not args.no_progress, curriculum=not args.no_curriculum)
    final = train_grpo(GRPOConfig(**values))
    print(final)
    return 0


def add_reject(sub) -> None:
    p = sub.add_parser("reject", help="rejection sampling: verified traces of a model, as SFT JSONL",
                       description="Sample k completions per training prompt, keep those the verifier accepts and "
                                   "that follow the think/answer format, and write them as SFT rows.")
    p.add_argument("--model", required=True)
    p.add_argument("--out", required=True, help="JSONL file to write")
    p.add_argument("--tasks", nargs="+", default=["countdown"])
    p.add_argument("--difficulties", nargs="+", type=int, default=[2])
    p.add_argument("--prompts", type=int, default=512)
    p.add_argument("--k", type=int, default=8)
    p.add_argument("--keep-per-prompt", type=int, default=2)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)


def reject(args) -> int:
    from ..train import resolve_checkpoint
    from .rejection import rejection_sample

    levels = [f"{t}:{d}" for t in args.tasks for d in args.difficulties]
    _, stats = rejection_sample(resolve_checkpoint(args.model), levels, args.prompts, args.k,
                                args.temperature, args.max_tokens, args.keep_per_prompt, args.seed, out=args.out)
    print(json.dumps(stats))
    return 0


COMMANDS = {"grpo": (add_grpo, grpo), "reject": (add_reject, reject)}
