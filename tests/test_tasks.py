"""The task library: reference traces verify, verifiers are strict but forgiving of form, splits are disjoint."""

import json
import random
import re
import threading
from fractions import Fraction

import pytest

from conftest import run_data_command
from r1lab.data import read_jsonl
from r1lab.tasks import (
    FAMILIES,
    Problem,
    TaskError,
    arithmetic,
    countdown,
    final_answer,
    follows_format,
    generate,
    get_family,
    linear,
    problems,
    score,
    shortest_path,
    solution,
    split_of,
    to_row,
)
from r1lab.tasks.countdown import ExpressionError, parse_expression

# ------------------------------------------------------------------ reference traces


def _thousand(name):
    family = FAMILIES[name]
    per_level = 1000 // len(family.levels)
    return [p for d in family.levels for p in problems(name, d, "train", per_level, seed=7, unique=False)]


@pytest.mark.parametrize("name", list(FAMILIES))
def test_reference_trace_scores_one_on_1000_problems(name):
    batch = _thousand(name)
    assert len(batch) == 1000
    for p in batch:
        trace = solution(p)
        assert trace.startswith("<think>\n") and "\n</think>\nAnswer: " in trace
        assert score(p, trace) == 1.0, (p.prompt, trace)
        completion = trace.removeprefix("<think>\n")  # what a model writes after the generation prompt
        assert score(p, completion) == 1.0 and follows_format(completion)
        assert final_answer(trace) == p.answer


def _equal_parts(line):
    """Every comma-separated clause `e1 = e2 = ...` whose sides are plain arithmetic must agree."""
    for clause in line.split(","):
        values = []
        for side in clause.split("="):
            try:
                values.append(parse_expression(side, unary_minus=True)[0])
            except ExpressionError:
                pass
        assert len(set(values)) <= 1, line


@pytest.mark.parametrize("name", ["arithmetic", "countdown", "linear"])
def test_every_arithmetic_claim_in_traces_is_true(name):
    for p in _thousand(name)[::5]:
        for line in solution(p).split("\n")[1:-2]:
            _equal_parts(line)


def test_linear_trace_lines_are_equivalent_equations():
    # every "lhs = rhs" line with x must hold at the root
    for p in _thousand("linear")[::5]:
        root = Fraction(p.answer)
        for line in solution(p).split("\n")[1:-2]:
            lhs, rhs = line.split(" = ")
            at_root = [_eval_at(side, root) for side in (lhs, rhs)]
            assert at_root[0] == at_root[1], (p.prompt, line)


def _eval_at(side, x):
    text = re.sub(r"(\d)\(", r"\1*(", side)
    text = re.sub(r"(\d)x", r"\1*X", text).replace("-x", "-1*X").replace("x", "X")
    text = text.replace("X", f"({x.numerator}/{x.denominator})")
    return parse_expression(text, unary_minus=True)[0]


def test_shortest_path_trace_follows_the_edges_and_is_optimal():
    for p in _thousand("shortest_path")[::5]:
        weights = {}
        for u, v, w in shortest_path.edges_of(p.prompt):
            weights[u, v] = weights[v, u] = w
        settled = {}
        for line in solution(p).split("\n")[1:-2]:
            if line == "A = 0":
                settled["A"] = 0
                continue
            node, before, w, dist, via = re.fullmatch(r"(\w) = (\d+) \+ (\d+) = (\d+) via (\w)", line).groups()
            assert settled[via] == int(before) and weights[via, node] == int(w) and dist == str(int(before) + int(w))
            assert int(dist) >= max(settled.values())  # Dijkstra settles in order of distance
            settled[node] = int(dist)
        assert settled[p.metadata["target"]] == int(p.answer) == _bellman_ford(weights)[p.metadata["target"]]


def _bellman_ford(weights):
    dist = {u: float("inf") for u, _ in weights} | {"A": 0}
    for _ in dist:
        for (u, v), w in weights.items():
            dist[v] = min(dist[v], dist[u] + w)
    return dist


def test_arithmetic_answers_are_the_true_results():
    ops = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}
    for p in _thousand("arithmetic"):
        m = p.metadata
        assert int(p.answer) == ops[m["op"]](m["a"], m["b"])


def test_difficulty_grows_and_traces_stay_short():
    for name, family in FAMILIES.items():
        lengths = [sum(len(solution(family.generate(s, d))) for s in range(50)) for d in family.levels]
        assert lengths == sorted(lengths) or name == "linear", (name, lengths)  # linear 5 has no bracket step
        assert max(len(solution(family.generate(s, max(family.levels))).split()) for s in range(50)) < 200


