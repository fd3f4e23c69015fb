"""The pipeline's report: figures in JSON and Markdown, and the plots that show what happened.

report.json (a contract tools read):
* `sft`, `rl`: held-out figures on the training mix, the mean over its levels of `pass@1`, `pass@k`, `cons@k`
  and `format_rate` (k = eval_k samples of eval_size problems per level); `bench` names the mix.
* `eval`: per level (each trained one and the harder untrained one) `{"sft": {...}, "rl": {...}}` with `n`,
  `pass@1`, `pass@k`.
* `rs`, `distill`, `zero`: figures on `mix` (eval_size problems spread over the trained levels, side_k samples),
  beside `rl_mix`, the RL policy on the same problems and samples, which `distill_over_teacher_pass@1` divides by.
* `controls`: `sft_same_compute` (SFT continued for GRPO's wall time) and `sft_low_temperature`, with `pass@1`
  on `mix`, and `rl_minus_control_pass@1`.
* `space`: per level, `{"train_problems_seen": int, "pretrain_problems_seen": int | null, "space_estimate":
  int}` (seen: distinct problems of the SFT, control, rejection-sampling and GRPO data; pretrain: those the base
  read, from its `pretrain_corpus.json`; estimate: `tasks.estimate_space`).
* `grpo_curve`, `zero_curve`: per GRPO step `step`, `reward`, `accuracy`, `response_length`, `self_check_rate`,
  `frac_zero_std`; `sft_entropy` (nats per token of the cold start's T = 1 rollouts, GRPO's first step);
  `rl_gain_pass@1`, `seconds`, `config`, `plots`.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

CURVE_KEYS = ("step", "reward", "accuracy", "response_length", "self_check_rate", "frac_zero_std", "entropy")


def _rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _curve(path: Path) -> list[dict]:
    return [{k: row[k] for k in CURVE_KEYS if k in row} for row in _rows(path)]


def _mean_over(levels: dict[str, dict], names: list[str], keys: tuple[str, ...]) -> dict:
    present = [levels[n] for n in names if n in levels]
    if not present:
        return {}
    out = {k: sum(f[k] for f in present) / len(present) for k in keys if all(k in f for f in present)}
    out["n"] = sum(f["n"] for f in present)
    return out


def problems_seen(root: Path, cfg) -> dict[str, set[str]]:
    """Distinct training problems per level over every stage that trains on them."""
    from .tasks import Problem, get_family, level_of, mix_problems

    seen: dict[str, set[str]] = {level: set() for level in cfg.mix}

    def add(problem: Problem) -> None:
        if level_of(problem) in seen:
            seen[level_of(problem)].add(get_family(problem.task).key(problem))

    for name in ("sft-data.jsonl", "control-data.jsonl"):
        for row in _rows(root / name):
            add(Problem.from_dict(row))
    if (root / "rs-stats.json").exists():
        for problem in mix_problems(list(cfg.mix), "train", cfg.rs_prompts, seed=10_000 + cfg.seed):
            add(problem)
    for stage in ("grpo", "zero"):
        path = root / stage / "problems_seen.json"
        if path.exists():
            for level, keys in json.loads(path.read_text()).items():
                seen.setdefault(level, set()).update(keys)
    return seen


def _plots(root: Path, report: dict) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # plots are a convenience; the figures stand without them
        return []
    made = []
    curves = [(name, report.get(key)) for name, key in (("R1 (from SFT)", "grpo_curve"),
                                                         ("R1-Zero (from base)", "zero_curve"))]
    curves = [(name, c) for name, c in curves if c]
    if curves:
        fig, axes = plt.subplots(1, 4, figsize=(16, 3.6))
        for name, curve in curves:
            steps = [r["step"] for r in curve]
            axes[0].plot(steps, [r["accuracy"] for r in curve], label=name)
            axes[1].plot(steps, [r["response_length"] for r in curve], label=name)
            axes[2].plot(steps, [r["self_check_rate"] for r in curve], label=name)
            axes[3].plot(steps, [r["frac_zero_std"] for r in curve], label=name)
        titles = ("rollout accuracy", "mean response length (tokens)", "completions that check or back up",
                  "groups with equal rewards")
        for ax, title in zip(axes, titles, strict=True):
            ax.set_title(title)
            ax.set_xlabel("GRPO step")
            ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(root / "grpo.png", dpi=110)
        plt.close(fig)
        made.append("grpo.png")
    pre = _rows(root / "pretrain" / "metrics.jsonl")
    loads = [r["expert_load"] for r in pre if r.get("expert_load")]
    if loads:
        layers = sorted(loads[0])
        fig, axes = plt.subplots(1, len(layers), figsize=(3.2 * len(layers), 3.2), squeeze=False)
        for ax, layer in zip(axes[0], layers, strict=True):
            matrix = [[v / max(sum(r[layer]), 1) for v in r[layer]] for r in loads]
            ax.imshow(list(map(list, zip(*matrix, strict=True))), aspect="auto", cmap="viridis")
            ax.set_title(f"layer {layer} expert load")
            ax.set_xlabel("step")
            ax.set_ylabel("expert")
        fig.tight_layout()
        fig.savefig(root / "expert_load.png", dpi=110)
        plt.close(fig)
        made.append("expert_load.png")
    if report.get("eval"):
        benches = list(report["eval"])
        k = report["config"]["eval_k"]
        fig, ax = plt.subplots(figsize=(8, 3.6))
        width = 0.2
        for j, (model, key) in enumerate((("sft", "pass@1"), ("rl", "pass@1"), ("sft", f"pass@{k}"),
                                          ("rl", f"pass@{k}"))):
            ax.bar([x + (j - 1.5) * width for x in range(len(benches))],
                   [report["eval"][b].get(model, {}).get(key, 0) for b in benches], width, label=f"{model} {key}")
        ax.set_xticks(range(len(benches)), [b + (" (untrained)" if b == report["harder"] else "") for b in benches])
        ax.set_ylim(0, 1)
        ax.set_title("held-out accuracy per level")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(root / "accuracy.png", dpi=110)
        plt.close(fig)
        made.append("accuracy.png")
    return made


def write_report(root: Path, cfg, timings: dict) -> dict:
    from .pipeline import CORPUS_FILE, stage_checkpoint
    from .tasks import estimate_space, get_family, parse_level

    summary = json.loads((root / "eval" / "summary.json").read_text())
    k = cfg.eval_k
    keep = ("n", "pass@1", f"pass@{k}", f"cons@{k}", "format_rate", "mean_tokens", "truncated")
    levels = summary.get("levels", {})
    report: dict = {"bench": "mix of " + ", ".join(cfg.mix), "harder": cfg.harder}
    for model in ("sft", "rl"):
        report[model] = _mean_over(levels.get(model, {}), list(cfg.mix), keep[1:])
    report["eval"] = {bench: {model: {key: v for key, v in levels[model][bench].items() if key in keep}
                              for model in ("sft", "rl") if bench in levels.get(model, {})}
                      for bench in [*cfg.mix, cfg.harder]}
    mixed = summary.get("mix", {})
    for model in ("rs", "distill", "zero", "rl_mix"):
        if model in mixed:
            report[model] = {key: v for key, v in mixed[model].items() if key in keep or key.startswith("pass@")}
    report["format_rate"] = report["rl"].get("format_rate")
    sft, rl = report["sft"], report["rl"]
    if sft and rl:
        report["rl_gain_pass@1"] = round(rl["pass@1"] - sft["pass@1"], 4)
        report[f"rl_pass@1_minus_sft_pass@{k}"] = round(rl["pass@1"] - sft.get(f"pass@{k}", 0), 4)
    teacher = report.get("rl_mix", {}).get("pass@1")
    if "distill" in report and teacher:
        report["distill_over_teacher_pass@1"] = round(report["distill"]["pass@1"] / teacher, 4)
    report["controls"] = {name: {key: v for key, v in mixed[name].items() if key in keep}
                          for name in ("sft_same_compute", "sft_low_temperature") if name in mixed}
    if teacher is not None and report["controls"]:
        report["rl_minus_control_pass@1"] = {name: round(teacher - c["pass@1"], 4)
                                             for name, c in report["controls"].items()}
    seen = problems_seen(root, cfg)
    base_corpus = stage_checkpoint(root, "pretrain") / CORPUS_FILE if (root / "pretrain").is_dir() else None
    pretrained = json.loads(base_corpus.read_text()) if base_corpus and base_corpus.exists() else {}
    report["space"] = {}
    for level in cfg.mix:
        task, difficulty = parse_level(level)
        report["space"][level] = {"train_problems_seen": len(seen.get(level, ())),
                                  "pretrain_problems_seen": pretrained.get(level),
                                  "space_estimate": estimate_space(get_family(task), difficulty)}
    report["grpo_curve"] = _curve(root / "grpo" / "metrics.jsonl")
    report["zero_curve"] = _curve(root / "zero" / "metrics.jsonl")
    # GRPO's first step scores the cold start's own T = 1 rollouts, before any update: its entropy per token
    report["sft_entropy"] = report["grpo_curve"][0].get("entropy") if report["grpo_curve"] else None
    stats_file = root / "rs-stats.json"
    if stats_file.exists():
        report["rejection_sampling"] = json.loads(stats_file.read_text())
    report["seconds"] = timings
    report["config"] = asdict(cfg)
    report["plots"] = _plots(root, report)
    (root / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (root / "report.md").write_text(markdown(root, cfg, report, timings))
    return report


def _fmt(figures: dict, key: str) -> str:
    value = figures.get(key)
    return f"{value:.3f}" if isinstance(value, float) else "-"


def _samples(path: Path, count: int = 2) -> list[dict]:
    rows = _rows(path)
    if not rows:
        return []
    return rows[:count] + rows[-count:] if len(rows) > 2 * count else rows


def markdown(root: Path, cfg, report: dict, timings: dict) -> str:
    k = cfg.eval_k
    lines = [f"# r1lab run `{cfg.name}`", "",
             f"Trained on {', '.join(f'`{m}`' for m in cfg.mix)}; `{cfg.harder}` is evaluated but never trained "
             f"on. Held-out problems, {cfg.eval_size} per level x {k} samples at temperature 0.6, top-p 0.95, up "
             f"to {cfg.max_tokens} new tokens.", "",
             "Settings: " + (f"the base `{Path(cfg.base).name}` (pretrained once, outside this run)" if cfg.base
                             else f"pretrain {cfg.pretrain_steps} steps")
             + f"; cold start {cfg.sft_steps} SFT steps on "
             f"{cfg.traces} traces" + (f" (up to {cfg.traces_per_problem} per problem where a family has them)"
                                      if cfg.traces != "reference" else "") + f"; GRPO {cfg.grpo_steps} steps of "
             f"{cfg.grpo_prompts} prompts x {cfg.grpo_group} (KL weight {cfg.grpo_beta:g}, curriculum "
             f"{'on' if cfg.curriculum else 'off'}); R1-Zero {cfg.zero_steps} steps; seed {cfg.seed}.", "",
             "## Held-out accuracy per level", "",
             f"| level | SFT pass@1 | RL pass@1 | gain | SFT pass@{k} | RL pass@{k} |", "|---|---|---|---|---|---|"]
    for bench, models in report["eval"].items():
        sft, rl = models.get("sft", {}), models.get("rl", {})
        gain = f"{100 * (rl['pass@1'] - sft['pass@1']):+.1f}" if sft and rl else "-"
        name = f"{bench} (untrained)" if bench == cfg.harder else bench
        lines.append(f"| {name} | {_fmt(sft, 'pass@1')} | {_fmt(rl, 'pass@1')} | {gain} | {_fmt(sft, f'pass@{k}')} "
                     f"| {_fmt(rl, f'pass@{k}')} |")
    sft, rl = report["sft"], report["rl"]
    if "rl_gain_pass@1" in report:
        lines += [f"| **trained mix (mean)** | {_fmt(sft, 'pass@1')} | {_fmt(rl, 'pass@1')} | "
                  f"**{100 * report['rl_gain_pass@1']:+.1f}** | {_fmt(sft, f'pass@{k}')} | {_fmt(rl, f'pass@{k}')} |"]
    lines += ["", f"## Every model on the trained mix ({cfg.eval_size} problems over the levels x {cfg.side_k} "
                  "samples)", "", "| model | pass@1 | format | mean tokens |", "|---|---|---|---|"]
    names = {"rl_mix": "RL (GRPO)", "rs": "RL + rejection-sampling SFT", "distill": "dense student (distilled)",
             "zero": "R1-Zero (GRPO from the base, no SFT)",
             "sft_same_compute": "control: SFT continued for GRPO's wall time",
             "sft_low_temperature": f"control: SFT at temperature {cfg.control_temperature:g}"}
    side = {**{m: report[m] for m in ("rl_mix", "rs", "distill", "zero") if m in report}, **report["controls"]}
    for model, figures in side.items():
        tokens = figures.get("mean_tokens")
        lines.append(f"| {names[model]} | {_fmt(figures, 'pass@1')} | {_fmt(figures, 'format_rate')} | "
                     f"{'-' if tokens is None else f'{tokens:.0f}'} |")
    lines.append("")
    if "distill_over_teacher_pass@1" in report:
        lines.append(f"The dense student keeps {100 * report['distill_over_teacher_pass@1']:.0f}% of the RL "
                     "teacher's pass@1.")
    for name, delta in report.get("rl_minus_control_pass@1", {}).items():
        lines.append(f"RL minus {names[name].removeprefix('control: ')}: {100 * delta:+.1f} points.")
    if report.get("sft_entropy") is not None:
        lines.append(f"The cold start's entropy on its own T = 1 rollouts: {report['sft_entropy']:.3f} nats per token.")
    lines += ["", "## The curves", ""]
    for label, key in (("R1 (GRPO from the cold start)", "grpo_curve"), ("R1-Zero (GRPO from the base)", "zero_curve")):
        curve = report.get(key)
        if not curve:
            continue
        head, tail = curve[: max(1, len(curve) // 5)], curve[-max(1, len(curve) // 5):]
        mean = lambda rows, key: sum(r[key] for r in rows) / len(rows)
        lines.append(f"{label}, first vs last fifth of {len(curve)} steps: accuracy {mean(head, 'accuracy'):.3f} -> "
                     f"{mean(tail, 'accuracy'):.3f}, response length {mean(head, 'response_length'):.0f} -> "
                     f"{mean(tail, 'response_length'):.0f} tokens, self-check rate {mean(head, 'self_check_rate'):.2f}"
                     f" -> {mean(tail, 'self_check_rate'):.2f}, groups with equal rewards "
                     f"{mean(head, 'frac_zero_std'):.2f} -> {mean(tail, 'frac_zero_std'):.2f}.")
        lines.append("")
    lines += ["## The task space", "", "| level | distinct training problems seen | space (estimate) | ratio | "
              "read by the base in pretraining |", "|---|---|---|---|---|"]
    for level, s in report["space"].items():
        ratio = s["space_estimate"] / max(s["train_problems_seen"], 1)
        base = f"{s['pretrain_problems_seen']:,}" if s.get("pretrain_problems_seen") is not None else "-"
        lines.append(f"| {level} | {s['train_problems_seen']:,} | {s['space_estimate']:,} | {ratio:.0f}x | {base} |")
    lines.append("")
    for label, stage in (("R1", "grpo"), ("R1-Zero", "zero")):
        samples = _samples(root / stage / "samples.jsonl")
        if samples:
            lines += [f"## {label}: sampled completions, early and late", ""]
            for row in samples:
                lines += [f"Step {row['step']} ({'right' if row['accuracy'] else 'wrong'}): {row['prompt']}", "",
                          "```", row["completion"].strip(), "```", ""]
    lines += ["Stage times (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()), ""]
    lines += [f"![{p}]({p})" for p in report["plots"]]
    return "\n".join(lines) + "\n"
