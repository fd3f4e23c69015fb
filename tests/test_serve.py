"""The HTTP API against the real openai SDK, httpx and a live uvicorn server on 127.0.0.1."""

import asyncio
import json
import threading
import time

import httpx
import openai
import pytest
import uvicorn

from conftest import free_port
from r1lab.engine import EngineConfig, LLMEngine
from r1lab.serve import Pricing, create_app

KEY = "sk-test-key"


class LiveServer:
    def __init__(self, model_dir, **engine_kwargs):
        self.engine = LLMEngine(model_dir, EngineConfig(block_size=16, **engine_kwargs))
        self.app = create_app(self.engine, "tiny-chat", api_keys=[KEY], pricing=Pricing())
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="error"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            if time.time() > deadline:
                raise RuntimeError("server did not start")
            time.sleep(0.05)

    def stop(self):
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture(scope="module")
def model_dir(chat_model_dir):
    return chat_model_dir


@pytest.fixture(scope="module")
def live(model_dir):
    server = LiveServer(model_dir)
    yield server
    server.stop()


@pytest.fixture
def client(live):
    return openai.OpenAI(base_url=live.url + "/v1", api_key=KEY, max_retries=0)


def _ask(question):
    return [{"role": "user", "content": question}]


def test_non_stream_splits_reasoning_and_reports_usage_and_cost(client):
    r = client.chat.completions.create(model="tiny-chat", messages=_ask("What is 6 times 7?"), temperature=0)
    msg = r.choices[0].message
    assert msg.content == "Answer: 42"
    assert msg.reasoning_content == "6 * 7 = 42"
    assert r.choices[0].finish_reason == "stop"
    u = r.usage
    assert u.prompt_tokens == u.prompt_cache_hit_tokens + u.prompt_cache_miss_tokens
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens
    assert 0 < u.completion_tokens_details.reasoning_tokens < u.completion_tokens
    cost = r.model_extra["cost"]
    expected = (u.prompt_cache_hit_tokens * 0.14 + u.prompt_cache_miss_tokens * 0.55 + u.completion_tokens * 2.19) / 1e6
    assert cost["currency"] == "USD" and cost["total"] == pytest.approx(expected)


def test_stream_sends_reasoning_before_content_and_usage_last(client):
    stream = client.chat.completions.create(model="tiny-chat", messages=_ask("Say hi"), temperature=0, stream=True,
                                            stream_options={"include_usage": True})
    kinds, reasoning, content, usage, finish = [], "", "", None, None
    for chunk in stream:
        if not chunk.choices:
            usage = chunk.usage
            continue
        delta = chunk.choices[0].delta
        extra = delta.model_extra or {}
        if extra.get("reasoning_content"):
            kinds.append("r")
            reasoning += extra["reasoning_content"]
        if delta.content:
            kinds.append("c")
            content += delta.content
        finish = chunk.choices[0].finish_reason or finish
    assert reasoning.strip() == "greeting" and content == "hi there" and finish == "stop"
    assert "r" in kinds and "c" in kinds and kinds.index("c") > max(i for i, k in enumerate(kinds) if k == "r")
    assert usage is not None and usage.completion_tokens > 0


def test_n_stop_and_seed(client):
    r = client.chat.completions.create(model="tiny-chat", messages=_ask("What is 6 times 7?"), temperature=0, n=3,
                                       stop=["= 4"])
    assert len(r.choices) == 3
    for c in r.choices:
        assert c.finish_reason == "stop" and c.message.reasoning_content == "6 * 7" and c.message.content == ""
    a, b, c = (client.chat.completions.create(model="tiny-chat", messages=_ask("Say something"), temperature=1.5,
                                              seed=s, max_tokens=12) for s in (7, 7, 8))
    text = [x.choices[0].message.reasoning_content + x.choices[0].message.content for x in (a, b, c)]
    assert text[0] == text[1]
    assert a.choices[0].finish_reason in ("stop", "length")


def test_max_completion_tokens_and_logprobs(client):
    r = client.chat.completions.create(model="tiny-chat", messages=_ask("What is 6 times 7?"), temperature=0,
                                       max_completion_tokens=3, max_tokens=50, logprobs=True, top_logprobs=2)
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 3
    lp = r.choices[0].logprobs.content
    assert len(lp) == 3 and len(lp[0].top_logprobs) == 2 and lp[0].logprob <= 0
    assert lp[0].top_logprobs[0].logprob == pytest.approx(lp[0].logprob, abs=1e-5)


def test_reasoning_content_of_earlier_turns_is_ignored(client):
    base = _ask("What is 6 times 7?")
    turn = [*base, {"role": "assistant", "content": "Answer: 42", "reasoning_content": "long thoughts " * 20},
            {"role": "user", "content": "Say hi"}]
    plain = [*base, {"role": "assistant", "content": "Answer: 42"}, {"role": "user", "content": "Say hi"}]
    a = client.chat.completions.create(model="tiny-chat", messages=turn, temperature=0, max_tokens=5)
    b = client.chat.completions.create(model="tiny-chat", messages=plain, temperature=0, max_tokens=5)
    assert a.usage.prompt_tokens == b.usage.prompt_tokens


