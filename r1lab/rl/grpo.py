"""GRPO reasoning RL: rollouts through the engine, rule rewards, group advantages, clipped policy updates.

One step: draw `prompts_per_step` training problems, sample `group_size` completions each at temperature 1,
score them, and (with dynamic sampling, DAPO) drop groups whose rewards are all equal - they carry no gradient -
drawing fresh prompts until the batch is full or `max_refill_rounds` is spent. Problems come from a mix of
levels (`countdown:2`, `linear:3`, ...) through a curriculum that keeps RL at the edge of competence: each level's
rollout accuracy is tracked as a moving average p, and a prompt's level is drawn with weight p(1 - p) + a floor,
so levels the policy always or never solves (no signal either way) are drawn rarely but still watched. Then
`updates_per_batch` (mu) passes of clipped-surrogate updates over the batch in micro-batches. `r1-zero` mode
starts from a pretrained base with a plain think/answer layout; `r1` mode starts from the cold-start SFT model
with the chat template.

Logged per step (metrics.jsonl): reward, accuracy, format_rate, response_length (mean completion tokens; also
as completion_len), self_check_rate (completions that check or back up, `rewards.self_checks`), frac_zero_std,
truncated_rate (completions cut at max_tokens), kl, clip_fraction, entropy, lr, seconds, rollout_tokens_per_s,
and per level its prompts this step (`mix/countdown:2`) and rollout accuracy (`acc/countdown:2`).
`problems_seen.json` lists the keys of the distinct training problems drawn per level.
"""

from __future__ import annotations

import copy
import json
import math
import random
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..checkpoint import load_model
from ..engine import EngineConfig, LLMEngine, tokenizer_from_dir
from ..model import update_balance_bias
from ..tasks import get_family, level_of, parse_level
from .loss import AGGREGATIONS, group_advantages, grpo_loss
from .rewards import self_checks
from .rollout import Group, completion_batch, rollout, token_logprobs

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


@dataclass
class GRPOConfig:
    init: str = ""  # checkpoint to start from (SFT model for r1 mode, pretrained base for r1-zero)
    out: str = "runs/grpo"
    mode: str = "r1"
    tasks: list[str] = field(default_factory=lambda: ["countdown"])  # with difficulties: the mix, when mix is empty
    difficulties: list[int] = field(default_factory=lambda: [2])
    mix: list[str] = field(default_factory=list)  # levels to train on, e.g. ["countdown:2", "linear:3"]
    curriculum: bool = True  # draw levels by pass rate (p(1 - p) + floor); False: uniformly
    steps: int = 30
    prompts_per_step: int = 16
    group_size: int = 8
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 96
    lr: float = 1e-4
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    eps_low: float = 0.2
    eps_high: float = 0.28
    beta: float = 0.0
    updates_per_batch: int = 1
    micro_batch: int = 32
    aggregation: str = "token"
    scale_by_std: bool = True
    dynamic_sampling: bool = True
    max_refill_rounds: int = 2
    format_weight: float = 0.1
    overlong_buffer: int = 0
    # DAPO's overlong filtering: completions cut at max_tokens keep their reward in the group baseline but
    # add nothing to the loss. Without it a search still trying at the budget counts as a failure and RL learns
    # to stop early; with it, the runs in docs/rl-experiments.md grew longer without solving more
    mask_truncated: bool = False
    # Weight of below-average completions' advantages (1: GRPO; 0: learn from the group's successes only, as
    # filtered behaviour cloning (RAFT, ReST) does, so an honest miss in a failed search is not pushed down)
    negative_weight: float = 1.0
    bias_gamma: float = 0.0  # aux-loss-free routing-bias step during RL (0: routing biases frozen)
    seed: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        checks = [
            ("mode", self.mode in ("r1", "r1-zero"), "must be 'r1' or 'r1-zero'"),
            ("steps", self.steps >= 1, "must be >= 1"),
            ("prompts_per_step", self.prompts_per_step >= 1, "must be >= 1"),
            ("group_size", self.group_size >= 2, "must be >= 2 (advantages compare completions within a group)"),
            ("temperature", 0 < self.temperature <= 2, "must be in (0, 2]"),
            ("max_tokens", self.max_tokens >= 1, "must be >= 1"),
            ("lr", self.lr > 0, "must be > 0"),
            ("eps_low", 0 <= self.eps_low < 1, "must be in [0, 1)"),
            ("eps_high", self.eps_high >= 0, "must be >= 0"),
            ("beta", self.beta >= 0, "must be >= 0 (0 keeps no reference model)"),
            ("updates_per_batch", self.updates_per_batch >= 1, "must be >= 1"),
            ("micro_batch", self.micro_batch >= 1, "must be >= 1"),
            ("aggregation", self.aggregation in AGGREGATIONS, f"must be one of {AGGREGATIONS}"),
            ("max_refill_rounds", self.max_refill_rounds >= 0, "must be >= 0"),
            ("negative_weight", 0 <= self.negative_weight <= 1, "must be in [0, 1]"),
        ]
        for name, ok, message in checks:
            if not ok:
                raise ValueError(f"{name}={getattr(self, name)!r}: {message}")
        if not self.mix:
            self.mix = [f"{t}:{d}" for t in self.tasks for d in self.difficulties]
        if not self.mix:
            raise ValueError("mix: no levels to train on (give mix, or tasks and difficulties)")
        for level in self.mix:
            parse_level(level)  # a TaskError naming the families and levels there are
        if not self.init:
            raise ValueError("init: the checkpoint to start from is required")


