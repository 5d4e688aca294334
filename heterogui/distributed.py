"""Data-parallel statistics passes under ``torchrun`` (docs/architecture.md).

``torchrun --nproc_per_node N -m heterogui merge recipe.yaml --out DIR`` starts N processes
(ranks). Each rank loads A and B, takes its shard of the calibration batches (``shard``: batch
k goes to rank k mod N) and runs the data passes on it; every sum a pass accumulates is
all-reduced at the end of the pass, so every rank holds the statistics of the whole data:

- the feature moments of every merge point (``all_reduce_moments``: sum of x, sum of x xᵀ,
  count), after ``zip.collect.collect_moments``;
- the layer CKA (``CKAAccumulator.all_reduce``: the HSIC sums and the batch count), before
  ``align.similarity.layer_similarity`` turns them into a matrix;
- the BatchNorm running statistics (``all_reduce_batch_norm``), after
  ``fusion.bn.reestimate_batch_norm``: each rank's cumulative average over its batches,
  weighted by its batch count;
- BERT's least-squares identity layers (``models.bert_identity``), their four sums and count.

Matching and fusion are deterministic, so identical statistics give the same merge on every
rank; only rank 0 writes files and prints. The process group is set up from torchrun's
environment (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT, LOCAL_RANK) by ``init_from_env``:
gloo on CPU, NCCL on CUDA (rank r on ``cuda:LOCAL_RANK``).

Every helper is a no-op while no process group is initialised (a plain ``heterogui merge``, the
workbench, the benchmarks). A caller that hands every rank the *whole* data instead of a shard
still gets the right numbers (all sums and all counts grow N-fold), only N times slower.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from heterogui.errors import ConfigError, excerpt

T = TypeVar("T")
# how long a rank waits in a collective: the other ranks wait for rank 0 to load (and build into
# the cache) models and data first, which can take far longer than torch's default (10 minutes
# under NCCL); a rank that fails makes torchrun stop the others long before this
TIMEOUT = timedelta(hours=2)
# how long a process waits for the others to join (torchrun starts them together; a process
# started by hand, or with a WORLD_SIZE left over in a shell, would otherwise wait ``TIMEOUT``)
JOIN_TIMEOUT = timedelta(minutes=5)


def env_world_size() -> int:
    """Return torchrun's WORLD_SIZE (1 when unset: not started by torchrun)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def env_local_world_size(default: int = 1) -> int:
    """Return torchrun's LOCAL_WORLD_SIZE, the processes on this machine (``default`` when
    unset or not a positive number)."""
    local = os.environ.get("LOCAL_WORLD_SIZE", "")
    return int(local) if local.isascii() and local.isdigit() and int(local) > 0 else default


def env_rank() -> int:
    """Return torchrun's RANK (0 when unset)."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def _wants_cuda(device: str | torch.device) -> bool:
    if str(device) == "auto":
        return torch.cuda.is_available()
    return torch.device(device).type == "cuda"


def init_from_env(device: str | torch.device = "cpu") -> bool:
    """Join the process group torchrun describes, when there is one; return whether joined.

    With WORLD_SIZE > 1 in the environment and no default process group yet, it initialises
    one: NCCL when ``device`` is CUDA ("auto" with CUDA present included), else gloo. On CUDA
    the rank's device becomes ``cuda:LOCAL_RANK`` (``torch.cuda.set_device``). Without torchrun
    (no WORLD_SIZE or WORLD_SIZE=1) nothing happens.

    Raises:
        ConfigError: a CUDA run with more processes on this machine than GPUs, or a
            WORLD_SIZE without the rest of torchrun's environment.
    """
    if env_world_size() <= 1 or not dist.is_available():
        return False
    if dist.is_initialized():
        return True
    missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if not os.environ.get(k)]
    if missing:
        raise ConfigError(
            f"WORLD_SIZE={env_world_size()} is set but not {', '.join(missing)}: start the "
            "command with torchrun (it sets them all), or unset WORLD_SIZE"
        )
    cuda = _wants_cuda(device)
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if local >= torch.cuda.device_count():
            raise ConfigError(
                f"process {local} of this machine has no GPU ({torch.cuda.device_count()} "
                "visible): start at most one process per GPU (torchrun --nproc_per_node)"
            )
        torch.cuda.set_device(local)
    store, rank_, world = _joined()
    store.set_timeout(TIMEOUT)
    dist.init_process_group(
        "nccl" if cuda else "gloo", store=store, rank=rank_, world_size=world, timeout=TIMEOUT
    )
    return True


def _joined() -> tuple[dist.Store, int, int]:
    """Return the store, rank and world size once every process joined (``JOIN_TIMEOUT``).

    Raises:
        ConfigError: the others did not join in time, or the address cannot be used.
    """
    try:
        with _quiet_stderr():  # c10d logs every retry of the connection with a C++ stack
            return next(dist.rendezvous("env://", timeout=JOIN_TIMEOUT))
    except (RuntimeError, ValueError) as exc:
        where = f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}"
        seconds = JOIN_TIMEOUT.total_seconds()
        waited = f"{seconds:g} s" if seconds < 120 else f"{seconds / 60:g} minutes"
        raise ConfigError(
            f"the {env_world_size()} processes of this torchrun did not all join at {where} "
            f"within {waited} ({_first_line(exc)}): start every process with "
            "torchrun, or unset WORLD_SIZE, RANK, MASTER_ADDR and MASTER_PORT to merge in one "
            "process"
        ) from None


@contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Send what is written to file descriptor 2 (C++ logs included) to /dev/null meanwhile."""
    sys.stderr.flush()
    saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


