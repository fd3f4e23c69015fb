"""The HTTP API: DeepSeek/OpenAI-compatible chat and text completions on top of the engine.

Conventions mirrored (REFERENCE §10): the reasoning model returns its chain of thought in
`message.reasoning_content` beside `message.content` (streaming sends `delta.reasoning_content` chunks before
`delta.content`); `usage` reports `prompt_cache_hit_tokens` / `prompt_cache_miss_tokens` and
`completion_tokens_details.reasoning_tokens`; errors have the OpenAI shape {"error": {message, type, param, code}}.

Extension: every completion (and the final usage chunk of a stream) carries `cost`, the price of the request under
the server's pricing table, in the table's currency. Client input never produces a 500: validation problems are
400 with `param` naming the field, unknown models 404, a full queue 429, shutdown 503.
"""

from __future__ import annotations

import json
import time
import uuid
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, StreamingResponse
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..engine import AsyncLLMEngine, LLMEngine, QueueFullError, SamplingParams
from ..tokenizer import format_chat
from .pricing import Ledger, Pricing
from .protocol import ChatCompletionRequest, CompletionRequest
from .reasoning import END_THINK, StreamSplitter, split_reasoning

STATIC = Path(__file__).parent / "static"


class APIError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code


def _error(status: int, message: str, type_: str, param: str | None = None, code: str | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": type_, "param": param, "code": code}}, status)


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("r1lab_requests", "HTTP API requests", ["endpoint", "status"], registry=r)
        self.prompt_tokens = Counter("r1lab_prompt_tokens", "Prompt tokens processed", registry=r)
        self.cache_hit_tokens = Counter("r1lab_prompt_cache_hit_tokens", "Prompt tokens served from cache", registry=r)
        self.generation_tokens = Counter("r1lab_generation_tokens", "Tokens generated", registry=r)
        self.queue_depth = Gauge("r1lab_queue_depth", "Sequences waiting for a slot", registry=r)
        self.running = Gauge("r1lab_running_sequences", "Sequences being decoded", registry=r)
        self.cache_hit_rate = Gauge("r1lab_prompt_cache_hit_rate", "Cache-hit share of prompt tokens", registry=r)
        buckets = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
        self.latency = Histogram("r1lab_request_latency_seconds", "Request latency", ["endpoint"], buckets=buckets,
                                 registry=r)
        self.ttft = Histogram("r1lab_time_to_first_token_seconds", "Time to first token", buckets=buckets, registry=r)


def create_app(engine: LLMEngine, served_model_name: str, api_keys: list[str] | None = None,
               pricing: Pricing | None = None) -> FastAPI:
    """Build the FastAPI app around an engine (which the app drives on a background thread while it runs)."""
    keys = set(api_keys or [])
    ledger = Ledger(pricing or Pricing())
    metrics = Metrics()
    state = {"shutting_down": False, "engine": None}
    tokenizer = engine.tokenizer
    end_think_id = tokenizer.token_to_id(END_THINK) if tokenizer is not None else None

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        state["engine"] = AsyncLLMEngine(engine)
        try:
            yield
        finally:
            state["shutting_down"] = True
            state["engine"].shutdown()

    app = FastAPI(title="r1lab", description="DeepSeek/OpenAI-compatible API for r1lab models", lifespan=lifespan)
    app.state.ledger, app.state.metrics, app.state.engine = ledger, metrics, engine

    # ------------------------------------------------------------------ errors
    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError):
        return _error(exc.status, exc.message, exc.type, exc.param, exc.code)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        if first.get("type") == "json_invalid":
            return _error(400, f"malformed JSON body: {first.get('msg', '')}", "invalid_request_error")
        loc = [str(p) for p in first.get("loc", []) if p != "body"]
        param = ".".join(loc) or None
        return _error(400, f"invalid value for {param or 'the request body'}: {first.get('msg', 'invalid')}",
                      "invalid_request_error", param, "invalid_value")

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        return _error(exc.status_code, str(exc.detail), "invalid_request_error")

    @app.exception_handler(Exception)
    async def _server_error(request: Request, exc: Exception):
        return _error(500, f"internal server error: {type(exc).__name__}", "server_error")

    @app.middleware("http")
    async def _guard(request: Request, call_next):
        path = request.url.path
        if state["shutting_down"]:
            return _error(503, "the server is shutting down", "service_unavailable")
        if keys and path.startswith("/v1/"):
            header = request.headers.get("authorization", "")
            token = header[7:] if header.lower().startswith("bearer ") else ""
            if token not in keys:
                return _error(401, "invalid or missing API key; send 'Authorization: Bearer <key>'",
                              "authentication_error", None, "invalid_api_key")
        start = time.perf_counter()
        response = await call_next(request)
        if path.startswith("/v1/"):
            metrics.requests.labels(path, str(response.status_code)).inc()
            metrics.latency.labels(path).observe(time.perf_counter() - start)
        return response

    # ------------------------------------------------------------------ helpers
    def check_model(name: str | None) -> None:
        if name is not None and name != served_model_name:
            raise APIError(404, f"the model {name!r} does not exist; this server serves {served_model_name!r}",
                           "invalid_request_error", "model", "model_not_found")

    def submit(prompt, params: SamplingParams, param_name: str):
        try:
            return state["engine"].submit(prompt, params)
        except QueueFullError as e:
            raise APIError(429, f"{e}; retry later", "rate_limit_error", None, "queue_full") from None
        except ValueError as e:
            code = "context_length_exceeded" if "context limit" in str(e) else "invalid_value"
            raise APIError(400, str(e), "invalid_request_error", param_name, code) from None

    def sampling(body, max_tokens: int | None, logprobs: bool, top_logprobs: int) -> SamplingParams:
        try:
            return SamplingParams(
                temperature=body.temperature, top_p=body.top_p, max_tokens=max_tokens or 1,
                seed=body.seed, stop=body.stop or [], presence_penalty=body.presence_penalty,
                frequency_penalty=body.frequency_penalty, logprobs=logprobs, top_logprobs=top_logprobs, n=body.n,
                ignore_eos=body.ignore_eos)
        except ValueError as e:
            raise APIError(400, str(e), "invalid_request_error", str(e).split("=")[0], "invalid_value") from None

    def default_max_tokens(prompt_len: int) -> int:
        return max(1, engine.max_model_len - prompt_len)

    def reasoning_tokens(ids: list[int]) -> int:
        if end_think_id is not None and end_think_id in ids:
            return ids.index(end_think_id) + 1
        return len(ids)  # never closed its thinking: all of it is reasoning

    def usage(out, completion_tokens: int, reasoning: int | None = None) -> tuple[dict, dict]:
        return account(len(out.prompt_token_ids), out.num_cached_tokens, completion_tokens, reasoning)

    def account(prompt_tokens: int, hit: int, completion_tokens: int, reasoning: int | None = None
                ) -> tuple[dict, dict]:
        """Record a finished request in the ledger and metrics; returns its `usage` body and `cost`."""
        cost = ledger.record(hit, prompt_tokens - hit, completion_tokens)
        metrics.prompt_tokens.inc(prompt_tokens)
        metrics.cache_hit_tokens.inc(hit)
        metrics.generation_tokens.inc(completion_tokens)
        body = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens, "prompt_cache_hit_tokens": hit,
                "prompt_cache_miss_tokens": prompt_tokens - hit}
        if reasoning is not None:
            body["completion_tokens_details"] = {"reasoning_tokens": reasoning}
        return body, cost

    def token_text(token: int) -> str:
        return tokenizer.decode([token], skip_special_tokens=False) if tokenizer is not None else str(token)

    def chat_logprobs(entries) -> dict | None:
        if entries is None:
            return None
        content = []
        for token, (logprob, top) in entries:
            text = token_text(token)
            content.append({"token": text, "logprob": logprob, "bytes": list(text.encode()),
                            "top_logprobs": [{"token": token_text(t), "logprob": lp,
                                              "bytes": list(token_text(t).encode())} for t, lp in (top or [])]})
        return {"content": content}

    def observe_ttft(out) -> None:
        first = out.metrics.get("first_token_time")
        if first is not None:
            metrics.ttft.observe(first - out.metrics["arrival"])

    # ------------------------------------------------------------------ routes
    @app.get("/", include_in_schema=False)
    async def index():
        return FileResponse(STATIC / "index.html")

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": served_model_name}

    @app.get("/metrics")
    async def prometheus():
        metrics.queue_depth.set(len(engine.scheduler.waiting))
        metrics.running.set(len(engine.scheduler.running))
        t = ledger.totals
        metrics.cache_hit_rate.set(t["prompt_cache_hit_tokens"] / t["prompt_tokens"] if t["prompt_tokens"] else 0.0)
        return PlainTextResponse(generate_latest(metrics.registry).decode(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": served_model_name, "object": "model", "created": 0,
                                            "owned_by": "r1lab", "max_model_len": engine.max_model_len}]}

    @app.get("/v1/usage")
    async def usage_summary():
        return ledger.summary()

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest):
        check_model(body.model)
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()}
                    for m in body.messages]  # reasoning_content of earlier turns is dropped here
        prompt = format_chat(messages, add_generation_prompt=True)
        prompt_ids = engine.encode(prompt) if tokenizer is not None else None
        if prompt_ids is None:
            raise APIError(400, "this model has no tokenizer; use /v1/completions with token ids", param="messages")
        max_tokens = body.max_completion_tokens or body.max_tokens or default_max_tokens(len(prompt_ids))
        params = sampling(body, max_tokens, body.logprobs, body.top_logprobs or 0)
        stream = submit(prompt_ids, params, "messages")
        rid, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        base = {"id": rid, "created": created, "model": served_model_name}
        if not body.stream:
            last = None
            async for out in stream:
                last = out
            observe_ttft(last)
            choices, completion, reasoning_total = [], 0, 0
            for c in last.outputs:
                reasoning_text, content = split_reasoning(c.text)
                completion += len(c.token_ids)
                reasoning_total += reasoning_tokens(c.token_ids)
                choices.append({"index": c.index, "message": {"role": "assistant", "content": content,
                                                              "reasoning_content": reasoning_text},
                                "logprobs": chat_logprobs(list(zip(c.token_ids, c.logprobs, strict=False))
                                                          if c.logprobs is not None else None),
                                "finish_reason": c.finish_reason})
            usage_body, cost = usage(last, completion, reasoning_total)
            return {**base, "object": "chat.completion", "choices": choices, "usage": usage_body, "cost": cost,
                    "system_fingerprint": "r1lab"}

        include_usage = bool(body.stream_options and body.stream_options.include_usage)

        async def events():
            splitters = [StreamSplitter(body.stop) for _ in range(body.n)]
            sent_tokens = [0] * body.n
            started = [False] * body.n
            last = None

            def chunk(choices, **extra):
                return "data: " + json.dumps({**base, "object": "chat.completion.chunk", "choices": choices,
                                              **extra}) + "\n\n"

            async for out in stream:
                last = out
                for c in out.outputs:
                    final = c.finish_reason is not None
                    r_delta, c_delta = splitters[c.index].update(c.text, final)
                    new_tokens = c.token_ids[sent_tokens[c.index]:]
                    logprobs = None
                    if c.logprobs is not None and new_tokens:
                        logprobs = chat_logprobs(list(zip(new_tokens, c.logprobs[sent_tokens[c.index]:],
                                                          strict=False)))
                    sent_tokens[c.index] = len(c.token_ids)
                    delta = {}
                    if not started[c.index]:
                        delta["role"] = "assistant"
                        started[c.index] = True
                    if r_delta:
                        delta["reasoning_content"] = r_delta
                    if c_delta:
                        delta["content"] = c_delta
                    if delta or logprobs:
                        yield chunk([{"index": c.index, "delta": delta, "logprobs": logprobs,
                                      "finish_reason": None}])
                    if final and sent_tokens[c.index] >= 0:
                        yield chunk([{"index": c.index, "delta": {}, "logprobs": None,
                                      "finish_reason": c.finish_reason}])
                        sent_tokens[c.index] = -10**9  # finished: report once
            if last is not None:
                observe_ttft(last)
                completion = sum(len(c.token_ids) for c in last.outputs)
                reasoning_total = sum(reasoning_tokens(c.token_ids) for c in last.outputs)
                usage_body, cost = usage(last, completion, reasoning_total)
                if include_usage:
                    yield chunk([], usage=usage_body, cost=cost)
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest):
        check_model(body.model)
        prompts = body.prompt
        if isinstance(prompts, str) or (isinstance(prompts, list) and prompts and isinstance(prompts[0], int)):
            prompts = [prompts]
        if not prompts:
            raise APIError(400, "prompt must not be empty", param="prompt")
        if body.stream and len(prompts) > 1:
            raise APIError(400, "streaming supports one prompt per request", param="prompt")
        encoded = []
        for p in prompts:
            try:
                encoded.append(engine.encode(p))
            except ValueError as e:
                raise APIError(400, str(e), param="prompt") from None
        echo_logprobs = body.echo and body.logprobs is not None
        choices, results = [], []
        for ids in encoded:
            if not ids:
                raise APIError(400, "prompt must not be empty", param="prompt")
            if body.max_tokens == 0:
                if not body.echo:
                    raise APIError(400, "max_tokens=0 is only allowed with echo=true", param="max_tokens")
                results.append((ids, None))
                continue
            params = sampling(body, body.max_tokens or default_max_tokens(len(ids)), body.logprobs is not None,
                              body.logprobs or 0)
            stream = submit(ids, params, "prompt")
            if body.stream:
                return StreamingResponse(_stream_completion(stream, body, ids), media_type="text/event-stream")
            last = None
            async for out in stream:
                last = out
            results.append((ids, last))
        completion_total, hit_total, prompt_total = 0, 0, 0
        for ids, out in results:
            prompt_logprobs = await _prompt_logprobs(ids, body.logprobs or 0) if echo_logprobs else None
            prompt_total += len(ids)
            if out is None:
                text = tokenizer.decode(ids, skip_special_tokens=False) if tokenizer is not None else ""
                choices.append({"index": len(choices), "text": text, "finish_reason": "length",
                                "logprobs": _legacy_logprobs(ids, prompt_logprobs, [], None, body.logprobs)})
                continue
            hit_total += out.num_cached_tokens
            prefix = tokenizer.decode(ids, skip_special_tokens=False) if body.echo and tokenizer else ""
            for c in out.outputs:
                completion_total += len(c.token_ids)
                logprobs = (_legacy_logprobs(ids if body.echo else [], prompt_logprobs, c.token_ids, c.logprobs,
                                             body.logprobs) if body.logprobs is not None else None)
                choices.append({"index": len(choices), "text": prefix + c.text, "finish_reason": c.finish_reason,
                                "logprobs": logprobs})
        total_usage, cost = account(prompt_total, hit_total, completion_total)
        return {"id": f"cmpl-{uuid.uuid4().hex[:24]}", "object": "text_completion", "created": int(time.time()),
                "model": served_model_name, "choices": choices, "usage": total_usage, "cost": cost}

    async def _stream_completion(stream, body: CompletionRequest, ids: list[int]):
        sent = [0] * body.n
        rid = f"cmpl-{uuid.uuid4().hex[:24]}"
        last = None
        async for out in stream:
            last = out
            for c in out.outputs:
                delta = c.text[sent[c.index]:]
                sent[c.index] = len(c.text)
                if delta or c.finish_reason:
                    yield "data: " + json.dumps({"id": rid, "object": "text_completion", "created": int(time.time()),
                                                 "model": served_model_name, "choices": [
                                                     {"index": c.index, "text": delta, "logprobs": None,
                                                      "finish_reason": c.finish_reason}]}) + "\n\n"
        if last is not None:
            completion = sum(len(c.token_ids) for c in last.outputs)
            usage_body, cost = usage(last, completion)
            if body.stream_options and body.stream_options.include_usage:
                yield "data: " + json.dumps({"id": rid, "object": "text_completion", "created": int(time.time()),
                                             "model": served_model_name, "choices": [], "usage": usage_body,
                                             "cost": cost}) + "\n\n"
        yield "data: [DONE]\n\n"

    async def _prompt_logprobs(ids: list[int], top: int) -> list[tuple[float | None, list]]:
        """Log-probability of each prompt token given the ones before it (one forward; first token has none)."""
        import asyncio

        import torch

        def compute():
            with state["engine"]._lock, torch.inference_mode():
                logits = engine.model(torch.tensor([ids])).logits[0].float()
            logp = torch.log_softmax(logits, dim=-1)
            result = [(None, [])]
            for i in range(1, len(ids)):
                row = logp[i - 1]
                tops = list(zip(*[t.tolist() for t in row.topk(top)], strict=True)) if top else []
                result.append((float(row[ids[i]]), [(tid, lp) for lp, tid in tops]))
            return result

        return await asyncio.get_running_loop().run_in_executor(None, compute)

    def _legacy_logprobs(prompt_ids, prompt_logprobs, output_ids, output_logprobs, top: int | None) -> dict:
        tokens, token_logprobs, top_logprobs, offsets = [], [], [], []
        offset = 0
        pairs = list(zip(prompt_ids, prompt_logprobs or [(None, [])] * len(prompt_ids), strict=True))
        pairs += list(zip(output_ids, output_logprobs or [(None, [])] * len(output_ids), strict=True))
        for token, (lp, tops) in pairs:
            text = token_text(token)
            tokens.append(text)
            token_logprobs.append(lp)
            top_logprobs.append({token_text(t): v for t, v in tops} if (top and lp is not None) else None)
            offsets.append(offset)
            offset += len(text)
        return {"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": top_logprobs,
                "text_offset": offsets}

    return app
