"""Continuous batching: which sequences run in the next model step, and how many tokens each computes.

A step is either a *prefill* step (prompt chunks, up to `max_num_batched_tokens` tokens in all, so a long prompt
is split across steps and never stalls decoding for long) or a *decode* step (one new token for every running
sequence, plus drafted tokens when MTP speculation is on). Prefill goes first, so new requests join the running
batch at the next step boundary; finished or aborted sequences leave it at once, freeing their blocks.

When blocks run out during decoding, the most recently started sequence is preempted: its blocks are freed and
it returns to the front of the queue, to be recomputed (prompt + what it generated so far) when space allows.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from .block_manager import BlockManager
from .config import EngineConfig
from .sequence import Sequence, Status


@dataclass
class ScheduledBatch:
    seqs: list[Sequence]
    num_tokens: list[int]  # tokens each sequence computes this step
    is_prefill: bool


class Scheduler:
    def __init__(self, config: EngineConfig, block_manager: BlockManager):
        self.config = config
        self.blocks = block_manager
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.finished_while_scheduling: list[Sequence] = []  # reported by the engine's next step

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    @property
    def num_unfinished(self) -> int:
        return len(self.waiting) + len(self.running)

    def schedule(self, lookahead: int = 0) -> ScheduledBatch | None:
        batch = self._schedule_prefill()
        if batch is not None:
            return batch
        return self._schedule_decode(lookahead)

    def _schedule_prefill(self) -> ScheduledBatch | None:
        budget = self.config.max_num_batched_tokens
        seqs, counts = [], []
        for seq in list(self.waiting):
            if budget <= 0 or len(self.running) + len(seqs) >= self.config.max_num_seqs:
                break
            if not seq.block_table:
                try:
                    seq.block_table, cached = self.blocks.allocate_prompt(seq.all_ids)
                except MemoryError:
                    break  # wait for running sequences to free blocks
                seq.num_computed = cached
                if not seq.output_ids:
                    seq.num_cached_prompt = cached
                seq.num_hashed_blocks = cached // self.blocks.block_size
            take = min(seq.num_pending, budget)
            seqs.append(seq)
            counts.append(take)
            budget -= take
        if not seqs:
            return None
        return ScheduledBatch(seqs, counts, is_prefill=True)

    def _schedule_decode(self, lookahead: int) -> ScheduledBatch | None:
        seqs = []
        for seq in list(self.running):
            if seq.status is not Status.RUNNING:
                continue
            # room for the pending token and any drafted ones
            while not self.blocks.ensure_capacity(seq.block_table, seq.num_tokens + lookahead):
                if len(self.running) == 1:
                    # Alone and still out of blocks: the whole cache cannot hold this sequence any longer.
                    self.finish(seq, "length")
                    self.finished_while_scheduling.append(seq)
                    break
                victim = self.running[-1]
                self.preempt(victim)
                if victim is seq:
                    break
            if seq.status is Status.RUNNING:
                seqs.append(seq)
        if not seqs:
            return None
        return ScheduledBatch(seqs, [1 + len(s.draft_ids) for s in seqs], is_prefill=False)

    def promote(self, seq: Sequence) -> None:
        """Move a sequence whose prompt is fully computed from the queue to the running batch."""
        if seq.status is Status.WAITING:
            self.waiting.remove(seq)
            seq.status = Status.RUNNING
            self.running.append(seq)

    def preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self.blocks.free_blocks(seq.block_table)
        seq.num_computed = 0
        seq.num_hashed_blocks = 0
        seq.draft_ids = []
        seq.status = Status.WAITING
        self.waiting.appendleft(seq)

    def finish(self, seq: Sequence, reason: str) -> None:
        seq.status = Status.FINISHED
        seq.finish_reason = reason
        if seq in self.running:
            self.running.remove(seq)
        if seq in self.waiting:
            self.waiting.remove(seq)
        self.blocks.free_blocks(seq.block_table)