# ------------------------------------------------------------------ verifiers


ACCEPT = {
    "arithmetic": (arithmetic.make(347, "-", 985), "-638", [
        "Answer: -638", "-638", "  \n-638\n", "</think>\n\nAnswer:-638.", "</think>\nThe answer is **-638**",
        "</think>\n$\\boxed{-638}$", "</think>\nAnswer: -638<｜end▁of▁sentence｜>", "steps\n</think>\n-638.0",
        "</think>\nFinal answer: <answer>-638</answer>", "</think>\nAnswer: \u2212638",
    ]),
    "countdown": (countdown.make([25, 5, 4, 3], 15, "(25 - 5) / 4 * 3"), "15", [
        "Answer: (25 - 5) / 4 * 3", "3 * (25 - 5) / 4", "</think>\n(25-5)÷4×3 = 15", "15 = 3*(25-5)/4",
        "</think>\n\\boxed{\\frac{}{}}".replace("\\frac{}{}", "(25 - 5) \\div 4 \\times 3"), "((25 - 5) / 4) * 3.",
        "</think>\n**Answer:** 3 x (25 - 5) / 4",
    ]),
    "linear": (linear.make(2, 7, -2, 12), "5/4", [
        "Answer: 5/4", "x = 5/4", "1.25", "</think>\nx=\\frac{5}{4}", "10/8", "</think>\n\\boxed{\\dfrac{5}{4}}",
        "</think>\nSo the root is\nAnswer: x = 1.25",
    ]),
    "shortest_path": (shortest_path.make([("A", "B", 4), ("A", "C", 1), ("B", "C", 2), ("B", "D", 5)], "D"), "8", [
        "Answer: 8", "8", "</think>\nThe shortest distance is 8.", "</think>\n\\boxed{8}", "D = 8",
    ]),
}

REJECT = {
    "arithmetic": ["Answer: 638", "Answer: -63", "<think>\n7 - 5 = 2, write", "5 - 8 < 0, borrow 1\n15 - 8 = 7",
                   "", "Answer:", "</think>", "Answer: -638 or -637", "</think>\n\\boxed{-638", "-638-",
                   "</think>\nAnswer: 6-38", "A</think>B</think>"],
    "countdown": ["Answer: 25 - 5 - 4 - 3 + 2", "(25 - 5) / 4 * 3 = 16", "25 - 5 - 4 - 1", "15",
                  "(25 - 5) / 4", "25 / 5 * 3 * 4 - 3 * 15", "-(5 - 25) / 4 * 3", "(25 - 5) / 4 * 3 * 1",
                  "<think>\n25 - 5 = 20", "__import__('os').system('true')", "(25 - 5) / (4 - 4) * 3",
                  "(25 - 5 / 4 * 3", "(25 - 5) / 4 ** 3", "(25 - 05) / 4 * 3", "2" * 300],
    "linear": ["Answer: 4/5", "x = 1", "1.2", "x = 5/4 + 1", "<think>\nx = 5/4", "", "Answer: x", "5/0"],
    "shortest_path": ["Answer: 9", "A-C-B-D", "8 via B", "<think>\nA = 0\nC = 0 + 1 = 1 via A", "Answer: 7"],
}


@pytest.mark.parametrize("name", list(FAMILIES))
def test_verifier_accepts_equivalent_forms(name):
    problem, answer, completions = ACCEPT[name]
    assert problem.answer == answer or name == "countdown"
    for c in completions:
        assert score(problem, c) == 1.0, c


@pytest.mark.parametrize("name", list(FAMILIES))
def test_verifier_rejects_wrong_truncated_and_malformed(name):
    problem = ACCEPT[name][0]
    for c in REJECT[name]:
        assert score(problem, c) == 0.0, c


def test_truncated_reference_traces_never_score():
    for name in FAMILIES:
        for p in _thousand(name)[::50]:
            trace = solution(p)
            for end in range(0, trace.index("</think>"), 3):
                assert score(p, trace[:end]) == 0.0, (p.prompt, trace[:end])  # thinking opened, never closed
                # without the opening tag (it sits in the prompt), a cut past the first line is still no answer;
                # a first line alone may be a right bare answer ("5 * 7" for Countdown 5, 7 -> 35)
                completion = trace[len("<think>\n"):end]
                if "\n" in completion.strip():
                    assert score(p, completion) == 0.0, (p.prompt, completion)


