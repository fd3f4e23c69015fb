import pytest
import torch

from r1lab.config import ModelConfig

torch.set_num_threads(2)


def micro_config(**overrides) -> ModelConfig:
    """A few-thousand-parameter config exercising every feature (q LoRA, MoE with groups, shared expert, MTP)."""
    base = dict(
        vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=2,
        max_position_embeddings=256, q_lora_rank=16, kv_lora_rank=12, qk_nope_head_dim=8, qk_rope_head_dim=4,
        v_head_dim=6, moe_intermediate_size=16, n_routed_experts=8, n_shared_experts=1, num_experts_per_tok=3,
        n_group=4, topk_group=2, first_k_dense_replace=1, rope_scaling=None, num_nextn_predict_layers=1,
        initializer_range=0.1,
    )
    base.update(overrides)
    return ModelConfig(**base)


@torch.no_grad()
def perturb(model, seed: int = 0) -> None:
    """Make every weight matter: random matrices, norms away from 1, a non-zero routing correction bias."""
    gen = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if name.endswith("norm.weight") or name.endswith("layernorm.weight"):
            p.copy_(1 + 0.3 * torch.randn(p.shape, generator=gen))
        else:
            p.copy_(0.15 * torch.randn(p.shape, generator=gen))
    for name, b in model.named_buffers():
        if name.endswith("e_score_correction_bias"):
            b.copy_(0.2 * torch.rand(b.shape, generator=gen) - 0.1)


@pytest.fixture
def micro():
    return micro_config
