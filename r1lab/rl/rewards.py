"""Rule-based rewards: pure functions of a problem and a completion (no reward model, as in R1).

A completion here is what the model wrote after the generation prompt `<｜Assistant｜><think>\\n`, i.e. its
reasoning, `</think>`, then the answer.
"""

from __future__ import annotations

import re

from ..tasks import Problem, follows_format, score

# What a searcher writes when it rejects a try, backs up or checks its work: the search traces' own words
# (`no`, `too big`, `back`, `check`) and the R1-Zero paper's ("wait", "re-check", "verify").
_SELF_CHECK = re.compile(r"(?i)\b(?:no|too big|back|check|re-check|wait|verify)\b")


def accuracy_reward(problem: Problem, completion: str) -> float:
    """1.0 when the task's verifier accepts the final answer.

    >>> from r1lab.tasks import generate, solution
    >>> p = generate("arithmetic", seed=1, difficulty=1)
    >>> accuracy_reward(p, solution(p)), accuracy_reward(p, "x\\n</think>\\nAnswer: -999")
    (1.0, 0.0)
    """
    return float(score(problem, completion))


def format_reward(completion: str) -> float:
    """1.0 for non-empty reasoning, exactly one `</think>`, then a final answer.

    >>> format_reward("3 + 4 = 7\\n</think>\\nAnswer: 7"), format_reward("Answer: 7")
    (1.0, 0.0)
    """
    return 1.0 if follows_format(completion) else 0.0


def self_checks(completion: str) -> int:
    """How often a completion's reasoning rejects a try, backs up or checks a result.

    >>> self_checks("9+4=13 [13 2]: 13+2=15 no\\nback [9 4 2]\\ncheck 9*2+4: ok\\n</think>\\nAnswer: 9*2+4")
    3
    >>> self_checks("<think>\\n7 * 3 = 21\\n</think>\\nAnswer: 21")
    0
    """
    return len(_SELF_CHECK.findall(completion.split("</think>")[0]))


def overlong_penalty(num_tokens: int, max_tokens: int, buffer: int) -> float:
    """DAPO's soft overlong punishment: 0 up to max_tokens - buffer, then linear down to -1 at max_tokens.

    >>> overlong_penalty(50, 100, 20), overlong_penalty(90, 100, 20), overlong_penalty(100, 100, 20)
    (0.0, -0.5, -1.0)
    """
    if buffer <= 0 or num_tokens <= max_tokens - buffer:
        return 0.0
    return -min(1.0, (num_tokens - (max_tokens - buffer)) / buffer)


def total_reward(problem: Problem, completion: str, num_tokens: int, max_tokens: int, format_weight: float = 0.1,
                 overlong_buffer: int = 0) -> dict[str, float]:
    """The reward GRPO optimises and its parts: accuracy + format_weight * format + overlong penalty."""
    accuracy = accuracy_reward(problem, completion)
    fmt = format_reward(completion)
    penalty = overlong_penalty(num_tokens, max_tokens, overlong_buffer)
    return {"reward": accuracy + format_weight * fmt + penalty, "accuracy": accuracy, "format": fmt,
            "overlong": penalty}
