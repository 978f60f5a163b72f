"""Where this process sits in a torch.distributed job, for the samplers and loaders that shard by rank."""

from __future__ import annotations

import torch


def rank_world() -> tuple[int, int]:
    """(rank, world size) of the initialised process group, or (0, 1) outside one."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1
