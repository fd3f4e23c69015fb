"""GRPO: the loss against hand computation, advantages, and a short run that must raise the reward."""

import math

import pytest
import torch

from r1lab.rl.loss import group_advantages, grpo_loss


def test_advantages_are_zero_for_constant_reward_groups():
    adv = group_advantages(torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [0.0, 1.0, 0.5]]))
    assert torch.equal(adv[:2], torch.zeros(2, 3))
    assert adv[2].sum().abs() < 1e-6 and adv[2, 1] > 0 > adv[2, 0]
    dr = group_advantages(torch.tensor([[0.0, 1.0, 0.5]]), scale_by_std=False)
    assert torch.allclose(dr, torch.tensor([[-0.5, 0.5, 0.0]]))


def test_grpo_loss_matches_hand_computation():
    # Two completions: lengths 2 and 1 (second row padded). Advantages +1 and -0.5.
    logp = torch.tensor([[math.log(0.6), math.log(0.3)], [math.log(0.2), 0.0]], requires_grad=True)
    old = torch.log(torch.tensor([[0.5, 0.3], [0.4, 1.0]]))
    ref = torch.log(torch.tensor([[0.5, 0.5], [0.2, 1.0]]))
    adv = torch.tensor([1.0, -0.5])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    eps_low, eps_high, beta = 0.1, 0.15, 0.05
    # ratios: 1.2 (clipped to 1.15 for A>0), 1.0, 0.5 (clipped to 0.9 for A<0 -> min picks clipped -0.45?)
    # token terms -min(r*A, clip(r)*A):
    t00 = -min(1.2 * 1.0, 1.15 * 1.0)  # -1.15
    t01 = -min(1.0, 1.0)  # -1.0
    t10 = -min(0.5 * -0.5, 0.9 * -0.5)  # -(-0.45) = 0.45
    k3 = lambda r_over_p: r_over_p - math.log(r_over_p) - 1  # noqa: E731
    kl00, kl01, kl10 = k3(0.5 / 0.6), k3(0.5 / 0.3), k3(0.2 / 0.2)
    per_token = [t00 + beta * kl00, t01 + beta * kl01, t10 + beta * kl10]
    expected = {
        "token": sum(per_token) / 3,
        "sequence": ((per_token[0] + per_token[1]) / 2 + per_token[2]) / 2,
        "dr_grpo": sum(per_token) / (2 * 4),
    }
    for aggregation, value in expected.items():
        loss, stats = grpo_loss(logp, old, adv, mask, ref, eps_low, eps_high, beta, aggregation, max_tokens=4)
        assert loss.item() == pytest.approx(value, abs=1e-6), aggregation
    assert stats.clip_fraction == pytest.approx(2 / 3)  # token 00 (ratio above 1+eps_high, A>0) and 10
    assert stats.kl == pytest.approx((kl00 + kl01 + kl10) / 3, abs=1e-6)


def test_clipped_tokens_get_no_policy_gradient():
    logp = torch.tensor([[math.log(0.9), math.log(0.5)]], requires_grad=True)
    old = torch.log(torch.tensor([[0.5, 0.5]]))
    loss, _ = grpo_loss(logp, old, torch.tensor([1.0]), torch.ones(1, 2), eps_low=0.2, eps_high=0.2)
    loss.backward()
    assert logp.grad[0, 0] == 0 and logp.grad[0, 1] < 0  # ratio 1.8 is clipped; ratio 1 still pushes up


def test_kl_penalty_needs_reference_and_is_zero_at_reference():
    logp = torch.log(torch.tensor([[0.3, 0.7]]))
    with pytest.raises(ValueError, match="ref_logp"):
        grpo_loss(logp, logp, torch.tensor([0.0]), torch.ones(1, 2), beta=0.1)
    _, stats = grpo_loss(logp, logp, torch.tensor([0.0]), torch.ones(1, 2), ref_logp=logp, beta=0.1)
    assert stats.kl == pytest.approx(0.0, abs=1e-7)


def _tiny_moe_teacher():
    from r1lab.config import preset
    from r1lab.model import DeepseekV3ForCausalLM

    model = DeepseekV3ForCausalLM(preset("tiny"))
    model.init_weights(seed=0)
    return model.eval()


def test_folded_ffn_equals_the_moe_when_routing_is_fixed():
    # With a zero router every score is sigmoid(0) = 0.5, so the correction bias alone picks the experts and each
    # chosen one gets the same combine weight: then the folded dense FFN must reproduce the MoE exactly.
    from r1lab.rl.distill import expert_usage, fold_experts

    teacher = _tiny_moe_teacher()
    moe = teacher.moe_layers()[0]
    k, n = moe.gate.top_k, moe.gate.weight.shape[0]
    with torch.no_grad():
        moe.gate.weight.zero_()
        moe.gate.e_score_correction_bias.copy_(torch.linspace(1, 0, n))  # experts 0..k-1 win
    ids = torch.randint(0, teacher.config.vocab_size, (2, 9))
    usage = expert_usage(teacher, [ids])[0]
    assert torch.allclose(usage[:k], torch.full((k,), moe.gate.scaling / k, dtype=usage.dtype))
    assert usage[k:].abs().sum() == 0
    width = (k + 1) * moe.experts.down_proj.shape[-1] + 8  # room for k experts, and 8 spare units
    ffn = fold_experts(moe, usage, width)
    x = torch.randn(1, 5, teacher.config.hidden_size)
    torch.testing.assert_close(ffn(x), moe(x), atol=1e-5, rtol=1e-5)


