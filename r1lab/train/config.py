"""Training settings: one validated dataclass for pretraining and SFT, loadable from TOML or YAML.

Why one flat dataclass: the CLI, a settings file and the Python API (the RL stage and the pipeline build a
`TrainConfig` directly) all speak the same field names, and the checkpoint stores the dict so a resumed run knows
what it was. Precedence is defaults < resumed checkpoint < settings file < command-line flags (see `cli.py`).

Defaults follow DeepSeek-V3 where they scale down sensibly (AdamW betas 0.9/0.95, weight decay 0.1, MTP weight
0.3, balance-loss alpha 1e-4, bias step gamma 1e-3, REFERENCE §3-4 and §7). The learning rate is not V3's 2.2e-4:
models of a few million parameters train well at 1e-3.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import ConfigError

KINDS = ("pretrain", "sft")

# Fields that decide which tokens a step sees. A resumed run must keep them, or it would not continue the same
# data stream (`check_resumable`). The global batch is checked as a product, so the world size may change. Data
# files are checked by content (a digest of the tokenised examples, in the trainer), so they may move.
_STREAM_FIELDS = ("kind", "tasks", "difficulties", "per_level", "traces", "traces_per_problem", "seq_len", "seed")


@dataclass
class TrainConfig:
    # what to train, where to write it
    kind: str = "pretrain"  # pretrain: next-token loss on every token; sft: loss on assistant tokens only
    out: str | None = None  # run directory: metrics.jsonl, step-NNNNNN/ checkpoints, `checkpoint` link
    preset: str | None = None  # model from a built-in preset ...
    model_config: str | None = None  # ... or from a config.json (or a directory holding one)
    init: str | None = None  # start from these HF-format weights (fresh optimiser, step 0)
    resume: str | None = None  # continue this run: weights, optimiser, schedule, RNG and data position
    tokenizer: str | None = None  # tokenizer directory; default: the init/resume checkpoint's, else trained here
    # data
    data: list[str] = field(default_factory=list)  # JSONL files; empty: the built-in task corpus
    tasks: list[str] = field(default_factory=list)  # built-in corpus: task families (empty: all)
    difficulties: list[int] = field(default_factory=list)  # built-in corpus: levels (empty: all of each family)
    per_level: int = 100  # built-in corpus: problems per family and difficulty
    traces: str = "reference"  # built-in corpus: reference, search or both (r1lab.tasks.traces)
    traces_per_problem: int = 1  # built-in corpus: search traces per problem
    seq_len: int = 256
    # SFT only: batch examples of similar length (less padding; on a mix of families it also makes batches of one
    # family, which cost the default demo's cold start 8 points on its mix: docs/rl-experiments.md)
    group_by_length: bool = False
    # optimisation
    steps: int = 100  # total optimiser steps, counted from the start of the run (a resume continues to it)
    batch_size: int = 8  # sequences per micro-batch on each rank
    grad_accum: int = 1  # micro-batches per optimiser step
    lr: float = 1e-3
    min_lr_ratio: float = 0.1  # the cosine ends at lr * min_lr_ratio
    warmup_steps: int = 10
    decay_steps: int | None = None  # length of warmup + cosine; None: `steps` of the run that started it
    weight_decay: float = 0.1  # on matrices only; norms are not decayed
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    clip: float = 1.0  # max global gradient norm; 0 disables clipping
    bf16: bool = False  # bf16 autocast for the forward; master weights and optimiser stay fp32
    # losses and balancing
    mtp_weight: float = 0.3  # lambda: weight of the multi-token-prediction cross-entropy
    balance_alpha: float = 1e-4  # alpha: weight of the sequence-wise balance loss
    bias_gamma: float = 1e-3  # gamma: step of the aux-loss-free routing-bias update
    # bookkeeping
    seed: int = 0
    save_every: int = 0  # also checkpoint every N steps (0: only at the end)
    keep_checkpoints: int = 1  # step directories kept on disk (the newest ones)
    progress: bool = True  # a progress bar on stderr (rank 0 only)
    device: str = "auto"  # auto (cuda if available), cpu, cuda

    def __post_init__(self) -> None:
        for name in ("data", "tasks", "difficulties"):
            value = getattr(self, name)
            if isinstance(value, (str, int)):
                value = [value]
            setattr(self, name, list(value or []))
        self.validate()

    def validate(self) -> None:
        def need(ok: bool, name: str, allowed: str) -> None:
            if not ok:
                raise ConfigError(f"{name}={getattr(self, name)!r}: {allowed}")

        def integer(name: str, low: int) -> None:
            value = getattr(self, name)
            need(isinstance(value, int) and not isinstance(value, bool) and value >= low, name,
                 f"must be an integer >= {low}")

        def number(name: str, low: float, high: float = math.inf, low_open: bool = False) -> None:
            value = getattr(self, name)
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            ok = ok and (value > low if low_open else value >= low) and value <= high
            bracket = "(" if low_open else "["
            need(ok, name, f"must be a number in {bracket}{low}, {high}]")

        need(self.kind in KINDS, "kind", f"allowed values: {', '.join(KINDS)}")
        need(not (self.preset and self.model_config), "preset", "give either preset or model_config, not both")
        need(not (self.init and self.resume), "init", "give either init (new run from weights) or resume, not both")
        from ..tasks import TRACE_STYLES

        need(self.traces in TRACE_STYLES, "traces", f"allowed values: {', '.join(TRACE_STYLES)}")
        for name in ("steps", "batch_size", "grad_accum", "per_level", "traces_per_problem", "keep_checkpoints"):
            integer(name, 1)
        integer("seq_len", 8)
        for name in ("warmup_steps", "save_every", "seed"):
            integer(name, 0)
        if self.decay_steps is not None:
            integer("decay_steps", 1)
        number("lr", 0.0, low_open=True)
        number("min_lr_ratio", 0.0, 1.0)
        number("weight_decay", 0.0)
        number("beta1", 0.0, 1.0)
        number("beta2", 0.0, 1.0)
        number("eps", 0.0, low_open=True)
        number("clip", 0.0)
        number("mtp_weight", 0.0)
        number("balance_alpha", 0.0)
        number("bias_gamma", 0.0)
        need(self.beta1 < 1 and self.beta2 < 1, "beta1" if self.beta1 >= 1 else "beta2", "must be below 1")
        need(isinstance(self.bf16, bool), "bf16", "must be true or false")
        need(isinstance(self.progress, bool), "progress", "must be true or false")
        need(isinstance(self.group_by_length, bool), "group_by_length", "must be true or false")
        need(self.device in ("auto", "cpu", "cuda") or str(self.device).startswith("cuda:"), "device",
             "allowed values: auto, cpu, cuda, cuda:N")
        need(all(isinstance(d, int) and not isinstance(d, bool) for d in self.difficulties), "difficulties",
             "must be a list of integers (difficulty levels 1-5)")
        need(all(isinstance(p, str) for p in self.data), "data", "must be a list of JSONL file paths")

    # ------------------------------------------------------------------ derived
    @property
    def min_lr(self) -> float:
        return self.lr * self.min_lr_ratio

    def global_batch(self, world_size: int) -> int:
        """Sequences per optimiser step over all ranks and micro-batches."""
        return self.batch_size * self.grad_accum * world_size

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "settings") -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(k for k in data if k not in names)
        if unknown:
            raise ConfigError(f"{source}: unknown setting(s) {', '.join(unknown)}; "
                              f"allowed: {', '.join(sorted(names))}")
        try:
            return cls(**data)
        except TypeError as e:  # a wrongly typed value that validation could not even compare
            raise ConfigError(f"{source}: {e}") from None


def read_settings(path: str | Path) -> dict[str, Any]:
    """The settings of a TOML (.toml), YAML (.yaml/.yml) or JSON file as a dict of TrainConfig field names.

    A file may hold the fields at the top level or under a `train` table.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no settings file at {path}")
    text = path.read_text(encoding="utf-8")
    suffix = path.suffix.lower()
    if suffix == ".toml":
        try:
            import tomllib
        except ModuleNotFoundError:  # Python 3.10
            import tomli as tomllib
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path} is not valid TOML: {e}") from None
    elif suffix in (".yaml", ".yml"):
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ConfigError(f"{path} is not valid YAML: {e}") from None
    elif suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path} is not valid JSON: {e}") from None
    else:
        raise ConfigError(f"{path}: settings files must end in .toml, .yaml, .yml or .json")
    data = data or {}
    if isinstance(data, dict) and set(data) == {"train"}:
        data = data["train"]
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a table (mapping) of settings")
    # Values are validated once, after merging with flags, when the TrainConfig is built.
    unknown = sorted(set(data) - _field_names())
    if unknown:
        raise ConfigError(f"{path}: unknown setting(s) {', '.join(unknown)}; allowed: "
                          f"{', '.join(sorted(_field_names()))}")
    return data


def _field_names() -> set[str]:
    return {f.name for f in dataclasses.fields(TrainConfig)}


def check_resumable(saved: dict[str, Any], cfg: TrainConfig, saved_world_size: int, world_size: int) -> None:
    """Raise ConfigError if `cfg` would not continue the data stream of the run saved with `saved` settings."""
    problems = []
    for name in _STREAM_FIELDS:
        if name in saved and saved[name] != getattr(cfg, name):
            problems.append(f"{name}: checkpoint {saved[name]!r}, now {getattr(cfg, name)!r}")
    before = saved["batch_size"] * saved["grad_accum"] * saved_world_size
    now = cfg.global_batch(world_size)
    if before != now:
        problems.append(f"global batch (batch_size x grad_accum x ranks): checkpoint {before} "
                        f"({saved['batch_size']} x {saved['grad_accum']} x {saved_world_size}), now {now} "
                        f"({cfg.batch_size} x {cfg.grad_accum} x {world_size})")
    if problems:
        raise ConfigError("the settings do not match the checkpoint being resumed (a resumed run must see the "
                          "same data stream):\n  " + "\n  ".join(problems))
