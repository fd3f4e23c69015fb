"""Data parallelism under torchrun: process-group setup and the few collectives the trainer needs.

`torchrun --nproc_per_node N -m r1lab train ...` sets RANK, WORLD_SIZE, LOCAL_RANK and the rendezvous address;
we join a gloo group on CPU and NCCL on GPUs. Without those variables everything here is a no-op, so the same code
path runs single-process.

Routing biases: every rank all-reduces its expert loads before the aux-loss-free bias update, so all ranks apply
the same update from the same global loads and their biases stay bitwise equal. DDP's per-forward buffer broadcast
is therefore switched off after the initial sync (in the trainer): it would only copy identical values, and
the update is defined on the global batch, which is what a single process with the whole batch would compute.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # we created the process group, so we tear it down

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def all_reduce_(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum over ranks, in place."""
        if self.active:
            dist.all_reduce(tensor)
        return tensor

    def broadcast_object(self, obj):
        """rank 0's `obj` on every rank."""
        if not self.active:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
            self.owns_group = False


def setup(device_type: str) -> Distributed:
    """Join the torchrun process group if this process was launched by torchrun (WORLD_SIZE > 1)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Distributed()
    owns = False
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
        owns = True
    return Distributed(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")), owns)
