"""Verifiable reasoning tasks: what the R1 recipe trains on and how its answers are checked.

R1's reasoning RL uses rule-based rewards only: a problem whose answer a program can check exactly, no reward
model. Each family here is one module with a generator, a step-by-step reference trace (the cold-start and
pretraining material) and a verifier; the last two are pure functions of the problem:

    arithmetic     add, subtract or multiply multi-digit numbers
    countdown      reach a target with the given numbers, each used once (answers are expressions)
    linear         solve a linear equation for x
    shortest_path  the length of the shortest path in a small weighted graph (the logic family)

Difficulty is a whole number from 1 (one-step, one-digit) to 5. Problems belong to the `train` or the `heldout`
split by a hash of their content (see `base`), so the two are disjoint by construction. Every trace is
`<think>\\n...steps...\\n</think>\\nAnswer: X` (see `answers` for how answers are read back).

We write our own generators rather than use reasoning-gym: a 2M-parameter model needs traces far shorter and more
regular than a library's, and traces must come from the same code as the problems.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

from . import arithmetic, countdown, linear, shortest_path
from .answers import ANSWER_PREFIX, END_THINK, THINK, final_answer, follows_format, parse_number
from .base import SPLITS, Family, Problem, TaskError, split_of

FAMILIES: dict[str, Family] = {m.FAMILY.name: m.FAMILY for m in (arithmetic, countdown, linear, shortest_path)}


def get_family(task: str) -> Family:
    """The family named `task`, or a TaskError listing the names there are."""
    if task not in FAMILIES:
        raise TaskError(f"unknown task {task!r}; choose one of: {', '.join(FAMILIES)}")
    return FAMILIES[task]


def generate(task: str, seed: int, difficulty: int, split: str = "train") -> Problem:
    """One seeded problem of a family.

    >>> p = generate("arithmetic", seed=0, difficulty=2)
    >>> p == generate("arithmetic", seed=0, difficulty=2), score(p, solution(p))
    (True, 1.0)
    """
    return get_family(task).generate(seed, difficulty, split)


def solution(problem: Problem) -> str:
    """The reference trace of a problem: `<think>` steps `</think>` then `Answer: X`."""
    return get_family(problem.task).solution(problem)


def score(problem: Problem, completion: str) -> float:
    """The family's verifier: 1.0 for a verified final answer, else 0.0."""
    return get_family(problem.task).score(problem, completion)


def problems(task: str, difficulty: int, split: str, n: int, seed: int = 0, unique: bool = True
             ) -> Iterator[Problem]:
    """`n` problems of one split, deterministic by seed; distinct (by canonical key) unless `unique=False`.

    Small spaces (one-digit sums, two-number Countdown) hold only tens of held-out problems: asking for more
    distinct ones than exist raises TaskError instead of looping.
    """
    family = get_family(task)
    family.check(difficulty, split)
    if n < 0:
        raise TaskError(f"n must be 0 or more, got {n}")
    stream = family.stream(seed, difficulty, split)
    if not unique:
        return itertools.islice(stream, n)
    return _distinct(family, stream, n, f"{split} problems of {task} difficulty {difficulty}")


def _distinct(family: Family, stream: Iterator[Problem], n: int, what: str) -> Iterator[Problem]:
    seen: set[str] = set()
    draws, budget = 0, 20 * n + 1000
    while len(seen) < n:
        if draws == budget:
            raise TaskError(f"only {len(seen)} distinct {what} turned up in {draws:,} draws; the space is small: "
                            "ask for fewer or allow duplicates")
        draws += 1
        problem = next(stream)
        if family.key(problem) not in seen:
            seen.add(family.key(problem))
            yield problem


def to_row(problem: Problem, split: str) -> dict:
    """The JSON object `r1lab data make` writes for a problem."""
    return {"task": problem.task, "difficulty": problem.difficulty, "split": split, "prompt": problem.prompt,
            "answer": problem.answer, "solution": solution(problem), "metadata": problem.metadata}


__all__ = [
    "ANSWER_PREFIX", "END_THINK", "FAMILIES", "SPLITS", "THINK", "Family", "Problem", "TaskError", "final_answer",
    "follows_format", "generate", "get_family", "parse_number", "problems", "score", "solution", "split_of",
    "to_row",
]
