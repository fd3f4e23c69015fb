"""The one trainer behind `r1lab train pretrain` and `r1lab train sft`.

A step: take the next global batch from the data cursor, run each micro-batch forward with the MTP heads on,
backpropagate CE + lambda * MTP CE (normalised by the global loss-token count, see `loss.py`) + alpha * the
sequence-wise balance loss (averaged over the global batch's sequences), clip, AdamW at the scheduled rate, then
the aux-loss-free bias update from the expert loads of the whole step (summed over micro-batches and ranks) - once
per optimiser step, as in DeepSeek-V3. Balance loss and loads count real tokens only: they are computed from the
gates' routing, caught by forward hooks for the duration of the step, with the padding mask applied.

What a run starts from:
    fresh       a preset or config.json, weights from `init_weights(seed)`
    --init      an HF-format checkpoint's weights (and tokenizer); fresh optimiser, step 0 (SFT after pretraining)
    --resume    a run's checkpoint: weights, routing biases, optimiser, step, schedule horizon, RNG and data
                position, so the losses after resuming equal those of an uninterrupted run

The tokenizer is the one given, else the init/resume checkpoint's, else one trained here on the run's own texts
(capped at the model's vocabulary); it is saved into every checkpoint so later stages find it there.
"""

from __future__ import annotations

import contextlib
import gc
import inspect
import sys
import time
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import CheckpointError, load_model, load_state
from ..config import ConfigError, ModelConfig, count_parameters, preset
from ..model import DeepseekV3ForCausalLM, MoE, update_balance_bias
from . import distributed
from .config import TrainConfig, check_resumable
from .data import (
    DataCursor,
    Examples,
    pack_documents,
    pretrain_documents,
    rank_micro_batches,
    read_rows,
    sft_examples,
    sft_pairs,
    task_rows,
)
from .loss import expert_loads, loss_token_counts, objective, sequence_balance_sum, summed_cross_entropy
from .metrics import MetricsLog
from .optim import apply_hyperparameters, build_optimizer, lr_at
from .state import (
    LINK,
    STATE_FILE,
    load_optimizer,
    read_state,
    read_tensors,
    remove_partial,
    resolve_checkpoint,
    run_dir_of,
    save_checkpoint,
    set_rng_state,
)


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={name!r}: CUDA is not available here; use cpu")
    return torch.device(name)


def _config_diff(a: ModelConfig, b: ModelConfig) -> list[str]:
    da, db = a.to_dict(), b.to_dict()
    return [f"{k}: {da.get(k)!r} vs {db.get(k)!r}" for k in sorted(set(da) | set(db)) if da.get(k) != db.get(k)]


