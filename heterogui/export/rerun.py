"""The command a model card gives to repeat its merge: what runs the recipe, and the flags the
numbers depend on (float sums split by thread and by torchrun process)."""

from __future__ import annotations

from typing import Any

import torch

from heterogui.distributed import env_local_world_size, world_size


def rerun_command() -> str:
    """Return the command a card's rerun starts with: under torchrun, with its process count
    (each process sums its share of the statistics, so the count is part of the numbers)."""
    world = world_size()
    if world <= 1:
        return "heterogui merge"
    local = env_local_world_size(default=world)
    if not local < world:  # one machine (or a LOCAL_WORLD_SIZE that says nothing)
        return f"torchrun --nproc_per_node {world} -m heterogui merge"
    return f"torchrun --nnodes {world // local} --nproc_per_node {local} -m heterogui merge"


def rerun_threads(prep: Any) -> str:
    """Return the rerun command's --threads flag: the CPU splits float sums by thread, so a
    merge on the CPU repeats bit for bit at the thread count it ran with (``torch_threads``)."""
    return f" --threads {torch.get_num_threads()}" if prep.device.type == "cpu" else ""
