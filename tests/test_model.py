"""Behaviour of the network itself: cached absorbed decoding, routing, dispatch, balancing, MTP."""

import pytest
import torch
import torch.nn.functional as F

from conftest import micro_config, perturb
from r1lab.generate import generate
from r1lab.model import (
    DeepseekV3ForCausalLM,
    Gate,
    LatentCache,
    RoutedExperts,
    mtp_loss,
    rope_frequencies,
    sequence_balance_loss,
    update_balance_bias,
)


def _model(seed=0, **overrides):
    torch.manual_seed(seed)
    model = DeepseekV3ForCausalLM(micro_config(**overrides))
    perturb(model, seed)
    return model.eval()


@pytest.mark.parametrize("overrides", [{}, {"q_lora_rank": None}, {
    "rope_scaling": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 8,
                     "mscale": 1.0, "mscale_all_dim": 1.0}}])
def test_absorbed_cached_decode_equals_full_forward(overrides):
    model = _model(**overrides)
    ids = torch.randint(0, model.config.vocab_size, (3, 30))
    with torch.no_grad():
        full = model(ids).logits
        cache = LatentCache(model.config, batch_size=3, max_len=30)
        chunks = [model(ids[:, :10], cache=cache).logits]  # prefill through the absorbed path
        chunks += [model(ids[:, t:t + 1], cache=cache).logits for t in range(10, 30)]
    cached = torch.cat(chunks, dim=1)
    assert (cached - full).abs().max().item() <= 1e-5


def test_cache_holds_only_the_latent():
    cfg = micro_config()
    cache = LatentCache(cfg, batch_size=1, max_len=8)
    assert cache.latent.shape[-1] == cfg.kv_lora_rank + cfg.qk_rope_head_dim


def test_cache_overflow_is_a_clear_error():
    model = _model()
    cache = LatentCache(model.config, batch_size=1, max_len=4)
    with pytest.raises(ValueError, match="LatentCache is full"):
        model(torch.zeros(1, 5, dtype=torch.long), cache=cache)


def test_generate_greedy_matches_repeated_full_forwards():
    model = _model(seed=3)
    prompt = torch.randint(0, model.config.vocab_size, (2, 7))
    out = generate(model, prompt, max_new_tokens=12)
    seq = prompt
    for _ in range(12):
        nxt = model(seq).logits[:, -1].argmax(-1, keepdim=True)
        seq = torch.cat((seq, nxt), 1)
    assert torch.equal(out, seq[:, 7:])


