r"""`r1lab run`: the R1 recipe end to end on the `tiny` preset, with R1-Zero and the controls beside it.

    tokenizer -> pretrain -> cold-start SFT -> GRPO -> rejection sampling + SFT -> distill
                         \-> R1-Zero (GRPO from the base)      SFT -> same-compute SFT (control)
    -> eval -> report

Every stage writes into `runs/<name>/<stage>/` and is skipped when its output already exists, so an interrupted
run continues where it stopped.

The design, and why (docs/rl-experiments.md keeps the runs behind it):
* A pretrained base, shipped: R1 starts from DeepSeek-V3-Base, and this recipe starts from `models/tiny-r1-base`,
  which this module's own tokenizer and pretrain stages made once (`--base none` runs them: 1,500 steps, about
  26 minutes on 2 cores, longer than the whole demo). It read 9.2M tokens of the mix's families: guess-and-check
  traces for Countdown, reference and search traces for linear equations, and plain question/answer pairs, but
  never the harder level.
* A task space too big to memorise, as far as the tiny model's arithmetic allows: a mix of levels (default
  Countdown with three numbers up to 10 and linear equations of two kinds); the report counts, per level, the
  distinct problems the recipe drew, those the base read, and an estimate of the space (Countdown's learnable
  levels are small). Held-out problems are disjoint by key, and evaluation adds a level no stage trains on (four
  numbers).
* A cold start that searches: guess-and-check traces for Countdown (whole attempts, every move computed and
  compared with the target, up to three misses before the hit, whose moves are the answer the verifier checks
  move by move), reference traces for the families without that style. `--traces search` imitates search traces
  (tries, dead ends, backing up; Stream of Search, Gandhi et al. 2024), `--traces reference` one answer path.
* RL at the edge of competence: GRPO draws each prompt's level by the policy's pass rate there, p(1 - p), drops
  groups whose rewards are all equal (DAPO), and keeps a KL term to the cold start.
* R1-Zero: the same GRPO from the pretrained base, no cold start, on the pretraining layout (problem, then
  `<think>`), rewarded for format and accuracy; the report puts its length and self-check curves beside R1's.
* Controls: the SFT model trained further for GRPO's wall time on fresh problems, and sampled at a lower
  temperature, so a gain can be attributed to RL.

Stages and the R1 paper's counterparts:
* tokenizer,   - copied from the base (or, with --base none, trained: the tokenizer on the task library, then
  pretrain       next-token + MTP on the corpus above)
* sft          - cold start: chat-formatted guess-and-check and reference traces of the training mix
* grpo         - reasoning RL with rule rewards (accuracy + format), curriculum, dynamic sampling, clip-higher
* zero         - R1-Zero: GRPO from the pretrained base, no SFT
* control      - same-compute continued SFT (not in the paper: the control that makes the RL gain mean something)
* rs           - rejection sampling from the RL policy: verified, well-formatted traces; a short SFT of the RL
                 policy on them (R1's stage-3 SFT, here on reasoning data only)
* distill      - a dense student (no routed experts): the RL teacher with each MoE folded into one FFN (shared
                 expert + most-used routed experts, `r1lab.rl.distill`), then SFT on the same verified traces
* eval         - held-out pass@1 / pass@k at T=0.6, top-p 0.95: sft and rl on every trained level and the harder
                 one; rs, distill, R1-Zero and the controls on the trained levels

The report (`report.md`, `report.json`, PNG plots) states the figures; `--ship DIR` copies the checkpoints and
the report with its plots to `models/` (tiny-r1-sft, tiny-r1, tiny-r1-distill, report.json, report.md; and
tiny-r1-base when this run pretrained it).
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .config import SHIPPED_MODELS_DIR as DEFAULT_SHIP
from .data import read_jsonl
from .tasks import TRACE_STYLES

DEFAULT_BASE = DEFAULT_SHIP / "tiny-r1-base"
# The shipped base's corpus (9.2M tokens): the default mix's families from their easiest level up to the hardest
# trained one, never the harder evaluated level.
BASE_CORPUS = {"countdown:1": (1500, 2), "countdown:2": (8000, 4), "linear:1": (6000, 2), "linear:2": (6000, 2),
               "linear:3": (6000, 2)}
CORPUS_FILE = "pretrain_corpus.json"  # in the base's checkpoint: level -> distinct problems it read


def corpus_summary(rows) -> dict[str, int]:
    """Distinct problems per level of a corpus's rows."""
    from .tasks import Problem, get_family, level_of

    seen: dict[str, set[str]] = {}
    for row in rows:
        problem = Problem.from_dict(row)
        seen.setdefault(level_of(problem), set()).add(get_family(problem.task).key(problem))
    return {level: len(keys) for level, keys in sorted(seen.items())}


