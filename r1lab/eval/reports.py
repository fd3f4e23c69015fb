"""Reports: results.json, a Markdown table, a PNG bar chart, and the scoreboard that compares runs.

Scores are stored as fractions and printed as percentages with one decimal, the way papers print them. The
scoreboard puts benchmarks in rows and runs (models) in columns and marks the best score of each row with `*`
(every tied best); a run that lacks a benchmark shows `-`. matplotlib draws the chart when it is installed; a
missing matplotlib costs the chart, not the run.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

from ..data import atomic_write


def metric_names(summary: dict) -> list[str]:
    """The pass@j and cons@j keys of one benchmark summary, in the order they are printed.

    >>> metric_names({"n": 3, "k": 4, "cons@4": 0.1, "pass@4": 0.5, "pass@1": 0.2, "truncated": 0.0})
    ['pass@1', 'pass@4', 'cons@4']
    """
    passes = sorted((key for key in summary if key.startswith("pass@")), key=lambda key: int(key[5:]))
    return passes + sorted(key for key in summary if key.startswith("cons@"))


def percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def markdown(results: dict) -> str:
    """The run's table: one row per benchmark."""
    benches = results["benchmarks"]
    columns = []
    for summary in benches.values():
        for key in metric_names(summary):
            if key not in columns:
                columns.append(key)
    s = results["sampling"]
    if results["identity"]["backend"] == "completions":
        how = f"at least {results['samples']} given completions per problem"
    else:
        how = (f"k = {results['samples']} samples per problem at temperature {s['temperature']}, top-p {s['top_p']}, "
               f"at most {s['max_tokens']} tokens, seed {s['seed']}")
    lines = [f"# Evaluation of {results['label']}", "", f"{_source(results['identity'])}; {how}.", ""]
    if results.get("sandbox"):
        lines += [f"Code ran in a sandbox: {results['sandbox']}.", ""]
    header = ["benchmark", "n", *columns, "truncated %", "mean tokens"]
    lines += ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for name, summary in benches.items():
        tokens = summary.get("mean_tokens")
        cells = [name, str(summary["n"]), *(percent(summary.get(c)) for c in columns),
                 percent(summary.get("truncated")), "-" if tokens is None else f"{tokens:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _source(identity: dict) -> str:
    kind = identity["backend"]
    if kind == "model":
        return f"Model {identity['model']} on the r1lab engine"
    if kind == "endpoint":
        return f"Model {identity['model']} behind {identity['url']}"
    return f"Completions from {identity['file']}"


def write(results: dict, out: Path) -> list[Path]:
    """results.json, report.md and (with matplotlib) chart.png in `out`; returns the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    with atomic_write(out / "results.json") as f:
        f.write(json.dumps(results, indent=2) + "\n")
    written.append(out / "results.json")
    with atomic_write(out / "report.md") as f:
        f.write(markdown(results))
    written.append(out / "report.md")
    chart = bar_chart(results, out / "chart.png")
    if chart:
        written.append(chart)
    return written


def bar_chart(results: dict, path: Path) -> Path | None:
    """Grouped bars, one group per benchmark, one bar per metric; None when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    benches = results["benchmarks"]
    if not benches:
        return None
    series: dict[str, list[float]] = {}
    names = list(benches)
    for name in names:
        for key in metric_names(benches[name]):
            series.setdefault(key, [0.0] * len(names))
    for i, name in enumerate(names):
        for key in series:
            value = benches[name].get(key)
            series[key][i] = math.nan if value is None else 100 * value  # a missing metric draws no bar
    fig, ax = plt.subplots(figsize=(max(4.0, 1.6 * len(names) + 2), 3.6), dpi=120)
    width = 0.8 / max(1, len(series))
    for j, (key, values) in enumerate(series.items()):
        xs = [i + (j - (len(series) - 1) / 2) * width for i in range(len(names))]
        bars = ax.bar(xs, values, width, label=key)
        ax.bar_label(bars, labels=["" if math.isnan(v) else f"{v:.0f}" for v in values], fontsize=7)
    ax.set_xticks(range(len(names)), names, rotation=20 if len(names) > 4 else 0)
    ax.set_ylim(0, 105)
    ax.set_ylabel("% correct")
    ax.set_title(f"{results['label']}  (k = {results['samples']})")
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)
    return path


def load_run(path: str | Path) -> dict:
    """A run's results, from its output directory or its results.json."""
    path = Path(path)
    file = path / "results.json" if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"no results.json at {path}: pass a directory written by `r1lab eval`")
    return json.loads(file.read_text(encoding="utf-8"))


def resolve_metric(summary: dict, metric: str) -> float | None:
    """`pass@k` and `cons@k` mean the run's own k; `pass@1`, `pass@8`, ... are taken literally.

    >>> resolve_metric({"k": 4, "pass@1": 0.25, "pass@4": 0.5}, "pass@k"), resolve_metric({"k": 1}, "cons@k")
    (0.5, None)
    """
    if metric.endswith("@k"):
        metric = f"{metric[:-2]}@{summary['k']}"
    return summary.get(metric)


def scoreboard(runs: Sequence[dict], metric: str = "pass@1") -> tuple[str, dict]:
    """A Markdown table with benchmarks in rows and runs in columns, best per row marked `*`; also as a dict.

    >>> a = {"label": "a", "benchmarks": {"countdown": {"k": 1, "pass@1": 0.5}, "linear": {"k": 1, "pass@1": 0.2}}}
    >>> b = {"label": "b", "benchmarks": {"countdown": {"k": 1, "pass@1": 0.7}}}
    >>> print(scoreboard([a, b])[0])
    | pass@1 | a | b |
    |---|---:|---:|
    | countdown | 50.0 | 70.0* |
    | linear | 20.0* | - |
    """
    labels = _unique([run["label"] for run in runs])
    rows: list[str] = []
    for run in runs:
        for name in run["benchmarks"]:
            if name not in rows:
                rows.append(name)
    table = {name: {label: (resolve_metric(run["benchmarks"][name], metric) if name in run["benchmarks"] else None)
                    for label, run in zip(labels, runs, strict=True)} for name in rows}
    lines = ["| " + " | ".join([metric, *labels]) + " |", "|---|" + "---:|" * len(labels)]
    for name, cells in table.items():
        present = [v for v in cells.values() if v is not None]
        best = max(present) if present else None
        shown = [percent(v) + ("*" if v is not None and v == best else "") for v in cells.values()]
        lines.append("| " + " | ".join([name, *shown]) + " |")
    return "\n".join(lines), table


def _unique(labels: list[str]) -> list[str]:
    """Labels made distinct with #2, #3 ... where two runs share a name."""
    seen: dict[str, int] = {}
    out = []
    for label in labels:
        seen[label] = seen.get(label, 0) + 1
        out.append(label if seen[label] == 1 else f"{label}#{seen[label]}")
    return out
