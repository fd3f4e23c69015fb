"""The engine's front: requests in, tokens out.

`LLMEngine.step()` asks the scheduler for a batch, runs it, samples, applies stop rules and returns what changed.
`generate()` drives steps until a list of prompts is done (what GRPO rollouts and eval use). `AsyncLLMEngine`
runs the same loop on a background thread and streams per-request updates to asyncio consumers (what the HTTP
server uses); cancelling a stream aborts its request and frees its blocks at once.

The engine knows token ids; text appears only through the optional tokenizer, for string prompts and stop strings.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..checkpoint import load_model, resolve_dtype
from ..model import DeepseekV3ForCausalLM
from .block_manager import BlockManager
from .config import EngineConfig
from .model_runner import ModelRunner
from .sampling import SamplingParams, sample_rows
from .scheduler import Scheduler
from .sequence import Sequence


class QueueFullError(RuntimeError):
    """The waiting queue is at `max_waiting`; the caller should retry later (HTTP 429)."""


@dataclass
class CompletionOutput:
    index: int
    token_ids: list[int]
    text: str
    finish_reason: str | None
    logprobs: list | None = None  # per token: (logprob, [(token id, logprob), ...])


@dataclass
class RequestOutput:
    request_id: str
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool
    num_cached_tokens: int = 0  # prompt tokens served from the prefix cache
    metrics: dict = field(default_factory=dict)


def tokenizer_from_dir(path: str | Path):
    """The `tokenizers.Tokenizer` saved in a checkpoint directory, or None when it has none."""
    file = Path(path) / "tokenizer.json"
    if not file.exists():
        return None
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(file))


class LLMEngine:
    def __init__(self, model: str | Path | DeepseekV3ForCausalLM, config: EngineConfig | None = None,
                 tokenizer=None):
        self.config = config or EngineConfig()
        if self.config.threads:
            torch.set_num_threads(self.config.threads)
        if isinstance(model, DeepseekV3ForCausalLM):
            self.model = model.eval()
        else:
            self.model = load_model(model, dtype=resolve_dtype(self.config.dtype))
            tokenizer = tokenizer or tokenizer_from_dir(model)
        self.tokenizer = tokenizer
        cfg = self.model.config
        self.max_model_len = min(self.config.max_model_len or cfg.max_position_embeddings,
                                 cfg.max_position_embeddings)
        layers = cfg.num_hidden_layers + cfg.num_nextn_predict_layers
        bytes_per_block = layers * self.config.block_size * cfg.latent_dim * self.model.dtype.itemsize
        num_blocks = self.config.num_blocks or max(1, int(self.config.cache_memory_mb * 2**20 // bytes_per_block))
        self.block_manager = BlockManager(num_blocks, self.config.block_size, self.config.enable_prefix_caching)
        self.scheduler = Scheduler(self.config, self.block_manager)
        self.runner = ModelRunner(self.model, num_blocks, self.config.block_size, self.config.compile)
        self.speculative = self.config.speculative_mtp
        if self.speculative and cfg.num_nextn_predict_layers < 1:
            raise ValueError("speculative_mtp=True needs a checkpoint with MTP weights (num_nextn_predict_layers >= 1)")
        self.eos_id = cfg.eos_token_id
        self.requests: dict[str, list[Sequence]] = {}
        self._ids = itertools.count()
        self.stats = {"prompt_tokens": 0, "cached_prompt_tokens": 0, "generated_tokens": 0, "steps": 0,
                      "drafted_tokens": 0, "accepted_tokens": 0, "aborted": 0}

    # ------------------------------------------------------------------ requests
    def encode(self, prompt: str | list[int]) -> list[int]:
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise ValueError("a text prompt needs a tokenizer; pass token ids or load a checkpoint with one")
            return self.tokenizer.encode(prompt, add_special_tokens=False).ids
        ids = [int(t) for t in prompt]
        vocab = self.model.config.vocab_size
        if any(t < 0 or t >= vocab for t in ids):
            raise ValueError(f"prompt token ids must be in [0, {vocab})")
        return ids

    def add_request(self, prompt: str | list[int], params: SamplingParams | None = None,
                    request_id: str | None = None) -> str:
        params = params or SamplingParams()
        ids = self.encode(prompt)
        if not ids:
            raise ValueError("the prompt is empty")
        if len(ids) >= self.max_model_len:
            raise ValueError(f"the prompt has {len(ids)} tokens; this model's context limit is "
                             f"{self.max_model_len} tokens (prompt plus at least one generated token)")
        total = len(self.block_manager.blocks)
        if self.block_manager.blocks_needed(len(ids) + 1) > total:
            raise ValueError(f"the prompt has {len(ids)} tokens but the KV cache holds only "
                             f"{total * self.config.block_size}; raise cache_memory_mb or num_blocks")
        limit = self.config.max_waiting
        if limit is not None and len(self.scheduler.waiting) + params.n > limit:
            raise QueueFullError(f"the waiting queue is full ({limit} sequences)")
        request_id = request_id or f"req-{next(self._ids)}"
        if request_id in self.requests:
            raise ValueError(f"request id {request_id!r} is already in use")
        max_tokens = min(params.max_tokens, self.max_model_len - len(ids))
        if max_tokens != params.max_tokens:
            params = SamplingParams(**{**params.__dict__, "max_tokens": max_tokens})
        seqs = [Sequence(request_id, i, list(ids), params) for i in range(params.n)]
        self.requests[request_id] = seqs
        for seq in seqs:
            self.scheduler.add(seq)
        return request_id

    def abort(self, request_id: str) -> None:
        """Cancel a request; its KV blocks are freed immediately."""
        for seq in self.requests.pop(request_id, []):
            if not seq.finished:
                self.scheduler.finish(seq, "abort")
                self.stats["aborted"] += 1

    def reset_prefix_cache(self) -> None:
        """Forget cached prefixes (call after the model's weights change, e.g. a policy update)."""
        self.block_manager.reset_prefix_cache()

    def has_unfinished(self) -> bool:
        return self.scheduler.num_unfinished > 0

    # ------------------------------------------------------------------ stepping
    def step(self) -> list[RequestOutput]:
        lookahead = 1 if self.speculative else 0
        batch = self.scheduler.schedule(lookahead=lookahead)
        touched = {seq.request_id for seq in self.scheduler.finished_while_scheduling}
        self.scheduler.finished_while_scheduling.clear()
        if batch is None:
            return [self._output(rid) for rid in touched if rid in self.requests]
        self.stats["steps"] += 1
        if not batch.is_prefill and self.speculative and all(s.draft_ids for s in batch.seqs):
            self._speculative_step(batch, touched)
        else:
            for seq in batch.seqs:
                seq.draft_ids = []
            batch.num_tokens = [n if batch.is_prefill else 1 for n in batch.num_tokens]
            logits, hidden = self.runner.forward(batch)
            ready = []  # rows whose whole known sequence is now computed: they sample their next token
            for row, (seq, n) in enumerate(zip(batch.seqs, batch.num_tokens, strict=True)):
                seq.num_computed += n
                self._hash_blocks(seq)
                if seq.num_computed == seq.num_tokens:
                    self.scheduler.promote(seq)
                    if not seq.finished:
                        ready.append(row)
                touched.add(seq.request_id)
            if ready:
                seqs = [batch.seqs[row] for row in ready]
                samples = sample_rows(logits[ready], [s.params for s in seqs],
                                      [(s.prompt_ids, s.output_ids) for s in seqs], [s.generator for s in seqs])
                for seq, sample in zip(seqs, samples, strict=True):
                    self._accept_token(seq, sample.token, sample)
            if self.speculative:
                self._draft(batch, hidden)
        return [self._output(rid) for rid in touched if rid in self.requests]

    def _hash_blocks(self, seq: Sequence) -> None:
        seq.num_hashed_blocks = self.block_manager.register_full_blocks(
            seq.block_table, seq.all_ids[:seq.num_computed], seq.num_hashed_blocks)

    def _accept_token(self, seq: Sequence, token: int, sample=None) -> None:
        if seq.first_token_time is None:
            seq.first_token_time = time.perf_counter()
        seq.output_ids.append(token)
        self.stats["generated_tokens"] += 1
        if sample is not None and seq.params.logprobs:
            seq.logprobs.append((sample.logprob, sample.top_logprobs))
        params = seq.params
        if (token == self.eos_id and not params.ignore_eos) or token in params.stop_token_ids:
            self._finish(seq, "stop")
            return
        if self.tokenizer is not None:
            added = self._detokenize(seq)
            for stop in params.stop:
                # only where the new text could complete a stop string: the tail, not the whole reply again
                at = seq.text.find(stop, max(0, len(seq.text) - len(added) - len(stop) + 1))
                if at >= 0:
                    seq.text = seq.text[:at]
                    self._finish(seq, "stop", text_is_final=True)
                    return
        if len(seq.output_ids) >= params.max_tokens:
            self._finish(seq, "length")

    def _detokenize(self, seq: Sequence) -> str:
        """Extend `seq.text` by the newest token's text and return what was added.

        Decoding the whole reply on every token costs O(length) per token, O(length^2) per reply, which a long
        reasoning trace feels. Decoding a few trailing tokens is enough: the text of the tokens from
        `seq.prefix_offset` on, minus that of the tokens already shown. A byte-level token may hold part of a
        UTF-8 character; while the decoded tail ends in a replacement character (for up to 4 tokens), nothing
        is added yet, so a stream never shows half a character.
        """
        ids = seq.output_ids
        shown = self.tokenizer.decode(ids[seq.prefix_offset:seq.read_offset], skip_special_tokens=False)
        tail = self.tokenizer.decode(ids[seq.prefix_offset:], skip_special_tokens=False)
        if tail.endswith("\ufffd") and len(ids) - seq.read_offset < 4:  # (a character has at most 4 bytes)
            return ""
        if not tail.startswith(shown):
            # Invalid UTF-8 (an untrained model's stray bytes) decodes differently in pieces: start over whole.
            seq.text = self.tokenizer.decode(ids, skip_special_tokens=False)
            seq.prefix_offset = seq.read_offset = len(ids)
            return seq.text
        added = tail[len(shown):]
        seq.text += added
        seq.prefix_offset, seq.read_offset = seq.read_offset, len(ids)
        return added

    def _finish(self, seq: Sequence, reason: str, text_is_final: bool = False) -> None:
        self.scheduler.finish(seq, reason)
        if self.tokenizer is not None and not text_is_final:
            # one whole decode at the end: drops a stop token's text, keeps a final partial character as U+FFFD
            seq.text = self.tokenizer.decode(self._visible(seq), skip_special_tokens=False)

    def _visible(self, seq: Sequence) -> list[int]:
        ids = seq.output_ids
        if ids and seq.finish_reason == "stop" and (ids[-1] == self.eos_id or ids[-1] in seq.params.stop_token_ids):
            return ids[:-1]
        return ids

    def _output(self, request_id: str) -> RequestOutput:
        seqs = self.requests[request_id]
        finished = all(s.finished for s in seqs)
        outputs = [CompletionOutput(s.index, list(s.output_ids), s.text, s.finish_reason,
                                    list(s.logprobs) if s.params.logprobs else None) for s in seqs]
        first = seqs[0]
        out = RequestOutput(request_id, first.prompt_ids, outputs, finished, first.num_cached_prompt,
                            {"arrival": first.arrival, "first_token_time": first.first_token_time})
        if finished:
            del self.requests[request_id]
            self.stats["prompt_tokens"] += len(first.prompt_ids)
            self.stats["cached_prompt_tokens"] += first.num_cached_prompt
        return out

    # ------------------------------------------------------------------ MTP speculative decoding
    def _draft(self, batch, hidden: torch.Tensor) -> None:
        """After a plain step, let the MTP module draft one token per running sequence.

        The MTP module at position i combines the main model's hidden state h_i with the embedding of token i+1
        and predicts token i+2. Over this step's positions that fills the module's own cache layer, and the last
        position (whose token i+1 was just sampled) yields the draft.
        """
        rows, starts, next_ids = [], [], []
        for row, (seq, n) in enumerate(zip(batch.seqs, batch.num_tokens, strict=True)):
            if seq.num_computed != seq.num_tokens - 1 or seq.finished:
                continue  # mid-prefill chunk or finished
            start = seq.num_computed - n
            rows.append(row)
            starts.append(start)
            next_ids.append(seq.all_ids[start + 1:start + n + 1])
        if not rows:
            return
        seqs = [batch.seqs[r] for r in rows]
        logits = self.runner.draft(seqs, hidden[rows], starts, next_ids)
        for i, seq in enumerate(seqs):
            seq.draft_ids = [int(logits[i, len(next_ids[i]) - 1].argmax())] if seq.params.greedy else []

    def _speculative_step(self, batch, touched: set[str]) -> None:
        """Verify [last token, draft] and draft the next token in one pass; keep the draft if the main model
        agrees (greedy), and then the main model's next token too."""
        seqs = batch.seqs
        targets, next_drafts = self.runner.verify_and_draft(seqs, [seq.draft_ids[0] for seq in seqs])
        for seq, target, next_draft in zip(seqs, targets, next_drafts, strict=True):
            touched.add(seq.request_id)
            draft = seq.draft_ids[0]
            seq.draft_ids = []
            seq.num_computed += 1  # the last sampled token is now in the cache
            self._hash_blocks(seq)
            self._accept_token(seq, target[0])
            if seq.finished:  # the draft was never needed; it does not count towards acceptance
                continue
            self.stats["drafted_tokens"] += 1
            if target[0] != draft:
                seq.draft_ids = [next_draft[0]]
                continue
            self.stats["accepted_tokens"] += 1
            seq.num_computed += 1  # the draft's latent, written at its position, is valid
            self._hash_blocks(seq)
            self._accept_token(seq, target[1])
            if not seq.finished:
                seq.draft_ids = [next_draft[1]]

    # ------------------------------------------------------------------ batch API
    def generate(self, prompts: Iterable[str | list[int]], params: SamplingParams | list[SamplingParams] | None = None,
                 use_tqdm: bool = False) -> list[RequestOutput]:
        prompts = list(prompts)
        params_list = params if isinstance(params, list) else [params or SamplingParams()] * len(prompts)
        if len(params_list) != len(prompts):
            raise ValueError(f"{len(params_list)} SamplingParams for {len(prompts)} prompts")
        ids = [self.add_request(p, sp) for p, sp in zip(prompts, params_list, strict=True)]
        results: dict[str, RequestOutput] = {}
        bar = None
        if use_tqdm:
            from tqdm import tqdm

            bar = tqdm(total=len(ids), desc="generate", unit="req")
        while len(results) < len(ids):
            for out in self.step():
                if out.finished:
                    results[out.request_id] = out
                    if bar:
                        bar.update(1)
            if not self.has_unfinished() and len(results) < len(ids):
                raise RuntimeError("engine stopped with unfinished requests")
        if bar:
            bar.close()
        return [results[i] for i in ids]

    @property
    def acceptance_rate(self) -> float:
        drafted = self.stats["drafted_tokens"]
        return self.stats["accepted_tokens"] / drafted if drafted else 0.0


class RequestStream:
    """Async iterator over one request's updates; leaving it early (break, cancellation) aborts the request."""

    def __init__(self, owner: AsyncLLMEngine, request_id: str, queue: asyncio.Queue):
        self.owner, self.request_id, self.queue = owner, request_id, queue

    async def __aiter__(self) -> AsyncIterator[RequestOutput]:
        try:
            while True:
                out = await self.queue.get()
                yield out
                if out.finished:
                    break
        finally:
            self.owner.abort(self.request_id)


class AsyncLLMEngine:
    """Runs `LLMEngine.step()` on one background thread; `generate()` is an async stream of RequestOutputs."""

    def __init__(self, engine: LLMEngine):
        self.engine = engine
        self._lock = threading.Lock()
        self._wakeup = threading.Event()
        self._queues: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = {}
        self._stopped = False
        self._thread = threading.Thread(target=self._loop, name="r1lab-engine", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stopped:
            with self._lock:
                busy = self.engine.has_unfinished()
                outputs = self.engine.step() if busy else []
            for out in outputs:
                target = self._queues.get(out.request_id)
                if target:
                    loop, queue = target
                    loop.call_soon_threadsafe(queue.put_nowait, out)
            if not busy:
                self._wakeup.wait(0.05)
                self._wakeup.clear()

    def submit(self, prompt: str | list[int], params: SamplingParams, request_id: str | None = None) -> RequestStream:
        """Queue a request now (raising ValueError / QueueFullError at once) and return its output stream."""
        queue: asyncio.Queue = asyncio.Queue()
        with self._lock:
            request_id = self.engine.add_request(prompt, params, request_id)
            self._queues[request_id] = (asyncio.get_running_loop(), queue)
        self._wakeup.set()
        return RequestStream(self, request_id, queue)

    async def generate(self, prompt: str | list[int], params: SamplingParams,
                       request_id: str | None = None) -> AsyncIterator[RequestOutput]:
        async for out in self.submit(prompt, params, request_id):
            yield out

    def abort(self, request_id: str) -> None:
        self._queues.pop(request_id, None)
        with self._lock:
            self.engine.abort(request_id)  # no-op when finished; frees blocks when the consumer went away

    def num_waiting(self) -> int:
        return len(self.engine.scheduler.waiting)

    def shutdown(self) -> None:
        self._stopped = True
        self._wakeup.set()
        self._thread.join(timeout=5)