@dataclass
class PipelineConfig:
    name: str = "tiny-r1"
    runs: str = "runs"
    mix: list[str] = field(default_factory=lambda: ["countdown:2", "linear:2", "linear:3"])
    harder: str = "countdown:3"  # evaluated, never trained on (a fourth number): does what RL grew carry over?
    # What the cold start imitates (r1lab.tasks.traces): guess-and-check traces for Countdown (whole attempts,
    # each computed and compared with the target), the reference for families without that style. From the base
    # they gave countdown:2 0.498 / 0.91 pass@1 / pass@8, where reference traces from the old base gave 0.020
    # (docs/rl-experiments.md, sessions 8 and 9).
    traces: str = "guess"
    traces_per_problem: int = 4  # search or guess traces per problem (reference: one)
    seed: int = 0
    threads: int | None = None
    # The pretrained base the recipe starts from, as R1 starts from DeepSeek-V3-Base: the shipped one, which is this
    # config's own tokenizer and pretrain stages run once (`r1lab run --base none --stages tokenizer pretrain`), or
    # None to pretrain in this run. The demo's minutes then go to the cold start and RL.
    base: str | None = str(DEFAULT_BASE)
    # pretraining (tiny preset) on documents of each level: level -> (problems, traces per problem); each problem
    # gives its guess-and-check traces (reference and search ones where a family has no guess style) and its plain
    # question/answer. Levels of the mix missing here get `pretrain_per_level` problems with 2 traces.
    pretrain_corpus: dict[str, tuple[int, int]] = field(default_factory=lambda: dict(BASE_CORPUS))
    pretrain_per_level: int = 6000
    pretrain_steps: int = 1500
    pretrain_batch: int = 32
    pretrain_seq_len: int = 256
    pretrain_lr: float = 3e-3
    # cold-start SFT on the training mix; from the base, 300 steps at 1e-3 reach 0.43 pass@1 on the default mix
    # (docs/rl-experiments.md, session 9)
    sft_steps: int = 300
    sft_per_level: int = 2000  # problems per level (times traces_per_problem rows with search or guess traces)
    sft_batch: int = 64
    sft_lr: float = 1e-3
    sft_seq_len: int = 320
    # GRPO (and R1-Zero, with the same settings from the base)
    grpo_steps: int = 50
    grpo_prompts: int = 16
    grpo_group: int = 8
    grpo_lr: float = 5e-5  # 1e-4 lost 3 points in 50 steps on the default mix (docs/rl-experiments.md)
    grpo_beta: float = 0.04  # KL weight to the SFT model: +5.9 against +3.0 without it (session 8)
    curriculum: bool = True
    zero_steps: int = 20
    # R1-Zero's budget leaves room above the base's guess traces (about 100 tokens) for responses to grow
    zero_max_tokens: int = 256
    max_tokens: int = 160  # guess traces: up to three misses and the hit (search traces need about 320)
    # controls
    control_temperature: float = 0.3
    # rejection sampling + SFT, distillation
    rs_prompts: int = 512
    rs_k: int = 4
    rs_sft_steps: int = 60
    distill_steps: int = 100
    distill_lr: float = 5e-4
    # evaluation: eval_k samples of eval_size problems per level for sft and rl; the other models get
    # side_k samples of eval_size problems spread over the trained levels
    eval_size: int = 400
    eval_k: int = 8
    side_k: int = 4
    # CI only: when the (untrained) RL model solves nothing, distil from reference traces so later stages run
    rs_fallback_to_reference: bool = False
    stages: list[str] = field(default_factory=lambda: list(STAGES))

    def __post_init__(self) -> None:
        from .tasks import TaskError, has_search, parse_level

        levels = [parse_level(level) for level in [*self.mix, self.harder]]  # TaskErrors name what exists
        if not self.mix:
            raise TaskError("mix: no levels to train on")
        if self.harder in self.mix:
            raise TaskError(f"harder={self.harder!r} is in the training mix; it must be a level never trained on")
        for level in self.pretrain_corpus:
            parse_level(level)
        if self.harder in self.pretrain_corpus:
            raise TaskError(f"harder={self.harder!r} is in the pretraining corpus; it must be a level never trained on")
        if self.traces not in TRACE_STYLES:
            raise TaskError(f"traces={self.traces!r}: choose one of {', '.join(TRACE_STYLES)}")
        if self.traces == "search":
            missing = [f"{t}:{d}" for t, d in levels[:-1] if not has_search(t, d)]
            if missing:
                raise TaskError(f"no search traces for {', '.join(missing)}; use traces='both' or another mix")

    @classmethod
    def micro(cls, **overrides) -> PipelineConfig:
        """Seconds-long settings for CI: every stage runs, the numbers mean nothing."""
        small = dict(base=None, pretrain_corpus={}, pretrain_steps=4, pretrain_per_level=4, pretrain_batch=4,
                     pretrain_seq_len=128, sft_steps=4, sft_per_level=10, sft_batch=8, sft_seq_len=256,
                     traces="search", traces_per_problem=2,
                     grpo_steps=2, grpo_prompts=4, grpo_group=4, zero_steps=2, max_tokens=24, zero_max_tokens=24,
                     rs_prompts=8, rs_k=2, rs_sft_steps=2, distill_steps=3, eval_size=6, eval_k=2, side_k=2,
                     rs_fallback_to_reference=True)
        return cls(**{**small, **overrides})


