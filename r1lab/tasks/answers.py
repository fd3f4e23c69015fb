"""The trace format every family writes, and how a final answer is read back out of a completion.

Format. A reference solution is

    <think>
    one step per line
    </think>
    Answer: 42

The chat template's generation prompt already ends with `<think>\\n`, so a model's completion normally starts at
the first step; the verifier accepts it with or without the opening tag. The final answer is read from the text
after the last `</think>`: a `\\boxed{...}` wins, else the last line saying `Answer:` (or `answer is`), else the
last non-empty line, taken after "is" when it is a sentence ("The distance is 8."). Dollar signs, bold markers,
`<answer>` tags, DeepSeek special tokens and a closing full stop are peeled off.

Truncation. An opened but unclosed `<think>` has no answer. A completion with no think tags at all is read as a
bare answer only when it is one line ("42", "Answer: x = 4"), because a reasoning trace cut off before
`</think>` is exactly such a tag-less multi-line text, and its last line must not count as an answer.

Numbers are compared exactly as fractions (`4`, `4.0`, `8/2`, `\\frac{8}{2}` and `1,234` all parse). LaTeX beyond
that (`\\sqrt{16}`, `\\left(-\\frac{5}{2}\\right)`) goes to math-verify when it is installed, but only after a
closed `</think>` and only in the main thread: math-verify times out with `signal.alarm`, which works nowhere else.
Elsewhere such answers score 0, so a score can differ between threads only for that LaTeX. Plain text our parser
cannot read ("12 or 13") never goes to math-verify: it would pick a number out and reward the hedge.
"""

from __future__ import annotations

import re
import signal
import threading
from fractions import Fraction

THINK, END_THINK = "<think>", "</think>"
ANSWER_PREFIX = "Answer:"

