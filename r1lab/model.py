"""The DeepSeek-V3 / DeepSeek-R1 network, in one file.

Reading order: RMSNorm -> RoPE/YaRN -> MLA attention (naive and absorbed paths) -> SwiGLU FFN -> the
DeepSeekMoE gate and experts -> decoder block -> MTP module -> the causal LM.

Design choices and where we depart from the papers or from Hugging Face's implementation:

* Parameter names follow HF's `DeepseekV3ForCausalLM` so checkpoints load by name (see `checkpoint.py`). The one
  exception is the routed experts: we hold all experts of a layer in two stacked tensors (`gate_up_proj`
  [E, 2I, D] and `down_proj` [E, D, I], as transformers 5 does in memory) so dispatch can slice them cheaply;
  the loader maps them to and from HF's per-expert keys `mlp.experts.{i}.{gate,up,down}_proj.weight`.
* RoPE rotates interleaved pairs (x0,x1),(x2,x3)... as DeepSeek's reference code does. HF permutes to half-split
  layout first; attention scores are identical, so logits match.
* MLA has two attention paths behind one switch. Without a cache (training, scoring) the latent is expanded
  to per-head keys and values through `kv_b_proj` ("naive"). With a cache (decoding) we never expand: W_UK is
  folded into the query and W_UV into the output ("absorbed"), so attention runs directly over the cached
  latent [kv_a_layernorm(c_kv); rope(k_pe)] - kv_lora_rank + qk_rope_head_dim numbers per token per layer.
* The gate masks non-selected groups with -inf (REFERENCE §3); expert dispatch sorts (token, expert) pairs by
  expert and runs one matmul per expert that received tokens - no Python loop over tokens.
* MTP (depth `num_nextn_predict_layers`) shares the main embedding and head, as in the V3 paper; the checkpoint
  still stores copies under the MTP layer's keys, which `checkpoint.py` writes and reads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig

# --------------------------------------------------------------------------- norms and rotary embeddings


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32 and self.weight.dtype == torch.float32:
            return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)  # one fused op
        # Normalise in fp32 (bf16 sums of squares lose precision), scale in the input dtype.
        normed = F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps)
        return self.weight * normed.to(x.dtype)


def rope_frequencies(cfg: ModelConfig) -> tuple[torch.Tensor, float]:
    """Inverse frequencies for the rotary dims and the cos/sin magnitude, with YaRN when configured.

    YaRN keeps high frequencies (which never wrap within the original context) as they are, divides low
    frequencies by `factor`, and blends linearly over the band of dims between `beta_fast` and `beta_slow`
    rotations per original context length.
    """
    dim, base = cfg.qk_rope_head_dim, cfg.rope_theta
    inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    scaling = cfg.rope_scaling
    if scaling is None:
        return inv_freq, 1.0
    factor = float(scaling["factor"])
    original = scaling.get("original_max_position_embeddings") or cfg.max_position_embeddings
    beta_fast, beta_slow = scaling.get("beta_fast") or 32, scaling.get("beta_slow") or 1

    def dim_for_rotations(rotations: float) -> float:
        return dim * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low = max(math.floor(dim_for_rotations(beta_fast)), 0)
    high = min(math.ceil(dim_for_rotations(beta_slow)), dim - 1)
    if low == high:
        high += 0.001  # avoid a zero-width ramp
    ramp = ((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    inv_freq = inv_freq / factor * ramp + inv_freq * (1 - ramp)

    def mscale(m: float) -> float:
        return 1.0 if factor <= 1 else 0.1 * m * math.log(factor) + 1.0

    # cos/sin magnitude; 1.0 for DeepSeek's released configs, where mscale == mscale_all_dim.
    m, m_all = scaling.get("mscale"), scaling.get("mscale_all_dim")
    magnitude = mscale(m) / mscale(m_all) if (m and m_all) else mscale(1.0)
    if scaling.get("attention_factor") is not None:
        magnitude = float(scaling["attention_factor"])
    return inv_freq, magnitude


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs (x[2i], x[2i+1]) by the angle whose cos/sin are given (shape [..., dim/2])."""
    even, odd = x[..., 0::2], x[..., 1::2]
    return torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1).flatten(-2)


