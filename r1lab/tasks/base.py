"""What every task family shares: the `Problem` record, the `Family` interface and the train/held-out split.

The split is a property of the problem, not of the seed. Each family names a canonical key for a problem (the
numbers and target of a Countdown puzzle, sorted; the equation of a linear problem); the key's SHA-256 puts
the problem in `heldout` (one bucket in ten) or in `train`. `Family.generate` draws candidates from a seeded
RNG and keeps the first whose key lands in the requested split. So no seed, difficulty or generator change can
put one problem in both splits, and a held-out score measures problems the model never trained on. Keys leave
out the difficulty, so a held-out problem stays out of training at every level.

Everything is deterministic: the RNG is seeded from the family name, the difficulty and the seed as a string,
which Python hashes with SHA-512 rather than the per-process salted `hash`.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

SPLITS = ("train", "heldout")
HELDOUT_BUCKETS = 10  # one bucket of this many is held out: 10% of every family's problem space
_MAX_DRAWS = 10_000  # per problem; a split holding no problem at all would otherwise loop forever


class TaskError(ValueError):
    """A task name, difficulty, split or count that does not exist; the message lists what does."""


@dataclass(frozen=True)
class Problem:
    """One verifiable problem. `answer` is the reference final answer as the trace prints it after `Answer:`."""

    task: str
    difficulty: int
    prompt: str
    answer: str
    metadata: dict[str, Any] = field(default_factory=dict, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, row: dict[str, Any]) -> Problem:
        """Rebuild a problem from a `data make` row (extra keys such as `solution` and `split` are ignored)."""
        return cls(task=row["task"], difficulty=int(row["difficulty"]), prompt=row["prompt"], answer=row["answer"],
                   metadata=dict(row.get("metadata") or {}))


def split_of(task: str, key: str) -> str:
    """The split a problem belongs to, from its family and canonical key alone.

    >>> split_of("arithmetic", "2 + 2"), split_of("arithmetic", "2 + 3")
    ('heldout', 'train')
    >>> sorted({split_of("arithmetic", f"{a} + 1") for a in range(100)})
    ['heldout', 'train']
    """
    digest = hashlib.sha256(f"{task}\0{key}".encode()).digest()
    return "heldout" if int.from_bytes(digest[:8], "big") % HELDOUT_BUCKETS == 0 else "train"


@dataclass(frozen=True)
class Family:
    """A task family: how to draw a problem, name it canonically, solve it step by step and check an answer.

    `sample(rng, difficulty)` draws one problem from the whole space (both splits); `key(problem)` is the
    canonical text that decides its split; `solution(problem)` is the reference trace; `score(problem,
    completion)` is the verifier, 1.0 for a verified final answer and 0.0 otherwise. `search(problem, rng)`,
    where a family has one, draws one of many search traces (tries, dead ends, a final check) for the levels in
    `search_levels`. `guess(problem, rng)`, where a family has one, draws a shorter guess-and-check trace (whole
    attempts, each compared with the goal) at every level.
    """

    name: str
    summary: str
    levels: dict[int, str]
    sample: Callable[[random.Random, int], Problem]
    key: Callable[[Problem], str]
    solution: Callable[[Problem], str]
    score: Callable[[Problem, str], float]
    search: Callable[[Problem, random.Random], str] | None = None
    search_levels: tuple[int, ...] = ()
    guess: Callable[[Problem, random.Random], str] | None = None

    def check(self, difficulty: int, split: str = "train") -> None:
        if difficulty not in self.levels:
            valid = ", ".join(str(d) for d in self.levels)
            raise TaskError(f"unknown difficulty {difficulty!r} for task {self.name!r}; choose one of: {valid}")
        if split not in SPLITS:
            raise TaskError(f"unknown split {split!r}; choose one of: {', '.join(SPLITS)}")

    def stream(self, seed: int, difficulty: int, split: str = "train") -> Iterator[Problem]:
        """An endless, seeded stream of problems of one split (repeats possible where the space is small)."""
        self.check(difficulty, split)
        rng = random.Random(f"{self.name}/{difficulty}/{seed}")
        while True:
            for _ in range(_MAX_DRAWS):
                problem = self.sample(rng, difficulty)
                if split_of(self.name, self.key(problem)) == split:
                    break
            else:
                raise RuntimeError(f"{self.name} difficulty {difficulty}: no {split} problem in {_MAX_DRAWS} draws")
            yield problem

    def generate(self, seed: int, difficulty: int, split: str = "train") -> Problem:
        """The problem for this seed: the first one of `split` drawn from the seed's RNG."""
        return next(self.stream(seed, difficulty, split))


def estimate_space(family: Family, difficulty: int, draws: int = 20_000, seed: int = 0) -> int:
    """How many distinct problems a level's generator can produce: a capture-recapture estimate.

    Two independent samples of `draws` problems; with m keys in both, the Lincoln-Petersen estimate is
    n1 * n2 / m over the distinct keys of each. The generator does not draw problems uniformly, so for large
    spaces this is a lower bound: the rare problems it under-counts still exist. When the samples overlap
    completely (a small space), it is the number of distinct keys seen.

    >>> from r1lab.tasks import get_family
    >>> estimate_space(get_family("countdown"), 1, draws=5000)  # two numbers up to 10: a few hundred problems
    139
    """
    family.check(difficulty)
    samples = []
    for half in range(2):
        rng = random.Random(f"space/{family.name}/{difficulty}/{seed}/{half}")
        samples.append({family.key(family.sample(rng, difficulty)) for _ in range(draws)})
    first, second = samples
    both = len(first & second)
    union = len(first | second)
    if both == 0:
        return union * draws  # the samples never met: the space is far larger than anything drawn here
    return max(union, round(len(first) * len(second) / both))