_SPECIAL = re.compile(r"<｜[^｜]*｜>")  # DeepSeek's special tokens, e.g. an end-of-sentence the decoder kept
_ANSWER_LINE = re.compile(r"(?i)\b(?:final\s+)?answer\b(?:\s+is\b)?\s*[:=]?[ \t]*(.*)")
_SENTENCE = re.compile(r"(?i)^\s*[a-z][a-z ]*?\bis\s*:?\s*(.+)$")
_VARIABLE = re.compile(r"^[a-zA-Z]\s*=\s*")
_LATEX_FRAC = re.compile(r"^([+-]?)\\[dt]?frac\{([^{}]+)\}\{([^{}]+)\}$")
_THOUSANDS = re.compile(r"^[+-]?\d{1,3}(,\d{3})+(\.\d+)?$")
_DECIMAL = re.compile(r"^[+-]?(\d+(\.\d+)?|\.\d+)$")
_FRACTION = re.compile(r"^([+-]?\d+)/([+-]?\d+)$")
_WRAPPERS = (("**", "**"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"), ("<answer>", "</answer>"), ("`", "`"))


def format_solution(steps: list[str], answer: str) -> str:
    """Assemble a trace.

    >>> print(format_solution(["7 + 5 = 12"], "12"))
    <think>
    7 + 5 = 12
    </think>
    Answer: 12
    """
    return f"{THINK}\n" + "\n".join(steps) + f"\n{END_THINK}\n{ANSWER_PREFIX} {answer}"


def final_answer(completion: str) -> str | None:
    """The final answer a completion offers, cleaned, or None when it offers none.

    >>> final_answer("<think>\\n7 + 5 = 12\\n</think>\\nAnswer: 12")
    '12'
    >>> final_answer("steps\\n</think>\\nSo the result is \\\\boxed{12}.")
    '12'
    >>> final_answer("steps\\n</think>\\n\\n  **Answer:** $x = 3$.  \\n")
    'x = 3'
    >>> final_answer("  42 ")
    '42'
    >>> final_answer("<think>\\n7 + 5 = 1") is None  # thinking never closed: truncated
    True
    >>> final_answer("7 + 5 = 12, write 2 carry 1\\nwrite") is None  # a cut-off trace, not an answer
    True
    >>> final_answer("steps</think>Answer:") is None
    True
    """
    text = _SPECIAL.sub("", completion)
    if END_THINK in text:
        region = text.rsplit(END_THINK, 1)[1]
    elif THINK in text:
        return None
    else:
        region = text.strip()
        if "\n" in region:
            return None
    if "\\boxed{" in region or "\\fbox{" in region:
        candidate = _last_boxed(region)
        if candidate is None:  # unbalanced braces: the answer was cut off
            return None
    else:
        said = [m.group(1) for m in _ANSWER_LINE.finditer(region)]
        if said:
            candidate = said[-1]
        else:
            lines = [line for line in region.splitlines() if line.strip()]
            candidate = lines[-1] if lines else ""
            sentence = _SENTENCE.match(candidate)  # "The shortest distance is 8."
            if sentence:
                candidate = sentence.group(1)
    candidate = _clean(candidate)
    return candidate or None


def follows_format(completion: str) -> bool:
    """True when a completion is non-empty reasoning, one `</think>`, then a final answer.

    >>> follows_format("7 + 5 = 12\\n</think>\\nAnswer: 12")
    True
    >>> follows_format("<think>\\n7 + 5 = 12\\n</think>\\nAnswer: 12")
    True
    >>> follows_format("Answer: 12")  # no reasoning
    False
    >>> follows_format("</think>\\nAnswer: 12")  # empty reasoning
    False
    >>> follows_format("a\\n</think>\\nb\\n</think>\\nAnswer: 12")
    False
    """
    body = completion.lstrip()
    if body.startswith(THINK):
        body = body[len(THINK):]
    if body.count(END_THINK) != 1 or THINK in body:
        return False
    thinking, _ = body.split(END_THINK)
    return bool(thinking.strip()) and final_answer(body) is not None


def parse_number(text: str) -> Fraction | None:
    """An exact number from an answer string, or None.

    >>> [parse_number(s) for s in ("42", "-7", "x = 4", "2.50", "1,234", "-10/4", "\\\\frac{-5}{2}", "−3")]
    [Fraction(42, 1), Fraction(-7, 1), Fraction(4, 1), Fraction(5, 2), Fraction(1234, 1), Fraction(-5, 2), \
Fraction(-5, 2), Fraction(-3, 1)]
    >>> [parse_number(s) for s in ("4 5", "1/0", "12,34", "four", "3x", "")]
    [None, None, None, None, None, None]
    """
    s = _VARIABLE.sub("", text.strip().replace("\u2212", "-"))
    s = re.sub(r"(?<=[+-])\s+", "", s)  # "- 5" -> "-5"
    s = re.sub(r"\s*/\s*", "/", s)
    latex = _LATEX_FRAC.match(s)
    if latex:
        sign, num, den = latex.groups()
        s = f"{sign}{num.strip()}/{den.strip()}"
        if s.startswith("--"):
            s = s[2:]
    if _THOUSANDS.match(s):
        s = s.replace(",", "")
    if _DECIMAL.match(s):
        return Fraction(s)
    frac = _FRACTION.match(s)
    if frac and int(frac.group(2)) != 0:
        return Fraction(int(frac.group(1)), int(frac.group(2)))
    return None


def score_number(gold: str, completion: str) -> float:
    """1.0 when the completion's final answer equals the number `gold`, else 0.0.

    >>> score_number("12", "7 + 5 = 12\\n</think>\\nAnswer: 12")
    1.0
    >>> [score_number("-5/2", c) for c in ("x = -5/2", "-2.5", "Answer: -10/4", "\\\\boxed{-\\\\frac{5}{2}}")]
    [1.0, 1.0, 1.0, 1.0]
    >>> [score_number("12", c) for c in ("13", "Answer: 12 or 13", "<think>\\n12", "1\\n2", "")]
    [0.0, 0.0, 0.0, 0.0, 0.0]
    """
    candidate = final_answer(completion)
    if candidate is None:
        return 0.0
    target = parse_number(gold)
    value = parse_number(candidate)
    if value is not None:
        return float(value == target)
    if END_THINK in completion and "\\" in candidate and _math_verify(gold, candidate):
        return 1.0
    return 0.0


def _math_verify(gold: str, candidate: str) -> bool:
    """math-verify's judgement, where it can run (installed, main thread, a platform with SIGALRM)."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGALRM"):
        return False
    try:
        from math_verify import parse, verify
    except ImportError:
        return False
    try:
        return bool(verify(parse(gold), parse(f"${candidate}$")))  # math-verify looks for LaTeX inside $...$
    except Exception:  # math-verify's own parser failing on garbage is an unverified answer, not a crash
        return False


def _last_boxed(text: str) -> str | None:
    start = max(text.rfind("\\boxed{"), text.rfind("\\fbox{"))
    i = text.index("{", start) + 1
    depth = 1
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i:j]
    return None  # unbalanced: a truncated answer


def _clean(candidate: str) -> str:
    s = candidate.strip()
    changed = True
    while changed and s:
        changed = False
        for left, right in _WRAPPERS:
            if s.startswith(left) and s.endswith(right) and len(s) >= len(left) + len(right):
                s = s[len(left):len(s) - len(right)].strip()
                changed = True
        if s.startswith("**"):  # "**Answer:** 42" leaves "** 42"
            s, changed = s[2:].strip(), True
        if s.endswith("."):
            s, changed = s[:-1].strip(), True
    return s
