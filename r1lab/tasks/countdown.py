"""Countdown: combine the given numbers with + - * / to reach a target, each number used exactly once.

This is the task of TinyZero and of the feasibility run in REFERENCE.md section 8: the answer is an expression,
many expressions are right, and checking one is cheap and exact. We require every number to be used (as TinyZero
does), which makes the puzzle well defined for any generator. The generator builds a random expression tree
whose every intermediate result is a positive whole number (the game's rules), so the trace is simply those
intermediate steps in the order they were made, one `a op b = c` per line, then the whole expression.

The verifier never calls `eval`: `parse_expression` is a small recursive-descent parser over numbers,
+ - * /, and parentheses, computing exactly with fractions. Unary minus is refused (negative numbers are not in
the game), and so is anything else.
"""

from __future__ import annotations

import operator
import random
import re
from dataclasses import dataclass
from fractions import Fraction

from .answers import final_answer, format_solution
from .base import Family, Problem

NAME = "countdown"
# difficulty -> (how many numbers, largest number, operators, largest target)
_SETTINGS = {
    1: (2, 10, "+-*", 100),
    2: (3, 10, "+-*/", 100),
    3: (4, 10, "+-*/", 100),
    4: (4, 25, "+-*/", 500),
    5: (5, 25, "+-*/", 999),
}
LEVELS = {d: f"{n} numbers up to {top}, {' '.join(ops)}, target up to {t}" for d, (n, top, ops, t) in
          _SETTINGS.items()}
_PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2}
_OPERATIONS = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv}
_SYMBOLS = {"×": "*", "·": "*", "\\times": "*", "\\cdot": "*", "÷": "/", "\\div": "/", "\u2212": "-",
            "\\left(": "(", "\\right)": ")"}
_TOKEN = re.compile(r"\s*(\d+|[-+*/()])")
_MAX_LENGTH = 200  # characters; bounds the parser's recursion depth


class ExpressionError(ValueError):
    """Text that is not an arithmetic expression over whole numbers, or divides by zero."""


@dataclass(frozen=True)
class _Node:
    value: int
    op: str = ""
    left: _Node | None = None
    right: _Node | None = None

    def text(self, parent_op: str = "", right_side: bool = False) -> str:
        """Infix text with only the parentheses precedence needs."""
        if not self.op:
            return str(self.value)
        inner = f"{self.left.text(self.op)} {self.op} {self.right.text(self.op, True)}"
        if parent_op and (_PRECEDENCE[self.op] < _PRECEDENCE[parent_op]
                          or (right_side and _PRECEDENCE[self.op] == _PRECEDENCE[parent_op] and parent_op in "-/")):
            return f"({inner})"
        return inner


def make(numbers: list[int], target: int, expression: str, difficulty: int = 0) -> Problem:
    """The puzzle `numbers -> target` with one known solution.

    >>> make([7, 3, 5, 2], 24, "7 * 3 + 5 - 2").prompt
    'Make 24 from 7, 3, 5, 2 using + - * / and each number exactly once.'
    """
    value, used = parse_expression(expression)
    if value != target or sorted(used) != sorted(numbers):
        raise ValueError(f"{expression!r} does not make {target} from {numbers}")
    prompt = f"Make {target} from {', '.join(map(str, numbers))} using + - * / and each number exactly once."
    return Problem(NAME, difficulty, prompt, expression, {"numbers": list(numbers), "target": target})


def sample(rng: random.Random, difficulty: int) -> Problem:
    count, top, ops, max_target = _SETTINGS[difficulty]
    while True:
        numbers = [rng.randint(1, top) for _ in range(count)]
        pool = [_Node(n) for n in numbers]
        while len(pool) > 1:
            left, right = (pool.pop(rng.randrange(len(pool))) for _ in range(2))
            pool.append(_combine(rng, left, right, ops))
        tree = pool[0]
        if 1 <= tree.value <= max_target and tree.value not in numbers:
            return make(numbers, tree.value, tree.text(), difficulty)


def key(problem: Problem) -> str:
    m = problem.metadata
    return f"{sorted(m['numbers'])} -> {m['target']}"


def solution(problem: Problem) -> str:
    """The reference trace: the steps of the known solution, innermost first.

    >>> print(solution(make([7, 3, 5, 2], 24, "7 * 3 + 5 - 2")))
    <think>
    7 * 3 = 21
    21 + 5 = 26
    26 - 2 = 24
    </think>
    Answer: 7 * 3 + 5 - 2
    """
    steps: list[str] = []
    _, _ = parse_expression(problem.answer, steps=steps)
    return format_solution(steps, problem.answer)


