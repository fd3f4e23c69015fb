"""pass@k against brute-force enumeration, majority voting, summaries and the scoreboard."""

import itertools
import random

import pytest

from r1lab.eval.metrics import answer_key, majority, pass_at_k, summarize
from r1lab.eval.reports import markdown, scoreboard


def brute_force_pass_at_k(outcomes: list[bool], k: int) -> float:
    """The definition: the share of all k-subsets of the samples that hold at least one correct sample."""
    subsets = list(itertools.combinations(outcomes, k))
    return sum(any(s) for s in subsets) / len(subsets)


def test_pass_at_k_is_the_subset_average():
    rng = random.Random(0)
    for _ in range(200):
        n = rng.randint(1, 9)
        outcomes = [rng.random() < 0.3 for _ in range(n)]
        for k in range(1, n + 1):
            assert pass_at_k(n, sum(outcomes), k) == pytest.approx(brute_force_pass_at_k(outcomes, k))


def test_pass_at_k_extremes_and_errors():
    assert pass_at_k(200, 0, 10) == 0.0 and pass_at_k(200, 200, 10) == 1.0
    assert pass_at_k(200, 1, 1) == pytest.approx(0.005)
    with pytest.raises(ValueError):
        pass_at_k(4, 5, 1)
    with pytest.raises(ValueError):
        pass_at_k(4, 1, 5)


def test_majority_votes_by_value_and_ignores_missing_answers():
    assert majority(["12", "12.0", "24/2", "13", "13"]) == 0  # three votes for 12 against two for 13
    assert majority([None, "x = 3", None, "3"]) == 1
    assert majority([None]) is None
    assert answer_key("  a   +  b ") == "a + b"


def test_summary_of_r1_style_sampling():
    correct = [[True, True, False, False], [False] * 4, [True] * 4]
    answers = [["5", "5", "6", "6"], ["1", "2", "2", None], ["9"] * 4]
    out = summarize(correct, answers)
    assert out["n"] == 3 and out["k"] == 4
    assert out["pass@1"] == pytest.approx((0.5 + 0 + 1) / 3)
    assert out["pass@4"] == pytest.approx(2 / 3)
    assert out["cons@4"] == pytest.approx(2 / 3)  # the tie 5/6 goes to the answer seen first, 5, which is right


def test_summary_with_uneven_sample_counts_reports_only_what_every_problem_supports():
    out = summarize([[True] * 3 + [False] * 9, [False] * 12], ks=(1, 10, 100))
    assert set(out) == {"n", "k", "pass@1", "pass@10"}
    assert out["pass@1"] == pytest.approx(3 / 24)
    assert out["pass@10"] == pytest.approx(0.5)  # 9 wrong samples cannot fill a draw of 10: the first always passes
    with pytest.raises(ValueError):
        summarize([[True], []])


def test_scoreboard_marks_every_best_and_reads_each_runs_own_k():
    a = {"label": "m", "benchmarks": {"x": {"k": 4, "pass@1": 0.5, "pass@4": 0.9}}}
    b = {"label": "m", "benchmarks": {"x": {"k": 8, "pass@1": 0.5, "pass@8": 0.7}, "y": {"k": 8, "pass@1": 0.1}}}
    table, data = scoreboard([a, b], "pass@1")
    assert table.splitlines()[0] == "| pass@1 | m | m#2 |"
    assert "| x | 50.0* | 50.0* |" in table and "| y | - | 10.0* |" in table
    _, data = scoreboard([a, b], "pass@k")
    assert data["x"] == {"m": 0.9, "m#2": 0.7}


def test_markdown_report_has_one_row_per_benchmark():
    results = {"label": "tiny", "identity": {"backend": "model", "model": "/m"}, "samples": 2,
               "sampling": {"temperature": 0.6, "top_p": 0.95, "max_tokens": 16, "seed": 0},
               "benchmarks": {"countdown": {"n": 3, "k": 2, "pass@1": 1 / 3, "pass@2": 0.5, "cons@2": 0.25,
                                            "truncated": 1.0, "mean_tokens": 16.0},
                              "humaneval": {"n": 2, "k": 2, "pass@1": 0.0, "pass@2": 0.0, "truncated": 0.0}}}
    text = markdown(results)
    assert "| benchmark | n | pass@1 | pass@2 | cons@2 | truncated % | mean tokens |" in text
    assert "| countdown | 3 | 33.3 | 50.0 | 25.0 | 100.0 | 16 |" in text
    assert "| humaneval | 2 | 0.0 | 0.0 | - | 0.0 | - |" in text
