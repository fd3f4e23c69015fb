"""Expert parallelism: each rank holds a slice of every MoE layer's routed experts; tokens travel to them.

DeepSeek-V3 trains with 64-way expert parallelism (V3 paper §3.2): a layer's 256 routed experts are spread over
ranks, and every rank keeps the attention, the router and the shared expert. This module does the same on top of
an ordinary `DeepseekV3ForCausalLM`, without touching `model.py`: `shard_experts` swaps each `MoE.experts` for an
`ExpertParallelExperts` that has the same `forward(x, routing)` contract but owns only experts
[rank * E/W, (rank + 1) * E/W).

One MoE forward on a rank, for its own tokens:

1. Route with the layer's own `Gate` (unchanged, so routing is identical to the single-process model).
2. Dispatch: sort the (token, slot) pairs by the rank that owns their expert, exchange per-rank counts, then send
   the token rows and their local expert indices with `all_to_all_single` (uneven splits).
3. Run the received rows through the local experts (`RoutedExperts` code, one expert per row, weight 1).
4. Combine: send the outputs back with the reverse all-to-all, weight them by the routing weights and sum the
   k slots of each token, as the single-process layer does.

Gradients. The all-to-all is wrapped in an autograd Function whose backward is the reverse all-to-all (swap the
split sizes), so gradients flow from each token's rank to the expert's rank and back. Expert weights are sharded,
so their gradients are complete on their owner; everything else is replicated and sees only local tokens, so its
gradients must be summed over ranks. `sync_gradients` does both under DDP's averaging convention. (DDP itself would
also average the expert gradients, which belong to different experts on each rank: do not wrap a sharded model in
DDP without excluding them.)

Backend. gloo implements `all_to_all_single` with uneven splits on CPU in torch 2.13 (checked by
tests/test_parallel.py), so one code path serves gloo and NCCL. `torch.distributed.nn.functional` has a
differentiable all-to-all too; ours is a dozen lines and keeps the backward visible.

Aux-loss-free balancing needs global expert loads: call `all_reduce_router_loads` before `update_balance_bias`
so every rank applies the same bias update.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
import torch.distributed as dist
from torch import nn

from .model import DeepseekV3ForCausalLM, RoutedExperts, Routing


class _AllToAll(torch.autograd.Function):
    """Rows of `x` go to ranks in blocks of `send` sizes; blocks of `recv` sizes arrive. Backward: the reverse."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, send: list[int], recv: list[int], group) -> torch.Tensor:
        ctx.send, ctx.recv, ctx.group = send, recv, group
        return _exchange(x, send, recv, group)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return _exchange(grad, ctx.recv, ctx.send, ctx.group), None, None, None


def _exchange(x: torch.Tensor, send: list[int], recv: list[int], group) -> torch.Tensor:
    out = x.new_empty((sum(recv), *x.shape[1:]))
    dist.all_to_all_single(out, x.contiguous(), output_split_sizes=recv, input_split_sizes=send, group=group)
    return out


def all_to_all(x: torch.Tensor, send: list[int], recv: list[int], group=None) -> torch.Tensor:
    """Differentiable uneven all-to-all over the first dimension."""
    return _AllToAll.apply(x, send, recv, group)