def score(problem: Problem, completion: str) -> float:
    """1.0 when the final answer uses each given number once and reaches the target.

    Accepted: the bare expression, `expression = target`, `target = expression`, x or \\times for *, \\div for /;
    or the moves themselves, as the game is played: `7*3=21, 21+5=26, 26-2=24`, each move true arithmetic on two
    numbers still in play whose result, a positive whole number, joins them, until the target alone is left.

    >>> p = make([7, 3, 5, 2], 24, "7 * 3 + 5 - 2")
    >>> [score(p, c) for c in ("Answer: (5 - 2) + 7 * 3", "</think>\\n7×3+5−2 = 24.", "24 = 3 * 7 + 5 - 2",
    ...                        "</think>\\n$\\\\boxed{(7 \\\\times 3) + (5 - 2)}$")]
    [1.0, 1.0, 1.0, 1.0]
    >>> [score(p, c) for c in ("7 * 3 + 5", "7 * 3 + 5 - 2 + 0", "7 * 3 + 5 - 2 = 25", "7 * 3 + 2 - 5",
    ...                        "-2 + 5 + 7 * 3", "24", "<think>\\n7 * 3 = 21", "7 * 3 + (5 - 2", "7 * 3 / 0 + 5 - 2")]
    [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    >>> [score(p, c) for c in ("Answer: 7*3=21, 21+5=26, 26-2=24", "Answer: 5-2=3, 7*3=21, 21+3=24",
    ...                        "Answer: 7*3=21, 21+5=26, 26-2=25", "Answer: 7*3=22, 22+5=27, 27-3=24",
    ...                        "Answer: 7*3=21, 21+3=24", "Answer: 7*3=21, 21+5=26, 26-2=24, 24*1=24")]
    [1.0, 1.0, 0.0, 0.0, 0.0, 0.0]
    """
    candidate = final_answer(completion)
    if candidate is None:
        return 0.0
    for old, new in _SYMBOLS.items():
        candidate = candidate.replace(old, new)
    candidate = re.sub(r"(?<=[\d)])\s*[xX]\s*(?=[\d(])", "*", candidate)
    target, numbers = problem.metadata["target"], sorted(problem.metadata["numbers"])
    if candidate.count("=") > 1:
        return 1.0 if _moves_reach(candidate, numbers, target) else 0.0
    sides = [s.strip() for s in candidate.split("=")]
    for expression, stated in ((sides[0], sides[1:]), (sides[-1], sides[:-1])):
        if stated and stated[0] != str(target):
            continue
        try:
            value, used = parse_expression(expression)
        except ExpressionError:
            continue
        if value == target and sorted(used) == numbers:
            return 1.0
    return 0.0


_MOVE = re.compile(r"\s*(\d+)\s*([-+*/])\s*(\d+)\s*=\s*(\d+)\s*")


def _moves_reach(text: str, numbers: list[int], target: int) -> bool:
    """Whether `a op b=c, c op d=e, ...` are true moves of the game from `numbers` that leave only `target`."""
    pool = list(numbers)
    for move in re.split(r"[,;]", text.rstrip(". ")):
        m = _MOVE.fullmatch(move)
        if m is None:
            return False
        a, op, b, c = int(m[1]), m[2], int(m[3]), int(m[4])
        if (op == "/" and b == 0) or _OPERATIONS[op](Fraction(a), b) != c or c < 1:
            return False
        for n in (a, b):
            if n not in pool:
                return False
            pool.remove(n)
        pool.append(c)
    return pool == [target]


