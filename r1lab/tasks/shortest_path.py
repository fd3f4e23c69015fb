"""Shortest path: the length of the cheapest route between two nodes of a small weighted, undirected graph.

The logic family. Graphs are random connected graphs on 4 to 8 nodes named A, B, C, ... with whole-number edge
weights; the question asks for the distance from A to another node. Above level 1 the shortest path has at least
two edges (three from level 4), so a direct edge, when there is one, is a trap rather than the answer.

The trace is Dijkstra's algorithm written as the order in which nodes are settled, one line per node
(`D = 3 + 2 = 5 via C`: D is settled at distance 5, reached from C at 3 over an edge of 2), stopping when the
target is settled. It is short, and every line can be checked against the edge list, which is what makes it
learnable by a small model. Ties are broken by node name, so the trace is unique. The answer is the distance.
"""

from __future__ import annotations

import heapq
import random
import re

from .answers import format_solution, score_number
from .base import Family, Problem

NAME = "shortest_path"
# difficulty -> (nodes, extra edges beyond a spanning tree, largest weight, fewest edges on the shortest path)
_SETTINGS = {1: (4, 1, 9, 1), 2: (5, 2, 9, 2), 3: (6, 3, 9, 2), 4: (7, 4, 12, 3), 5: (8, 6, 15, 3)}
LEVELS = {d: f"{n} nodes, {n - 1 + extra} edges, weights 1-{w}, answer path of {hops}+ edges"
          for d, (n, extra, w, hops) in _SETTINGS.items()}
_EDGE = re.compile(r"([A-Z])-([A-Z]) (\d+)")


def make(edges: list[tuple[str, str, int]], target: str, difficulty: int = 0) -> Problem:
    """The question `distance from A to target` over `edges` (u, v, weight).

    >>> make([("A", "B", 4), ("A", "C", 1), ("B", "C", 2), ("B", "D", 5), ("C", "D", 8)], "D").prompt
    'Edges: A-B 4, A-C 1, B-C 2, B-D 5, C-D 8. Shortest distance from A to D?'
    """
    edges = sorted((min(u, v), max(u, v), w) for u, v, w in edges)
    listing = ", ".join(f"{u}-{v} {w}" for u, v, w in edges)
    prompt = f"Edges: {listing}. Shortest distance from A to {target}?"
    settled = _dijkstra(edges, target)
    if target not in settled:
        raise ValueError(f"{target} cannot be reached from A")
    return Problem(NAME, difficulty, prompt, str(settled[target][0]), {"edges": [list(e) for e in edges],
                                                                       "target": target})


def sample(rng: random.Random, difficulty: int) -> Problem:
    n, extra, top, min_hops = _SETTINGS[difficulty]
    names = [chr(ord("A") + i) for i in range(n)]
    while True:
        order = names[:1] + rng.sample(names[1:], n - 1)  # the spanning tree grows from A in a random order
        pairs = {tuple(sorted((node, rng.choice(order[:i])))) for i, node in enumerate(order) if i}
        others = [(u, v) for i, u in enumerate(names) for v in names[i + 1:] if (u, v) not in pairs]
        pairs |= set(rng.sample(others, min(extra, len(others))))
        edges = [(u, v, rng.randint(1, top)) for u, v in sorted(pairs)]
        target = rng.choice(names[1:])
        if _hops(_dijkstra(edges, target), target) >= min_hops:
            return make(edges, target, difficulty)


def key(problem: Problem) -> str:
    return problem.prompt


def solution(problem: Problem) -> str:
    """The reference trace: nodes in the order Dijkstra settles them, up to the target.

    >>> print(solution(make([("A", "B", 4), ("A", "C", 1), ("B", "C", 2), ("B", "D", 5), ("C", "D", 8)], "D")))
    <think>
    A = 0
    C = 0 + 1 = 1 via A
    B = 1 + 2 = 3 via C
    D = 3 + 5 = 8 via B
    </think>
    Answer: 8
    """
    m = problem.metadata
    settled = _dijkstra([tuple(e) for e in m["edges"]], m["target"])
    steps = []
    for node, (dist, via, weight) in settled.items():
        steps.append(f"{node} = 0" if via is None else f"{node} = {dist - weight} + {weight} = {dist} via {via}")
    return format_solution(steps, problem.answer)


def score(problem: Problem, completion: str) -> float:
    """1.0 when the final answer is the shortest distance.

    >>> p = make([("A", "B", 4), ("A", "C", 1), ("B", "C", 2), ("B", "D", 5), ("C", "D", 8)], "D")
    >>> [score(p, c) for c in ("Answer: 8", " 8 ", "</think>\\nThe shortest distance is \\\\boxed{8}.", "D = 8")]
    [1.0, 1.0, 1.0, 1.0]
    >>> [score(p, c) for c in ("Answer: 9", "Answer: A-C-B-D", "<think>\\nA = 0\\nC = 0 + 1 = 1 via A", "8 via B")]
    [0.0, 0.0, 0.0, 0.0]
    """
    return score_number(problem.answer, completion)


def edges_of(prompt: str) -> list[tuple[str, str, int]]:
    """The edge list a prompt states (what a checker of traces reads).

    >>> edges_of("Edges: A-B 4, A-C 1. Shortest distance from A to B?")
    [('A', 'B', 4), ('A', 'C', 1)]
    """
    return [(u, v, int(w)) for u, v, w in _EDGE.findall(prompt)]


def _dijkstra(edges: list[tuple[str, str, int]], target: str) -> dict[str, tuple[int, str | None, int]]:
    """Settled nodes in settling order, up to the target: node -> (distance, predecessor, last edge weight)."""
    neighbours: dict[str, list[tuple[str, int]]] = {}
    for u, v, w in edges:
        neighbours.setdefault(u, []).append((v, w))
        neighbours.setdefault(v, []).append((u, w))
    settled: dict[str, tuple[int, str | None, int]] = {}
    frontier = [(0, "A", None, 0)]  # (distance, node, predecessor, weight); ties go to the earlier name
    while frontier:
        dist, node, via, weight = heapq.heappop(frontier)
        if node in settled:
            continue
        settled[node] = (dist, via, weight)
        if node == target:
            break
        for other, w in neighbours.get(node, []):
            if other not in settled:
                heapq.heappush(frontier, (dist + w, other, node, w))
    return settled


def _hops(settled: dict[str, tuple[int, str | None, int]], node: str) -> int:
    hops = 0
    while settled[node][1] is not None:
        node, hops = settled[node][1], hops + 1
    return hops


FAMILY = Family(NAME, "length of the shortest path in a small weighted graph", LEVELS, sample, key, solution,
                score)


def generate(seed: int, difficulty: int, split: str = "train") -> Problem:
    """A seeded problem; see `Family.generate`."""
    return FAMILY.generate(seed, difficulty, split)
