"""Verifiable reasoning tasks: what the R1 recipe trains on and how its answers are checked.

R1's reasoning RL uses rule-based rewards only: a problem whose answer a program can check exactly, no reward
model. Each family here is one module with a generator, a step-by-step reference trace (the cold-start and
pretraining material) and a verifier; the last two are pure functions of the problem:

    arithmetic     add, subtract or multiply multi-digit numbers
    countdown      reach a target with the given numbers, each used once (answers are expressions)
    linear         solve a linear equation for x
    shortest_path  the length of the shortest path in a small weighted graph (the logic family)

Three kinds of trace. The *reference* trace writes down one solution's steps in order (`solution`). A *search*
trace (`search_solution`, Countdown and linear) explores as a person does: tries, dead ends, backing up and a
final check, and a problem has many of them (`traces`). A *guess* trace (Countdown's `guess_solution`) is the
short form of search a few-million-parameter model can carry out: whole attempts, each computed and compared
with the target, until one hits, whose moves are the answer. Imitating the first asks a model to know the
answer before its first step; the others give it a procedure, and RL something to choose between.

Difficulty is a whole number from 1 (one-step, one-digit) to 5. Problems belong to the `train` or the `heldout`
split by a hash of their content (see `base`), so the two are disjoint by construction. Every trace is
`<think>\\n...steps...\\n</think>\\nAnswer: X` (see `answers` for how answers are read back).

We write our own generators rather than use reasoning-gym: a 2M-parameter model needs traces far shorter and more
regular than a library's, and traces must come from the same code as the problems.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator

from . import arithmetic, countdown, linear, shortest_path
from .answers import ANSWER_PREFIX, END_THINK, THINK, final_answer, follows_format, parse_number
from .base import SPLITS, Family, Problem, TaskError, estimate_space, split_of

FAMILIES: dict[str, Family] = {m.FAMILY.name: m.FAMILY for m in (arithmetic, countdown, linear, shortest_path)}


def get_family(task: str) -> Family:
    """The family named `task`, or a TaskError listing the names there are."""
    if task not in FAMILIES:
        raise TaskError(f"unknown task {task!r}; choose one of: {', '.join(FAMILIES)}")
    return FAMILIES[task]


def parse_level(name: str) -> tuple[str, int]:
    """A level named `family:difficulty`, checked; a TaskError naming the families or levels that exist.

    >>> parse_level("countdown:3")
    ('countdown', 3)
    >>> parse_level("countdown:9")
    Traceback (most recent call last):
    ...
    r1lab.tasks.base.TaskError: unknown difficulty 9 for task 'countdown'; choose one of: 1, 2, 3, 4, 5
    """
    task, sep, level = str(name).partition(":")
    family = get_family(task)
    if not sep or not level.strip().lstrip("-").isdigit():
        raise TaskError(f"expected FAMILY:DIFFICULTY such as {task}:2, got {name!r}; {task} has difficulties "
                        + ", ".join(map(str, family.levels)))
    family.check(int(level))
    return task, int(level)


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


def level_of(problem: Problem) -> str:
    """The level a problem belongs to, named as `parse_level` reads it.

    >>> level_of(generate("linear", seed=0, difficulty=3))
    'linear:3'
    """
    return f"{problem.task}:{problem.difficulty}"


TRACE_STYLES = ("reference", "search", "guess", "both")


def search_solution(problem: Problem, rng: random.Random) -> str:
    """One search trace of a problem, drawn with `rng`; a TaskError where its family or level has none."""
    if not has_search(problem.task, problem.difficulty):
        have = [f"{f.name} {', '.join(map(str, f.search_levels))}" for f in FAMILIES.values() if f.search]
        raise TaskError(f"{problem.task} difficulty {problem.difficulty} has no search traces; these do: "
                        + "; ".join(have))
    return get_family(problem.task).search(problem, rng)


def has_search(task: str, difficulty: int) -> bool:
    family = get_family(task)
    return family.search is not None and difficulty in family.search_levels


def traces(problem: Problem, style: str = "reference", n: int = 1, seed: int = 0) -> list[str]:
    """The traces to learn a problem from, deterministic by seed.

    reference: the reference trace. search: up to `n` distinct search traces (small problems have fewer).
    guess: up to `n` distinct guess-and-check traces (Countdown's whole attempts compared with the target), the
    reference where a family has no guess style (from a pretrained base, linear's reference traces beat its search
    ones: docs/rl-experiments.md, session 9).
    both: the reference trace and up to `n` search traces, or the reference alone where there is no search.

    >>> p = generate("countdown", seed=3, difficulty=2)
    >>> [len(traces(p, s, n=4)) for s in TRACE_STYLES], all(score(p, t) == 1.0 for t in traces(p, "both", n=4))
    ([1, 4, 4, 5], True)
    """
    if style not in TRACE_STYLES:
        raise TaskError(f"unknown trace style {style!r}; choose one of: {', '.join(TRACE_STYLES)}")
    draw = None
    if style == "guess":
        draw = get_family(problem.task).guess
        if draw is None:
            return [solution(problem)]
    elif style == "search" or (style == "both" and has_search(problem.task, problem.difficulty)):
        draw = search_solution
    out = [solution(problem)] if style in ("reference", "both") else []
    if draw is not None:
        key = get_family(problem.task).key(problem)
        found: list[str] = []
        for attempt in range(4 * n):  # distinct draws; a problem with few solutions and dead ends has few
            trace = draw(problem, random.Random(f"{problem.task}/{key}/{seed}/{attempt}"))
            if trace not in found:
                found.append(trace)
            if len(found) == n:
                break
        out += found
    return out


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


def mix_problems(levels: list[str], split: str, n: int, seed: int = 0) -> list[Problem]:
    """`n` distinct problems of a split spread evenly over the levels (`countdown:2`, ...), interleaved so that
    any prefix keeps the balance; deterministic by seed.

    >>> [p.difficulty for p in mix_problems(["countdown:2", "countdown:3"], "heldout", 4)]
    [2, 3, 2, 3]
    """
    columns = []
    for i, level in enumerate(levels):
        task, difficulty = parse_level(level)
        count = n // len(levels) + (i < n % len(levels))
        columns.append(list(problems(task, difficulty, split, count, seed=seed)))
    return [column[i] for i in range(max(map(len, columns), default=0)) for column in columns if i < len(column)]


def to_row(problem: Problem, split: str, trace: str | None = None) -> dict:
    """The JSON object `r1lab data make` writes for a problem (`trace`: its solution, default the reference)."""
    return {"task": problem.task, "difficulty": problem.difficulty, "split": split, "prompt": problem.prompt,
            "answer": problem.answer, "solution": solution(problem) if trace is None else trace,
            "metadata": problem.metadata}


__all__ = [
    "ANSWER_PREFIX", "END_THINK", "FAMILIES", "SPLITS", "THINK", "TRACE_STYLES", "Family", "Problem", "TaskError",
    "estimate_space", "final_answer", "follows_format", "generate", "get_family", "has_search", "level_of",
    "mix_problems", "parse_level",
    "parse_number", "problems", "score", "search_solution", "solution", "split_of", "to_row", "traces",
]