def parse_expression(text: str, *, unary_minus: bool = False, steps: list[str] | None = None
                     ) -> tuple[Fraction, list[int]]:
    """Value and the numbers used, in order, of an infix expression; never `eval`.

    `steps`, when given, receives one `a op b = c` line per operation in evaluation order.

    >>> parse_expression("(25 - 5) / 4 * 3")
    (Fraction(15, 1), [25, 5, 4, 3])
    >>> parse_expression("2 - -3", unary_minus=True)
    (Fraction(5, 1), [2, 3])
    >>> for bad in ("2 - -3", "2 ** 3", "__import__('os')", "1 / (2 - 2)", "(1 + 2", "1 2", "", "007"):
    ...     try:
    ...         parse_expression(bad)
    ...     except ExpressionError as e:
    ...         print("rejected:", e)
    rejected: expected a number or '(', found '-'
    rejected: expected a number or '(', found '*'
    rejected: unexpected character at position 0
    rejected: division by zero
    rejected: missing ')'
    rejected: unexpected '2' after the expression
    rejected: empty expression
    rejected: number with a leading zero: 007
    """
    if len(text) > _MAX_LENGTH:
        raise ExpressionError(f"longer than {_MAX_LENGTH} characters")
    tokens, pos = [], 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            if text[pos:].strip() == "":
                break
            raise ExpressionError(f"unexpected character at position {pos}")
        tokens.append(m.group(1))
        pos = m.end()
    if not tokens:
        raise ExpressionError("empty expression")
    parser = _Parser(tokens, unary_minus, steps)
    value = parser.expression()
    if parser.i != len(tokens):
        raise ExpressionError(f"unexpected {tokens[parser.i]!r} after the expression")
    return value, parser.numbers


class _Parser:
    """expression := term (('+' | '-') term)*;  term := factor (('*' | '/') factor)*;
    factor := NUMBER | '(' expression ')' | '-' factor (only with unary_minus)."""

    def __init__(self, tokens: list[str], unary_minus: bool, steps: list[str] | None):
        self.tokens, self.i, self.unary_minus, self.steps = tokens, 0, unary_minus, steps
        self.numbers: list[int] = []

    def peek(self) -> str | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def expression(self) -> Fraction:
        value = self.term()
        while self.peek() in ("+", "-"):
            op = self.tokens[self.i]
            self.i += 1
            value = self.apply(value, op, self.term())
        return value

    def term(self) -> Fraction:
        value = self.factor()
        while self.peek() in ("*", "/"):
            op = self.tokens[self.i]
            self.i += 1
            value = self.apply(value, op, self.factor())
        return value

    def factor(self) -> Fraction:
        token = self.peek()
        self.i += 1
        if token == "(":
            value = self.expression()
            if self.peek() != ")":
                raise ExpressionError("missing ')'")
            self.i += 1
            return value
        if token == "-" and self.unary_minus:
            return -self.factor()
        if token is None or not token.isdigit():
            raise ExpressionError(f"expected a number or '(', found {token or 'the end'!r}")
        if len(token) > 1 and token[0] == "0":
            raise ExpressionError(f"number with a leading zero: {token}")
        self.numbers.append(int(token))
        return Fraction(int(token))

    def apply(self, a: Fraction, op: str, b: Fraction) -> Fraction:
        if op == "/" and b == 0:
            raise ExpressionError("division by zero")
        value = _OPERATIONS[op](a, b)
        if self.steps is not None:
            self.steps.append(f"{_fmt(a)} {op} {_fmt(b)} = {_fmt(value)}")
        return value


def _fmt(x: Fraction) -> str:
    return str(x.numerator) if x.denominator == 1 else f"{x.numerator}/{x.denominator}"


def _combine(rng: random.Random, a: _Node, b: _Node, ops: str) -> _Node:
    """One game move on two numbers: any operation whose result is a positive whole number."""
    a, b = (a, b) if a.value >= b.value else (b, a)
    choices = ["+", "*"]
    if a.value > b.value:
        choices.append("-")
    if "/" in ops and b.value > 1 and a.value % b.value == 0:
        choices.append("/")
    op = rng.choice([c for c in choices if c in ops])
    value = int(_OPERATIONS[op](a.value, b.value))
    if op in "+*" and rng.random() < 0.5:
        a, b = b, a  # commutative: either order reads naturally
    return _Node(value, op, a, b)


# ---------------------------------------------------------------------- search traces
# The reference trace above writes down the answer's steps in order, which asks a model to find the whole
# solution before its first token. A search trace instead explores the way a person does (Stream of Search,
# Gandhi et al. 2024): make a move, write the numbers left, and with two numbers left try each operation against
# the target; a dead end says `no` (or `back [...]` one level up) and the next move is tried; the solution is
# checked step by step before the answer is written. Every line states the numbers still in play, so the trace
# is the same recursion at every size: four numbers are one move away from a three-number problem.

_STRATEGIES = ("random", "closest", "in order")  # how a searcher orders its next moves
MAX_FAILED_MOVES = 3  # dead-end moves tried at one level before the move that works (bounds a trace's length)