class Curriculum:
    """Training-split problems of a mix of levels, each level's share following the policy's pass rate there.

    Each level has its own endless seeded stream of problems. `take(n)` draws each prompt's level with weight
    p(1 - p) + `floor`, p being the level's moving-average rollout accuracy (0.5 before any rollout), so the
    batch leans to the levels where some completions succeed and some fail: the only groups with a gradient.
    `adaptive=False` draws levels uniformly. Deterministic by seed; `seen` holds the distinct problems drawn.
    """

    def __init__(self, levels: list[str], seed: int, adaptive: bool = True, floor: float = 0.05,
                 smoothing: float = 0.8):
        self.levels = list(dict.fromkeys(levels))
        self.adaptive, self.floor, self.smoothing = adaptive, floor, smoothing
        self.streams = {}
        for level in self.levels:
            task, difficulty = parse_level(level)
            self.streams[level] = get_family(task).stream(seed, difficulty, "train")
        self.pass_rate = {level: 0.5 for level in self.levels}
        self.seen: dict[str, set[str]] = {level: set() for level in self.levels}
        self.rng = random.Random(f"curriculum/{seed}")

    def weights(self) -> list[float]:
        if not self.adaptive:
            return [1.0] * len(self.levels)
        return [p * (1 - p) + self.floor for p in (self.pass_rate[level] for level in self.levels)]

    def take(self, n: int) -> list:
        out = []
        for level in self.rng.choices(self.levels, self.weights(), k=n):
            try:
                problem = next(self.streams[level])
            except RuntimeError as e:  # a level whose train split holds nothing: say which, keep the rest
                raise ValueError(f"curriculum level {level} has no training problems ({e})") from None
            self.seen[level].add(get_family(problem.task).key(problem))
            out.append(problem)
        return out

    def update(self, groups: list[Group]) -> None:
        """Fold a step's rollout accuracy per level into the moving averages."""
        by_level: dict[str, list[float]] = {}
        for g in groups:
            by_level.setdefault(level_of(g.problem), []).extend(r["accuracy"] for r in g.rewards)
        for level, accuracies in by_level.items():
            if level in self.pass_rate:
                mean = sum(accuracies) / len(accuracies)
                self.pass_rate[level] = self.smoothing * self.pass_rate[level] + (1 - self.smoothing) * mean


def _metrics_of(groups: list[Group], kept: list[Group]) -> dict[str, float]:
    rewards = [r for g in groups for r in g.rewards]
    lengths = [len(c) for g in groups for c in g.completions]
    texts = [t for g in groups for t in g.texts]
    row = {
        "reward": sum(r["reward"] for r in rewards) / len(rewards),
        "accuracy": sum(r["accuracy"] for r in rewards) / len(rewards),
        "format_rate": sum(r["format"] for r in rewards) / len(rewards),
        "response_length": sum(lengths) / len(lengths),
        "completion_len": sum(lengths) / len(lengths),
        "self_check_rate": sum(self_checks(t) > 0 for t in texts) / len(texts),
        "frac_zero_std": sum(not g.has_signal for g in groups) / len(groups),
        "truncated_rate": sum(t for g in groups for t in g.truncated) / len(lengths),
        "groups_used": len(kept),
    }
    for level in sorted({level_of(g.problem) for g in groups}):
        mine = [r["accuracy"] for g in groups if level_of(g.problem) == level for r in g.rewards]
        row[f"mix/{level}"] = sum(level_of(g.problem) == level for g in groups)
        row[f"acc/{level}"] = sum(mine) / len(mine)
    return row


