"""torch.distributed set-up for torchrun: one process per device, gloo on CPU, nccl on GPU.

    torchrun --standalone --nproc_per_node 2 -m dnd_training.cli transformer --config ...

Without torchrun's environment (RANK, WORLD_SIZE...) everything runs as a single process.
Each rank takes an equal slice of the same global batch, so a run on N processes follows
the same data and (up to float reduction order) the same weights as a single process.
"""
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from dnd_sdk.errors import InvalidInputError


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def local_slice(self, global_batch: int) -> slice:
        if global_batch % self.world:
            raise InvalidInputError(f"batch size {global_batch} does not split evenly over {self.world} processes; "
                                    f"use a multiple of {self.world}")
        per = global_batch // self.world
        return slice(self.rank * per, (self.rank + 1) * per)


def init_distributed(device: str = "auto") -> Dist:
    """Join the process group torchrun set up (if any) and pick this process's device."""
    use_cuda = torch.cuda.is_available() if device == "auto" else device.startswith("cuda")
    if "RANK" not in os.environ:
        return Dist(device=torch.device("cuda" if use_cuda else (device if device != "auto" else "cpu")))
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return Dist(rank, world, local_rank, torch.device(f"cuda:{local_rank}" if use_cuda else "cpu"))


def wrap(model: torch.nn.Module, d: Dist) -> torch.nn.Module:
    if d.world == 1:
        return model
    ids = [d.local_rank] if d.device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)


def all_mean(t: torch.Tensor, d: Dist) -> torch.Tensor:
    """Mean of a metric tensor over ranks (for logging)."""
    if d.world > 1:
        t = t.detach().clone()
        dist.all_reduce(t)
        t /= d.world
    return t


def barrier(d: Dist) -> None:
    if d.world > 1:
        dist.barrier()


def shutdown(d: Dist) -> None:
    if d.world > 1 and dist.is_initialized():
        dist.destroy_process_group()