def shutdown() -> None:
    """Destroy the default process group, if one is initialised."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def world_size() -> int:
    """Return the number of processes in the default group (1 when none is initialised)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def rank() -> int:
    """Return this process's rank in the default group (0 when none is initialised)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return 0


def is_main() -> bool:
    """Return whether this process writes files and prints (rank 0, or no process group).

    Before the group is initialised, torchrun's RANK decides (a CLI error before the merge).
    """
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return env_rank() == 0


def rank_device(device: str | torch.device) -> str | torch.device:
    """Return the device this rank computes on: ``cuda:LOCAL_RANK`` for CUDA under a group."""
    if world_size() > 1 and _wants_cuda(device):
        return f"cuda:{torch.cuda.current_device()}"
    return device


def shard(batches: Sequence[T], rank_: int | None = None, world: int | None = None) -> list[T]:
    """Return this rank's calibration batches, ``batches[rank::world]`` (all of them alone).

    Raises:
        ConfigError: fewer batches than processes (a rank would have no data).
    """
    rank_ = rank() if rank_ is None else rank_
    world = world_size() if world is None else world
    if world <= 1:
        return list(batches)
    if len(batches) < world:
        count = f"{len(batches)} calibration batch{'es' if len(batches) != 1 else ''}"
        raise ConfigError(
            f"{count} cannot be shared by {world} processes: give "
            "more calibration data (calibration.size, or a smaller calibration.batch_size) or "
            "start fewer processes (torchrun --nproc_per_node)"
        )
    return list(batches[rank_::world])


def barrier() -> None:
    """Wait for every rank (no-op without a group)."""
    if world_size() > 1:
        if dist.get_backend() == "nccl":
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()


@contextmanager
def main_first() -> Iterator[None]:
    """Run the body on rank 0 first, then on the other ranks (all at once).

    For steps that may build a cache on first use (zoo models, converted checkpoints, datasets):
    rank 0 builds it, the other ranks read it.
    """
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()


def agree(record: Mapping[str, Any]) -> None:
    """Check that every rank merges the same thing (no-op without a group).

    record: what must be equal on every rank (the recipe's fields, the data's hashes), small
    and picklable. A rank given another recipe or other data would otherwise add its sums to
    the others' and rank 0 would write a merge its recorded recipe does not repeat.

    Raises:
        ConfigError: naming the first rank that differs from rank 0, and what differs.
    """
    if world_size() <= 1:
        return
    records: list[Any] = [None] * world_size()
    with peers_alive():
        dist.all_gather_object(records, dict(record))
    first = records[0]
    for r, other in enumerate(records[1:], 1):
        differ = sorted(k for k in first.keys() | other.keys() if first.get(k) != other.get(k))
        if differ:
            raise ConfigError(
                f"process {r}'s {', '.join(differ)} differ from process 0's: give every "
                "process the same recipe, models and data (the same files on every machine)"
            )


@contextmanager
def peers_alive() -> Iterator[None]:
    """Turn a collective that failed because another rank stopped into one line.

    Raises:
        ConfigError: a gloo or NCCL error (a peer closed the connection, a timeout); other
            errors pass unchanged.
    """
    try:
        yield
    except RuntimeError as exc:
        text = str(exc)
        backend = isinstance(exc, dist.DistBackendError) or "gloo" in text or "NCCL" in text
        if world_size() <= 1 or not backend:
            raise
        raise ConfigError(
            f"another process of this torchrun stopped or failed ({_first_line(exc)}); "
            "nothing was written: its own error says why"
        ) from None


def _first_line(exc: Exception) -> str:
    """Return the first line of a c10d error (the rest is a C++ stack), cut to 160 characters."""
    text = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__)
    return excerpt(text, 160)


def _group_device(tensor: torch.Tensor) -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu") if tensor.device.type != "cpu" else tensor.device


def all_reduce_sum_(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over all ranks, in place; return it (no-op without a group).

    A tensor on another device than the group's (CPU tensors under NCCL, CUDA tensors under
    gloo) is reduced through a copy on the group's device and copied back.
    """
    if world_size() <= 1:
        return tensor
    where = _group_device(tensor)
    if tensor.device == where and tensor.is_contiguous():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor
    work = tensor.detach().to(where).contiguous()
    dist.all_reduce(work, op=dist.ReduceOp.SUM)
    tensor.copy_(work)
    return tensor


