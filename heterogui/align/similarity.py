"""The similarity pass: CKA between every block output of A and of B (docs/method.md sec. 3)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch

from heterogui.align.cka import CKAAccumulator, gram
from heterogui.models.capture import (
    Batch,
    CapturePass,
    per_input,
    to_device,
    token_mask,
)
from heterogui.models.family import Network


def layer_modules(net: Network) -> list[str]:
    """Return the module name of every block except the head: the layers CKA compares."""
    return [f"blocks.{i}" for i in range(net.graph().num_blocks - 1)]


def layer_grams(
    module: torch.nn.Module, names: list[str], batch: Batch, capture: CapturePass | None = None
) -> torch.Tensor:
    """Return the Gram matrix of every named layer's output on one batch: (L, n, n), float64.

    batch: on the module's device. Token outputs have their padded tokens zeroed first.
    capture: the pass that runs ``module`` batch after batch (it stops after the last layer
    once it knows the order); default: a whole forward.
    """
    mask = token_mask(batch)
    layout = "tokens" if mask is not None else "flat"
    found = (capture or CapturePass(module, names))(batch)
    return torch.stack([gram(per_input(found[n], layout, mask)) for n in names])


def layer_similarity(
    net_a: Network,
    net_b: Network,
    batches: Iterable[Batch],
    device: torch.device | str = "cpu",
    progress: Callable[[float], None] | None = None,
) -> torch.Tensor:
    """Return linear CKA between all non-head blocks: (L_A, L_B), float64.

    One Gram matrix per layer per batch; all pairs filled by batched products.
    """
    return layer_similarities(net_a, [net_b], batches, device, progress)[0]


@torch.no_grad()
def layer_similarities(
    reference: Network,
    others: Sequence[Network],
    batches: Iterable[Batch],
    device: torch.device | str = "cpu",
    progress: Callable[[float], None] | None = None,
) -> list[torch.Tensor]:
    """Return linear CKA between the reference's blocks and each other model's: (L_ref, L_k).

    One pass over the batches: the reference's Gram matrices are formed once per batch and
    compared with every other model's (an N-way merge aligns every model to one reference).
    """
    nets = [reference, *others]
    accs = [CKAAccumulator() for _ in others]
    layers = [layer_modules(net) for net in nets]
    passes = [CapturePass(n.module, names) for n, names in zip(nets, layers, strict=True)]
    batches = list(batches)
    for step, batch in enumerate(batches):
        batch = to_device(batch, device)
        grams = [
            layer_grams(net.module, names, batch, capture)
            for net, names, capture in zip(nets, layers, passes, strict=True)
        ]
        for acc, other in zip(accs, grams[1:], strict=True):
            acc.update(grams[0], other)
        if progress is not None:
            progress((step + 1) / len(batches))
    for acc in accs:
        acc.all_reduce()  # the whole data's sums under torchrun (heterogui.distributed)
    return [acc.matrix() for acc in accs]
