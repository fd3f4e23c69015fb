"""The endpoint backend against a real OpenAI-compatible HTTP server started on 127.0.0.1 by the test.

The server is small but honest: it speaks the chat completions wire format over real sockets, answers with
reference solutions or with wrong answers chosen per item and per sample seed, answers every request's first
attempt with 429 (and some second attempts with 503), and records what it received. The test against
`r1lab serve` itself comes with the server issue; this one pins the client side of the same protocol.
"""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from r1lab import cli, tasks
from r1lab.eval import benchmarks
from r1lab.eval.backends import EndpointBackend, Request, Sampling, sample_seed

MODEL = "r1-test"


class ChatServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, answer, fail_after=None):
        super().__init__(("127.0.0.1", 0), Handler)
        self.answer = answer  # (user message, request body) -> message dict
        self.fail_after = fail_after  # answer 400 once this many requests have succeeded
        self.lock = threading.Lock()
        self.bodies, self.auth, self.attempts = [], set(), {}
        self.in_flight = self.most_in_flight = self.succeeded = 0

    @property
    def url(self):
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def reply(self, status, payload, headers=()):
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/v1/models":
            self.reply(200, {"object": "list", "data": [{"id": MODEL, "object": "model"}]})
        else:
            self.reply(404, {"error": {"message": "not found", "type": "invalid_request_error"}})

    def do_POST(self):
        server = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        key = (body["messages"][-1]["content"], body.get("seed"))
        with server.lock:
            server.auth.add(self.headers.get("Authorization"))
            attempt = server.attempts[key] = server.attempts.get(key, 0) + 1
            if server.fail_after is not None and server.succeeded >= server.fail_after:
                return self.reply(400, {"error": {"message": "model unloaded", "type": "invalid_request_error"}})
        if attempt == 1:
            return self.reply(429, {"error": {"message": "slow down", "type": "rate_limit"}}, [("Retry-After", "0")])
        if attempt == 2 and hash(key) % 3 == 0:
            return self.reply(503, {"error": {"message": "busy", "type": "overloaded"}}, [("Retry-After", "0")])
        with server.lock:
            server.in_flight += 1
            server.most_in_flight = max(server.most_in_flight, server.in_flight)
        time.sleep(0.05)  # long enough for concurrent requests to overlap
        message = server.answer(body["messages"][-1]["content"], body)
        with server.lock:
            server.in_flight -= 1
            server.succeeded += 1
            server.bodies.append(body)
        self.reply(200, {"id": "chatcmpl-1", "object": "chat.completion", "model": body["model"],
                         "choices": [{"index": 0, "message": {"role": "assistant", **message},
                                      "finish_reason": "stop"}],
                         "usage": {"prompt_tokens": 10, "completion_tokens": 7, "total_tokens": 17}})


def serve(answer, **kwargs):
    server = ChatServer(answer, **kwargs)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def stop(server):
    server.shutdown()
    server.server_close()


def last_json(capsys):
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_task_benchmark_over_http(tmp_path, capsys):
    items = benchmarks.load("countdown").items[:4]
    by_prompt = {item.prompt: item for item in items}
    first_sample = {item.id: sample_seed(0, item.id, 0) for item in items}

    def answer(prompt, body):
        item = by_prompt[prompt]
        good = item is items[0] or (item is items[1] and body["seed"] == first_sample[item.id])
        if good:  # DeepSeek style: reasoning and answer in separate fields
            thinking, final = tasks.solution(item.reference).split("</think>")
            return {"reasoning_content": thinking.removeprefix("<think>\n"), "content": final.strip()}
        return {"content": "I try 1 + 1.\n</think>\nAnswer: 1 + 1"}  # raw style, wrong

    server = serve(answer)
    argv = ["eval", "--endpoint", server.url, "--api-key", "sekrit", "--bench", "countdown", "--limit", "4",
            "--samples", "3", "--max-tokens", "256", "--concurrency", "4", "--out", str(tmp_path / "run"), "--json"]
    assert cli.main(argv) == 0
    scores = last_json(capsys)["countdown"]
    stop(server)
    assert scores == {"n": 4, "k": 3, "pass@1": pytest.approx((1 + 1 / 3) / 4), "pass@3": 0.5, "cons@3": 0.25}
    assert len(server.bodies) == 12 and server.auth == {"Bearer sekrit"}
    assert all(attempts >= 2 for attempts in server.attempts.values())  # every 429 was retried
    assert server.most_in_flight > 1
    for body in server.bodies:
        assert body["model"] == MODEL and body["temperature"] == 0.6 and body["top_p"] == 0.95
        assert body["max_tokens"] == 256 and body["n"] == 1
    assert len({b["seed"] for b in server.bodies}) == 12
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["identity"] == {"backend": "endpoint", "url": server.url, "model": MODEL}
    assert results["benchmarks"]["countdown"]["mean_tokens"] == 7


