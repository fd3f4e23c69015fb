"""The pipeline's report: figures in JSON and Markdown, and the plots that show what happened.

report.json holds {"sft": {"pass@1", "pass@8", ...}, "rl": {...}, "distill": {...}, "format_rate", "bench", ...}
where `bench` names the held-out benchmark (an `r1lab eval --bench` name) the figures were measured on.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path


def _rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _plots(root: Path, summary: dict, k: int) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # plots are a convenience; the figures stand without them
        return []
    made = []
    grpo = _rows(root / "grpo" / "metrics.jsonl")
    if grpo:
        steps = [r["step"] for r in grpo]
        fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
        axes[0].plot(steps, [r["reward"] for r in grpo], label="reward")
        axes[0].plot(steps, [r["accuracy"] for r in grpo], label="accuracy")
        axes[0].plot(steps, [r["format_rate"] for r in grpo], label="format rate")
        axes[0].set_title("GRPO rollouts")
        axes[0].legend()
        axes[1].plot(steps, [r["completion_len"] for r in grpo])
        axes[1].set_title("mean completion length (tokens)")
        axes[2].plot(steps, [r["frac_zero_std"] for r in grpo], label="groups with equal rewards")
        axes[2].plot(steps, [r["entropy"] for r in grpo], label="entropy")
        axes[2].plot(steps, [r["clip_fraction"] for r in grpo], label="clip fraction")
        axes[2].legend()
        axes[2].set_title("signal and stability")
        for ax in axes:
            ax.set_xlabel("step")
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
    if summary:
        labels = list(summary)
        fig, ax = plt.subplots(figsize=(7, 3.6))
        width = 0.38
        xs = range(len(labels))
        ax.bar([x - width / 2 for x in xs], [summary[m]["pass@1"] for m in labels], width, label="pass@1")
        ax.bar([x + width / 2 for x in xs], [summary[m].get(f"pass@{k}", 0) for m in labels], width,
               label=f"pass@{k}")
        ax.set_xticks(list(xs), labels)
        ax.set_ylim(0, 1)
        ax.set_title("held-out accuracy")
        ax.legend()
        fig.tight_layout()
        fig.savefig(root / "accuracy.png", dpi=110)
        plt.close(fig)
        made.append("accuracy.png")
    return made


def write_report(root: Path, cfg, timings: dict) -> dict:
    summary = json.loads((root / "eval" / "summary.json").read_text())
    bench = f"{cfg.task}:{cfg.difficulty}"
    k = cfg.eval_k
    keep = ("pass@1", f"pass@{k}", f"cons@{k}", "n", "format_rate")
    report = {name: {k: v for k, v in figures.items() if k in keep} for name, figures in summary.items()}
    report["format_rate"] = summary.get("rl", {}).get("format_rate")
    report["bench"] = bench
    sft, rl = summary.get("sft", {}), summary.get("rl", {})
    if sft and rl:
        report["rl_gain_pass@1"] = round(rl["pass@1"] - sft["pass@1"], 4)
        report[f"rl_pass@1_minus_sft_pass@{k}"] = round(rl["pass@1"] - sft.get(f"pass@{k}", 0), 4)
    if summary.get("distill") and rl:
        report["distill_over_teacher_pass@1"] = round(summary["distill"]["pass@1"] / max(rl["pass@1"], 1e-9), 4)
    stats_file = root / "rs-stats.json"
    if stats_file.exists():
        report["rejection_sampling"] = json.loads(stats_file.read_text())
    report["seconds"] = timings
    report["config"] = asdict(cfg)
    report["plots"] = _plots(root, {name: v for name, v in summary.items() if "pass@1" in v}, k)
    (root / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [f"# r1lab run `{cfg.name}`", "",
             f"Held-out benchmark `{bench}` ({summary.get('rl', {}).get('n', '?')} problems), {cfg.eval_k} samples "
             "each at temperature 0.6, top-p 0.95.", "",
             f"Settings: pretrain {cfg.pretrain_steps} steps, cold-start SFT {cfg.sft_steps} steps, GRPO "
             f"{cfg.grpo_steps} steps (KL weight {cfg.grpo_beta:g}), seed {cfg.seed}.", "",
             f"| model | pass@1 | pass@{k} | cons@{k} | format |", "|---|---|---|---|---|"]
    for name in ("sft", "rl", "rs", "distill"):
        f = summary.get(name)
        if f:
            lines.append(f"| {name} | {f['pass@1']:.3f} | {f.get(f'pass@{k}', float('nan')):.3f} | "
                         f"{f.get(f'cons@{k}', float('nan')):.3f} | {f.get('format_rate', float('nan')):.3f} |")
    lines.append("")
    if "rl_gain_pass@1" in report:
        lines.append(f"GRPO changed held-out pass@1 by {100 * report['rl_gain_pass@1']:+.1f} points over the SFT "
                     "checkpoint.")
    if "distill_over_teacher_pass@1" in report:
        lines.append(f"The dense student keeps {100 * report['distill_over_teacher_pass@1']:.0f}% of the RL "
                     "teacher's pass@1.")
    lines += ["", "Stage times (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()), ""]
    lines += [f"![{p}]({p})" for p in report["plots"]]
    (root / "report.md").write_text("\n".join(lines) + "\n")
    return report