def test_math_verify_reads_latex_in_the_main_thread_only():
    pytest.importorskip("math_verify")
    p = arithmetic.make(2, "*", 8)
    completion = "2 * 8 = 16\n</think>\nAnswer: $\\sqrt{256}$"
    assert score(p, completion) == 1.0
    assert score(p, completion.replace("256", "255")) == 0.0
    assert score(p, "Answer: \\sqrt{256}") == 0.0  # no closed reasoning: our parser only
    result = []
    worker = threading.Thread(target=lambda: result.append(score(p, completion)))
    worker.start()
    worker.join()
    assert result == [0.0]  # no signal.alarm off the main thread: unverified, not a crash


def test_format_check():
    assert follows_format("7 + 8 = 15\n</think>\nAnswer: 15")
    assert not follows_format("7 + 8 = 15\nAnswer: 15")
    assert not follows_format("7 + 8 = 15\n</think>\n")
    assert not follows_format("<think>\n<think>7</think>\nAnswer: 15")


# ------------------------------------------------------------------ generation and splits


@pytest.mark.parametrize("name", list(FAMILIES))
def test_generation_is_deterministic_by_seed(name):
    family = FAMILIES[name]
    for d in family.levels:
        assert family.generate(3, d) == family.generate(3, d)
        assert family.generate(3, d, "heldout") == family.generate(3, d, "heldout")
        assert len({family.generate(s, d).prompt for s in range(20)}) > 10
        first = [p.prompt for p in problems(name, d, "train", 30, seed=1)]
        assert first == [p.prompt for p in problems(name, d, "train", 30, seed=1)]
        assert first != [p.prompt for p in problems(name, d, "train", 30, seed=2)]


@pytest.mark.parametrize("name", list(FAMILIES))
def test_no_heldout_prompt_occurs_in_train(name):
    family = FAMILIES[name]
    train, heldout = set(), set()
    for d in family.levels:
        for seed in range(2):
            train |= {p.prompt for p in problems(name, d, "train", 400, seed=seed, unique=False)}
            heldout |= {p.prompt for p in problems(name, d, "heldout", 100, seed=seed, unique=False)}
    assert len(heldout) > 100 and len(train) > 1000
    assert not train & heldout
    # by construction: the split is a function of the problem's key, whatever seed or difficulty drew it
    for d in family.levels:
        for p in problems(name, d, "heldout", 20, seed=5, unique=False):
            assert split_of(name, family.key(p)) == "heldout"


def test_split_is_by_content_not_by_prompt_order():
    # the same Countdown numbers in another order are the same problem, so they share one split
    a = countdown.make([7, 3, 5, 2], 24, "7 * 3 + 5 - 2")
    b = countdown.make([2, 5, 3, 7], 24, "3 * 7 - 2 + 5")
    assert countdown.key(a) == countdown.key(b)


def test_heldout_is_about_a_tenth():
    keys = [f"{a} + {b}" for a in range(100) for b in range(20)]
    share = sum(split_of("arithmetic", k) == "heldout" for k in keys) / len(keys)
    assert 0.07 < share < 0.13


def test_unique_problems_and_small_spaces():
    batch = list(problems("countdown", 2, "train", 300, seed=0))
    assert len({countdown.key(p) for p in batch}) == 300
    with pytest.raises(TaskError, match="only .* distinct"):
        list(problems("arithmetic", 1, "heldout", 100, seed=0))
    assert len(list(problems("arithmetic", 1, "heldout", 100, seed=0, unique=False))) == 100


def test_rows_round_trip_to_problems():
    p = generate("linear", seed=4, difficulty=5)
    row = json.loads(json.dumps(to_row(p, "train")))
    assert {"task", "difficulty", "prompt", "answer", "solution", "split"} <= row.keys()
    again = Problem.from_dict(row)
    assert again == p and score(again, row["solution"]) == 1.0


def test_bad_names_list_the_valid_ones():
    with pytest.raises(TaskError, match="arithmetic, countdown, linear, shortest_path"):
        get_family("knights")
    with pytest.raises(TaskError, match="choose one of: 1, 2, 3, 4, 5"):
        generate("countdown", 0, 6)
    with pytest.raises(TaskError, match="train, heldout"):
        generate("countdown", 0, 1, split="test")
    with pytest.raises(ValueError):
        countdown.make([1, 2], 4, "1 + 2")  # the stated solution must be right


# ------------------------------------------------------------------ command line


def test_cli_tasks_list(capsys):
    assert run_data_command("tasks", "list") == 0
    out = capsys.readouterr().out
    for name, family in FAMILIES.items():
        assert f"{name}: " in out
        assert all(meaning in out for meaning in family.levels.values())
    assert out.count("example (difficulty") == len(FAMILIES)
    assert run_data_command("tasks", "list", "--json") == 0
    assert set(json.loads(capsys.readouterr().out)) == set(FAMILIES)


