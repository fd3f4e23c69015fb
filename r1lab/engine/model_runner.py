"""Runs the model over a scheduled batch, against a paged cache of MLA latents.

The cache is one tensor [layers, num_blocks * block_size, kv_lora_rank + qk_rope_head_dim]: exactly what absorbed
MLA needs per token per layer, nothing else (no per-head keys or values). A sequence's tokens live in the slots
of the blocks in its block table. Before a forward the runner binds the batch's layout (slots to write, block
tables to read, positions) into `PagedLatentCache`; the model's attention layers then call `update` exactly as
they would on the contiguous `LatentCache`.

Batches are padded to a rectangle [B, T]: decode steps have T = 1 (or 1 + drafts), so padding only costs during
prefill of prompts of different lengths.
"""

from __future__ import annotations

import torch

from ..model import DeepseekV3ForCausalLM
from .scheduler import ScheduledBatch


class PagedLatentCache:
    def __init__(self, num_layers: int, num_blocks: int, block_size: int, dim: int, dtype: torch.dtype):
        self.block_size = block_size
        self.kv = torch.zeros(num_layers, num_blocks * block_size, dim, dtype=dtype)
        self._slots = self._gather = self._mask = None

    @property
    def bytes_per_token_per_layer(self) -> int:
        return self.kv.shape[-1] * self.kv.element_size()

    def bind(self, slots: torch.Tensor, block_tables: torch.Tensor, context_lens: torch.Tensor,
             positions: torch.Tensor) -> None:
        """slots [B, T] (-1 for padding), block_tables [B, max_blocks], context_lens [B] (tokens cached after
        this step), positions [B, T]."""
        max_len = block_tables.shape[1] * self.block_size
        offsets = torch.arange(self.block_size)
        self._gather = (block_tables[:, :, None] * self.block_size + offsets).flatten(1)  # [B, S]
        key_pos = torch.arange(max_len)
        valid = key_pos[None, :] < context_lens[:, None]  # [B, S]
        causal = key_pos[None, None, :] <= positions[:, :, None]  # [B, T, S]
        self._mask = (valid[:, None, :] & causal).unsqueeze(1)  # [B, 1, T, S]
        self._write = slots.flatten() >= 0
        self._slots = slots.flatten()[self._write]

    def update(self, layer_idx: int, latent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        layer = self.kv[layer_idx]
        layer.index_copy_(0, self._slots, latent.reshape(-1, latent.shape[-1])[self._write].to(layer.dtype))
        batch, span = self._gather.shape
        return layer.index_select(0, self._gather.flatten()).view(batch, span, -1), self._mask

    def advance(self, num_tokens: int) -> None:  # positions are explicit; nothing to track
        pass


class ModelRunner:
    def __init__(self, model: DeepseekV3ForCausalLM, num_blocks: int, block_size: int):
        self.model = model
        cfg = model.config
        layers = cfg.num_hidden_layers + cfg.num_nextn_predict_layers
        self.cache = PagedLatentCache(layers, num_blocks, block_size, cfg.latent_dim, model.dtype)
        self.block_size = block_size

    def _layout(self, batch: ScheduledBatch, extra_tokens: list[list[int]] | None = None):
        """Token ids, positions, slots and block tables for the batch, right-padded to [B, T]."""
        seqs, counts = batch.seqs, batch.num_tokens
        width = max(counts)
        max_blocks = max(len(s.block_table) for s in seqs)
        bs = self.block_size
        ids, positions, slots, tables, context = [], [], [], [], []
        for row, (seq, n) in enumerate(zip(seqs, counts, strict=True)):
            start = seq.num_computed
            tokens = seq.all_ids[start:start + n] if extra_tokens is None else extra_tokens[row]
            table = seq.block_table
            pad = width - n
            ids.append(list(tokens) + [0] * pad)
            # padding queries look at the real context; their outputs are dropped
            positions.append(list(range(start, start + n)) + [start + n - 1] * pad)
            slots.append([table[p // bs] * bs + p % bs for p in range(start, start + n)] + [-1] * pad)
            tables.append(table + [0] * (max_blocks - len(table)))
            context.append(start + n)
        return (torch.tensor(ids), torch.tensor(positions), torch.tensor(slots), torch.tensor(tables),
                torch.tensor(context))

    @torch.inference_mode()
    def forward(self, batch: ScheduledBatch, all_logits: bool = False):
        """Run one step; returns (logits, hidden): logits [B, V] at each row's last real token, or [B, T, V] with
        all_logits (speculative verification); hidden [B, T, D] final-normed hidden states."""
        ids, positions, slots, tables, context = self._layout(batch)
        self.cache.bind(slots, tables, context, positions)
        counts = torch.tensor(batch.num_tokens)
        keep = None if all_logits else counts - 1
        out = self.model(ids, positions=positions, cache=self.cache, logits_to_keep=keep)
        logits = out.logits if all_logits else out.logits[:, 0]
        return logits, out.hidden_states, positions

    @torch.inference_mode()
    def draft(self, batch: ScheduledBatch, hidden: torch.Tensor, next_ids: torch.Tensor, positions: torch.Tensor):
        """Run the MTP module over [B, T] (hidden at position i, token i+1); writes its cache layer and returns
        logits [B, T, V] for tokens i+2."""
        seqs = batch.seqs
        width = positions.shape[1]
        slots = torch.full_like(positions, -1)
        max_blocks = max(len(s.block_table) for s in seqs)
        tables = torch.zeros(len(seqs), max_blocks, dtype=torch.long)
        context = torch.zeros(len(seqs), dtype=torch.long)
        for row, seq in enumerate(seqs):
            table = torch.tensor(seq.block_table)
            tables[row, :len(seq.block_table)] = table
            valid = positions[row] >= 0
            pos = positions[row][valid]
            slots[row, :len(pos)] = table[pos // self.block_size] * self.block_size + pos % self.block_size
            context[row] = int(pos.max()) + 1 if len(pos) else 0
        clean = positions.clamp(min=0)
        for row in range(len(seqs)):  # padding queries point at the last real position
            n = int((positions[row] >= 0).sum())
            clean[row, n:] = clean[row, max(n - 1, 0)]
        self.cache.bind(slots, tables, context, clean)
        logits, _ = self.model.mtp_step(hidden[:, :width], next_ids, clean, self.cache)
        return logits