def test_gsm8k_and_math_files_are_graded_with_math_verify(tmp_path, capsys):
    data = tmp_path / "mixed.jsonl"
    rows = [{"question": "Half of one?", "answer": "One halved.\n#### 1/2"},
            {"question": "Ten dozen tens?", "answer": "10 * 12 * 10 = 1200\n#### 1,200"},
            {"problem": "Expand.", "solution": "We get $\\boxed{x^2+1}$.", "unique_id": "algebra/7"},
            {"problem": "Two plus two?", "answer": "4"}]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    replies = {"Half of one?": "So it is \\boxed{0.5}.", "Ten dozen tens?": "The answer is 1200.",
               "Expand.": "Expanding, \\boxed{1 + x^2}", "Two plus two?": "\\boxed{5}"}
    server = serve(lambda prompt, body: {"content": replies[prompt.split("\n")[0]]})  # a non-reasoning model
    argv = ["eval", "--endpoint", server.url, "--served-model", "other-name", "--data", str(data), "--out",
            str(tmp_path / "run"), "--json"]
    assert cli.main(argv) == 0
    stop(server)
    assert last_json(capsys) == {"mixed": {"n": 4, "k": 1, "pass@1": 0.75}}
    assert {b["model"] for b in server.bodies} == {"other-name"}
    assert all(b["messages"][0]["content"].endswith(benchmarks.MATH_INSTRUCTION) for b in server.bodies)
    graded = [json.loads(line) for line in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    assert {r["item"]: r["answer"] for r in graded}["algebra/7"] == "1 + x^2"


def test_a_failing_endpoint_stops_the_run_and_a_rerun_resumes(tmp_path, capsys):
    items = benchmarks.load("linear").items[:6]
    answers = {item.prompt: f"Solve it.\n</think>\nAnswer: {item.reference.answer}" for item in items}
    out = tmp_path / "run"
    argv = ["eval", "--bench", "linear", "--limit", "6", "--concurrency", "2", "--out", str(out), "--json"]
    broken = serve(lambda prompt, body: {"content": answers[prompt]}, fail_after=3)
    assert cli.main(["eval", "--endpoint", broken.url, *argv[1:]]) == 2
    stop(broken)
    err = capsys.readouterr().err
    assert "HTTP 400" in err and "model unloaded" in err and "run the same command again" in err
    done = len((out / "samples.jsonl").read_text().splitlines())
    assert 3 <= done < 6
    healthy = serve(lambda prompt, body: {"content": answers[prompt]})
    # a new port means a new URL, so point the run record at it: same model, same settings
    record = json.loads((out / "run.json").read_text())
    record["identity"]["url"] = healthy.url
    (out / "run.json").write_text(json.dumps(record))
    assert cli.main(["eval", "--endpoint", healthy.url, *argv[1:]]) == 0
    stop(healthy)
    assert last_json(capsys)["linear"] == {"n": 6, "k": 1, "pass@1": 1.0}
    assert len(healthy.bodies) == 6 - done


def test_client_errors_are_not_retried_and_missing_models_are_explained():
    server = serve(lambda prompt, body: {"content": "x"}, fail_after=0)
    backend = EndpointBackend(server.url, retries=3)
    with pytest.raises(Exception, match="HTTP 400"):
        backend.chat(Request("b", "i", 0, "hello", 1), Sampling())
    assert sum(server.attempts.values()) == 1
    stop(server)
    with pytest.raises(ValueError, match="--served-model"):
        EndpointBackend(server.url.replace("/v1", "/nothing"), retries=0)
