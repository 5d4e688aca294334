"""Re-estimate BatchNorm statistics on calibration data (docs/method.md secs. 1, 9).

Some channels may be pinned: their statistics and their output are kept as they are during
the pass. The merged model pins channels that are unmerged copies of a padded identity layer,
whose BatchNorm was built to be the identity and must stay so.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager

import torch
from torch import nn

from heterogui.distributed import all_reduce_batch_norm
from heterogui.models.capture import Batch, run_model, to_device

BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def has_batch_norm(model: nn.Module) -> bool:
    """Return whether the model has any BatchNorm layer."""
    return any(isinstance(m, BN_TYPES) for m in model.modules())


@torch.no_grad()
def reestimate_batch_norm(
    model: nn.Module,
    batches: Iterable[Batch],
    device: torch.device | str = "cpu",
    pinned: Mapping[str, torch.Tensor] | None = None,
    progress: Callable[[float], None] | None = None,
    per_batch: bool = False,
) -> None:
    """Reset and re-estimate every BatchNorm's running statistics of ``model`` in place.

    Runs the batches in train mode without gradients, averaging each batch's statistics
    weighted by its values per channel (``reestimating_batch_norm``). pinned: BN module name
    -> channel indices (int64) whose statistics are kept and whose output is computed from the
    kept statistics during the pass. per_batch: every batch weighs the same (momentum None),
    as the zoo's training does.
    """
    if not has_batch_norm(model):
        return  # nothing to re-estimate: no pass
    with reestimating_batch_norm(model, pinned, per_batch):
        batches = list(batches)
        for step, batch in enumerate(batches):
            run_model(model, to_device(batch, device))
            if progress is not None:
                progress((step + 1) / len(batches))


@contextmanager
def reestimating_batch_norm(
    model: nn.Module, pinned: Mapping[str, torch.Tensor] | None = None, per_batch: bool = False
) -> Iterator[None]:
    """Within the block, every whole forward of ``model`` adds to its BatchNorms' statistics.

    On entry the running statistics are reset and each BatchNorm (in train mode; the rest of
    the model in eval mode) accumulates the average of its batches' statistics weighted by
    their values per channel (batch x positions): before each batch its momentum becomes that
    batch's share of the values seen so far, so a short last batch weighs as little as it holds
    (equal batches: exactly the cumulative average of momentum None). On exit the modes and
    momenta are restored, and after a block that did not raise the averages are summed over
    processes (under torchrun, weighted by the values each saw) and the pinned channels get
    their kept statistics back (see ``reestimate_batch_norm``). A forward that stops early
    leaves the later BatchNorms short of those batches: run every batch whole. per_batch: the
    plain cumulative average instead, every batch weighing the same.
    """
    bns = {n: m for n, m in model.named_modules() if isinstance(m, BN_TYPES)}
    if not bns:
        yield
        return
    pinned = {n: idx for n, idx in (pinned or {}).items() if idx.numel()}
    kept = {
        n: (bns[n].running_mean[idx].clone(), bns[n].running_var[idx].clone())
        for n, idx in pinned.items()
    }
    saved = {n: (m.momentum, m.training) for n, m in bns.items()}
    was_training = model.training
    handles = [bns[n].register_forward_hook(_pin_hook(idx, *kept[n])) for n, idx in pinned.items()]
    seen: dict[str, int] = {}
    if not per_batch:
        handles += [bn.register_forward_pre_hook(_share_hook(n, seen)) for n, bn in bns.items()]
    try:
        model.eval()
        for bn in bns.values():
            bn.reset_running_stats()
            bn.momentum = None
            bn.train()
        yield
    finally:
        for handle in handles:
            handle.remove()
        for name, (momentum, training) in saved.items():
            bns[name].momentum = momentum
            bns[name].train(training)
        model.train(was_training)
    # the whole data's averages under torchrun; pinned channels below
    all_reduce_batch_norm(bns, None if per_batch else seen)
    for name, idx in pinned.items():
        bns[name].running_mean[idx] = kept[name][0]
        bns[name].running_var[idx] = kept[name][1]


def _share_hook(name: str, seen: dict[str, int]):
    """Return a pre-hook that sets a BatchNorm's momentum to its batch's share of the values
    per channel seen so far (counted in ``seen``): a count-weighted cumulative average."""

    def hook(bn: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        x = inputs[0]
        values = x.numel() // x.shape[1]
        seen[name] = seen.get(name, 0) + values
        bn.momentum = values / seen[name]

    return hook


def _pin_hook(idx: torch.Tensor, mean: torch.Tensor, var: torch.Tensor):
    def hook(bn: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor:
        x = inputs[0].index_select(1, idx)
        shape = (1, -1) + (1,) * (x.dim() - 2)
        scale = (bn.weight[idx] / torch.sqrt(var + bn.eps)).view(shape)
        fixed = (x - mean.view(shape)) * scale + bn.bias[idx].view(shape)
        output = output.clone()
        output.index_copy_(1, idx, fixed)
        return output

    return hook