def all_reduce_moments(stats: Mapping[Any, Any]) -> None:
    """Sum a dict of ``zip.stats.Moments`` over all ranks, in place (keys in sorted order).

    Every rank must hold the same keys (each rank sees at least one batch, so each has them
    all). Pending batches are folded in first (``settle``, where the class has it); then the
    public sums ``total`` and ``outer`` and the ``count`` are reduced.
    """
    if world_size() <= 1 or not stats:
        return
    keys = sorted(stats)
    counts = []
    for key in keys:
        moments = stats[key]
        if getattr(moments, "compacted", False):  # its outer would be a rebuilt copy
            raise RuntimeError("reduce the moments before they are compacted")
        settle = getattr(moments, "settle", None)
        if settle is not None:
            settle()
        all_reduce_sum_(moments.total)
        all_reduce_sum_(moments.outer)
        counts.append(int(moments.count))
    summed = all_reduce_sum_(torch.tensor(counts, dtype=torch.int64))
    for key, count in zip(keys, summed.tolist(), strict=True):
        stats[key].count = int(count)


def all_reduce_batch_norm(
    bns: Mapping[str, torch.nn.Module], weights: Mapping[str, int] | None = None
) -> None:
    """Average BatchNorm running statistics over all ranks, weighted by what each rank saw.

    For statistics re-estimated as a cumulative average over the batches a rank ran (weighted
    by ``weights``: name -> the values per channel it averaged, ``fusion.bn``; None: by the
    batches, ``num_batches_tracked``), every rank ends with sum(rank average x rank weight) /
    sum(rank weights), the average over all ranks' batches: what one process gets on the whole
    data, up to float rounding. A BatchNorm no rank ran is left as it is. bns: name ->
    BatchNorm module (names sorted for the reduction order).
    """
    if world_size() <= 1:
        return
    names = [n for n in sorted(bns) if bns[n].running_mean is not None]
    if not names:
        return
    batches = torch.tensor([float(bns[n].num_batches_tracked) for n in names], dtype=torch.float64)
    counts = (
        batches.clone()
        if weights is None
        else torch.tensor([float(weights.get(n, 0)) for n in names], dtype=torch.float64)
    )
    weighted = torch.cat(
        [
            torch.cat([bns[n].running_mean, bns[n].running_var]).to("cpu", torch.float64)
            * float(counts[k])
            for k, n in enumerate(names)
        ]
    )
    all_reduce_sum_(counts)
    all_reduce_sum_(batches)
    all_reduce_sum_(weighted)
    offset = 0
    with torch.no_grad():
        for k, name in enumerate(names):
            bn = bns[name]
            width = bn.running_mean.numel()
            chunk = weighted[offset : offset + 2 * width]
            offset += 2 * width
            total = float(counts[k])
            if total == 0:
                continue
            bn.running_mean.copy_(chunk[:width] / total)
            bn.running_var.copy_(chunk[width:] / total)
            bn.num_batches_tracked.fill_(int(batches[k]))
