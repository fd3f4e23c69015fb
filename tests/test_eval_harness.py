"""`r1lab eval --model` end to end on a tiny random model: reports, the JSON line, caching and resuming, compare.

A random model scores about zero; these tests check the plumbing (what is generated, cached, resumed, reported),
not the scores.
"""

import json
import shutil
import subprocess
import sys
import time
import urllib.request

import pytest
import torch

from conftest import free_port
from r1lab import cli
from r1lab.config import preset
from r1lab.engine import LLMEngine, SamplingParams
from r1lab.model import DeepseekV3ForCausalLM
from r1lab.tokenizer import format_chat, train_tokenizer

BENCH = ["countdown", "arithmetic:2"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-model")
    torch.manual_seed(0)
    model = DeepseekV3ForCausalLM(preset("tiny"))
    model.init_weights(0)
    model.save_pretrained(path)
    train_tokenizer(None, path)
    return path


def run(argv, capsys) -> tuple[int, str, str]:
    code = cli.main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def evaluate(model_dir, out, capsys, *extra) -> dict:
    argv = ["eval", "--model", str(model_dir), "--bench", *BENCH, "--limit", "3", "--samples", "2",
            "--max-tokens", "12", "--out", str(out), "--json", *extra]
    code, stdout, _ = run(argv, capsys)
    assert code == 0
    return json.loads(stdout.strip().splitlines()[-1])


def rows(out) -> list[dict]:
    return [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def base_run(model_dir, tmp_path_factory):
    """One run that the tests copy: loading and sampling even a tiny model takes seconds on two cores."""
    out = tmp_path_factory.mktemp("runs") / "base"
    argv = ["eval", "--model", str(model_dir), "--bench", *BENCH, "--limit", "3", "--samples", "2",
            "--max-tokens", "12", "--out", str(out), "--json"]
    assert cli.main(argv) == 0
    return out


def copy_run(base, tmp_path, name):
    shutil.copytree(base, tmp_path / name)
    return tmp_path / name


def test_model_run_writes_reports_and_ends_with_a_json_line(base_run, model_dir, tmp_path, capsys):
    out = copy_run(base_run, tmp_path, "run")
    scores = evaluate(model_dir, out, capsys)  # fully cached: prints the same scores without loading the model
    assert set(scores) == set(BENCH)
    for s in scores.values():
        assert s["n"] == 3 and s["k"] == 2 and set(s) == {"n", "k", "pass@1", "pass@2", "cons@2"}
        assert 0.0 <= s["pass@1"] <= s["pass@2"] <= 1.0
    samples = rows(out)
    assert len(samples) == 2 * 3 * 2
    assert all(r["tokens"] <= 12 and r["finish_reason"] in ("stop", "length") for r in samples)
    results = json.loads((out / "results.json").read_text())
    assert results["identity"] == {"backend": "model", "model": str(model_dir.resolve())}
    assert json.loads((base_run / "results.json").read_text())["generated"] == 12 and results["generated"] == 0
    assert "| countdown | 3 |" in (out / "report.md").read_text()
    assert (out / "chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_an_interrupted_run_resumes_with_the_same_samples(base_run, model_dir, tmp_path, capsys):
    cut = copy_run(base_run, tmp_path, "cut")
    lines = (cut / "samples.jsonl").read_text().splitlines(keepends=True)
    # as if killed mid-write: five samples never graded and a torn line at the end
    (cut / "samples.jsonl").write_text("".join(lines[:7]) + lines[7][:25])
    evaluate(model_dir, cut, capsys)
    assert json.loads((cut / "results.json").read_text())["generated"] == 5
    key = lambda r: (r["bench"], r["item"], r["index"])
    resumed = {key(r): r["completion"] for r in rows(cut)}
    assert resumed == {key(r): r["completion"] for r in rows(base_run)}  # per-sample seeds: the same draws


def test_more_samples_later_adds_only_the_missing_ones(base_run, model_dir, tmp_path, capsys):
    out = copy_run(base_run, tmp_path, "grow")
    scores = evaluate(model_dir, out, capsys, "--samples", "3")
    assert json.loads((out / "results.json").read_text())["generated"] == 6
    assert scores["countdown"]["k"] == 3 and "cons@3" in scores["countdown"]


def test_a_run_directory_refuses_other_settings(base_run, model_dir, capsys):
    code, _, err = run(["eval", "--model", str(model_dir), "--bench", "countdown", "--limit", "1", "--temperature",
                        "1.0", "--max-tokens", "12", "--out", str(base_run)], capsys)
    assert code == 2 and "other settings" in err


def test_compare_prints_a_scoreboard_of_runs(base_run, tmp_path, capsys):
    other = copy_run(base_run, tmp_path, "other")
    results = json.loads((other / "results.json").read_text())
    results["label"], results["benchmarks"]["countdown"]["pass@2"] = "rival", 1.0
    (other / "results.json").write_text(json.dumps(results))
    code, stdout, _ = run(["eval", "compare", str(base_run), str(other), "--metric", "pass@k", "--json"], capsys)
    assert code == 0
    lines = stdout.strip().splitlines()
    label = json.loads((base_run / "results.json").read_text())["label"]
    assert lines[0] == f"| pass@k | {label} | rival |"
    assert lines[2].startswith("| countdown |") and lines[2].endswith(" | 100.0* |")
    assert lines[3].startswith("| arithmetic:2 |") and lines[3].count("*") == 2  # a tie marks both
    assert set(json.loads(lines[-1])["scores"]) == set(BENCH)


def test_a_training_run_directory_evaluates_its_latest_checkpoint(base_run, model_dir, tmp_path, capsys):
    # `r1lab train` writes RUN/step-N/ and a RUN/checkpoint link to the newest step; --model RUN follows it
    training_run = tmp_path / "sft-run"
    training_run.mkdir()
    (training_run / "checkpoint").symlink_to(model_dir, target_is_directory=True)
    out = copy_run(base_run, tmp_path, "via-run")
    assert evaluate(training_run, out, capsys) == evaluate(model_dir, copy_run(base_run, tmp_path, "direct"), capsys)


def test_bad_invocations_print_one_line(model_dir, tmp_path, capsys):
    code, _, err = run(["eval", "--bench", "countdown"], capsys)
    assert code == 2 and "exactly one of" in err
    code, _, err = run(["eval", "--model", str(model_dir), "--bench", "sudoku", "--out", str(tmp_path)], capsys)
    assert code == 2 and "unknown benchmark 'sudoku'" in err
    code, _, err = run(["eval", "--model", str(tmp_path / "none"), "--bench", "linear"], capsys)
    assert code == 2 and "config.json" in err
    code, _, err = run(["eval", "compare", str(tmp_path / "none")], capsys)
    assert code == 2 and "results.json" in err


def test_one_request_with_n_samples_equals_n_seeded_requests(model_dir):
    """The resume guarantee rests on this: sample i of a request seeded s is the request seeded s + i."""
    engine = LLMEngine(str(model_dir))
    prompt = format_chat([{"role": "user", "content": "Make 10 from 2, 5."}], add_generation_prompt=True)
    params = dict(temperature=0.6, top_p=0.95, max_tokens=6)
    together = engine.generate([prompt], SamplingParams(n=3, seed=40, **params))[0].outputs
    apart = [engine.generate([prompt], SamplingParams(n=1, seed=40 + i, **params))[0].outputs[0] for i in range(3)]
    assert [o.token_ids for o in together] == [o.token_ids for o in apart]


def test_r1lab_serve_gives_the_same_samples_as_the_engine(base_run, model_dir, tmp_path, capsys):
    """`r1lab serve` as a real process, evaluated through the endpoint backend: with per-sample seeds forwarded,
    the server draws exactly the samples the in-process engine drew (same lengths, same verdicts)."""
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "r1lab", "serve", "--model", str(model_dir), "--port", str(port),
                               "--api-key", "sk-eval"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except OSError:
                assert server.poll() is None, server.stderr.read().decode()[-2000:]
                assert time.monotonic() < deadline, "r1lab serve did not come up"
                time.sleep(0.2)
        out = tmp_path / "served"
        code, stdout, _ = run(["eval", "--endpoint", f"http://127.0.0.1:{port}/v1", "--api-key", "sk-eval",
                               "--bench", *BENCH, "--limit", "3", "--samples", "2", "--max-tokens", "12",
                               "--out", str(out), "--json"], capsys)
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert code == 0
    scores = json.loads(stdout.strip().splitlines()[-1])
    assert scores == json.loads(capsys_free_json(base_run))
    key = lambda r: (r["bench"], r["item"], r["index"])
    engine = {key(r): (r["tokens"], r["correct"], r["answer"]) for r in rows(base_run)}
    served = {key(r): (r["tokens"], r["correct"], r["answer"]) for r in rows(out)}
    assert served == engine


def capsys_free_json(run_dir) -> str:
    """The --json line that a run directory's results.json stands for."""
    from r1lab.eval.harness import json_line

    return json_line(json.loads((run_dir / "results.json").read_text()))
