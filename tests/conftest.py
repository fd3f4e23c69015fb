import socket

import pytest
import torch

from r1lab.config import ModelConfig

torch.set_num_threads(2)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (for a test server)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


def run_data_command(*argv):
    """Run a tokenizer/tasks/data subcommand as the CLI parses it, letting its exceptions propagate."""
    import argparse

    from r1lab import cli_data

    parser = argparse.ArgumentParser(prog="r1lab")
    sub = parser.add_subparsers(dest="command")
    for add, _ in cli_data.COMMANDS.values():
        add(sub)
    args = parser.parse_args(list(argv))
    return cli_data.COMMANDS[args.command][1](args)


@pytest.fixture
def micro():
    return micro_config


def train_chat_model(out_dir, replies: dict[str, str], steps: int = 150, seed: int = 0):
    """A micro model + tokenizer that has memorised `replies` (question -> '<reasoning></think>answer').

    Gives servers and evaluators a real checkpoint whose greedy output is known, in a few seconds on CPU.
    """
    from r1lab.tokenizer import EOS, build_tokenizer, format_chat, save_tokenizer

    texts = [format_chat([{"role": "user", "content": q}], add_generation_prompt=True) + r + EOS
             for q, r in replies.items()]
    tokenizer = build_tokenizer(texts * 20, vocab_size=300)
    save_tokenizer(tokenizer, out_dir)
    ids = [tokenizer.encode(t, add_special_tokens=False).ids for t in texts]
    torch.manual_seed(seed)
    cfg = micro_config(vocab_size=tokenizer.get_vocab_size(), hidden_size=64, num_attention_heads=4,
                       max_position_embeddings=1024, initializer_range=0.02)
    from r1lab.model import DeepseekV3ForCausalLM, mtp_loss

    model = DeepseekV3ForCausalLM(cfg)
    model.init_weights(seed=seed)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(steps):
        for seq in ids:
            x = torch.tensor([seq])
            out = model(x, mtp=True)
            loss = torch.nn.functional.cross_entropy(out.logits[0, :-1], x[0, 1:]) + 0.3 * mtp_loss(out, x)
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval().save_pretrained(out_dir)
    return out_dir


CHAT_REPLIES = {"What is 6 times 7?": "6 * 7 = 42\n</think>\nAnswer: 42", "Say hi": "greeting\n</think>\nhi there"}


@pytest.fixture(scope="session")
def chat_model_dir(tmp_path_factory):
    """One memorised chat checkpoint shared by the server, browser and eval tests."""
    return train_chat_model(tmp_path_factory.mktemp("chat-model"), CHAT_REPLIES)
