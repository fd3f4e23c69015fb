"""Multi-digit arithmetic: add, subtract or multiply two non-negative integers.

The traces follow the schoolbook methods, one small step per line, because a 2M-parameter model learns a
procedure it can see far more easily than a result it must compute in one token: addition and subtraction go
column by column from the right with explicit carries and borrows; multiplication splits the multiplier by
place value and each part by the digits of the multiplicand. Difficulty sets the number of digits. The hardest
traces (3 x 3 digits) stay under about 200 tokens with the project's one-digit-per-token tokenizer.
"""

from __future__ import annotations

import random

from .answers import format_solution, score_number
from .base import Family, Problem

NAME = "arithmetic"
OPS = ("+", "-", "*")
# difficulty -> (digits of each operand for + and -, digits of the two factors for *)
_DIGITS = {1: (1, (1, 1)), 2: (2, (2, 1)), 3: (3, (2, 2)), 4: (4, (3, 2)), 5: (6, (3, 3))}
LEVELS = {
    1: "one-digit operands",
    2: "two-digit + and -, 2 x 1 digit *",
    3: "three-digit + and -, 2 x 2 digit *",
    4: "four-digit + and -, 3 x 2 digit *",
    5: "six-digit + and -, 3 x 3 digit *",
}


def make(a: int, op: str, b: int, difficulty: int = 0) -> Problem:
    """The problem `a op b`.

    >>> make(347, "*", 26).prompt
    'What is 347 * 26?'
    """
    if op not in OPS or a < 0 or b < 0:
        raise ValueError(f"arithmetic needs non-negative operands and one of {OPS}, got {a} {op} {b}")
    value = {"+": a + b, "-": a - b, "*": a * b}[op]
    return Problem(NAME, difficulty, f"What is {a} {op} {b}?", str(value), {"a": a, "op": op, "b": b})


def sample(rng: random.Random, difficulty: int) -> Problem:
    op = rng.choice(OPS)
    add_digits, (mul_a, mul_b) = _DIGITS[difficulty]
    da, db = (mul_a, mul_b) if op == "*" else (add_digits, add_digits)
    return make(_number(rng, da), op, _number(rng, db), difficulty)


def key(problem: Problem) -> str:
    m = problem.metadata
    return f"{m['a']} {m['op']} {m['b']}"


def solution(problem: Problem) -> str:
    """The reference trace.

    >>> print(solution(make(58, "+", 67)))
    <think>
    8 + 7 = 15, write 5 carry 1
    5 + 6 + 1 = 12, write 2 carry 1
    write 1
    so 58 + 67 = 125
    </think>
    Answer: 125
    >>> print(solution(make(52, "-", 317)).split("</think>")[0])
    <think>
    52 - 317 = -(317 - 52)
    7 - 2 = 5
    1 - 5 < 0, borrow 1, 11 - 5 = 6
    3 - 0 - 1 = 2
    so 52 - 317 = -265
    <BLANKLINE>
    >>> print(solution(make(347, "*", 26)).split("</think>")[0])
    <think>
    347 * 26 = 347 * 20 + 347 * 6
    347 * 20 = 6000 + 800 + 140 = 6940
    347 * 6 = 300 * 6 + 40 * 6 + 7 * 6 = 1800 + 240 + 42 = 2082
    6940 + 2082 = 9022
    <BLANKLINE>
    """
    m = problem.metadata
    a, op, b = m["a"], m["op"], m["b"]
    if a < 10 and b < 10:
        steps = [f"{a} {op} {b} = {problem.answer}"]
    elif op == "+":
        steps = _add_steps(a, b) + [f"so {a} + {b} = {a + b}"]
    elif op == "-" and a >= b:
        steps = _sub_steps(a, b) + [f"so {a} - {b} = {a - b}"]
    elif op == "-":
        steps = [f"{a} - {b} = -({b} - {a})"] + _sub_steps(b, a) + [f"so {a} - {b} = {a - b}"]
    else:
        steps = _mul_steps(a, b)
    return format_solution(steps, problem.answer)


