"""`DIR/metrics.jsonl`: one JSON object per optimiser step, appended as the run goes.

Each line holds at least `step`, `loss` (next-token cross-entropy), `lr` and `tokens_per_s`, plus the MTP and
balance losses, the optimised objective, the gradient norm, and per MoE layer the tokens each routed expert
received (`expert_load`) and the max-violation `load_imbalance` = max_i load_i / mean load - 1 (0 is perfect
balance; the Loss-Free Balancing paper's MaxVio). `r1lab plot` draws them.

Lines are flushed, not fsynced: losing the last few lines to a crash costs nothing, since a resume rewinds the file
to the checkpoint's step anyway (`MetricsLog(..., resume_step=...)`), which also drops lines a crashed run wrote
past its last checkpoint. A line cut short by a kill is skipped when reading.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

FILE = "metrics.jsonl"


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a metrics file (or of `DIR/metrics.jsonl`); a torn or malformed line is skipped."""
    path = Path(path)
    if path.is_dir():
        path = path / FILE
    if not path.is_file():
        raise FileNotFoundError(f"no metrics file at {path}")
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict) and "step" in row:
                rows.append(row)
    return rows


class MetricsLog:
    """Appends rows to `run_dir/metrics.jsonl`. A fresh run starts the file empty; a resumed one keeps the
    history up to `resume_step` (copied from `history`, the resumed run's file, when that is elsewhere)."""

    def __init__(self, run_dir: str | Path, resume_step: int | None = None, history: str | Path | None = None):
        self.path = Path(run_dir) / FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        rows: list[dict[str, Any]] = []
        if resume_step is not None:
            source = Path(history) / FILE if history is not None else self.path
            if source.is_file():
                rows = [r for r in read_metrics(source) if r["step"] <= resume_step]
        self._rewrite(rows)
        self._file = open(self.path, "a", encoding="utf-8")

    def _rewrite(self, rows: list[dict[str, Any]]) -> None:
        tmp = self.path.with_name(f".{FILE}.tmp-{os.getpid()}")
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def write(self, row: dict[str, Any]) -> None:
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()