class Trainer:
    """Build everything a run needs from a TrainConfig; `fit()` trains to `cfg.steps` and returns the checkpoint.

    `model`, `tokenizer` (a `tokenizers.Tokenizer`) and `examples` may be passed in by a caller that already has
    them (the RL stage, the benchmark); otherwise they come from the settings.
    """

    def __init__(self, cfg: TrainConfig, model: DeepseekV3ForCausalLM | None = None, tokenizer=None,
                 examples: Examples | None = None):
        if cfg.out is None:
            raise ConfigError("out=None: a run directory is needed (--out DIR)")
        self.cfg, self.out = cfg, Path(cfg.out)
        device = _device(cfg.device)
        self.dist = distributed.setup(device.type)
        if device.type == "cuda" and self.dist.active:
            device = torch.device("cuda", self.dist.local_rank)
        self.device = device
        try:
            self._setup(model, tokenizer, examples)
        except BaseException:
            self.dist.close()
            raise

    # ------------------------------------------------------------------ setup
    def _setup(self, model, tokenizer, examples) -> None:
        cfg = self.cfg
        self.saved: dict[str, Any] | None = None
        self.source: Path | None = None
        if cfg.resume:
            self.source = resolve_checkpoint(cfg.resume)
            self.saved = read_state(self.source)
            check_resumable(self.saved["config"], cfg, self.saved["world_size"], self.dist.world_size)
        elif cfg.init:
            self.source = resolve_checkpoint(cfg.init)
        self._check_out_dir()
        torch.manual_seed(cfg.seed)
        self.model = self._build_model(model)
        self.tokenizer, self.examples = self._build_data(tokenizer, examples)
        self._check_fit()
        self.optimizer, self.param_names = build_optimizer(self.model, cfg)
        self.step_count, self.tokens_seen, epoch, offset = 0, 0, 0, 0
        self.decay_steps = cfg.decay_steps or cfg.steps
        if self.saved is not None:
            self._restore(self.saved)
            self.step_count, self.tokens_seen = self.saved["step"], self.saved["tokens_seen"]
            epoch, offset = self.saved["data"]["epoch"], self.saved["data"]["offset"]
            self.decay_steps = cfg.decay_steps or self.saved["decay_steps"]
        # chat examples differ in length; on request batch them by length (packed pretraining blocks do not)
        lengths = [t.numel() for t in self.examples.ids] if cfg.kind == "sft" and cfg.group_by_length else None
        self.cursor = DataCursor(len(self.examples), cfg.seed, epoch, offset, lengths,
                                 cfg.global_batch(self.dist.world_size))
        self.mtp_depths = len(self.model.mtp) if cfg.mtp_weight > 0 else 0
        self.moe = [(str(i), layer.mlp) for i, layer in enumerate(self.model.model.layers)
                    if isinstance(layer.mlp, MoE)]
        self.moe += [(f"mtp{d}", layer.mlp) for d, layer in enumerate(self.model.mtp[: self.mtp_depths])
                     if isinstance(layer.mlp, MoE)]  # an MTP layer that does not run has no load
        self.forward_model = self.model
        if self.dist.active:
            from torch.nn.parallel import DistributedDataParallel

            unused = self.mtp_depths == 0 and len(self.model.mtp) > 0  # MTP weights get no gradient then
            # Buffers (the routing biases) are synced once at construction, not before every forward: each rank
            # applies the same bias update from all-reduced loads (see distributed.py). Newer torch renamed the
            # switch; the old name still works there but warns.
            params = inspect.signature(DistributedDataParallel.__init__).parameters
            no_buffer_sync = {"forward_sync_buffers": False} if "forward_sync_buffers" in params else \
                {"broadcast_buffers": False}
            self.forward_model = DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=unused, **no_buffer_sync)
        self.metrics: MetricsLog | None = None

    def _check_out_dir(self) -> None:
        link = self.out / LINK
        if not link.exists():
            return
        resuming_here = self.source is not None and self.saved is not None and \
            run_dir_of(self.source) == self.out.resolve()
        if not resuming_here:
            step = read_state(link.resolve()).get("step", "?") if (link / STATE_FILE).exists() else "?"
            raise ValueError(f"{self.out} already holds a run (checkpoint at step {step}); continue it with "
                             f"--resume {self.out}, or choose another --out")

    def _requested_model_config(self) -> ModelConfig | None:
        if self.cfg.preset:
            return preset(self.cfg.preset)
        if self.cfg.model_config:
            return ModelConfig.from_file(self.cfg.model_config)
        return None

    def _build_model(self, model: DeepseekV3ForCausalLM | None) -> DeepseekV3ForCausalLM:
        requested = self._requested_model_config()
        if model is None and self.source is not None:
            model = load_model(self.source)
        elif model is not None and self.source is not None:
            load_state(model, self.source)
        elif model is None:
            if requested is None:
                raise ConfigError("no model given: choose --preset, --config, --init or --resume")
            model = DeepseekV3ForCausalLM(requested)
            model.init_weights(seed=self.cfg.seed)
            requested = None
        if requested is not None:
            diff = _config_diff(requested, model.config)
            if diff:
                origin = self.cfg.preset or self.cfg.model_config
                raise ConfigError(f"the model config {origin} does not match the checkpoint {self.source} "
                                  f"(requested vs checkpoint): " + "; ".join(diff))
        return model.to(self.device).train()

    def _build_data(self, tokenizer, examples: Examples | None):
        cfg = self.cfg
        if examples is not None:
            return tokenizer, examples
        rows = read_rows(cfg.data) if cfg.data else task_rows(cfg.tasks, cfg.difficulties, cfg.per_level, cfg.seed,
                                                                cfg.traces, cfg.traces_per_problem)
        if cfg.kind == "pretrain":
            docs = pretrain_documents(rows)
            texts = docs
        else:
            pairs = sft_pairs(rows)
            texts = [p + c for p, c in pairs]
        tokenizer = tokenizer or self._load_or_train_tokenizer(texts)
        if cfg.kind == "pretrain":
            return tokenizer, pack_documents(docs, tokenizer, cfg.seq_len, cfg.seed)
        return tokenizer, sft_examples(pairs, tokenizer, cfg.seq_len)

    def _load_or_train_tokenizer(self, texts: list[str]):
        from tokenizers import Tokenizer

        if self.cfg.tokenizer:
            path = Path(self.cfg.tokenizer) / "tokenizer.json"
            if not path.is_file():
                raise FileNotFoundError(f"no tokenizer.json in {self.cfg.tokenizer}")
            return Tokenizer.from_file(str(path))
        if self.source is not None and (self.source / "tokenizer.json").is_file():
            return Tokenizer.from_file(str(self.source / "tokenizer.json"))
        # Train on rank 0 only and share the result: every rank must hold the very same vocabulary.
        spec = None
        if self.dist.is_main:
            from ..tokenizer import build_tokenizer

            spec = build_tokenizer(texts, vocab_size=self.model.config.vocab_size).to_str()
        return Tokenizer.from_str(self.dist.broadcast_object(spec))

    def _check_fit(self) -> None:
        cfg, mc = self.cfg, self.model.config
        if self.tokenizer is not None and self.tokenizer.get_vocab_size() > mc.vocab_size:
            raise ConfigError(f"the tokenizer has {self.tokenizer.get_vocab_size()} tokens but the model's "
                              f"vocab_size is {mc.vocab_size}")
        top = max(int(t.max()) for t in self.examples.ids)
        if top >= mc.vocab_size:
            raise ConfigError(f"token id {top} is outside the model's vocabulary (vocab_size={mc.vocab_size})")
        if cfg.seq_len > mc.max_position_embeddings:
            raise ConfigError(f"seq_len={cfg.seq_len}: must not exceed the model's max_position_embeddings "
                              f"({mc.max_position_embeddings})")
        need = cfg.global_batch(self.dist.world_size)
        if len(self.examples) < need:
            raise ValueError(f"the data give {self.examples.description or f'{len(self.examples)} examples'}; one "
                             f"step needs {need} (batch_size x grad_accum x ranks): add data or shrink the batch")

    def _restore(self, saved: dict[str, Any]) -> None:
        digest = self.examples.digest
        if saved["data"]["fingerprint"] != digest:
            raise ConfigError(f"the training data differ from those of the checkpoint being resumed "
                              f"({saved['data']['description']}); resume with the same data, tokenizer and seq_len")
        tensors = read_tensors(self.source)
        rng = {k: tensors.pop(k) for k in [k for k in tensors if k.startswith("rng/")]}
        load_optimizer(self.optimizer, self.param_names, tensors, saved["optimizer"])
        apply_hyperparameters(self.optimizer, self.cfg)
        set_rng_state(rng, saved["rng"])

    # ------------------------------------------------------------------ one step
    def step(self) -> dict[str, Any]:
        """One optimiser step over the next global batch; returns its metrics row (identical on every rank)."""
        cfg, dist, start = self.cfg, self.dist, time.perf_counter()
        indices = self.cursor.take(cfg.global_batch(dist.world_size))
        micro = [self.examples.collate(mb)
                 for mb in rank_micro_batches(indices, dist.rank, dist.world_size, cfg.grad_accum)]
        counts = dist.all_reduce_(sum(loss_token_counts(labels, self.mtp_depths) for _, labels, _ in micro))
        lr = lr_at(self.step_count, cfg.lr, cfg.warmup_steps, self.decay_steps, cfg.min_lr)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        sums, balance, loads = self._forward_backward(micro, counts, len(indices))
        max_norm = cfg.clip if cfg.clip > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

        reduced = dist.all_reduce_(torch.cat((sums, balance.view(1), loads.flatten())))
        sums, balance = reduced[: sums.numel()], reduced[sums.numel()].item() / len(indices)
        loads = reduced[sums.numel() + 1:].view(len(self.moe), self.model.config.n_routed_experts)
        if self.moe and cfg.bias_gamma > 0:
            for moe in self.model.moe_layers():
                moe.load = None  # an MTP layer that did not run keeps no stale load from an earlier forward
            for (_, moe), load in zip(self.moe, loads, strict=True):
                moe.load = load.to(self.device)  # the global load of the step, the same on every rank
            update_balance_bias(self.model, cfg.bias_gamma)
        self.step_count += 1
        tokens = sum(self.examples.ids[i].numel() for i in indices)
        self.tokens_seen += tokens
        seconds = time.perf_counter() - start
        means = (sums / counts.clamp(min=1)).tolist()
        names = [name for name, _ in self.moe]
        return {"step": self.step_count, "loss": means[0], "lr": lr, "tokens_per_s": tokens / seconds,
                "mtp_loss": sum(means[1:]) / len(means[1:]) if means[1:] else None,
                "balance_loss": balance if self.moe else None,
                "objective": objective(sums, counts, cfg.mtp_weight).item() + cfg.balance_alpha * balance,
                "grad_norm": float(grad_norm), "tokens": tokens, "loss_tokens": int(counts[0]),
                "seconds": seconds, "epoch": self.cursor.epoch,
                "expert_load": {n: [int(x) for x in load] for n, load in zip(names, loads, strict=True)},
                "load_imbalance": {n: (load.max() / load.mean().clamp(min=1e-9) - 1).item()
                                   for n, load in zip(names, loads, strict=True)}}

    def _forward_backward(self, micro, counts: torch.Tensor, num_sequences: int):
        """Accumulate gradients over this rank's micro-batches; returns its CE sums, balance sum and expert loads."""
        cfg, dist = self.cfg, self.dist
        sums = torch.zeros(1 + self.mtp_depths, dtype=torch.float64)
        balance = torch.zeros((), dtype=torch.float64)
        loads = torch.zeros(len(self.moe), self.model.config.n_routed_experts, dtype=torch.float64)
        routing: dict[str, Any] = {}
        hooks = [moe.gate.register_forward_hook(lambda _m, _a, out, key=name: routing.__setitem__(key, out))
                 for name, moe in self.moe]
        try:
            for i, (ids, labels, mask) in enumerate(micro):
                ids, labels, mask = ids.to(self.device), labels.to(self.device), mask.to(self.device)
                last = i == len(micro) - 1
                no_sync = self.forward_model.no_sync() if dist.active and not last else contextlib.nullcontext()
                with no_sync:
                    with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
                        out = self.forward_model(ids, mtp=self.mtp_depths > 0)
                    ce = summed_cross_entropy(out.logits, out.mtp_logits, labels)
                    # x world_size: DDP averages gradients over ranks, and each rank's share is a sum over its
                    # own tokens (sequences) divided by the global count.
                    loss = objective(ce, counts.to(ce.device), cfg.mtp_weight) * dist.world_size
                    bal = torch.zeros((), device=self.device)
                    for j, (name, _) in enumerate(self.moe):
                        r = routing.pop(name)
                        # An MTP layer of depth d sees positions 0..T-d-1, each real when token i + d is.
                        depth = int(name[3:]) + 1 if name.startswith("mtp") else 0
                        layer_mask = mask[:, depth:]
                        shape = (*layer_mask.shape, -1)
                        experts = r.experts.view(shape)
                        bal = bal + sequence_balance_sum(r.scores.view(shape), experts, layer_mask)
                        loads[j] += expert_loads(experts, layer_mask, loads.shape[1]).double().cpu()
                    if cfg.balance_alpha > 0 and self.moe:
                        loss = loss + cfg.balance_alpha * bal * dist.world_size / num_sequences
                    loss.backward()
                sums += ce.detach().double().cpu()
                balance += bal.detach().double().cpu()
        finally:
            for hook in hooks:
                hook.remove()
        return sums, balance, loads

    # ------------------------------------------------------------------ the run
    def fit(self) -> Path:
        """Train until `cfg.steps`, checkpointing every `save_every` steps and at the end; returns DIR/checkpoint."""
        cfg, dist = self.cfg, self.dist
        link = self.out / LINK
        if self.step_count >= cfg.steps:
            self._say(f"already at step {self.step_count} (steps={cfg.steps}); nothing to train")
            return link if link.exists() else self.source
        if dist.is_main:
            remove_partial(self.out)
            history = run_dir_of(self.source) if self.saved is not None else None
            self.metrics = MetricsLog(self.out, self.step_count if self.saved is not None else None, history)
        self._say(self._summary())
        from tqdm import tqdm

        bar = tqdm(total=cfg.steps, initial=self.step_count, unit="step", file=sys.stderr, dynamic_ncols=True,
                   disable=not (dist.is_main and cfg.progress), desc=f"{cfg.kind}")
        try:
            while self.step_count < cfg.steps:
                row = self.step()
                if self.metrics is not None:
                    self.metrics.write(row)
                bar.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{row['lr']:.2e}",
                                tok_s=f"{row['tokens_per_s']:,.0f}", refresh=False)
                bar.update(1)
                if cfg.save_every and self.step_count % cfg.save_every == 0 and self.step_count < cfg.steps:
                    self.save()
            self.save()
        finally:
            bar.close()
            if self.metrics is not None:
                self.metrics.close()
        self._say(f"step {self.step_count}: saved {link} -> {link.resolve().name}")
        return link

    def save(self) -> Path:
        """Checkpoint the current step (rank 0 writes; every rank learns whether it worked)."""
        error = None
        if self.dist.is_main:
            state = {"kind": self.cfg.kind, "config": dict(self.cfg.to_dict(), decay_steps=self.decay_steps),
                     "world_size": self.dist.world_size, "decay_steps": self.decay_steps,
                     "tokens_seen": self.tokens_seen,
                     "data": dict(self.cursor.state(), fingerprint=self.examples.digest,
                                  description=self.examples.description)}
            try:
                save_checkpoint(self.out, self.step_count, self.model, self.optimizer, self.param_names, state,
                                tokenizer=self.tokenizer, keep=self.cfg.keep_checkpoints)
            except CheckpointError as e:
                error = e
        failed = self.dist.broadcast_object(error is not None)
        if error is not None:
            raise error
        if failed:
            raise CheckpointError("rank 0 could not save the checkpoint")
        return self.out / LINK

    def close(self) -> None:
        if self.dist.active and hasattr(self, "forward_model"):
            # Free DDP's reducer while the process group is still registered and idle. Left to the garbage
            # collector, the reducer can hold the group's last reference; destroying the group then joins gloo's
            # worker thread while holding the GIL, which that thread may be waiting for: a rank hangs at exit.
            self.dist.barrier()
            self.forward_model = self.model
            gc.collect()
        self.dist.close()

    # ------------------------------------------------------------------ messages
    def _say(self, message: str) -> None:
        if self.dist.is_main and self.cfg.progress:
            print(f"r1lab train: {message}", file=sys.stderr)

    def _summary(self) -> str:
        cfg, counts = self.cfg, count_parameters(self.model)
        start = f"resuming at step {self.step_count}" if self.saved else (
            f"from {self.source}" if self.source else "from scratch")
        ranks = f" on {self.dist.world_size} ranks" if self.dist.active else ""
        return (f"{cfg.kind} {start}{ranks}: {counts['total'] / 1e6:.2f}M parameters "
                f"({counts['activated'] / 1e6:.2f}M activated); {self.examples.description}; "
                f"global batch {cfg.global_batch(self.dist.world_size)} x <= {cfg.seq_len} tokens; "
                f"steps {self.step_count} -> {cfg.steps} (schedule over {self.decay_steps}); out {self.out}")


def train(cfg: TrainConfig, model: DeepseekV3ForCausalLM | None = None, tokenizer=None,
          examples: Examples | None = None) -> Path:
    """Run the training `cfg` describes; returns the path of the final checkpoint (`cfg.out/checkpoint`)."""
    trainer = Trainer(cfg, model=model, tokenizer=tokenizer, examples=examples)
    try:
        return trainer.fit()
    finally:
        trainer.close()