def test_errors_raise_the_sdk_exceptions(live, client):
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="tiny-chat", messages=_ask("x"), temperature=5)
    assert err.value.body["param"] == "temperature"
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-9", messages=_ask("x"))
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=live.url + "/v1", api_key="wrong", max_retries=0).models.list()
    with pytest.raises(openai.BadRequestError, match="context limit is 1024"):
        client.chat.completions.create(model="tiny-chat", messages=_ask("x " * 2000))
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="tiny-chat", messages=_ask("x"), stop=["a", "b", "c", "d", "e"])
    assert err.value.body["param"] == "stop"
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    r = httpx.post(live.url + "/v1/chat/completions", content=b"{not json", headers=headers)
    assert r.status_code == 400 and "malformed JSON" in r.json()["error"]["message"]
    r = httpx.post(live.url + "/v1/chat/completions", json={"messages": []}, headers=headers)
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"
    r = httpx.post(live.url + "/v1/chat/completions", json={"messages": [{"role": "robot", "content": "x"}]},
                   headers=headers)
    assert r.status_code == 400 and set(r.json()["error"]) == {"message", "type", "param", "code"}


def test_queue_full_is_429(model_dir):
    server = LiveServer(model_dir, max_waiting=0)
    try:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0)
        with pytest.raises(openai.RateLimitError):
            client.chat.completions.create(model="tiny-chat", messages=_ask("Say hi"))
    finally:
        server.stop()


def test_cache_hits_on_a_repeated_long_prefix(client):
    system = "You are a careful assistant who checks every digit twice. " * 12
    messages = [{"role": "system", "content": system}, *_ask("What is 6 times 7?")]
    first = client.chat.completions.create(model="tiny-chat", messages=messages, temperature=0, max_tokens=4)
    second = client.chat.completions.create(model="tiny-chat", messages=messages, temperature=0, max_tokens=4)
    assert first.usage.prompt_tokens > 200
    assert second.usage.prompt_cache_hit_tokens >= 128
    assert second.model_extra["cost"]["total"] < first.model_extra["cost"]["total"]


def test_completions_endpoint_prompts_echo_logprobs(live, client):
    r = client.completions.create(model="tiny-chat", prompt=["Say hi", "What"], max_tokens=3, temperature=0)
    assert len(r.choices) == 2 and all(c.finish_reason in ("stop", "length") for c in r.choices)
    ids = live.engine.encode("What is 6 times 7?")
    r = client.completions.create(model="tiny-chat", prompt=ids, max_tokens=0, echo=True, logprobs=2)
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(ids) and lp.token_logprobs[0] is None
    assert all(v <= 0 for v in lp.token_logprobs[1:]) and r.choices[0].text == "What is 6 times 7?"


def test_models_health_metrics_usage(live, client):
    assert [m.id for m in client.models.list().data] == ["tiny-chat"]
    assert httpx.get(live.url + "/health").json()["status"] == "ok"
    metrics = httpx.get(live.url + "/metrics").text
    for name in ("r1lab_requests_total", "r1lab_generation_tokens_total", "r1lab_queue_depth",
                 "r1lab_prompt_cache_hit_rate", "r1lab_request_latency_seconds_bucket",
                 "r1lab_time_to_first_token_seconds_bucket"):
        assert name in metrics
    usage = httpx.get(live.url + "/v1/usage", headers={"Authorization": f"Bearer {KEY}"}).json()
    assert usage["requests"] > 0 and usage["cost"] > 0 and usage["currency"] == "USD"


def test_disconnecting_50_streams_leaks_nothing(live):
    async def one(client):
        body = {"model": "tiny-chat", "messages": _ask("Say something long"), "stream": True, "max_tokens": 900,
                "temperature": 1.0, "ignore_eos": True}
        async with client.stream("POST", live.url + "/v1/chat/completions", json=body,
                                 headers={"Authorization": f"Bearer {KEY}"}) as response:
            async for line in response.aiter_lines():
                if line.startswith("data:"):
                    return json.loads(line[5:])  # leave after the first chunk: the connection closes

    async def main():
        async with httpx.AsyncClient(timeout=60) as client:
            return await asyncio.gather(*(one(client) for _ in range(50)))

    aborted = live.engine.stats["aborted"]
    firsts = asyncio.run(main())
    assert all(f["object"] == "chat.completion.chunk" for f in firsts)
    deadline = time.time() + 30
    while live.engine.has_unfinished() and time.time() < deadline:
        time.sleep(0.1)
    assert not live.engine.has_unfinished()
    assert live.engine.stats["aborted"] - aborted == 50  # every stream was cut short, not run to its end
    live.engine.block_manager.check_no_leaks()
    assert not live.engine.requests
