"""Logit parity with transformers' DeepseekV3ForCausalLM, in both checkpoint directions."""

import pytest
import torch

from conftest import micro_config, perturb
from r1lab import load_model
from r1lab.model import DeepseekV3ForCausalLM

transformers = pytest.importorskip("transformers")

YARN = {"rope_type": "yarn", "factor": 8.0, "original_max_position_embeddings": 32, "beta_fast": 32,
        "beta_slow": 1, "mscale": 0.707, "mscale_all_dim": 0.707}

CONFIGS = {
    "yarn-qlora": dict(rope_scaling=YARN),
    "no-qlora": dict(q_lora_rank=None, num_hidden_layers=2, first_k_dense_replace=0, n_routed_experts=12,
                     n_group=3, topk_group=2, num_experts_per_tok=4, n_shared_experts=2),
    "yarn-mscale-differs": dict(rope_scaling={**YARN, "factor": 4.0, "original_max_position_embeddings": 64,
                                              "mscale": 1.0, "mscale_all_dim": 0.5},
                                hidden_size=48, num_attention_heads=3, qk_rope_head_dim=8, norm_topk_prob=False,
                                routed_scaling_factor=1.7, rope_theta=500.0),
}


def _tokens(cfg, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, cfg.vocab_size, (2, 40), generator=gen)


@pytest.mark.parametrize("name", CONFIGS)
def test_our_save_their_load(name, tmp_path):
    cfg = micro_config(**CONFIGS[name])
    ours = DeepseekV3ForCausalLM(cfg)
    perturb(ours, seed=1)
    ours.eval().save_pretrained(tmp_path)
    theirs = transformers.DeepseekV3ForCausalLM.from_pretrained(tmp_path, attn_implementation="eager",
                                                                dtype=torch.float32).eval()
    ids = _tokens(cfg)
    with torch.no_grad():
        diff = (ours(ids).logits - theirs(ids).logits).abs().max().item()
    assert diff <= 1e-4, diff


@pytest.mark.parametrize("name", CONFIGS)
def test_their_save_our_load(name, tmp_path):
    cfg = micro_config(**CONFIGS[name])
    hf_cfg = transformers.DeepseekV3Config(**cfg.to_dict())
    theirs = transformers.DeepseekV3ForCausalLM(hf_cfg)
    perturb(theirs, seed=2)
    theirs.eval().save_pretrained(tmp_path)
    with pytest.warns(UserWarning, match="no MTP weights"):
        ours = load_model(tmp_path)
    ids = _tokens(cfg, seed=3)
    with torch.no_grad():
        diff = (ours(ids).logits - theirs(ids).logits).abs().max().item()
    assert diff <= 1e-4, diff
    # The router bias must have arrived: it changes which experts are chosen.
    bias = ours.model.layers[-1].mlp.gate.e_score_correction_bias
    assert bias.abs().sum() > 0
