"""`r1lab plot DIR`: PNGs of a run's metrics.jsonl.

    loss.png            next-token loss, MTP loss and the optimised objective per step
    lr.png              the learning-rate schedule as applied
    expert_load.png     per MoE layer, a heatmap of each routed expert's share of the tokens over the steps,
                        as a multiple of the uniform share (1.0 = perfectly balanced, colour-centred there)
    load_imbalance.png  per MoE layer, max load / mean load - 1 over the steps: falling towards 0 is the
                        aux-loss-free bias update doing its job
    throughput.png      training tokens per second

matplotlib is imported here only (with the file-only Agg backend), so training never needs it.
"""

from __future__ import annotations

from pathlib import Path

from .metrics import read_metrics


def _pyplot():
    try:
        import matplotlib
    except ModuleNotFoundError:
        raise ModuleNotFoundError("r1lab plot needs matplotlib: pip install matplotlib") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _series(rows: list[dict], key: str) -> tuple[list[int], list[float]]:
    points = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
    return [s for s, _ in points], [v for _, v in points]


def _line_plot(plt, path: Path, rows: list[dict], keys: list[tuple[str, str]], ylabel: str, title: str,
               log: bool = False) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4))
    for key, label in keys:
        steps, values = _series(rows, key)
        if steps:
            ax.plot(steps, values, label=label, linewidth=1.2)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if log:
        ax.set_yscale("log")
    if len(keys) > 1:
        ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _expert_heatmaps(plt, path: Path, rows: list[dict]) -> Path | None:
    import numpy as np

    rows = [r for r in rows if r.get("expert_load")]
    if not rows:
        return None
    layers = list(rows[-1]["expert_load"])
    fig, axes = plt.subplots(len(layers), 1, figsize=(9, 1.2 + 1.6 * len(layers)), squeeze=False)
    steps = [r["step"] for r in rows]
    image = None
    for ax, layer in zip(axes[:, 0], layers, strict=True):
        load = np.array([r["expert_load"].get(layer, []) for r in rows], dtype=float).T  # [experts, steps]
        share = load / np.maximum(load.mean(axis=0, keepdims=True), 1e-9)
        image = ax.imshow(share, aspect="auto", cmap="coolwarm", vmin=0.0, vmax=2.0, interpolation="nearest",
                          extent=(steps[0] - 0.5, steps[-1] + 0.5, load.shape[0] - 0.5, -0.5))
        name = f"MTP layer {layer[3:]}" if layer.startswith("mtp") else f"layer {layer}"
        ax.set_ylabel(f"{name}\nexpert")
    axes[-1, 0].set_xlabel("step")
    axes[0, 0].set_title("tokens per routed expert / mean (1 = balanced)")
    fig.colorbar(image, ax=axes[:, 0].tolist(), shrink=0.9, label="load / mean load")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_run(run_dir: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    """Write the PNGs for the run in `run_dir` into `out_dir` (default `run_dir/plots`); returns their paths."""
    rows = read_metrics(run_dir)
    if not rows:
        raise ValueError(f"{Path(run_dir)} has an empty metrics.jsonl: nothing to plot")
    rows.sort(key=lambda r: r["step"])
    plt = _pyplot()
    out = Path(out_dir) if out_dir is not None else Path(run_dir) / "plots"
    out.mkdir(parents=True, exist_ok=True)
    paths = [
        _line_plot(plt, out / "loss.png", rows, [("loss", "next-token CE"), ("mtp_loss", "MTP CE"),
                                                 ("objective", "objective")], "loss (nats/token)", "training loss"),
        _line_plot(plt, out / "lr.png", rows, [("lr", "learning rate")], "learning rate", "learning-rate schedule"),
        _line_plot(plt, out / "throughput.png", rows, [("tokens_per_s", "tokens/s")], "tokens / s", "throughput"),
    ]
    heatmap = _expert_heatmaps(plt, out / "expert_load.png", rows)
    if heatmap is not None:
        paths.append(heatmap)
        imbalance = [dict(step=r["step"], **{f"layer {k}": v for k, v in r["load_imbalance"].items()})
                     for r in rows if r.get("load_imbalance")]
        keys = [(k, k) for k in imbalance[-1] if k != "step"]
        paths.append(_line_plot(plt, out / "load_imbalance.png", imbalance, keys, "max load / mean load - 1",
                                "expert load imbalance (MaxVio)"))
    return paths