class ExpertParallelExperts(nn.Module):
    """This rank's slice of one layer's routed experts, with all-to-all dispatch and combine.

    Holds `local` = stacked weights of experts [first, first + E/W) as a `RoutedExperts` (same parameter layout as
    the single-process layer), and behaves like the full `RoutedExperts` to the `MoE` that calls it.
    """

    def __init__(self, full: RoutedExperts, rank: int, world_size: int, group=None):
        super().__init__()
        num_experts, two_i, hidden = full.gate_up_proj.shape
        if num_experts % world_size:
            raise ValueError(f"n_routed_experts={num_experts} must be divisible by the world size ({world_size})")
        self.rank, self.world_size, self.group = rank, world_size, group
        self.num_experts, self.per_rank = num_experts, num_experts // world_size
        self.first = rank * self.per_rank
        # RoutedExperts reads only these three sizes from its config.
        shape = SimpleNamespace(n_routed_experts=self.per_rank, hidden_size=hidden, moe_intermediate_size=two_i // 2)
        with torch.device("meta"):
            self.local = RoutedExperts(shape)
        rows = slice(self.first, self.first + self.per_rank)
        self.local.gate_up_proj = nn.Parameter(full.gate_up_proj.detach()[rows].clone())
        self.local.down_proj = nn.Parameter(full.down_proj.detach()[rows].clone())

    def forward(self, x: torch.Tensor, routing: Routing) -> torch.Tensor:
        k = routing.experts.shape[1]
        flat_experts = routing.experts.flatten()
        owner = torch.div(flat_experts, self.per_rank, rounding_mode="floor")
        order = owner.argsort(stable=True)  # (token, slot) pairs grouped by destination rank
        token_of = order // k
        send = torch.bincount(owner, minlength=self.world_size)
        recv = torch.empty_like(send)
        dist.all_to_all_single(recv, send, group=self.group)  # one count per rank each way
        send_sizes, recv_sizes = send.tolist(), recv.tolist()

        local_ids = flat_experts.index_select(0, order) % self.per_rank  # index within the owner's slice
        arrived_ids = _exchange(local_ids, send_sizes, recv_sizes, self.group)
        arrived = all_to_all(x.index_select(0, token_of), send_sizes, recv_sizes, self.group)

        if arrived.shape[0]:
            # Each arrived row is one (token, expert) pair: run it through that expert with weight 1.
            ones = torch.ones(arrived.shape[0], 1, dtype=torch.float32, device=x.device)
            processed = self.local(arrived, Routing(ones, arrived_ids.unsqueeze(1), ones))
        else:
            # Nothing to compute, but the result must still hang off `arrived` in the autograd graph: both
            # all-to-alls are collectives, and their backward must run on every rank or the others wait forever.
            processed = arrived * 0
        returned = all_to_all(processed, recv_sizes, send_sizes, self.group)

        weights = routing.weights.flatten().index_select(0, order).unsqueeze(-1)
        weighted = returned * weights.to(returned.dtype)
        return torch.zeros_like(x).index_add_(0, token_of, weighted.to(x.dtype))


def _group_info(group) -> tuple[int, int]:
    if not dist.is_initialized():
        raise RuntimeError("expert parallelism needs an initialised torch.distributed process group")
    return dist.get_rank(group), dist.get_world_size(group)


def shard_experts(model: DeepseekV3ForCausalLM, group=None) -> DeepseekV3ForCausalLM:
    """Replace every MoE layer's routed experts (trunk and MTP) by this rank's shard, in place.

    All ranks must start from identical weights (same seed, or the same checkpoint); each keeps 1/W of the experts.
    """
    rank, world = _group_info(group)
    for moe in model.moe_layers():
        if isinstance(moe.experts, ExpertParallelExperts):
            continue
        moe.experts = ExpertParallelExperts(moe.experts, rank, world, group)
    return model


def is_expert_parameter(name: str) -> bool:
    return ".experts.local." in name


@torch.no_grad()
def sync_gradients(model: nn.Module, group=None) -> None:
    """Make gradients those of the global batch, when each rank's loss is the mean over its own tokens.

    Replicated parameters: average over ranks (what DDP does). Expert shards already hold the sum over all ranks'
    tokens of per-rank-mean gradients, which is W times the global mean: divide by W.
    """
    _, world = _group_info(group)
    for name, p in model.named_parameters():
        if p.grad is None:
            continue
        if is_expert_parameter(name):
            p.grad.div_(world)
        else:
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM, group=group)
            p.grad.div_(world)


@torch.no_grad()
def all_reduce_router_loads(model: DeepseekV3ForCausalLM, group=None) -> None:
    """Sum each MoE layer's per-expert token counts over ranks, so the bias update sees the global load."""
    for moe in model.moe_layers():
        if moe.load is not None:
            dist.all_reduce(moe.load, group=group)


# torch 2.13 renamed all_gather_into_tensor to all_gather_single; the project supports torch >= 2.4.
_all_gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor


@torch.no_grad()
def unshard_experts(model: DeepseekV3ForCausalLM, group=None) -> DeepseekV3ForCausalLM:
    """Gather every layer's expert shards back into full `RoutedExperts` on every rank (e.g. before saving)."""
    _, world = _group_info(group)
    for moe in model.moe_layers():
        if not isinstance(moe.experts, ExpertParallelExperts):
            continue
        shard = moe.experts.local
        full = []
        for w in (shard.gate_up_proj, shard.down_proj):
            gathered = w.new_empty((world * w.shape[0], *w.shape[1:]))
            _all_gather(gathered, w.detach().contiguous(), group=group)
            full.append(gathered)
        e, two_i, hidden = full[0].shape
        with torch.device("meta"):
            experts = RoutedExperts(SimpleNamespace(n_routed_experts=e, hidden_size=hidden,
                                                    moe_intermediate_size=two_i // 2))
        experts.gate_up_proj, experts.down_proj = nn.Parameter(full[0]), nn.Parameter(full[1])
        moe.experts = experts
    return model


__all__ = ["ExpertParallelExperts", "all_reduce_router_loads", "all_to_all", "is_expert_parameter",
           "shard_experts", "sync_gradients", "unshard_experts"]