def score(problem: Problem, completion: str) -> float:
    """1.0 when the completion's final answer is the exact result.

    >>> p = make(58, "-", 67)
    >>> [score(p, c) for c in ("Answer: -9", "-9", "</think>\\n\\\\boxed{-9}", "x = -9.0", "</think> −9.")]
    [1.0, 1.0, 1.0, 1.0, 1.0]
    >>> [score(p, c) for c in ("Answer: 9", "Answer: -9 or 9", "<think>\\n8 - 7 = 1", "", "Answer: -")]
    [0.0, 0.0, 0.0, 0.0, 0.0]
    """
    return score_number(problem.answer, completion)


def _number(rng: random.Random, digits: int) -> int:
    return rng.randrange(0 if digits == 1 else 10 ** (digits - 1), 10**digits)


def _columns(a: int, b: int) -> list[tuple[int, int]]:
    """Digit pairs from the units column up, the shorter number padded with zeros."""
    sa, sb = str(a)[::-1], str(b)[::-1]
    width = max(len(sa), len(sb))
    return [(int(sa[i]) if i < len(sa) else 0, int(sb[i]) if i < len(sb) else 0) for i in range(width)]


def _add_steps(a: int, b: int) -> list[str]:
    steps, carry = [], 0
    for x, y in _columns(a, b):
        terms = [x, y] + ([carry] if carry else [])
        total = sum(terms)
        carry = total // 10
        line = " + ".join(map(str, terms)) + f" = {total}, write {total % 10}"
        steps.append(line + (f" carry {carry}" if carry else ""))
    if carry:
        steps.append(f"write {carry}")
    return steps


def _sub_steps(a: int, b: int) -> list[str]:
    """Column subtraction of b from a >= b; each line gives the digit written for that column."""
    steps, borrow = [], 0
    for x, y in _columns(a, b):
        rest = f" - {borrow}" if borrow else ""
        if x - y - borrow >= 0:
            steps.append(f"{x} - {y}{rest} = {x - y - borrow}")
            borrow = 0
        else:
            steps.append(f"{x} - {y}{rest} < 0, borrow 1, 1{x} - {y}{rest} = {10 + x - y - borrow}")
            borrow = 1
    return steps


def _place_parts(n: int) -> list[int]:
    """Non-zero place-value parts, largest first: 305 -> [300, 5]."""
    s = str(n)
    return [int(d) * 10 ** (len(s) - 1 - i) for i, d in enumerate(s) if d != "0"] or [0]


def _times_small(a: int, part: int) -> str:
    """`a * part` for a one-digit-times-power-of-ten `part`, split by the digits of a.

    The products are spelled out (`40 * 6`) only for a one-digit `part`; with trailing zeros they would double
    the length of the hardest traces, and the digit pattern is the same.
    """
    pieces = _place_parts(a)
    if len(pieces) == 1:
        return f"{a} * {part} = {a * part}"
    products = " + ".join(f"{p} * {part}" for p in pieces) + " = " if part < 10 else ""
    sums = " + ".join(str(p * part) for p in pieces)
    return f"{a} * {part} = {products}{sums} = {a * part}"


def _mul_steps(a: int, b: int) -> list[str]:
    steps = []
    if len(str(b)) > len(str(a)):  # multiply by the shorter number
        steps.append(f"{a} * {b} = {b} * {a}")
        a, b = b, a
    parts = _place_parts(b)
    if len(parts) > 1:
        steps.append(f"{a} * {b} = " + " + ".join(f"{a} * {p}" for p in parts))
    steps += [_times_small(a, p) for p in parts]
    if len(parts) > 1:
        steps.append(" + ".join(str(a * p) for p in parts) + f" = {a * b}")
    return steps


FAMILY = Family(NAME, "add, subtract or multiply two whole numbers", LEVELS, sample, key, solution, score)


def generate(seed: int, difficulty: int, split: str = "train") -> Problem:
    """A seeded problem; see `Family.generate`."""
    return FAMILY.generate(seed, difficulty, split)
