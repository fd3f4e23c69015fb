"""Expert parallelism on 2 gloo processes equals the single-process model: outputs, gradients, loads, weights."""

import copy

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from conftest import free_port, micro_config, perturb
from r1lab.model import DeepseekV3ForCausalLM, mtp_loss
from r1lab.parallel import (
    ExpertParallelExperts,
    all_reduce_router_loads,
    is_expert_parameter,
    shard_experts,
    sync_gradients,
    unshard_experts,
)

WORLD = 2
TOL = 1e-5


def _loss(model, ids):
    out = model(ids, mtp=True)
    ce = torch.nn.functional.cross_entropy(out.logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
    return ce + 0.3 * mtp_loss(out, ids) + 0.01 * out.balance_loss, out.logits


def _close(a, b, what):
    diff = (a - b).abs().max().item() if a.numel() else 0.0
    assert diff <= TOL, f"{what}: max |diff| {diff:.2e} > {TOL}"


def _worker(rank: int, port: int, config_overrides: dict, skew: bool) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        # Every rank builds the same model and the same global batch; the reference runs it all in one process.
        torch.manual_seed(0)
        reference = DeepseekV3ForCausalLM(micro_config(**config_overrides))
        perturb(reference, seed=3)
        if skew:  # a large routing bias on rank 0's experts: every token goes there, rank 1 receives nothing
            for moe in reference.moe_layers():
                moe.gate.e_score_correction_bias[: moe.gate.weight.shape[0] // WORLD] += 10.0
        reference.train()
        ids = torch.randint(0, reference.config.vocab_size, (2 * WORLD, 24), generator=torch.Generator().manual_seed(1))
        ref_loss, ref_logits = _loss(reference, ids)
        ref_loss.backward()
        ref_loads = [m.load.clone() for m in reference.moe_layers()]

        sharded = shard_experts(copy.deepcopy(reference))
        sharded.zero_grad(set_to_none=True)
        mine = slice(rank * 2, rank * 2 + 2)  # this rank's half of the batch
        loss, logits = _loss(sharded, ids[mine])
        loss.backward()
        sync_gradients(sharded)
        all_reduce_router_loads(sharded)

        _close(logits, ref_logits[mine], "logits")
        reduced = loss.detach().clone()
        dist.all_reduce(reduced)
        _close(reduced / WORLD, ref_loss.detach(), "loss")
        ref_params = dict(reference.named_parameters())
        checked_experts = 0
        for name, p in sharded.named_parameters():
            grad = p.grad if p.grad is not None else torch.zeros_like(p)
            if is_expert_parameter(name):
                full_name = name.replace(".experts.local.", ".experts.")
                shard = next(m for m in sharded.moe_layers() if isinstance(m.experts, ExpertParallelExperts))
                rows = slice(shard.experts.first, shard.experts.first + shard.experts.per_rank)
                _close(p.detach(), ref_params[full_name].detach()[rows], f"{name} weights")
                ref_grad = ref_params[full_name].grad
                ref_grad = torch.zeros_like(ref_params[full_name]) if ref_grad is None else ref_grad
                _close(grad, ref_grad[rows], f"{name} gradient")
                checked_experts += 1
            else:
                _close(grad, ref_params[name].grad, f"{name} gradient")
        assert checked_experts == 2 * len(sharded.moe_layers())
        for got, want in zip((m.load for m in sharded.moe_layers()), ref_loads, strict=True):
            assert torch.equal(got, want)

        unshard_experts(sharded)
        for (name, p), (ref_name, ref) in zip(sharded.named_parameters(), reference.named_parameters(), strict=True):
            assert name == ref_name and torch.equal(p.detach(), ref.detach())
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("overrides, skew", [
    # 8 experts, 4 per rank, top-3 within 2 of 4 groups: tokens travel both ways in every MoE layer (trunk, MTP).
    (dict(), False),
    # 4 experts, top-2, all routed to rank 0's pair: rank 1 receives no rows yet must join every backward collective.
    (dict(n_routed_experts=4, n_group=1, topk_group=1, num_experts_per_tok=2), True),
], ids=["balanced", "one-rank-idle"])
def test_expert_parallel_matches_single_process(overrides, skew):
    mp.spawn(_worker, args=(free_port(), overrides, skew), nprocs=WORLD, join=True)


def test_sharding_needs_a_process_group():
    model = DeepseekV3ForCausalLM(micro_config())
    with pytest.raises(RuntimeError, match="process group"):
        shard_experts(model)