def _moves(state: tuple[_Node, ...], ops: str) -> list[tuple[str, tuple[_Node, ...]]]:
    """Every legal move from `state`: its text `a*b=c` and the numbers left after it (the new one first)."""
    out, seen = [], set()
    for i in range(len(state)):
        for j in range(i + 1, len(state)):
            a, b = (state[i], state[j]) if state[i].value >= state[j].value else (state[j], state[i])
            rest = state[:i] + state[i + 1:j] + state[j + 1:]
            for op in ops:
                if (op == "-" and a.value == b.value) or (op == "/" and (b.value == 1 or a.value % b.value)):
                    continue
                text = f"{a.value}{op}{b.value}={int(_OPERATIONS[op](a.value, b.value))}"
                if text not in seen:
                    seen.add(text)
                    out.append((text, (_Node(int(_OPERATIONS[op](a.value, b.value)), op, a, b),) + rest))
    return out


def _solvable(values: tuple[int, ...], target: int, ops: str, memo: dict) -> bool:
    key = (tuple(sorted(values)), target)
    if key not in memo:
        if len(values) == 1:
            memo[key] = values[0] == target
        else:
            nodes = tuple(_Node(v) for v in values)
            memo[key] = any(_solvable(tuple(n.value for n in nxt), target, ops, memo) for _, nxt in _moves(nodes, ops))
    return memo[key]


def _state(nodes: tuple[_Node, ...]) -> str:
    return "[" + " ".join(str(n.value) for n in nodes) + "]"


class _Searcher:
    """One searcher's walk over the game tree: its move order, its patience, the lines it writes."""

    def __init__(self, target: int, ops: str, rng: random.Random):
        self.target, self.ops, self.rng = target, ops, rng
        self.strategy = rng.choice(_STRATEGIES)
        self.memo: dict = {}
        self.lines: list[str] = []

    def order(self, moves: list) -> list:
        if self.strategy == "random":
            return self.rng.sample(moves, len(moves))
        if self.strategy == "closest":  # results nearest the target first, ties broken at random
            return sorted(moves, key=lambda m: (abs(m[1][0].value - self.target), self.rng.random()))
        return list(moves)

    def solvable(self, nodes: tuple[_Node, ...]) -> bool:
        return _solvable(tuple(n.value for n in nodes), self.target, self.ops, self.memo)

    def leaf(self, nodes: tuple[_Node, ...]) -> tuple[str, _Node | None]:
        """Two numbers left: try each operation against the target, stopping at the one that hits it."""
        tries = []
        for text, after in self.order(_moves(nodes, self.ops)):
            if after[0].op == "*" and after[0].value > self.target:
                tries.append(text.split("=")[0] + " too big")  # no need to work out a product past the target
                continue
            tries.append(text)
            if after[0].value == self.target:
                return ", ".join(tries) + " yes", after[0]
        return ", ".join(tries) + " no", None

    def search(self, nodes: tuple[_Node, ...], indent: str = "") -> _Node | None:
        """Explore from `nodes` (3 or more numbers); the solution's root node, or None at a dead end given up on.

        A solvable state is searched until solved, with at most `MAX_FAILED_MOVES` dead-end moves first; an
        unsolvable one (reached only by a dead-end move) is given up after one to three tries."""
        moves = self.order(_moves(nodes, self.ops))
        if self.solvable(nodes):
            good = next(i for i, (_, after) in enumerate(moves) if self.solvable(after))
            failed = [m for m in moves[:good]][: self.rng.randint(0, MAX_FAILED_MOVES)]
            moves = failed + [moves[good]]
        else:
            moves = moves[: self.rng.randint(1, 3)]
        for text, after in moves:
            if len(after) == 2:
                checks, found = self.leaf(after)
                # the goal again beside the last two numbers: `yes` is then a comparison within one line
                self.lines.append(f"{indent}{text} {_state(after)[:-1]} -> {self.target}]: {checks}")
                if found is not None:
                    return found
                continue
            self.lines.append(f"{indent}{text} {_state(after)}")
            found = self.search(after, indent + " ")
            if found is not None:
                return found
            self.lines.append(f"{indent}back {_state(nodes)}")
        return None


def _operations(problem: Problem) -> str:
    """The operators a problem's level allows (all four for a problem made outside the levels)."""
    return _SETTINGS[problem.difficulty][2] if problem.difficulty in _SETTINGS else "+-*/"


