"""Linear equations in one unknown, x, solved by the moves taught at school.

Levels grow by one move each: `x + b = c` (one subtraction), `ax + b = c` (then a division), `ax + b = cx + d`
(collect x on the left), `a(x + b) = cx + d` (expand the bracket first), and at the top the same with larger
coefficients and a fractional root, where the trace reduces the fraction. Roots at levels 1 to 4 are whole
numbers. The answer is the value of x, a whole number or a reduced fraction such as `-5/2`.
"""

from __future__ import annotations

import random
from fractions import Fraction

from .answers import format_solution, score_number
from .base import Family, Problem, TaskError

NAME = "linear"
LEVELS = {
    1: "x + b = c",
    2: "ax + b = c",
    3: "ax + b = cx + d",
    4: "a(x + b) = cx + d",
    5: "ax + b = cx + d with a fractional root",
}


def make(a: int, b: int, c: int, d: int, bracket: bool = False, difficulty: int = 0) -> Problem:
    """The equation `ax + b = cx + d`, or `a(x + b) = cx + d` when `bracket`; a != c.

    >>> make(3, 5, 7, -11).prompt
    'Solve for x: 3x + 5 = 7x - 11'
    >>> make(-2, -3, 0, 8, bracket=True).prompt
    'Solve for x: -2(x - 3) = 8'
    """
    if a == c or (bracket and a == 0):
        raise ValueError(f"no single root: a={a}, c={c}")
    left = f"{_coef(a)}({_side(1, b)})" if bracket else _side(a, b)
    root = Fraction(d - a * b, a - c) if bracket else Fraction(d - b, a - c)
    prompt = f"Solve for x: {left} = {_side(c, d)}"
    meta = {"a": a, "b": b, "c": c, "d": d, "bracket": bracket}
    return Problem(NAME, difficulty, prompt, _value(root), meta)


def sample(rng: random.Random, difficulty: int) -> Problem:
    nonzero = lambda top: rng.choice([n for n in range(-top, top + 1) if n])
    if difficulty == 1:
        x, b = rng.randint(-10, 20), nonzero(20)
        return make(1, b, 0, x + b, difficulty=difficulty)
    if difficulty == 2:
        x, a, b = rng.randint(-10, 10), rng.choice([n for n in range(-9, 10) if abs(n) > 1]), nonzero(20)
        return make(a, b, 0, a * x + b, difficulty=difficulty)
    if difficulty in (3, 4):
        x, a, b = rng.randint(-10, 10), nonzero(9), nonzero(9 if difficulty == 4 else 20)
        c = rng.choice([n for n in range(-9, 10) if n != a])
        if difficulty == 4:
            return make(a, b, c, a * (x + b) - c * x, bracket=True, difficulty=difficulty)
        return make(a, b, c, a * x + b - c * x, difficulty=difficulty)
    while True:
        a, c = nonzero(12), nonzero(12)
        b, d = nonzero(30), nonzero(30)
        if a != c and (d - b) % (a - c):
            return make(a, b, c, d, difficulty=difficulty)


def key(problem: Problem) -> str:
    return problem.prompt.split(": ", 1)[1]


def solution(problem: Problem) -> str:
    """The reference trace.

    >>> print(solution(make(3, 5, 7, -11)))
    <think>
    3x - 7x = -11 - 5
    -4x = -16
    x = -16 / -4
    x = 4
    </think>
    Answer: 4
    >>> print(solution(make(-2, -3, 0, 8, bracket=True)).split("</think>")[0])
    <think>
    -2x + 6 = 8
    -2x = 8 - 6
    -2x = 2
    x = 2 / -2
    x = -1
    <BLANKLINE>
    >>> print(solution(make(4, 7, -2, -8)).split("</think>")[0])
    <think>
    4x + 2x = -8 - 7
    6x = -15
    x = -15 / 6
    x = -5/2
    <BLANKLINE>
    """
    m = problem.metadata
    a, b, c, d = m["a"], m["b"], m["c"], m["d"]
    steps = []
    if m["bracket"]:
        b = a * b
        steps.append(f"{_side(a, b)} = {_side(c, d)}")
    if b or c:  # move x terms left and numbers right
        x_terms = f"{_coef(a)}x" + (f" {_signed(-c, 'x')}" if c else "")
        numbers = f"{d} {_signed(-b)}" if d and b else str(d - b)
        steps.append(f"{x_terms} = {numbers}")
    k, rhs = a - c, d - b
    if c or (b and d):  # two terms on a side: add them up
        steps.append(f"{_side(k, 0)} = {rhs}")
    if k != 1:
        steps.append(f"x = {rhs} / {k}")
        steps.append(f"x = {_value(Fraction(rhs, k))}")
    return format_solution(steps, problem.answer)