# --------------------------------------------------------------------------- caches


class LatentCache:
    """The absorbed-MLA cache for batched decoding: one [B, max_len, kv_lora_rank + rope] tensor per layer.

    All rows share one length (the inference engine keeps its own paged cache with the same `update`
    contract). `update` stores the new latents of a layer and returns everything cached so far plus the
    boolean attention mask for the new queries; the model calls `advance` once per forward.
    """

    def __init__(self, cfg: ModelConfig, batch_size: int, max_len: int, dtype=torch.float32, device=None,
                 num_layers: int | None = None):
        layers = cfg.num_hidden_layers + cfg.num_nextn_predict_layers if num_layers is None else num_layers
        self.latent = torch.zeros(layers, batch_size, max_len, cfg.latent_dim, dtype=dtype, device=device)
        self.length = 0

    @property
    def max_len(self) -> int:
        return self.latent.shape[2]

    def update(self, layer_idx: int, latent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        new = latent.shape[1]
        end = self.length + new
        if end > self.max_len:
            raise ValueError(f"LatentCache is full: {end} tokens needed, max_len={self.max_len}")
        self.latent[layer_idx, :, self.length:end] = latent
        query_pos = torch.arange(self.length, end, device=latent.device)
        mask = query_pos[:, None] >= torch.arange(end, device=latent.device)[None, :]  # causal [new, end]
        return self.latent[layer_idx, :, :end], mask

    def advance(self, num_tokens: int) -> None:
        self.length += num_tokens


# --------------------------------------------------------------------------- attention


class MLA(nn.Module):
    """Multi-head latent attention (DeepSeek-V2/V3)."""

    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = cfg.num_attention_heads
        self.nope, self.rope, self.v_dim = cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim
        self.kv_lora_rank = cfg.kv_lora_rank
        qk_dim = self.nope + self.rope
        if cfg.q_lora_rank is None:
            self.q_proj = nn.Linear(cfg.hidden_size, self.num_heads * qk_dim, bias=False)
        else:
            self.q_a_proj = nn.Linear(cfg.hidden_size, cfg.q_lora_rank, bias=False)
            self.q_a_layernorm = RMSNorm(cfg.q_lora_rank)  # eps fixed at 1e-6, as in DeepSeek's code
            self.q_b_proj = nn.Linear(cfg.q_lora_rank, self.num_heads * qk_dim, bias=False)
        self.kv_a_proj_with_mqa = nn.Linear(cfg.hidden_size, cfg.kv_lora_rank + self.rope, bias=False)
        self.kv_a_layernorm = RMSNorm(cfg.kv_lora_rank)
        self.kv_b_proj = nn.Linear(cfg.kv_lora_rank, self.num_heads * (self.nope + self.v_dim), bias=False)
        self.o_proj = nn.Linear(self.num_heads * self.v_dim, cfg.hidden_size, bias=False)
        self.softmax_scale = qk_dim**-0.5 * cfg.yarn_mscale() ** 2

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: LatentCache | None = None):
        batch, seq, _ = x.shape
        q = self.q_proj(x) if hasattr(self, "q_proj") else self.q_b_proj(self.q_a_layernorm(self.q_a_proj(x)))
        q_nope, q_pe = q.view(batch, seq, self.num_heads, -1).split([self.nope, self.rope], dim=-1)
        q_pe = apply_rope(q_pe, cos.unsqueeze(2), sin.unsqueeze(2))
        c_kv, k_pe = self.kv_a_proj_with_mqa(x).split([self.kv_lora_rank, self.rope], dim=-1)
        latent = torch.cat((self.kv_a_layernorm(c_kv), apply_rope(k_pe, cos, sin)), dim=-1)
        if cache is None:
            out = self._naive(q_nope, q_pe, latent)
        else:
            latent_all, mask = cache.update(self.layer_idx, latent)
            out = self._absorbed(q_nope, q_pe, latent_all, mask)
        return self.o_proj(out.reshape(batch, seq, self.num_heads * self.v_dim))

    def _naive(self, q_nope, q_pe, latent):
        """Expand the latent into per-head keys/values and run causal attention over the sequence."""
        batch, seq, heads, _ = q_nope.shape
        c_kv, k_pe = latent.split([self.kv_lora_rank, self.rope], dim=-1)
        k_nope, v = self.kv_b_proj(c_kv).view(batch, seq, heads, -1).split([self.nope, self.v_dim], dim=-1)
        q = torch.cat((q_nope, q_pe), dim=-1).transpose(1, 2)
        k = torch.cat((k_nope, k_pe.unsqueeze(2).expand(-1, -1, heads, -1)), dim=-1).transpose(1, 2)
        # SDPA's fused CPU kernel wants one head size for q, k and v; zero-padding v costs less than the
        # unfused fallback and the padded output columns are dropped.
        pad = q.shape[-1] - self.v_dim
        v = F.pad(v, (0, pad)) if pad > 0 else v
        out = F.scaled_dot_product_attention(q, k, v.transpose(1, 2), is_causal=True, scale=self.softmax_scale)
        return out[..., : self.v_dim].transpose(1, 2)

    def _absorbed(self, q_nope, q_pe, latent_all, mask):
        """Attend over the cached latent without expanding it.

        score(t, s) = q_nope_t . (W_UK c_s) + q_pe_t . k_pe_s = (W_UK^T q_nope_t) . c_s + q_pe_t . k_pe_s,
        so folding W_UK into the query turns each head into a query of size kv_lora_rank + rope against a
        single shared key [c_s; k_pe_s] (multi-query attention). Likewise sum_s p_ts W_UV c_s =
        W_UV (sum_s p_ts c_s): attend over c_s as the value, then apply W_UV once per query.
        """
        w = self.kv_b_proj.weight.view(self.num_heads, self.nope + self.v_dim, self.kv_lora_rank)
        w_uk, w_uv = w[:, : self.nope], w[:, self.nope:]
        batch, seq, heads, _ = q_nope.shape
        q_latent = torch.einsum("bthd,hdc->bthc", q_nope, w_uk)
        # All heads share one key per position, so heads and query positions stack into the rows of a single
        # matmul per sequence: [B, T*H, C+R] x [B, C+R, S].
        q = torch.cat((q_latent, q_pe), dim=-1).reshape(batch, seq * heads, -1)
        scores = torch.matmul(q, latent_all.transpose(1, 2)).float() * self.softmax_scale  # [B, T*H, S]
        if mask.dim() == 2:  # [T, S] (contiguous cache) or [B, 1, T, S] (paged cache)
            mask = mask[None, None]
        mask = mask.reshape(mask.shape[0], mask.shape[-2], 1, mask.shape[-1])  # [B|1, T, 1, S]
        scores = scores.view(batch, seq, heads, -1).masked_fill(~mask, float("-inf"))
        probs = torch.softmax(scores, dim=-1).to(latent_all.dtype).view(batch, seq * heads, -1)
        out_latent = torch.matmul(probs, latent_all[..., : self.kv_lora_rank]).view(batch, seq, heads, -1)
        return torch.einsum("bthc,hdc->bthd", out_latent, w_uv)