def _reference_route(gate: Gate, x: torch.Tensor):
    """Per-token loop written straight from DeepSeek-V3 §2.1 / REFERENCE §3."""
    experts, weights = [], []
    n_experts = gate.weight.shape[0]
    size = n_experts // gate.n_group
    for token in x:
        s = torch.sigmoid(gate.weight.float() @ token.float())
        b = s + gate.e_score_correction_bias
        group_scores = [sorted(b[g * size:(g + 1) * size].tolist(), reverse=True)[:2] for g in range(gate.n_group)]
        group_scores = torch.tensor([sum(v) for v in group_scores])
        kept = set(group_scores.argsort(descending=True)[: gate.topk_group].tolist())
        allowed = torch.tensor([(i // size) in kept for i in range(n_experts)])
        chosen = b.masked_fill(~allowed, float("-inf")).argsort(descending=True)[: gate.top_k]
        w = s[chosen] / s[chosen].sum() * gate.scaling
        experts.append(sorted(chosen.tolist()))
        weights.append(dict(zip(chosen.tolist(), w.tolist(), strict=True)))
    return experts, weights


def test_gate_matches_per_token_reference_even_with_negative_scores():
    cfg = micro_config(n_routed_experts=16, n_group=4, topk_group=2, num_experts_per_tok=4)
    gate = Gate(cfg)
    torch.manual_seed(0)
    torch.nn.init.normal_(gate.weight, std=1.0)
    # A strongly negative bias makes every s+b negative: HF < 5.2 masked with 0.0 and would then pick
    # experts from dropped groups; the -inf mask must not.
    gate.e_score_correction_bias.copy_(-2 + 0.5 * torch.rand(16))
    x = torch.randn(50, cfg.hidden_size)
    routing = gate(x)
    ref_experts, ref_weights = _reference_route(gate, x)
    for t in range(50):
        assert sorted(routing.experts[t].tolist()) == ref_experts[t]
        for e, w in zip(routing.experts[t].tolist(), routing.weights[t].tolist(), strict=True):
            assert abs(w - ref_weights[t][e]) < 1e-6


def test_expert_dispatch_equals_dense_per_token_computation():
    cfg = micro_config()
    experts = RoutedExperts(cfg)
    torch.nn.init.normal_(experts.gate_up_proj, std=0.3)
    torch.nn.init.normal_(experts.down_proj, std=0.3)
    gate = Gate(cfg)
    torch.nn.init.normal_(gate.weight)
    x = torch.randn(40, cfg.hidden_size, requires_grad=True)
    routing = gate(x)
    out = experts(x, routing)
    ref = torch.zeros_like(out)
    for t in range(40):
        for e, w in zip(routing.experts[t], routing.weights[t], strict=True):
            gate_h, up = F.linear(x[t], experts.gate_up_proj[e]).chunk(2)
            ref[t] += w * F.linear(F.silu(gate_h) * up, experts.down_proj[e])
    assert torch.allclose(out, ref, atol=1e-5)
    out.sum().backward()  # gradients flow through the sorted dispatch
    assert x.grad is not None and experts.gate_up_proj.grad.abs().sum() > 0


def test_router_loads_and_bias_update():
    model = _model()
    ids = torch.randint(0, model.config.vocab_size, (4, 16))
    model(ids)
    loads = model.router_loads()
    n_moe = model.config.num_hidden_layers - model.config.first_k_dense_replace
    assert loads.shape == (n_moe, model.config.n_routed_experts)
    assert (loads.sum(-1) == 4 * 16 * model.config.num_experts_per_tok).all()
    before = [m.gate.e_score_correction_bias.clone() for m in model.moe_layers()]
    update_balance_bias(model, gamma=0.01)
    for moe, old in zip(model.moe_layers(), before, strict=True):
        if moe.load is None:  # the MTP module did not run, so its bias must stay put
            assert torch.equal(moe.gate.e_score_correction_bias, old)
            continue
        load = moe.load.float()
        expected = old + 0.01 * torch.sign(load.mean() - load)
        assert torch.allclose(moe.gate.e_score_correction_bias, expected)
        overloaded = load > load.mean()
        assert (moe.gate.e_score_correction_bias[overloaded] < old[overloaded]).all()


def test_sequence_balance_loss_hand_computed():
    # One sequence of 2 tokens, 4 experts, top-1: token 0 -> expert 0, token 1 -> expert 0.
    scores = torch.tensor([[[0.5, 0.25, 0.25, 0.0], [0.25, 0.25, 0.25, 0.25]]])
    experts = torch.tensor([[[0], [0]]])
    # f = [4/(1*2) * 2, 0, 0, 0] = [4, 0, 0, 0];  P_0 = mean(0.5/1.0, 0.25/1.0) = 0.375  -> loss 1.5
    assert sequence_balance_loss(scores, experts).item() == pytest.approx(1.5)
    balanced = torch.tensor([[[1], [2]]])
    assert sequence_balance_loss(scores, balanced).item() < 1.5


def test_training_forward_reports_balance_loss_and_mtp():
    model = _model().train()
    ids = torch.randint(0, model.config.vocab_size, (2, 12))
    out = model(ids, mtp=True)
    assert out.balance_loss is not None and out.balance_loss.item() > 0
    assert len(out.mtp_logits) == 1 and out.mtp_logits[0].shape == (2, 11, model.config.vocab_size)
    loss = mtp_loss(out, ids)
    assert torch.isfinite(loss) and loss.item() > 0
    (loss + out.balance_loss).backward()
    assert model.mtp[0].eh_proj.weight.grad.abs().sum() > 0


def test_mtp_learns_the_token_after_next():
    """On a fixed cyclic sequence the MTP head can learn t+2; its loss must fall well below chance."""
    model = DeepseekV3ForCausalLM(micro_config(vocab_size=16))
    model.init_weights(seed=0)
    model.train()
    ids = (torch.arange(24) % 7).repeat(4, 1)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = None
    for _ in range(60):
        loss = mtp_loss(model(ids, mtp=True), ids)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert first > 2.0 and loss.item() < 0.3


def test_yarn_frequencies_follow_the_ramp():
    cfg = micro_config(qk_rope_head_dim=32, rope_theta=10000.0, rope_scaling={
        "rope_type": "yarn", "factor": 40.0, "original_max_position_embeddings": 4096,
        "beta_fast": 32, "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0})
    inv, magnitude = rope_frequencies(cfg)
    base = 1.0 / (10000 ** (torch.arange(0, 32, 2).float() / 32))
    assert magnitude == 1.0
    assert torch.allclose(inv[:3], base[:3])  # fastest dims keep their frequency
    assert torch.allclose(inv[-1], base[-1] / 40)  # slowest are interpolated by the factor
    assert ((inv <= base + 1e-12) & (inv >= base / 40 - 1e-12)).all()


def test_init_weights_is_deterministic():
    a, b = (DeepseekV3ForCausalLM(micro_config()) for _ in range(2))
    a.init_weights(seed=5)
    b.init_weights(seed=5)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