def test_cli_tasks_show(capsys):
    assert run_data_command("tasks", "show", "--task", "shortest_path", "--difficulty", "3", "--seed", "2") == 0
    assert "verifier score of the solution: 1.0" in capsys.readouterr().out


def test_cli_data_make(tmp_path, capsys):
    train, heldout, again = tmp_path / "train.jsonl", tmp_path / "held.jsonl", tmp_path / "again.jsonl"
    common = ["--task", "countdown", "--difficulty", "3", "--n", "200", "--seed", "1"]
    assert run_data_command("data", "make", *common, "--split", "train", "--out", str(train)) == 0
    assert run_data_command("data", "make", *common, "--split", "train", "--out", str(again)) == 0
    assert run_data_command("data", "make", *common, "--split", "heldout", "--out", str(heldout)) == 0
    assert "wrote 200 countdown problems" in capsys.readouterr().out
    assert train.read_bytes() == again.read_bytes()
    rows = list(read_jsonl(train))
    assert len(rows) == 200 and rows[0]["task"] == "countdown" and rows[0]["split"] == "train"
    assert all(score(Problem.from_dict(r), r["solution"]) == 1.0 for r in rows)
    assert not {r["prompt"] for r in rows} & {r["prompt"] for r in read_jsonl(heldout)}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again.jsonl", "held.jsonl", "train.jsonl"]


def test_cli_data_make_errors_leave_no_file(tmp_path):
    out = tmp_path / "x.jsonl"
    with pytest.raises(ValueError, match="unknown task 'sudoku'; choose one of: arithmetic"):
        run_data_command("data", "make", "--task", "sudoku", "--difficulty", "1", "--split", "train", "--n", "5",
                         "--out", str(out))
    with pytest.raises(ValueError, match="choose one of: 1, 2, 3, 4, 5"):
        run_data_command("data", "make", "--task", "linear", "--difficulty", "0", "--split", "train", "--n", "5",
                         "--out", str(out))
    with pytest.raises(ValueError, match="distinct"):
        run_data_command("data", "make", "--task", "arithmetic", "--difficulty", "1", "--split", "heldout",
                         "--n", "500", "--out", str(out))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("argv", [["tasks"], ["tasks", "list"], ["tasks", "show"], ["data"], ["data", "make"],
                                  ["tokenizer", "train"], ["tokenizer", "encode"]])
def test_cli_help(argv, capsys):
    with pytest.raises(SystemExit) as e:
        run_data_command(*argv, "--help")
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "usage: r1lab " + " ".join(argv) in out and len(out) > 200


# ------------------------------------------------------------------ search traces, levels, spaces


@pytest.mark.parametrize("level", ["countdown:1", "countdown:2", "countdown:3", "countdown:4", "linear:1",
                                   "linear:2", "linear:3", "linear:4"])
def test_search_traces_verify_explore_and_differ(level):
    from r1lab.rl.rewards import self_checks
    from r1lab.tasks import parse_level, traces

    task, difficulty = parse_level(level)
    batch = list(problems(task, difficulty, "train", 60, seed=3))
    explored = 0
    for problem in batch:
        found = traces(problem, "search", n=4, seed=0)
        assert found and len(set(found)) == len(found)  # distinct
        assert found == traces(problem, "search", n=4, seed=0)  # deterministic
        for trace in found:
            assert score(problem, trace) == 1.0 and follows_format(trace), (problem.prompt, trace)
            assert trace != solution(problem)
            assert len(trace) < 1200  # bounded: fits the cold start's context
        explored += any(self_checks(t) > 0 for t in found)
        if task == "countdown":
            assert all(t.split("</think>")[0].rstrip().splitlines()[-1].startswith("check ") for t in found)
    assert explored == len(batch) if task == "countdown" else explored >= 0
    # several distinct traces for most problems: different orders, dead ends, starting guesses
    assert sum(len(traces(p, "search", n=4)) > 1 for p in batch) >= len(batch) // 2


def test_countdown_search_backs_up_on_four_numbers():
    from r1lab.tasks import search_solution

    batch = list(problems("countdown", 4, "train", 40, seed=1))
    texts = [search_solution(p, random.Random(i)) for i, p in enumerate(batch)]
    assert any("\nback [" in t for t in texts) and any("too big" in t for t in texts)
    # every line that makes a move writes the numbers left, so the trace is the same recursion at each size
    assert all(re.search(r"=\d+ \[\d+( \d+)*( -> \d+)?\]", line) for t in texts for line in t.splitlines()[2:-3]
               if not line.strip().startswith(("back", "check")))


