"""Paged KV-cache bookkeeping: fixed-size blocks, reference counts and prefix caching by block hash.

The cache itself (one tensor of latents, see `model_runner.PagedLatentCache`) is indexed by *slot* =
block_id * block_size + offset. This module decides which blocks a sequence owns; it never touches tensors.

Prefix caching: every *full* block gets a hash chained over all tokens before it (hash(prev_hash, tokens)),
so two prompts share a block only if they share the whole prefix up to its end. Blocks whose reference count
falls to zero return to the free list but keep their hash and content until reused, so a later request with the
same prefix can still hit them (the least recently freed block is reused last).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np


def block_hash(prev: bytes | None, tokens: list[int]) -> bytes:
    h = hashlib.blake2b(digest_size=16)
    if prev is not None:
        h.update(prev)
    h.update(np.asarray(tokens, dtype=np.int64).tobytes())
    return h.digest()


@dataclass
class Block:
    block_id: int
    ref_count: int = 0
    hash: bytes | None = None
    tokens: list[int] = field(default_factory=list)  # kept for full blocks to rule out hash collisions


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True):
        if num_blocks < 1 or block_size < 1:
            raise ValueError(f"num_blocks={num_blocks} and block_size={block_size} must both be >= 1")
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.blocks = [Block(i) for i in range(num_blocks)]
        self.free: OrderedDict[int, None] = OrderedDict((i, None) for i in range(num_blocks))  # oldest first
        self.hash_to_block: dict[bytes, int] = {}

    # ------------------------------------------------------------------ queries
    @property
    def num_free_blocks(self) -> int:
        return len(self.free)

    def blocks_needed(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def can_allocate(self, num_tokens: int) -> bool:
        return self.blocks_needed(num_tokens) <= self.num_free_blocks

    # ------------------------------------------------------------------ allocation
    def _take_free(self) -> Block:
        block_id, _ = self.free.popitem(last=False)
        block = self.blocks[block_id]
        if block.hash is not None:  # a cached-but-free block gets new content: forget its old identity
            if self.hash_to_block.get(block.hash) == block_id:
                del self.hash_to_block[block.hash]
            block.hash, block.tokens = None, []
        block.ref_count = 1
        return block

    def allocate_prompt(self, tokens: list[int]) -> tuple[list[int], int]:
        """Blocks for a new prompt, reusing cached full blocks of its prefix.

        Returns (block table, number of prompt tokens already in the cache). At least the last prompt token is
        always left to compute, because the model must produce logits for it.
        """
        table: list[int] = []
        cached = 0
        prev: bytes | None = None
        if self.enable_prefix_caching:
            full = (len(tokens) - 1) // self.block_size
            for i in range(full):
                chunk = tokens[i * self.block_size:(i + 1) * self.block_size]
                h = block_hash(prev, chunk)
                block_id = self.hash_to_block.get(h)
                if block_id is None or self.blocks[block_id].tokens != chunk:
                    break
                block = self.blocks[block_id]
                if block.ref_count == 0:
                    del self.free[block_id]
                block.ref_count += 1
                table.append(block_id)
                cached += self.block_size
                prev = h
        needed = self.blocks_needed(len(tokens)) - len(table)
        if needed > self.num_free_blocks:
            self.free_blocks(table)
            raise MemoryError("not enough free KV blocks")
        table += [self._take_free().block_id for _ in range(needed)]
        return table, cached

    def ensure_capacity(self, table: list[int], num_tokens: int) -> bool:
        """Grow `table` in place to hold num_tokens; False (and no change) if blocks ran out."""
        needed = self.blocks_needed(num_tokens) - len(table)
        if needed <= 0:
            return True
        if needed > self.num_free_blocks:
            return False
        table += [self._take_free().block_id for _ in range(needed)]
        return True

    def register_full_blocks(self, table: list[int], tokens: list[int], first_unhashed: int) -> int:
        """Hash the full blocks of `tokens` from block index `first_unhashed` on; returns the new first_unhashed."""
        if not self.enable_prefix_caching:
            return first_unhashed
        full = len(tokens) // self.block_size
        prev = self.blocks[table[first_unhashed - 1]].hash if first_unhashed > 0 else None
        for i in range(first_unhashed, full):
            chunk = tokens[i * self.block_size:(i + 1) * self.block_size]
            h = block_hash(prev, chunk)
            block = self.blocks[table[i]]
            if block.hash is None:
                block.hash, block.tokens = h, list(chunk)
                self.hash_to_block.setdefault(h, block.block_id)
            prev = block.hash
        return max(first_unhashed, full)

    def free_blocks(self, table: list[int]) -> None:
        """Drop one reference to each block (in reverse, so a prefix's tail is evicted before its head)."""
        for block_id in reversed(table):
            block = self.blocks[block_id]
            block.ref_count -= 1
            if block.ref_count < 0:
                raise RuntimeError(f"block {block_id} freed more often than allocated")
            if block.ref_count == 0:
                self.free[block_id] = None
        table.clear()

    def reset_prefix_cache(self) -> None:
        """Drop every block's hash so no later request reuses content computed so far (only when idle: live
        sequences chain their block hashes)."""
        if any(b.ref_count for b in self.blocks):
            raise RuntimeError("reset_prefix_cache needs an idle engine (no live sequences)")
        self.hash_to_block.clear()
        for block in self.blocks:
            block.hash, block.tokens = None, []

    def check_no_leaks(self) -> None:
        """Raise if any block is still referenced (call when no request is live)."""
        held = [b.block_id for b in self.blocks if b.ref_count != 0]
        if held or len(self.free) != len(self.blocks):
            raise AssertionError(f"{len(held)} KV blocks still referenced: {held[:10]}")