def score(problem: Problem, completion: str) -> float:
    """1.0 when the final answer is the root, in any exact form.

    >>> p = make(4, 7, -2, -8)
    >>> [score(p, c) for c in ("Answer: x = -5/2", "-2.5", "</think>\\n\\\\boxed{-\\\\frac{5}{2}}", "x=-10/4")]
    [1.0, 1.0, 1.0, 1.0]
    >>> [score(p, c) for c in ("Answer: 5/2", "-2", "x = -15 / 6 = -5/2 or so", "<think>\\nx = -5/2")]
    [0.0, 0.0, 0.0, 0.0]
    """
    return score_number(problem.answer, completion)


def _coef(a: int) -> str:
    """Coefficient of x as written: 1 and -1 are implied."""
    return {1: "", -1: "-"}.get(a, str(a))


def _signed(n: int, unknown: str = "") -> str:
    """A term after the first: `+ 5`, `- 5`, `- x`, `+ 7x`."""
    size = str(abs(n)) if not unknown or abs(n) != 1 else ""
    return f"{'+' if n >= 0 else '-'} {size}{unknown}"


def _side(coef: int, const: int) -> str:
    """One side of an equation: `3x - 5`, `-x`, `7`."""
    if coef == 0:
        return str(const)
    return f"{_coef(coef)}x" + (f" {_signed(const)}" if const else "")


def _value(x: Fraction) -> str:
    return str(x.numerator) if x.denominator == 1 else f"{x.numerator}/{x.denominator}"


# ---------------------------------------------------------------------- search traces
# A search trace guesses and checks instead of rearranging: put a value in for x, work out both sides, and
# compare. The gap between the sides changes by the same amount for every step of x (the equation is linear),
# so two guesses tell how far to go; a searcher either walks there a step at a time (when it is close) or jumps,
# and the last guess is the check. Whole-number roots only (levels 1 to 4): a fractional root has no guess that
# lands on it.


def _sides(m: dict, x: int) -> tuple[str, int, str, int]:
    """Both sides at x, written out: ('3*4+5', 17, '7*4-11', 17)."""
    a, b, c, d = m["a"], m["b"], m["c"], m["d"]
    if m["bracket"]:
        left_text, left = f"{a}*({_paren(x)}{b:+d})", a * (x + b)
    else:
        left_text, left = f"{a}*{_paren(x)}{b:+d}", a * x + b
    right_text, right = (f"{c}*{_paren(x)}{d:+d}", c * x + d) if c else ("", d)
    return left_text, left, right_text, right


def _paren(x: int) -> str:
    return f"({x})" if x < 0 else str(x)


def search_solution(problem: Problem, rng: random.Random) -> str:
    """One guess-and-check trace for a linear equation with a whole-number root, drawn with `rng`.

    >>> p = make(3, 5, 7, -11)
    >>> print(search_solution(p, random.Random(1)))
    <think>
    x=-3: 3*(-3)+5=-4, 7*(-3)-11=-32, gap 28
    x=-2: 3*(-2)+5=-1, 7*(-2)-11=-25, gap 24
    gap -4 per step, 24/4=6 more steps: x=4
    x=4: 3*4+5=17, 7*4-11=17, gap 0 yes
    </think>
    Answer: 4
    >>> all(score(p, search_solution(p, random.Random(s))) == 1.0 for s in range(50))
    True
    """
    m = problem.metadata
    root = Fraction(problem.answer)
    if root.denominator != 1:
        raise TaskError(f"{problem.prompt!r}: a fractional root has no search trace")
    root = int(root)
    lines: list[str] = []

    def guess(x: int) -> int:
        left_text, left, right_text, right = _sides(m, x)
        gap = left - right
        right_side = f"{right_text}={right}" if right_text else str(right)
        lines.append(f"x={x}: {left_text}={left}, {right_side}, gap {gap}" + (" yes" if gap == 0 else ""))
        return gap

    x = rng.choice([0, 1, rng.randint(-5, 5)])
    if x == root:
        x += rng.choice([-1, 1])
    first = guess(x)
    second = guess(x + 1)
    slope = second - first  # the gap's change per step of x
    x += 1
    if abs(root - x) <= rng.choice([1, 2]):  # close: walk
        while x != root:
            x += 1 if root > x else -1
            guess(x)
    else:  # far: jump
        steps = -second // slope
        lines.append(f"gap {slope:+d} per step, {abs(second)}/{abs(slope)}={abs(steps)} "
                     f"{'more steps' if steps > 0 else 'steps back'}: x={x + steps}")
        guess(x + steps)
    return format_solution(lines, problem.answer)


FAMILY = Family(NAME, "solve a linear equation for x", LEVELS, sample, key, solution, score,
                search=search_solution, search_levels=(1, 2, 3, 4))


def generate(seed: int, difficulty: int, split: str = "train") -> Problem:
    """A seeded problem; see `Family.generate`."""
    return FAMILY.generate(seed, difficulty, split)