def search_solution(problem: Problem, rng: random.Random) -> str:
    """One search trace for a Countdown problem, drawn with `rng` (its move order, how many dead ends).

    >>> p = make([8, 3, 6], 30, "8 * 3 + 6")
    >>> print(search_solution(p, random.Random(5)))
    <think>
    [8 3 6] -> 30
    8+3=11 [11 6 -> 30]: 11+6=17, 11-6=5, 11*6 too big no
    8-3=5 [5 6 -> 30]: 6+5=11, 6-5=1, 6*5=30 yes
    check 6*(8-3): 8-3=5, 6*5=30 ok
    </think>
    Answer: 6*(8-3)
    >>> all(score(p, search_solution(p, random.Random(s))) == 1.0 for s in range(50))
    True
    """
    numbers, target = problem.metadata["numbers"], problem.metadata["target"]
    ops = _operations(problem)
    searcher = _Searcher(target, ops, rng)
    nodes = tuple(_Node(n) for n in numbers)
    searcher.lines.append(f"{_state(nodes)} -> {target}")  # the numbers and goal, next to the moves that use them
    if len(nodes) == 2:
        checks, found = searcher.leaf(nodes)
        searcher.lines.append(checks)
    else:
        found = searcher.search(nodes)
    if found is None:
        raise ValueError(f"{problem.prompt!r} has no solution with {ops}")
    answer = found.text().replace(" ", "")
    steps: list[str] = []
    parse_expression(answer, steps=steps)
    searcher.lines.append(f"check {answer}: " + ", ".join(s.replace(" ", "") for s in steps) + " ok")
    return format_solution(searcher.lines, answer)





# ---------------------------------------------------------------------- guess-and-check traces
# A shorter way to search, sized for a model of a few million parameters: each line is one whole attempt (every
# number combined, step by step), compared with the target; a miss says `no` and the next attempt follows. The
# lookahead a reference trace hides (which first move leads to the target?) becomes trial and error written out,
# and RL has something to improve: the order of the guesses, honest comparisons, and trying again.

MAX_FAILED_GUESSES = 3


def _playout(rng: random.Random, nodes: list[_Node], ops: str) -> tuple[_Node, list[str]]:
    """Combine random pairs with random legal operations until one number is left: its tree and the step lines."""
    pool, steps = list(nodes), []
    while len(pool) > 1:
        left, right = (pool.pop(rng.randrange(len(pool))) for _ in range(2))
        node = _combine(rng, left, right, ops)
        steps.append(f"{node.left.value}{node.op}{node.right.value}={node.value}")
        pool.append(node)
    return pool[0], steps


def guess_solution(problem: Problem, rng: random.Random) -> str:
    """One guess-and-check trace: up to `MAX_FAILED_GUESSES` distinct missed attempts, then a hit, then the answer.

    >>> p = make([8, 3, 6], 30, "8 * 3 + 6")
    >>> print(guess_solution(p, random.Random(5)))
    <think>
    3*6=18, 18+8=26 vs 30 no
    6/3=2, 2+8=10 vs 30 no
    3*8=24, 6+24=30 vs 30 yes
    </think>
    Answer: 3*8=24, 6+24=30
    >>> all(score(p, guess_solution(p, random.Random(s))) == 1.0 for s in range(50))
    True
    """
    numbers, target = problem.metadata["numbers"], problem.metadata["target"]
    ops = _operations(problem)
    nodes = [_Node(n) for n in numbers]
    hits: dict[str, None] = {}  # distinct attempts in the order drawn (dicts, not sets: deterministic order)
    misses: dict[str, None] = {}
    for _ in range(64 * len(numbers)):
        tree, steps = _playout(rng, nodes, ops)
        (hits if tree.value == target else misses)[", ".join(steps)] = None
    if hits:
        line = rng.choice(list(hits))
    else:  # a rare solution the random play-outs missed: the generator's own
        steps: list[str] = []
        parse_expression(problem.answer, steps=steps)
        line = ", ".join(s.replace(" ", "") for s in steps)
    failed = rng.sample(list(misses), min(len(misses), rng.randint(0, MAX_FAILED_GUESSES)))
    lines = [f"{m} vs {target} no" for m in failed] + [f"{line} vs {target} yes"]
    # The answer is the hit's moves, which the verifier checks one by one: a copy of the line that hit, with no
    # expression to assemble (a step the tiny model failed in a sixth of its samples), and no credit for a
    # made-up move
    return format_solution(lines, line)


FAMILY = Family(NAME, "reach the target with the given numbers, each used once", LEVELS, sample, key, solution,
                score, search=search_solution, search_levels=tuple(LEVELS), guess=guess_solution)


def generate(seed: int, difficulty: int, split: str = "train") -> Problem:
    """A seeded problem; see `Family.generate`."""
    return FAMILY.generate(seed, difficulty, split)