# --------------------------------------------------------------------------- feed-forward and MoE


class SwiGLU(nn.Module):
    def __init__(self, hidden_size: int, intermediate_size: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


@dataclass
class Routing:
    weights: torch.Tensor  # [N, k] fp32 combine weights
    experts: torch.Tensor  # [N, k] expert indices
    scores: torch.Tensor  # [N, E] fp32 sigmoid affinities (for the sequence-wise balance loss)


class Gate(nn.Module):
    """Sigmoid, group-limited, bias-corrected top-k routing (DeepSeek-V3 `noaux_tc`)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.top_k, self.n_group, self.topk_group = cfg.num_experts_per_tok, cfg.n_group, cfg.topk_group
        self.scaling, self.normalise = cfg.routed_scaling_factor, cfg.norm_topk_prob
        self.weight = nn.Parameter(torch.empty(cfg.n_routed_experts, cfg.hidden_size))
        # The bias only steers *selection* (aux-loss-free balancing); it never enters the combine weights.
        # It is updated by `update_balance_bias`, not by the optimiser, so it is a buffer.
        self.register_buffer("e_score_correction_bias", torch.zeros(cfg.n_routed_experts, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> Routing:
        scores = F.linear(x.float(), self.weight.float()).sigmoid()
        biased = scores + self.e_score_correction_bias
        grouped = biased.view(x.shape[0], self.n_group, -1)
        group_scores = grouped.topk(2, dim=-1).values.sum(-1)
        keep = group_scores.topk(self.topk_group, dim=-1).indices
        group_mask = torch.ones_like(group_scores, dtype=torch.bool).scatter_(1, keep, False)
        biased = grouped.masked_fill(group_mask.unsqueeze(-1), float("-inf")).flatten(1)
        experts = biased.topk(self.top_k, dim=-1).indices
        weights = scores.gather(1, experts)
        if self.normalise:
            weights = weights / (weights.sum(-1, keepdim=True) + 1e-20)
        return Routing(weights * self.scaling, experts, scores)


def expert_counts(experts: torch.Tensor, num_experts: int) -> torch.Tensor:
    """How many of the flat expert indices pick each expert: bincount, but with a static output shape, so that
    torch.compile keeps the decode step one graph."""
    return torch.zeros(num_experts, dtype=torch.long, device=experts.device).scatter_add_(
        0, experts, torch.ones_like(experts))


class RoutedExperts(nn.Module):
    """All routed experts of one layer as stacked SwiGLU weights."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        e, d, i = cfg.n_routed_experts, cfg.hidden_size, cfg.moe_intermediate_size
        self.gate_up_proj = nn.Parameter(torch.empty(e, 2 * i, d))
        self.down_proj = nn.Parameter(torch.empty(e, d, i))

    def forward(self, x: torch.Tensor, routing: Routing) -> torch.Tensor:
        num_tokens, k = routing.experts.shape
        flat_experts = routing.experts.flatten()
        if num_tokens * k <= self.gate_up_proj.shape[0]:
            # Few (token, expert) pairs, as in decoding: copying the chosen experts' weights costs less than
            # sorting and dispatching, and one batched matmul per projection serves all pairs.
            pairs = x.unsqueeze(1).expand(-1, k, -1).reshape(-1, 1, x.shape[-1])
            # (index_select, not fancy indexing: the latter is several times slower on CPU)
            gate_up = self.gate_up_proj.index_select(0, flat_experts).transpose(1, 2)
            gate, up = torch.bmm(pairs, gate_up).chunk(2, dim=-1)
            out = torch.bmm(F.silu(gate) * up, self.down_proj.index_select(0, flat_experts).transpose(1, 2))
            return (out.view(num_tokens, k, -1) * routing.weights.unsqueeze(-1).to(out.dtype)).sum(1).to(x.dtype)
        order = flat_experts.argsort(stable=True)  # (token, slot) pairs grouped by expert
        token_of = order // k
        counts = expert_counts(flat_experts, self.gate_up_proj.shape[0])
        grouped = x.index_select(0, token_of)
        # grouped_mm needs 16-byte aligned rows, so both matrix widths must be multiples of 8 elements.
        aligned = x.shape[-1] % 8 == 0 and self.down_proj.shape[-1] % 8 == 0
        if _GROUPED_MM and aligned and x.dtype in (torch.float32, torch.bfloat16):
            # One kernel per projection for all experts: rows [offs[e-1], offs[e]) use expert e's weights.
            offs = counts.cumsum(0).to(torch.int32)
            gate, up = _grouped_mm(grouped, self.gate_up_proj.transpose(1, 2), offs).chunk(2, dim=-1)
            out = _grouped_mm(F.silu(gate) * up, self.down_proj.transpose(1, 2), offs)
        else:
            # unbind (not indexing) so backward writes each expert's gradient once instead of one full-size
            # zero tensor per expert.
            gate_up, down, outputs = self.gate_up_proj.unbind(0), self.down_proj.unbind(0), []
            for expert, chunk in enumerate(grouped.split(counts.tolist())):
                if chunk.shape[0]:
                    gate, up = F.linear(chunk, gate_up[expert]).chunk(2, dim=-1)
                    outputs.append(F.linear(F.silu(gate) * up, down[expert]))
            out = torch.cat(outputs)
        weighted = out * routing.weights.flatten().index_select(0, order).unsqueeze(-1).to(out.dtype)
        return torch.zeros_like(x).index_add_(0, token_of, weighted.to(x.dtype))


class _ContiguousGrad(torch.autograd.Function):
    """Identity whose backward makes the incoming gradient contiguous (grouped_mm's backward requires it)."""

    @staticmethod
    def forward(ctx, y):
        return y

    @staticmethod
    def backward(ctx, grad):
        return grad.contiguous()


def _grouped_mm(x: torch.Tensor, w: torch.Tensor, offs: torch.Tensor) -> torch.Tensor:
    if torch.compiler.is_compiling():  # inference engine's compiled decode step (no autograd there)
        return _grouped_mm_opaque(x, w, offs)
    return _ContiguousGrad.apply(torch._grouped_mm(x, w, offs=offs))


@torch.library.custom_op("r1lab::grouped_mm", mutates_args=())
def _grouped_mm_opaque(x: torch.Tensor, w: torch.Tensor, offs: torch.Tensor) -> torch.Tensor:
    """torch._grouped_mm as an opaque op for torch.compile, whose shape check for it accepts only bf16 on CPU
    although the CPU kernel itself computes fp32 too."""
    return torch._grouped_mm(x, w, offs=offs)


@_grouped_mm_opaque.register_fake
def _(x: torch.Tensor, w: torch.Tensor, offs: torch.Tensor) -> torch.Tensor:
    return x.new_empty(x.shape[0], w.shape[-1])


def _grouped_mm_works() -> bool:
    """torch._grouped_mm is private and its CPU support recent; use it only where it computes correctly."""
    if not hasattr(torch, "_grouped_mm"):
        return False
    try:
        x, w = torch.randn(16, 8), torch.randn(2, 8, 8)
        y = torch._grouped_mm(x, w, offs=torch.tensor([5, 16], dtype=torch.int32))
        return torch.allclose(y, torch.cat((x[:5] @ w[0], x[5:] @ w[1])), atol=1e-5)
    except (RuntimeError, NotImplementedError):
        return False


_GROUPED_MM = _grouped_mm_works()


class MoE(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate = Gate(cfg)
        self.experts = RoutedExperts(cfg)
        self.shared_experts = (
            SwiGLU(cfg.hidden_size, cfg.moe_intermediate_size * cfg.n_shared_experts) if cfg.n_shared_experts else None
        )
        self.load: torch.Tensor | None = None  # tokens per expert in the last forward (for balancing/logging)
        self.balance_loss: torch.Tensor | None = None  # sequence-wise balance term of the last training forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, seq, dim = x.shape
        flat = x.reshape(-1, dim)
        routing = self.gate(flat)
        with torch.no_grad():
            self.load = expert_counts(routing.experts.flatten(), routing.scores.shape[1])
        if self.training:
            self.balance_loss = sequence_balance_loss(
                routing.scores.view(batch, seq, -1), routing.experts.view(batch, seq, -1)
            )
        out = self.experts(flat, routing)
        if self.shared_experts is not None:
            out = out + self.shared_experts(flat)
        return out.view(batch, seq, dim)


def sequence_balance_loss(scores: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
    """DeepSeek-V3's complementary sequence-wise balance loss, sum_i f_i * P_i averaged over sequences.

    scores [B, T, E] are sigmoid affinities, experts [B, T, k] the selected indices. f_i = E/(k T) * (tokens of
    the sequence routed to i); P_i = mean over the sequence of the affinity normalised over experts. Multiply by
    alpha (1e-4 in V3) in the trainer.
    """
    batch, seq, num_experts = scores.shape
    k = experts.shape[-1]
    counts = torch.zeros(batch, num_experts, device=scores.device).scatter_add_(
        1, experts.reshape(batch, -1), torch.ones(batch, seq * k, device=scores.device)
    )
    f = counts * num_experts / (k * seq)
    p = (scores / scores.sum(-1, keepdim=True)).mean(1)
    return (f * p).sum(-1).mean()


@torch.no_grad()
def update_balance_bias(model: DeepseekV3ForCausalLM, gamma: float = 0.001) -> None:
    """Aux-loss-free balancing: b_i += gamma * sign(mean_load - load_i), from the loads of the last forward.

    Overloaded experts become less attractive to select, underloaded ones more. Call after each optimiser step.
    """
    for moe in model.moe_layers():
        if moe.load is None:
            continue
        load = moe.load.float()
        moe.gate.e_score_correction_bias += gamma * torch.sign(load.mean() - load)


# --------------------------------------------------------------------------- blocks and the model


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = MLA(cfg, layer_idx)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MoE(cfg) if cfg.is_moe_layer(layer_idx) else SwiGLU(cfg.hidden_size, cfg.intermediate_size)

    def forward(self, x, cos, sin, cache=None):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, cache)
        return x + self.mlp(self.post_attention_layernorm(x))


class SharedHead(nn.Module):
    """The MTP module's final norm; the projection itself is the main lm_head (shared)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class MTPLayer(DecoderLayer):
    """One multi-token-prediction depth: h' = eh_proj([enorm(emb(t_{i+1})); hnorm(h_i)]) -> block -> norm."""

    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__(cfg, layer_idx)
        self.enorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.hnorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.eh_proj = nn.Linear(2 * cfg.hidden_size, cfg.hidden_size, bias=False)
        self.shared_head = SharedHead(cfg)

    def forward(self, hidden, next_embeds, cos, sin, cache=None):
        x = self.eh_proj(torch.cat((self.enorm(next_embeds), self.hnorm(hidden)), dim=-1))
        return self.shared_head.norm(super().forward(x, cos, sin, cache))


class DeepseekV3Model(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg, i) for i in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


@dataclass
class CausalLMOutput:
    logits: torch.Tensor  # [B, T, vocab]
    hidden_states: torch.Tensor  # [B, T, hidden], after the final norm (what the head and MTP see)
    mtp_logits: list[torch.Tensor]  # depth d: [B, T - d, vocab], position i predicts token i + 1 + d
    balance_loss: torch.Tensor | None  # sum over MoE layers of the sequence-wise balance term (training only)


class DeepseekV3ForCausalLM(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.model = DeepseekV3Model(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.mtp = nn.ModuleList(
            MTPLayer(cfg, cfg.num_hidden_layers + d) for d in range(cfg.num_nextn_predict_layers)
        )
        inv_freq, magnitude = rope_frequencies(cfg)
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.rope_magnitude = magnitude
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    # ---------------------------------------------------------------- helpers
    def moe_layers(self) -> list[MoE]:
        return [m for m in self.modules() if isinstance(m, MoE)]

    def router_loads(self) -> torch.Tensor | None:
        """Tokens per routed expert in the last forward, one row per MoE layer of the main model: [L_moe, E]."""
        loads = [layer.mlp.load for layer in self.model.layers if isinstance(layer.mlp, MoE)]
        return torch.stack(loads) if loads and all(x is not None for x in loads) else None

    def rotary(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        angles = positions.unsqueeze(-1).float() * self.inv_freq
        return (angles.cos() * self.rope_magnitude).to(dtype), (angles.sin() * self.rope_magnitude).to(dtype)

    @torch.no_grad()
    def init_weights(self, seed: int | None = None) -> None:
        """Normal(0, initializer_range) for matrices, ones for norms, zero correction bias."""
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        std = self.config.initializer_range
        for name, p in self.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            else:
                p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float32) * std)
        for moe in self.moe_layers():
            moe.gate.e_score_correction_bias.zero_()

    # ---------------------------------------------------------------- forward
    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor | None = None,
                cache: LatentCache | None = None, mtp: bool = False,
                logits_to_keep: int | torch.Tensor | None = None) -> CausalLMOutput:
        """input_ids [B, T] -> logits [B, T, vocab].

        positions default to 0..T-1, or continue from `cache.length`. With a cache (a `LatentCache`, or any
        object with the same `update`/`advance` contract such as the engine's paged cache), attention runs on the
        absorbed path over the cached latent. `mtp=True` also runs the MTP modules (training). `logits_to_keep`
        limits the head to the last N positions (an int) or to one position per row (a LongTensor [B]).
        """
        seq = input_ids.shape[1]
        if positions is None:
            start = cache.length if cache is not None else 0
            positions = torch.arange(start, start + seq, device=input_ids.device).expand_as(input_ids)
        embeds = self.model.embed_tokens(input_ids)
        cos, sin = self.rotary(positions, embeds.dtype)
        h = embeds
        for layer in self.model.layers:
            h = layer(h, cos, sin, cache)
        h = self.model.norm(h)
        if cache is not None:
            cache.advance(seq)
        if logits_to_keep is None:
            kept = h
        elif isinstance(logits_to_keep, torch.Tensor):
            kept = h[torch.arange(h.shape[0], device=h.device), logits_to_keep].unsqueeze(1)
        else:
            kept = h[:, -logits_to_keep:]
        logits = self.lm_head(kept)

        mtp_logits = []
        if mtp:
            hidden = h
            for depth, module in enumerate(self.mtp, start=1):
                # Position i combines h_i with the embedding of token i+depth to predict token i+depth+1.
                hidden = module(hidden[:, :-1], embeds[:, depth:], cos[:, :-depth], sin[:, :-depth])
                mtp_logits.append(self.lm_head(hidden))

        balance = None
        if self.training:
            terms = [m.balance_loss for m in self.moe_layers() if m.balance_loss is not None]
            balance = torch.stack(terms).sum() if terms else None
            for m in self.moe_layers():
                m.balance_loss = None
        return CausalLMOutput(logits, h, mtp_logits, balance)

    def mtp_step(self, hidden: torch.Tensor, next_ids: torch.Tensor, positions: torch.Tensor, cache,
                 depth: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Run MTP module `depth` for drafting: h_i and token i+1 at position i -> (logits for token i+2, h').

        The module's attention has its own layer in the cache (index num_hidden_layers + depth).
        """
        cos, sin = self.rotary(positions, hidden.dtype)
        out = self.mtp[depth](hidden, self.model.embed_tokens(next_ids), cos, sin, cache)
        return self.lm_head(out), out

    def save_pretrained(self, path, **kwargs) -> None:
        from .checkpoint import save_pretrained

        save_pretrained(self, path, **kwargs)

    @property
    def device(self) -> torch.device:
        return self.lm_head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.lm_head.weight.dtype


def mtp_loss(output: CausalLMOutput, input_ids: torch.Tensor, ignore_index: int = -100,
             labels: torch.Tensor | None = None) -> torch.Tensor:
    """Mean cross-entropy of the MTP heads; depth d at position i predicts labels[i + d + 1]."""
    labels = input_ids if labels is None else labels
    losses = []
    for depth, logits in enumerate(output.mtp_logits, start=1):
        target = labels[:, depth + 1:]
        losses.append(F.cross_entropy(logits[:, : target.shape[1]].flatten(0, 1).float(), target.flatten(),
                                      ignore_index=ignore_index))
    return torch.stack(losses).mean() if losses else torch.zeros((), device=input_ids.device)
