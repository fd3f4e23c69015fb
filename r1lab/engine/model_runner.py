"""Runs the model over a scheduled batch, against a paged cache of MLA latents.

The cache is one tensor [num_blocks * block_size, kv_lora_rank + qk_rope_head_dim] per layer: exactly what absorbed
MLA needs per token per layer, nothing else (no per-head keys or values). A sequence's tokens live in the slots
of the blocks in its block table. Before a forward the runner binds the batch's layout (slots to write, block
tables to read, positions) into `PagedLatentCache`; the model's attention layers then call `update` exactly as
they would on the contiguous `LatentCache`.

Batches are padded to a rectangle [B, T]: decode steps have T = 1 (or 1 + drafts), so padding only costs during
prefill of prompts of different lengths.

With `compile`, every step runs through torch.compile'd graphs with dynamic shapes, prefill chunks included: a
handful of graphs (batch 1 or more, width 1 or more, few or many routed tokens) cover every step the engine takes.
"""

from __future__ import annotations

import torch
import torch._dynamo

from ..model import DeepseekV3ForCausalLM
from .scheduler import ScheduledBatch
from .sequence import Sequence


class PagedLatentCache:
    def __init__(self, num_layers: int, num_blocks: int, block_size: int, dim: int, dtype: torch.dtype,
                 compiled: bool = False):
        self.block_size = block_size
        self.compiled = compiled  # the model reading this cache runs under torch.compile
        # One slot past the last block takes the writes of padding tokens, so every step writes a fixed number
        # of rows (no data-dependent shapes: the compiled decode step stays one graph).
        self.padding_slot = num_blocks * block_size
        # One tensor per layer rather than views of one big tensor: a compiled step then updates each in place,
        # where writing through a view makes inductor copy the whole cache every step.
        self.layers = [torch.zeros(num_blocks * block_size + 1, dim, dtype=dtype) for _ in range(num_layers)]
        self._bound = self._layout = None  # this step's inputs, and the layout derived from them

    @property
    def bytes_per_token_per_layer(self) -> int:
        return self.layers[0].shape[-1] * self.layers[0].element_size()

    def bind(self, slots: torch.Tensor, block_tables: torch.Tensor, context_lens: torch.Tensor,
             positions: torch.Tensor) -> None:
        """slots [B, T] (-1 for padding), block_tables [B, max_blocks], context_lens [B] (tokens cached after
        this step), positions [B, T]."""
        # The layout (rows to write, rows to read, attention mask) is derived by the first layer's `update`, so
        # in a compiled step it is part of the graph: a dozen small eager ops here would cost ~0.1 ms, a tenth of
        # a tiny model's decode step.
        self._bound, self._layout = (slots, block_tables, context_lens, positions), None
        if self.compiled:
            # Tell torch.compile up front that these sizes change from step to step (cached length, batch size,
            # step width), instead of letting it compile a static graph first and a dynamic one on the next step.
            for tensor in self._bound:
                for dim in range(tensor.dim()):
                    if tensor.shape[dim] != 1:
                        torch._dynamo.maybe_mark_dynamic(tensor, dim)

    def _derive_layout(self, slots, block_tables, context_lens, positions):
        """(cache rows to write [B * T], cache rows to read [B, S], attention mask [B, 1, T, S])."""
        max_len = block_tables.shape[1] * self.block_size
        offsets = torch.arange(self.block_size)
        gather = (block_tables[:, :, None] * self.block_size + offsets).flatten(1)  # [B, S]
        key_pos = torch.arange(max_len)
        valid = key_pos[None, :] < context_lens[:, None]  # [B, S]
        causal = key_pos[None, None, :] <= positions[:, :, None]  # [B, T, S]
        mask = (valid[:, None, :] & causal).unsqueeze(1)  # [B, 1, T, S]
        write = slots.flatten().masked_fill(slots.flatten() < 0, self.padding_slot)
        return write, gather, mask

    def update(self, layer_idx: int, latent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self._layout is None:
            self._layout = self._derive_layout(*self._bound)
        write, gather, mask = self._layout
        layer = self.layers[layer_idx]
        layer.index_copy_(0, write, latent.reshape(-1, latent.shape[-1]).to(layer.dtype))
        batch, span = gather.shape
        return layer.index_select(0, gather.flatten()).view(batch, span, -1), mask

    def advance(self, num_tokens: int) -> None:  # positions are explicit; nothing to track
        pass


def greedy_verify_and_draft(model: DeepseekV3ForCausalLM, ids: torch.Tensor, positions: torch.Tensor, cache):
    """One greedy speculative step in one pass: ids [B, 2] = [last token, draft] at positions [p, p + 1].

    The main model gives its own choices targets[:, 0] (for p + 1) and targets[:, 1] (for p + 2, meaningful only
    if the draft equals targets[:, 0]). The MTP module then runs at both positions with those choices, so the
    next draft is ready whichever way verification goes: drafts[:, 0] if the draft was rejected, drafts[:, 1] if
    it was accepted. Its latent written at p + 1 after a rejection is stale but overwritten by the next step,
    which starts at p + 1.
    """
    out = model(ids, positions=positions, cache=cache)
    targets = out.logits.argmax(-1)
    draft_logits, _ = model.mtp_step(out.hidden_states, targets, positions, cache)
    return targets, draft_logits.argmax(-1)


class ModelRunner:
    def __init__(self, model: DeepseekV3ForCausalLM, num_blocks: int, block_size: int, compile: bool = False):
        self.model = model
        cfg = model.config
        layers = cfg.num_hidden_layers + cfg.num_nextn_predict_layers
        self.cache = PagedLatentCache(layers, num_blocks, block_size, cfg.latent_dim, model.dtype, compiled=compile)
        self.block_size = block_size
        self._forward, self._mtp_step = model.forward, model.mtp_step
        self._verify_and_draft = greedy_verify_and_draft
        if compile:
            # A tiny model's decode step is a few hundred small ops, so per-op dispatch, not arithmetic, bounds
            # it; inductor fuses the elementwise work into a few C++ kernels. Shapes are dynamic (batch size,
            # width and cached length change every step). Prefill chunks run compiled too: eagerly, a 30-token
            # prompt of the tiny model took 9-12 ms, compiled about 4.5 (one more graph, ~20 s to compile).
            limit = "recompile_limit" if hasattr(torch._dynamo.config, "recompile_limit") else "cache_size_limit"
            setattr(torch._dynamo.config, limit, max(getattr(torch._dynamo.config, limit), 32))  # (older torch)
            # At batch 1 every projection is a matrix-vector product, which the CPU BLAS runs on one thread at
            # about half the memory bandwidth two threads reach. Inductor's mm decomposition turns [M <= 2, K] x
            # [K, N] with static M into a multiply-reduce it parallelises and vectorises itself (1.7x faster
            # decode on `small`). Set before the first compilation: the pass reads its limits when first imported.
            import torch._inductor.config as inductor_config

            inductor_config.post_grad_fusion_options.setdefault(
                "decompose_mm_pass", {"cpu_max_first_dimension_decomposition": 2,  # batch 1, and batch 1 x 2 tokens
                                      "cpu_max_other_dimension_decomposition": 1 << 20})
            # Checking guards on every module attribute costs ~0.1 ms a step (more on bigger models), a tenth of a
            # tiny model's step. The engine owns its model and never swaps its modules, attributes or parameter
            # shapes; weights updated in place are still read at run time.
            skip = getattr(torch.compiler, "skip_guard_on_all_nn_modules_unsafe", None)  # (torch >= 2.8)
            # The generated wrapper that calls the kernels is C++, not Python: its per-buffer bookkeeping (views,
            # size asserts, allocations; thousands a step) cost ~0.4 ms of a 6.5 ms `small` step in Python.
            opts = {"cpp_wrapper": True, **({"guard_filter_fn": skip} if skip else {})}
            self._forward = torch.compile(model.forward, dynamic=True, options=opts)
            self._mtp_step = torch.compile(model.mtp_step, dynamic=True, options=opts)
            # Static shapes first (dynamic only once the batch size changes): the verify step's [1 x 2] rows
            # then stay a static M = 2 that the mm decomposition above applies to.
            self._verify_and_draft = torch.compile(greedy_verify_and_draft, options=opts)

    def _bind(self, seqs: list[Sequence], starts: list[int], tokens: list[list[int]]
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-pad each row's tokens (row i sits at positions starts[i], starts[i] + 1, ...) to [B, T] and bind
        the cache to the rows' slots and block tables; returns (ids, positions)."""
        width = max(len(t) for t in tokens)
        max_blocks = max(len(s.block_table) for s in seqs)
        bs = self.block_size
        ids, positions, slots, tables, context = [], [], [], [], []
        for seq, start, row_tokens in zip(seqs, starts, tokens, strict=True):
            n, pad, table = len(row_tokens), width - len(row_tokens), seq.block_table
            ids.append(list(row_tokens) + [0] * pad)
            # padding queries look at the real context; their outputs are dropped
            positions.append(list(range(start, start + n)) + [start + n - 1] * pad)
            slots.append([table[p // bs] * bs + p % bs for p in range(start, start + n)] + [-1] * pad)
            tables.append(table + [0] * (max_blocks - len(table)))
            context.append(start + n)
        positions_t = torch.tensor(positions)
        self.cache.bind(torch.tensor(slots), torch.tensor(tables), torch.tensor(context), positions_t)
        return torch.tensor(ids), positions_t

    @torch.inference_mode()
    def forward(self, batch: ScheduledBatch, tokens: list[list[int]] | None = None, all_logits: bool = False):
        """Run one step from each sequence's `num_computed` position over its next `num_tokens` tokens (or over
        `tokens`, e.g. [last token, draft] for speculative verification). Returns (logits, hidden): logits [B, V]
        at each row's last real token, or [B, T, V] with all_logits; hidden [B, T, D] final-normed states."""
        seqs = batch.seqs
        starts = [s.num_computed for s in seqs]
        if tokens is None:
            tokens = [s.all_ids[st:st + n] for s, st, n in zip(seqs, starts, batch.num_tokens, strict=True)]
        ids, positions = self._bind(seqs, starts, tokens)
        keep = None if all_logits else torch.tensor([len(t) - 1 for t in tokens])
        out = self._forward(ids, positions=positions, cache=self.cache, logits_to_keep=keep)
        return (out.logits if all_logits else out.logits[:, 0]), out.hidden_states

    @torch.inference_mode()
    def draft(self, seqs: list[Sequence], hidden: torch.Tensor, starts: list[int], tokens: list[list[int]]):
        """Run the MTP module: row i combines hidden[i, j] (position starts[i] + j) with tokens[i][j] (the token
        after it); writes the module's cache layer and returns logits [B, T, V] for the token after that."""
        ids, positions = self._bind(seqs, starts, tokens)
        logits, _ = self._mtp_step(hidden[:, :ids.shape[1]], ids, positions, self.cache)
        return logits

    @torch.inference_mode()
    def verify_and_draft(self, seqs: list[Sequence], drafts: list[int]) -> tuple[list[list[int]], list[list[int]]]:
        """Greedy speculation for decoding sequences, each with one drafted token: see `greedy_verify_and_draft`.
        Returns per row the main model's choices for the next two positions and the next drafts for both
        outcomes."""
        starts = [s.num_computed for s in seqs]
        ids, positions = self._bind(seqs, starts, [[s.all_ids[-1], d] for s, d in zip(seqs, drafts, strict=True)])
        targets, next_drafts = self._verify_and_draft(self.model, ids, positions, self.cache)
        return targets.tolist(), next_drafts.tolist()