STAGES = ("tokenizer", "pretrain", "sft", "grpo", "zero", "control", "rs", "distill", "eval", "report")


class Pipeline:
    def __init__(self, cfg: PipelineConfig):
        unknown = [s for s in cfg.stages if s not in STAGES]
        if unknown:
            raise ValueError(f"unknown stage(s) {unknown}; stages are: {', '.join(STAGES)}")
        self.cfg = cfg
        self.root = Path(cfg.runs) / cfg.name
        self.root.mkdir(parents=True, exist_ok=True)
        self.timings: dict[str, float] = {}
        timings_file = self.root / "timings.json"
        if timings_file.exists():
            self.timings = json.loads(timings_file.read_text())

    # ------------------------------------------------------------------ paths
    def path(self, stage: str) -> Path:
        return self.root / stage

    def model(self, stage: str) -> Path:
        """The checkpoint a stage produced."""
        return stage_checkpoint(self.root, stage)

    def traces(self) -> tuple[Path, int]:
        """The rejection-sampled SFT rows (written by the rs stage) and how many there are."""
        path = self.root / "rs-traces.jsonl"
        return path, sum(1 for _ in read_jsonl(path))

    def _done(self, stage: str) -> bool:
        return (self.root / f".{stage}.done").exists()

    def _mark(self, stage: str, seconds: float) -> None:
        (self.root / f".{stage}.done").write_text("ok\n")
        self.timings[stage] = round(seconds, 1)
        (self.root / "timings.json").write_text(json.dumps(self.timings, indent=2) + "\n")

    def say(self, message: str) -> None:
        print(f"[r1lab run] {message}", file=sys.stderr, flush=True)

    # ------------------------------------------------------------------ stages
    def run(self) -> dict | None:
        report = None
        for stage in STAGES:
            if stage not in self.cfg.stages:
                continue
            if self._done(stage) and stage != "report":
                self.say(f"{stage}: done earlier, skipping")
                continue
            self.say(f"{stage}: starting")
            start = time.perf_counter()
            result = getattr(self, f"stage_{stage}")()
            self._mark(stage, time.perf_counter() - start)
            self.say(f"{stage}: finished in {self.timings[stage]:.0f}s")
            if stage == "report":
                report = result
        return report

    def stage_tokenizer(self) -> None:
        from .tokenizer import default_corpus, train_tokenizer

        if self.cfg.base:
            copy_checkpoint(self.base(), self.path("tokenizer"), weights=False)
            return
        train_tokenizer(default_corpus(per_level=100, seed=self.cfg.seed), self.path("tokenizer"))

    def base(self) -> Path:
        """The shipped (or given) pretrained base; an error that says how to make one when it is missing."""
        from .train import resolve_checkpoint
        from .train.state import CheckpointError

        try:
            return resolve_checkpoint(self.cfg.base)
        except CheckpointError as e:
            raise ValueError(f"base model: {e}; pretrain one in this run with --base none") from None

    def _train(self, **settings) -> Path:
        from .train import TrainConfig, train

        out = Path(settings["out"])
        if (out / "checkpoint").exists():
            # An interrupted stage: continue its run instead of starting over (same settings, exact resume).
            for key in ("init", "preset", "model_config", "tokenizer"):
                settings.pop(key, None)
            settings["resume"] = str(out)
        cfg = TrainConfig(seed=self.cfg.seed, progress=True, **settings)
        return train(cfg)

    def stage_pretrain(self) -> None:
        c = self.cfg
        if c.base:
            base = self.base()
            self.say(f"pretrain: starting from the base at {base} (--base none pretrains one here)")
            copy_checkpoint(base, self.path("pretrain"))
            return
        data = self.pretrain_data()
        checkpoint = self._train(kind="pretrain", preset="tiny", out=str(self.path("pretrain")),
                                 tokenizer=str(self.path("tokenizer")), data=[str(data)], seq_len=c.pretrain_seq_len,
                                 steps=c.pretrain_steps, batch_size=c.pretrain_batch, lr=c.pretrain_lr,
                                 warmup_steps=max(1, c.pretrain_steps // 20))
        # The base carries what it read, so a run that starts from it can report the problems it has seen
        (Path(checkpoint) / CORPUS_FILE).write_text(json.dumps(corpus_summary(read_jsonl(data)), indent=2) + "\n")

    def pretrain_data(self) -> Path:
        """The base's corpus as JSONL: `pretrain_corpus`, plus the mix's levels it lacks, shuffled."""
        import random

        from .data import write_jsonl
        from .tasks import get_family, parse_level
        from .train import task_rows

        c = self.cfg
        corpus = {**c.pretrain_corpus, **{level: (c.pretrain_per_level, 2) for level in c.mix
                                          if level not in c.pretrain_corpus}}
        rows = []
        for level, (count, per_problem) in corpus.items():
            task, difficulty = parse_level(level)
            style = "guess" if get_family(task).guess is not None else "both"
            rows += task_rows([task], [difficulty], count, c.seed, style, per_problem)
        random.Random(c.seed).shuffle(rows)
        path = self.root / "pretrain-data.jsonl"
        write_jsonl(rows, path)
        return path

    def sft_data(self, name: str, seed: int) -> Path:
        """The cold start's rows (`traces_per_problem` traces of `sft_per_level` problems per level) as JSONL."""
        from .data import write_jsonl
        from .tasks import parse_level
        from .train import task_rows

        c = self.cfg
        rows = []
        for level in c.mix:
            task, difficulty = parse_level(level)
            rows += task_rows([task], [difficulty], c.sft_per_level, seed, c.traces, c.traces_per_problem)
        self._check_lengths(rows)
        path = self.root / name
        write_jsonl(rows, path)
        return path

    def _check_lengths(self, rows: list[dict]) -> None:
        """A trace that does not fit the cold start's context would be cut before its answer: refuse it."""
        from .engine import tokenizer_from_dir
        from .tokenizer import format_chat

        tokenizer = tokenizer_from_dir(self.path("tokenizer"))
        longest = max(rows, key=lambda r: len(r["prompt"]) + len(r["solution"]))
        text = format_chat([{"role": "user", "content": longest["prompt"]}], add_generation_prompt=True)
        length = len(tokenizer.encode(text + longest["solution"], add_special_tokens=False).ids)
        if length > self.cfg.sft_seq_len:
            raise ValueError(f"a {longest['task']}:{longest['difficulty']} trace takes {length} tokens with its "
                             f"prompt, more than the cold start's context sft_seq_len={self.cfg.sft_seq_len}; "
                             "raise it or train on shorter traces")
        if length - len(tokenizer.encode(text).ids) > self.cfg.max_tokens:
            self.say(f"warning: the longest {longest['task']}:{longest['difficulty']} trace is longer than the "
                     f"completion budget max_tokens={self.cfg.max_tokens}; such answers will be cut (--max-tokens)")

    def stage_sft(self) -> None:
        c = self.cfg
        data = self.sft_data("sft-data.jsonl", c.seed)
        self._train(kind="sft", init=str(self.model("pretrain")), out=str(self.path("sft")), data=[str(data)],
                    seq_len=c.sft_seq_len, steps=c.sft_steps, batch_size=c.sft_batch, lr=c.sft_lr,
                    warmup_steps=max(1, c.sft_steps // 20))

    def _grpo(self, init: Path, out: Path, mode: str, steps: int, max_tokens: int) -> None:
        from .rl.grpo import GRPOConfig, train_grpo

        c = self.cfg
        train_grpo(GRPOConfig(init=str(init), out=str(out), mode=mode, mix=list(c.mix), curriculum=c.curriculum,
                              steps=steps, prompts_per_step=c.grpo_prompts, group_size=c.grpo_group, lr=c.grpo_lr,
                              beta=c.grpo_beta if mode == "r1" else 0.0, max_tokens=max_tokens, seed=c.seed))

    def stage_grpo(self) -> None:
        self._grpo(self.model("sft"), self.path("grpo"), "r1", self.cfg.grpo_steps, self.cfg.max_tokens)

    def stage_zero(self) -> None:
        """R1-Zero: the same RL from the pretrained base, with no cold start."""
        self._grpo(self.model("pretrain"), self.path("zero"), "r1-zero", self.cfg.zero_steps,
                   self.cfg.zero_max_tokens)

    def stage_control(self) -> None:
        """SFT continued from the cold start for as long as GRPO ran, on fresh problems: the same-compute control."""
        c = self.cfg
        sft_step_s = self.timings.get("sft", 1.0) / c.sft_steps
        steps = max(1, round(self.timings.get("grpo", sft_step_s * c.grpo_steps) / sft_step_s))
        self.say(f"control: {steps} more SFT steps, GRPO's {self.timings.get('grpo', 0):.0f}s at "
                 f"{sft_step_s:.2f}s a step")
        data = self.sft_data("control-data.jsonl", c.seed + 1)
        self._train(kind="sft", init=str(self.model("sft")), out=str(self.path("control")), data=[str(data)],
                    seq_len=c.sft_seq_len, steps=steps, batch_size=c.sft_batch, lr=c.sft_lr * 0.25,
                    warmup_steps=max(1, steps // 20))

    def stage_rs(self) -> None:
        from .rl.rejection import rejection_sample

        c = self.cfg
        data = self.root / "rs-traces.jsonl"
        _, stats = rejection_sample(self.model("grpo"), list(c.mix), c.rs_prompts, k=c.rs_k,
                                    max_tokens=c.max_tokens, seed=c.seed, out=data)
        self.say(f"rs: kept {stats['rows']} of {stats['samples']} samples ({stats['accept_rate']:.0%})")
        if stats["rows"] == 0:
            if not c.rs_fallback_to_reference:
                raise ValueError("rejection sampling kept no sample: the RL model solved nothing")
            from .data import write_jsonl
            from .tasks import mix_problems, solution

            rows = [{"prompt": p.prompt, "answer": p.answer, "solution": solution(p), "source": "reference-fallback"}
                    for p in mix_problems(list(c.mix), "train", c.rs_prompts, seed=c.seed)]
            write_jsonl(rows, data)
            stats["fallback_reference_rows"] = len(rows)
            self.say("rs: no verified sample; using reference traces (rs_fallback_to_reference, CI setting)")
        (self.root / "rs-stats.json").write_text(json.dumps(stats, indent=2) + "\n")
        data, rows = self.traces()
        # R1's stage-3 SFT starts from the RL policy; a learning rate three times GRPO's moves it towards the
        # verified traces within a few dozen steps without undoing what RL learnt (docs/rl-experiments.md)
        self._train(kind="sft", init=str(self.model("grpo")), out=str(self.path("rs")), data=[str(data)],
                    seq_len=c.sft_seq_len, steps=c.rs_sft_steps, batch_size=min(32, rows), lr=c.grpo_lr * 3,
                    warmup_steps=max(1, c.rs_sft_steps // 10), mtp_weight=0.1)

    def stage_distill(self) -> None:
        """A dense student (no routed experts, no MTP) folded from the RL teacher, then SFT on its verified traces."""
        import torch

        from .data import read_jsonl
        from .engine import tokenizer_from_dir
        from .rl.distill import dense_student
        from .train.data import sft_pairs

        c = self.cfg
        data, rows = self.traces()
        teacher = self.model("grpo")
        tokenizer = tokenizer_from_dir(teacher)
        texts = [prompt + completion for prompt, completion in sft_pairs(list(read_jsonl(data))[:256])]
        batches = [torch.tensor([e.ids]) for e in tokenizer.encode_batch(texts, add_special_tokens=False)]
        student_dir = self.root / "student-init"
        sizes = dense_student(teacher, batches, student_dir)
        self.say(f"distill: dense student of {sizes['student']:,} parameters (teacher {sizes['teacher']:,})")
        self._train(kind="sft", init=str(student_dir), out=str(self.path("distill")), data=[str(data)],
                    seq_len=c.sft_seq_len, steps=c.distill_steps, batch_size=min(64, rows), lr=c.distill_lr,
                    warmup_steps=max(1, c.distill_steps // 20), mtp_weight=0.0)

    def _evaluate(self, label: str, stage: str, benches: list, k: int, temperature: float = 0.6,
                  mode: str = "r1", max_tokens: int | None = None) -> dict:
        from .engine import EngineConfig
        from .eval.backends import ModelBackend, Sampling
        from .eval.harness import evaluate
        from .tasks import follows_format

        c = self.cfg
        sampling = Sampling(temperature=temperature, top_p=0.95, max_tokens=max_tokens or c.max_tokens, seed=c.seed)
        backend = ModelBackend(self.model(stage), EngineConfig(max_num_seqs=256), mode=mode)
        out = self.path("eval") / label
        if out.exists():
            shutil.rmtree(out)  # checkpoints may have been retrained; never reuse their old samples
        run = evaluate(backend, benches, k, sampling, out)
        rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
        results = {}
        for bench in benches:
            summary = dict(run["benchmarks"][bench.name])
            mine = [r for r in rows if r["bench"] == bench.name]
            summary["format_rate"] = sum(follows_format(r["completion"]) for r in mine) / max(len(mine), 1)
            results[bench.name] = summary
            self.say(f"eval {label} {bench.name}: " + ", ".join(f"{key}={v:.3f}" for key, v in summary.items()
                                                               if isinstance(v, float)))
        return results

    def stage_eval(self) -> dict:
        from .eval.benchmarks import Benchmark, task_benchmark
        from .tasks import parse_level

        c = self.cfg
        per_level = [task_benchmark(*parse_level(level), size=c.eval_size, seed=c.seed) for level in c.mix]
        harder = task_benchmark(*parse_level(c.harder), size=c.eval_size, seed=c.seed)
        # The other models: eval_size problems spread over the trained levels (the first of each level's set)
        share = -(-c.eval_size // len(c.mix))
        mixed = Benchmark("mix", "task", tuple(item for i in range(share) for b in per_level if i < len(b.items)
                                               for item in [b.items[i]]), per_level[0].grade)
        results: dict = {"levels": {}, "mix": {}}
        for label, stage in (("sft", "sft"), ("rl", "grpo")):
            results["levels"][label] = self._evaluate(label, stage, [*per_level, harder], c.eval_k)
        # report name, stage whose checkpoint it is, sampling temperature
        side = [("rs", "rs", 0.6), ("distill", "distill", 0.6), ("zero", "zero", 0.6),
                ("sft_same_compute", "control", 0.6), ("sft_low_temperature", "sft", c.control_temperature),
                ("rl_mix", "grpo", 0.6)]
        for label, stage, temperature in side:
            if self._done(stage):
                zero = stage == "zero"  # R1-Zero is prompted and budgeted as it was trained
                results["mix"][label] = self._evaluate(label, stage, [mixed], c.side_k, temperature,
                                                       "r1-zero" if zero else "r1",
                                                       c.zero_max_tokens if zero else c.max_tokens)["mix"]
        (self.path("eval") / "summary.json").write_text(json.dumps(results, indent=2) + "\n")
        return results

    def stage_report(self) -> dict:
        from .report import write_report

        return write_report(self.root, self.cfg, self.timings)


def stage_checkpoint(root: Path, stage: str) -> Path:
    """The checkpoint directory a stage of the run at `root` produced (GRPO keeps its policy in `final/`)."""
    from .train import resolve_checkpoint

    return resolve_checkpoint(root / stage / "final" if stage in ("grpo", "zero") else root / stage)


def copy_checkpoint(source: Path, target: Path, weights: bool = True) -> None:
    """Copy a checkpoint's files (config, weights, tokenizer; no optimiser state) to `target`, which appears whole.

    weights=False copies the tokenizer alone."""
    tmp = target.parent / f".{target.name}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    for file in source.iterdir():
        # training state lives in a training_state/ subdirectory, which is_file() leaves behind
        if file.is_file() and (file.name.startswith("tokenizer") or weights and file.suffix in (".json",
                                                                                                ".safetensors")):
            shutil.copy(file, tmp / file.name)
    if target.exists():
        shutil.rmtree(target)
    tmp.rename(target)


def ship(run_root: Path, ship_dir: Path) -> None:
    """Copy the run's checkpoints and report into `ship_dir`; the base too when this run pretrained it."""
    ship_dir.mkdir(parents=True, exist_ok=True)
    stages = [("sft", "tiny-r1-sft"), ("grpo", "tiny-r1"), ("distill", "tiny-r1-distill")]
    if (run_root / "pretrain" / "checkpoint").exists():  # trained here, not copied from a base
        stages.append(("pretrain", DEFAULT_BASE.name))
    for stage, name in stages:
        if (run_root / f".{stage}.done").exists():
            copy_checkpoint(stage_checkpoint(run_root, stage), ship_dir / name)
    if not (run_root / "report.json").exists():  # e.g. a run of the base's stages alone
        return
    shutil.copy(run_root / "report.json", ship_dir / "report.json")
    shutil.copy(run_root / "report.md", ship_dir / "report.md")
    for plot in json.loads((run_root / "report.json").read_text()).get("plots", []):  # report.md shows them
        shutil.copy(run_root / plot, ship_dir / plot)


# ---------------------------------------------------------------------- CLI


def add_run(sub) -> None:
    p = sub.add_parser("run", help="the whole R1 recipe on the tiny preset: pretrain, SFT, GRPO, distill, eval",
                       description=__doc__.split("\n\n")[0] + " Stages already done are skipped (delete "
                                   "runs/<name>/.<stage>.done to redo one).")
    p.add_argument("--name", default="tiny-r1", help="run name: outputs go to RUNS/NAME (default tiny-r1)")
    p.add_argument("--runs", default="runs", help="directory of runs (default runs/)")
    p.add_argument("--stages", nargs="+", choices=STAGES, help="run only these stages (default: all)")
    p.add_argument("--micro", action="store_true", help="seconds-long settings (for CI); figures mean nothing")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--base", metavar="DIR|none",
                   help=f"the pretrained base to start from (default the shipped {DEFAULT_BASE.name}); `none` "
                        "pretrains one in this run (about 26 minutes on 2 cores)")
    p.add_argument("--mix", nargs="+", metavar="LEVEL",
                   help="levels to train on, FAMILY:DIFFICULTY (default countdown:2 linear:2 linear:3; "
                        "`r1lab tasks list` says what each means)")
    p.add_argument("--harder", metavar="LEVEL", help="a level evaluated but never trained on (default countdown:3)")
    d = PipelineConfig  # the defaults the help states, read from the config so the two cannot drift apart
    p.add_argument("--traces", choices=TRACE_STYLES,
                   help="what the cold start imitates: guess-and-check traces (whole attempts compared with the "
                        "target; the reference where a family has none), the reference traces, search traces "
                        f"(tries, dead ends, a final check), or reference + search (default {d.traces})")
    p.add_argument("--sft-steps", type=_steps, help=f"cold-start SFT steps (default {d.sft_steps})")
    p.add_argument("--grpo-steps", type=_steps, help=f"GRPO steps (default {d.grpo_steps})")
    p.add_argument("--zero-steps", type=_steps,
                   help=f"R1-Zero GRPO steps from the base model (default {d.zero_steps})")
    p.add_argument("--max-tokens", type=_steps, help=f"completion budget of rollouts and eval (default "
                                                        f"{d.max_tokens}; search traces need about 320)")
    p.add_argument("--grpo-beta", type=_beta, metavar="BETA",
                   help=f"weight of the KL penalty to the SFT model in GRPO (default {d.grpo_beta:g}; 0 keeps no "
                        "reference model)")
    p.add_argument("--ship", nargs="?", const=str(DEFAULT_SHIP), metavar="DIR",
                   help=f"copy the checkpoints and report to DIR (default {DEFAULT_SHIP})")
    p.add_argument("--threads", type=int, help="torch CPU threads")


def _steps(text: str) -> int:
    import argparse

    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of steps >= 1, got {text!r}")
    return value


def _beta(text: str) -> float:
    import argparse
    import math

    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"expected a KL weight >= 0, got {text!r}")
    return value


def config_from_args(args) -> PipelineConfig:
    overrides = {"name": args.name, "runs": args.runs, "seed": args.seed}
    if args.stages:
        overrides["stages"] = args.stages
    for name in ("mix", "harder", "traces", "sft_steps", "grpo_steps", "zero_steps", "max_tokens", "grpo_beta"):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    if args.base is not None:
        overrides["base"] = None if args.base.lower() == "none" else args.base
    return PipelineConfig.micro(**overrides) if args.micro else PipelineConfig(**overrides)


def run(args) -> int:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    pipeline = Pipeline(config_from_args(args))
    report = pipeline.run()
    if report:
        print((pipeline.root / "report.md").read_text())
    if args.ship:
        ship(pipeline.root, Path(args.ship))
        pipeline.say(f"shipped checkpoints and report to {args.ship}")
    return 0


COMMANDS = {"run": (add_run, run)}