def test_search_traces_are_refused_where_a_level_has_none():
    from r1lab.tasks import search_solution, traces

    with pytest.raises(TaskError, match="linear difficulty 5 has no search traces; these do: countdown 1, 2"):
        search_solution(generate("linear", 0, 5), random.Random(0))
    with pytest.raises(TaskError, match="arithmetic difficulty 2 has no search traces"):
        traces(generate("arithmetic", 0, 2), "search")
    assert traces(generate("arithmetic", 0, 2), "both") == [solution(generate("arithmetic", 0, 2))]
    with pytest.raises(TaskError, match="unknown trace style 'dfs'; choose one of: reference, search, guess, both"):
        traces(generate("countdown", 0, 2), "dfs")


@pytest.mark.parametrize("level", ["countdown:1", "countdown:2", "countdown:3", "countdown:4"])
def test_countdown_guess_traces_compute_every_attempt_and_compare_it_with_the_target(level):
    from fractions import Fraction

    from r1lab.tasks import parse_level, traces

    task, difficulty = parse_level(level)
    batch = list(problems(task, difficulty, "train", 60, seed=5))
    missed = 0
    for problem in batch:
        found = traces(problem, "guess", n=3, seed=0)
        assert found and len(set(found)) == len(found) and found == traces(problem, "guess", n=3, seed=0)
        target, numbers = problem.metadata["target"], problem.metadata["numbers"]
        for trace in found:
            assert score(problem, trace) == 1.0 and follows_format(trace), (problem.prompt, trace)
            attempts = trace.split("</think>")[0].split("\n")[1:-1]
            assert 1 <= len(attempts) <= 4 and len(set(attempts)) == len(attempts)
            for i, attempt in enumerate(attempts):
                steps, verdict = attempt.rsplit(" vs ", 1)
                assert verdict == f"{target} {'yes' if i == len(attempts) - 1 else 'no'}", attempt
                pool = list(numbers)
                for step in steps.split(", "):  # every step is true arithmetic on numbers still in play
                    a, op, b, value = re.fullmatch(r"(\d+)([-+*/])(\d+)=(\d+)", step).groups()
                    exact = {"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b),
                             "/": Fraction(int(a), int(b))}[op]
                    assert exact == int(value), step
                    pool.remove(int(a))
                    pool.remove(int(b))
                    pool.append(int(value))
                assert pool == [int(value)] and (int(value) == target) == (i == len(attempts) - 1)
            missed += len(attempts) > 1
    assert missed >= len(batch) // 3  # most traces show a miss or more before the hit


def test_guess_traces_fall_back_to_the_reference():
    from r1lab.tasks import traces

    linear = generate("linear", 0, 2)  # has search traces, but no guess style: the reference it is
    assert traces(linear, "guess", n=2) == [solution(linear)] != traces(linear, "search", n=2)
    arithmetic = generate("arithmetic", 0, 2)
    assert traces(arithmetic, "guess", n=3) == [solution(arithmetic)]


def test_levels_parse_with_errors_that_name_what_exists():
    from r1lab.tasks import mix_problems, parse_level

    assert parse_level("linear:3") == ("linear", 3)
    with pytest.raises(TaskError, match="unknown task 'sudoku'; choose one of: arithmetic, countdown"):
        parse_level("sudoku:1")
    with pytest.raises(TaskError, match="expected FAMILY:DIFFICULTY such as countdown:2"):
        parse_level("countdown")
    with pytest.raises(TaskError, match="unknown difficulty 7 for task 'linear'; choose one of: 1, 2, 3, 4, 5"):
        parse_level("linear:7")
    mixed = mix_problems(["countdown:2", "linear:3"], "heldout", 9, seed=2)
    assert [p.task for p in mixed] == ["countdown", "linear"] * 4 + ["countdown"]
    assert all(split_of(p.task, FAMILIES[p.task].key(p)) == "heldout" for p in mixed)


def test_space_estimates_count_small_spaces_and_grow_with_the_level():
    from r1lab.tasks import estimate_space

    family = FAMILIES["countdown"]
    exact = set()
    rng = random.Random(0)
    for _ in range(50_000):  # two numbers up to 10: small enough to exhaust by drawing
        exact.add(family.key(family.sample(rng, 1)))
    assert estimate_space(family, 1) == len(exact)
    sizes = [estimate_space(family, d, draws=5000) for d in (2, 3, 4)]
    assert 1_000 < sizes[0] < sizes[1] < sizes[2] and sizes[1] > 10_000