def shaped_advantages(rewards: torch.Tensor, cfg: GRPOConfig) -> torch.Tensor:
    """One advantage per completion, flattened from rewards shaped [groups, G]: group-normalised, with the
    below-average ones scaled by `negative_weight`.

    >>> cfg = GRPOConfig(init="x", negative_weight=0.0)
    >>> shaped_advantages(torch.tensor([[1.0, 0.0, 0.0, 0.0]]), cfg).round(decimals=2).abs()
    tensor([1.5000, 0.0000, 0.0000, 0.0000])
    """
    advantages = group_advantages(rewards, scale_by_std=cfg.scale_by_std).flatten()
    if cfg.negative_weight != 1.0:
        advantages = torch.where(advantages < 0, advantages * cfg.negative_weight, advantages)
    return advantages


class GRPOTrainer:
    def __init__(self, cfg: GRPOConfig):
        self.cfg = cfg
        torch.manual_seed(cfg.seed)
        from ..train import resolve_checkpoint

        self.init_dir = resolve_checkpoint(cfg.init)
        self.model = load_model(self.init_dir)
        self.ref = copy.deepcopy(self.model).eval() if cfg.beta > 0 else None
        self.engine = LLMEngine(self.model, EngineConfig(
            max_num_seqs=cfg.prompts_per_step * cfg.group_size, max_num_batched_tokens=4096, cache_memory_mb=256),
            tokenizer=tokenizer_from_dir(self.init_dir))
        self.pad_id = self.model.config.eos_token_id or 0
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, betas=(0.9, 0.99),
                                           weight_decay=cfg.weight_decay)
        self.curriculum = Curriculum(cfg.mix, cfg.seed, adaptive=cfg.curriculum)
        self.out = Path(cfg.out)
        self.out.mkdir(parents=True, exist_ok=True)

    def collect(self, step: int) -> tuple[list[Group], list[Group]]:
        """Roll out until prompts_per_step groups with reward variance are in hand (or refills run out)."""
        cfg = self.cfg
        self.model.eval()
        seen, kept = [], []
        for round_ in range(1 + (cfg.max_refill_rounds if cfg.dynamic_sampling else 0)):
            need = cfg.prompts_per_step - len(kept) if cfg.dynamic_sampling else cfg.prompts_per_step
            if need <= 0:
                break
            groups = rollout(self.engine, self.curriculum.take(need), cfg.group_size, cfg.temperature, cfg.top_p,
                             cfg.max_tokens, seed=cfg.seed * 1_000_003 + step * 31 + round_, mode=cfg.mode,
                             format_weight=cfg.format_weight, overlong_buffer=cfg.overlong_buffer)
            seen += groups
            self.curriculum.update(groups)
            kept += [g for g in groups if g.has_signal] if cfg.dynamic_sampling else groups
            if not cfg.dynamic_sampling:
                break
        return seen, kept[: cfg.prompts_per_step]

    def update(self, groups: list[Group]) -> dict[str, float]:
        cfg = self.cfg
        rewards = torch.stack([g.reward_tensor for g in groups])
        advantages = shaped_advantages(rewards, cfg)
        ids, mask = completion_batch(groups, self.pad_id)
        first = int(mask.sum(0).nonzero()[0])  # the first target any completion holds: score from there on
        mask = mask[:, first:]
        if cfg.mask_truncated:
            mask[torch.tensor([t for g in groups for t in g.truncated], dtype=torch.bool)] = 0
        n = ids.shape[0]
        chunks = [slice(i, min(i + cfg.micro_batch, n)) for i in range(0, n, cfg.micro_batch)]
        total_tokens = mask.sum().clamp(min=1)
        T = cfg.temperature  # the policy being optimised is the one that sampled the rollouts
        self.model.train()
        with torch.no_grad():
            # With one update per batch the policy is still the one that sampled, so the old log-probabilities
            # are the current ones (detached below): a whole forward pass saved.
            old = (torch.cat([token_logprobs(self.model, ids[c], first=first, temperature=T) for c in chunks])
                   if cfg.updates_per_batch > 1 else None)
            ref = (torch.cat([token_logprobs(self.ref, ids[c], first=first, temperature=T) for c in chunks])
                   if self.ref is not None else None)
        stats = {"kl": 0.0, "clip_fraction": 0.0, "entropy": 0.0, "grad_norm": 0.0}
        for _ in range(cfg.updates_per_batch):
            self.optimizer.zero_grad(set_to_none=True)
            for c in chunks:
                logp, entropy = token_logprobs(self.model, ids[c], with_entropy=True, first=first,
                                               temperature=T)
                old_logp = logp.detach() if old is None else old[c]
                loss, s = grpo_loss(logp, old_logp, advantages[c], mask[c], None if ref is None else ref[c],
                                    cfg.eps_low, cfg.eps_high, cfg.beta, cfg.aggregation, cfg.max_tokens)
                # micro-batch losses are means over their own part; weight them into a mean over the batch
                weight = (mask[c].sum() / total_tokens if cfg.aggregation == "token"
                          else torch.tensor((c.stop - c.start) / n))
                (loss * weight).backward()
                w = float(weight)
                stats["kl"] += s.kl * w / cfg.updates_per_batch
                stats["clip_fraction"] += s.clip_fraction * w / cfg.updates_per_batch
                stats["entropy"] += float((entropy * mask[c]).sum() / mask[c].sum().clamp(min=1)) * w \
                    / cfg.updates_per_batch
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip or math.inf)
            stats["grad_norm"] = float(norm)
            self.optimizer.step()
            if cfg.bias_gamma:
                update_balance_bias(self.model, cfg.bias_gamma)
        self.model.eval()
        self.engine.reset_prefix_cache()  # cached latents belong to the old weights
        return stats

    def train(self) -> Path:
        cfg = self.cfg
        from ..train.metrics import MetricsLog

        log = MetricsLog(self.out)
        self.samples: list[dict] = []
        bar = None
        if cfg.progress:
            from tqdm import tqdm

            bar = tqdm(total=cfg.steps, desc=f"grpo ({cfg.mode})", unit="step")
        try:
            for step in range(1, cfg.steps + 1):
                start = time.perf_counter()
                generated_before = self.engine.stats["generated_tokens"]
                seen, kept = self.collect(step)
                rollout_s = time.perf_counter() - start
                row = {"step": step, **_metrics_of(seen, kept), "lr": cfg.lr}
                if kept:
                    row.update(self.update(kept))
                else:
                    row.update({"kl": 0.0, "clip_fraction": 0.0, "entropy": 0.0, "grad_norm": 0.0})
                row["seconds"] = time.perf_counter() - start
                row["rollout_tokens_per_s"] = (self.engine.stats["generated_tokens"] - generated_before) / rollout_s
                log.write(row)
                self.samples.append({"step": step, "prompt": seen[0].problem.prompt, "completion": seen[0].texts[0],
                                     "accuracy": seen[0].rewards[0]["accuracy"]})
                if bar:
                    bar.set_postfix(reward=f"{row['reward']:.2f}", acc=f"{row['accuracy']:.2f}",
                                    fmt=f"{row['format_rate']:.2f}", zero_std=f"{row['frac_zero_std']:.2f}")
                    bar.update(1)
        finally:
            log.close()
            if bar:
                bar.close()
            seen = {level: sorted(keys) for level, keys in self.curriculum.seen.items()}
            (self.out / "problems_seen.json").write_text(json.dumps(seen) + "\n")
            with open(self.out / "samples.jsonl", "w") as f:  # one completion per step, for the report
                f.writelines(json.dumps(row) + "\n" for row in self.samples)
        return self.save()

    def save(self) -> Path:
        final = self.out / "final"
        tmp = self.out / ".final.tmp"
        if tmp.exists():
            shutil.rmtree(tmp)
        self.model.save_pretrained(tmp)
        for name in TOKENIZER_FILES:
            if (self.init_dir / name).exists():
                shutil.copy(self.init_dir / name, tmp / name)
        (tmp / "grpo_config.json").write_text(json.dumps(asdict(self.cfg), indent=2) + "\n")
        if final.exists():
            old = self.out / ".final.old"
            if old.exists():
                shutil.rmtree(old)
            final.rename(old)
            tmp.rename(final)
            shutil.rmtree(old)
        else:
            tmp.rename(final)
        return final


def train_grpo(cfg: GRPOConfig) -> Path:
    """Run GRPO and return the directory of the final policy (HF layout with tokenizer)."""
    return GRPOTrainer(cfg).train()