def test_dense_student_has_no_routed_experts_and_follows_the_teacher(tmp_path):
    from r1lab.checkpoint import load_model
    from r1lab.rl.distill import dense_student

    teacher = _tiny_moe_teacher()
    teacher.save_pretrained(tmp_path / "teacher")
    ids = torch.randint(0, teacher.config.vocab_size, (4, 16))
    sizes = dense_student(tmp_path / "teacher", [ids], tmp_path / "student")
    student = load_model(tmp_path / "student")
    assert not student.moe_layers() and student.config.num_nextn_predict_layers == 0
    assert sizes["student"] < sizes["teacher"]
    for name, weight in student.state_dict().items():
        if ".mlp." not in name:  # attention, norms, embeddings and head are the teacher's own
            torch.testing.assert_close(weight, teacher.state_dict()[name])
    # the folded FFN keeps the teacher's predictions far closer than a fresh dense model of the same shape
    fresh = type(student)(student.config)
    fresh.init_weights(seed=1)
    with torch.no_grad():
        reference = teacher(ids).logits
        folded_error = (student(ids).logits - reference).pow(2).mean()
        fresh.model.embed_tokens.weight.copy_(teacher.model.embed_tokens.weight)
        fresh_error = (fresh.eval()(ids).logits - reference).pow(2).mean()
    assert folded_error < fresh_error / 4


def test_token_logprobs_from_a_later_position_are_the_full_ones_sliced():
    """GRPO scores only completion targets, so it starts the vocabulary projection at the first one; the values
    must be those of the whole-sequence computation, entropy included."""
    from r1lab.rl.rollout import token_logprobs

    model = _tiny_moe_teacher()
    ids = torch.randint(0, model.config.vocab_size, (3, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full, full_entropy = token_logprobs(model, ids, with_entropy=True)
        late, late_entropy = token_logprobs(model, ids, with_entropy=True, first=5)
    assert full.shape == (3, 11) and late.shape == (3, 6)
    torch.testing.assert_close(late, full[:, 5:])
    torch.testing.assert_close(late_entropy, full_entropy[:, 5:])


def test_curriculum_leans_to_the_edge_of_competence_and_counts_what_it_drew():
    from r1lab.rl.grpo import Curriculum
    from r1lab.rl.rollout import Group
    from r1lab.tasks import level_of

    levels = ["countdown:2", "countdown:3", "linear:3"]
    first, again = Curriculum(levels, seed=1), Curriculum(levels, seed=1)
    assert [p.prompt for p in first.take(12)] == [p.prompt for p in again.take(12)]  # deterministic by seed
    assert first.weights() == [0.3, 0.3, 0.3]  # p = 0.5 everywhere before any rollout: uniform

    def groups(level, accuracy):
        problem = next(first.streams[level])
        rewards = [{"reward": a, "accuracy": a, "format": 1.0} for a in accuracy]
        return Group(problem, [], [[]] * len(accuracy), [""] * len(accuracy), rewards)

    for _ in range(20):  # countdown:2 always solved, countdown:3 never, linear:3 half the time
        first.update([groups("countdown:2", [1.0] * 4), groups("countdown:3", [0.0] * 4),
                      groups("linear:3", [1.0, 0.0, 1.0, 0.0])])
    assert first.pass_rate["countdown:2"] > 0.95 and first.pass_rate["countdown:3"] < 0.05
    drawn = [level_of(p) for p in first.take(400)]
    assert drawn.count("linear:3") > 250 and 0 < drawn.count("countdown:2") < 60 and drawn.count("countdown:3") > 0
    assert all(len(first.seen[level]) > 0 for level in levels)
    uniform = Curriculum(levels, seed=1, adaptive=False)
    uniform.pass_rate.update(first.pass_rate)
    drawn = [level_of(p) for p in uniform.take(300)]
    assert all(70 < drawn.count(level) < 130 for level in levels)


def test_grpo_config_checks_its_mix():
    import pytest

    from r1lab.rl.grpo import GRPOConfig
    from r1lab.tasks import TaskError

    assert GRPOConfig(init="x", tasks=["countdown", "linear"], difficulties=[2, 3]).mix == [
        "countdown:2", "countdown:3", "linear:2", "linear:3"]
    with pytest.raises(TaskError, match="unknown difficulty 8 for task 'linear'"):
        GRPOConfig(init="x", mix=["countdown:2", "linear:8"])
    with pytest.raises(TaskError, match="unknown task 'chess'"):
        GRPOConfig(init="x", mix=["chess:1"])


def test_tempered_token_logprobs_are_those_of_the_distribution_that_sampled():
    """Rollouts drawn at temperature T are scored under softmax(logits / T), the distribution the engine sampled
    from; at T = 1 that is the model's own."""
    from r1lab.rl.rollout import token_logprobs

    model = _tiny_moe_teacher()
    ids = torch.randint(0, model.config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = model(ids).logits[:, :-1].float()
        for temperature in (1.0, 0.6):
            expected = torch.distributions.Categorical(logits=logits / temperature).log_prob(ids[:, 1:])
            torch.testing.assert_close(token_logprobs(model, ids, temperature=temperature), expected)
        assert not torch.allclose(token_logprobs(model, ids, temperature=0.6), token_logprobs(model, ids))
