"""A short GRPO run on a trivial task must raise the reward."""

import itertools

import torch


def _sft_micro_model(out_dir, task="arithmetic", difficulty=1, steps=120, seed=0):
    """A micro model briefly fine-tuned on reference traces: right sometimes, not always."""
    from conftest import micro_config
    from r1lab.model import DeepseekV3ForCausalLM
    from r1lab.tasks import problems, solution
    from r1lab.tokenizer import EOS, build_tokenizer, format_chat, save_tokenizer

    probs = list(problems(task, difficulty, "train", 200, seed=seed, unique=False))
    texts = [format_chat([{"role": "user", "content": p.prompt}], add_generation_prompt=True)
             + solution(p).removeprefix("<think>\n") + EOS for p in probs]
    tokenizer = build_tokenizer(texts, vocab_size=300)
    save_tokenizer(tokenizer, out_dir)
    ids = [tokenizer.encode(t, add_special_tokens=False).ids for t in texts]
    torch.manual_seed(seed)
    model = DeepseekV3ForCausalLM(micro_config(vocab_size=tokenizer.get_vocab_size(), hidden_size=64,
                                               num_attention_heads=4, max_position_embeddings=256,
                                               num_nextn_predict_layers=0))
    model.init_weights(seed=seed)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        batch = [ids[i] for i in torch.randint(0, len(ids), (16,), generator=gen).tolist()]
        width = max(map(len, batch))
        x = torch.tensor([b + [1] * (width - len(b)) for b in batch])
        labels = torch.tensor([b[1:] + [-100] * (width - len(b)) for b in batch])
        loss = torch.nn.functional.cross_entropy(model(x).logits[:, :-1].flatten(0, 1), labels.flatten(),
                                                 ignore_index=-100)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval().save_pretrained(out_dir)
    return out_dir


def test_short_grpo_run_raises_the_reward(tmp_path):
    """The trivial task: a handful of fixed arithmetic prompts the SFT model solves only sometimes.

    GRPO sees exactly these prompts each step, so a correct implementation must raise their success rate within
    a few steps; a sign error, a wrong mask or advantages that ignore the reward would not.
    """
    from r1lab.rl.grpo import GRPOConfig, GRPOTrainer
    from r1lab.rl.rollout import rollout
    from r1lab.tasks import problems

    init = _sft_micro_model(tmp_path / "sft", steps=100)
    trainer = GRPOTrainer(GRPOConfig(init=str(init), out=str(tmp_path / "grpo"), tasks=["arithmetic"],
                                     difficulties=[1], steps=1, prompts_per_step=4, group_size=16, lr=3e-4,
                                     max_tokens=40, progress=False, max_refill_rounds=0))

    def accuracy(items, samples=16, seed=5):
        groups = rollout(trainer.engine, items, samples, temperature=1.0, max_tokens=40, seed=seed)
        return [sum(r["accuracy"] for r in g.rewards) / samples for g in groups]

    candidates = list(problems("arithmetic", 1, "train", 24, seed=11))
    per_problem = accuracy(candidates, samples=8, seed=3)
    chosen = [p for p, a in sorted(zip(candidates, per_problem, strict=True), key=lambda x: abs(x[1] - 0.4))][:4]
    trainer.curriculum.streams["arithmetic:1"] = itertools.cycle(chosen)
    before = sum(accuracy(chosen)) / 4
    for step in range(1, 17):
        seen, kept = trainer.collect(step)
        if kept:
            trainer.update(kept)
    after = sum(accuracy(chosen)) / 4
    assert 0.02 < before < 0.9, before
    assert after >= before + 0.15, (before, after)
    final = trainer.save()
    assert (final / "tokenizer.json").exists() and (final / "model.safetensors").exists()


def test_overlong_filtering_keeps_cut_completions_out_of_the_update(tmp_path):
    """DAPO's overlong filtering: completions cut at the budget weigh in the group baseline, not in the loss."""
    from r1lab.rl.grpo import GRPOConfig, GRPOTrainer

    init = _sft_micro_model(tmp_path / "sft", steps=60)
    settings = dict(init=str(init), tasks=["arithmetic"], difficulties=[1], steps=1, prompts_per_step=4,
                    group_size=8, lr=1e-3, max_tokens=40, progress=False, max_refill_rounds=3)
    trainer = GRPOTrainer(GRPOConfig(out=str(tmp_path / "masked"), mask_truncated=True, **settings))
    _, kept = trainer.collect(1)
    assert kept, "no group with a reward difference to learn from"
    for group in kept:
        group.truncated = [True] * len(group.completions)
    before = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.update(kept)
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.model.parameters(), strict=True))
    for group in kept:  # the same batch with one completion per group left whole does move the policy
        group.truncated[0] = False
    trainer.update(kept)
    assert not all(torch.equal(a, b) for a, b in zip(before, trainer.model.parameters(), strict=True))
