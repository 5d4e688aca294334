"""Step 1 of a merge: the models on the device in eval mode, BatchNorm re-estimated.

When both models re-estimate their BatchNorm and the CKA would then run them over the same
batches (a pair whose depths do not fix the alignment), the CKA's Gram matrices come from the
re-estimation pass itself (``ready_pair``): one forward of A and of B fewer. Those features see
each batch's own BatchNorm statistics (train mode) where a separate pass sees their average
(docs/method.md sec. 3 gives the measured difference; the alignment was the same on every zoo
pair of different depth).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from heterogui.align.pad import ready_network
from heterogui.align.similarity import layer_similarity
from heterogui.fusion.bn import has_batch_norm, reestimate_batch_norm, reestimating_batch_norm
from heterogui.models.capture import Batch
from heterogui.models.family import Network
from heterogui.stages import timed

Progress = Callable[[str, float], None]


def ready_networks(
    nets: Sequence[Network],
    batches: list[Batch],
    dev: torch.device,
    reset_input_bn: bool,
    timings: dict[str, float],
    report: Progress,
) -> list[Network]:
    """Return the models on ``dev`` in eval mode, BatchNorm re-estimated (step 1).

    A copy only when something would modify the caller's module (BatchNorm re-estimation, a
    move to ``dev``, .eval()); else its module is shared, read only.
    """
    ready = []
    for net in nets:
        reset_bn = reset_input_bn and has_batch_norm(net.module)
        net = ready_network(net, dev, modifies=reset_bn)
        if reset_bn:
            timed(
                timings,
                "bn_inputs",
                lambda n=net: reestimate_batch_norm(
                    n.module, batches, dev, progress=lambda f: report("bn_inputs", f)
                ),
            )
        ready.append(net)
    return ready


def ready_pair(
    nets: Sequence[Network],
    batches: list[Batch],
    dev: torch.device,
    reset_input_bn: bool,
    timings: dict[str, float],
    report: Progress,
    measure: str | None,
) -> tuple[list[Network], torch.Tensor | None]:
    """Return ``ready_networks``'s models and, when one pass gives both, their CKA.

    measure: the CKA the alignment reads (None: none wanted from this step). The CKA comes
    with the models when both re-estimate BatchNorm (stage "bn_similarity"); else it is None
    and the caller runs its own pass.
    """
    both = reset_input_bn and all(has_batch_norm(n.module) for n in nets)
    if measure is None or not both:
        return ready_networks(nets, batches, dev, reset_input_bn, timings, report), None
    ready = [ready_network(n, dev, modifies=True) for n in nets]
    similarity = timed(
        timings,
        "bn_similarity",
        lambda: similarity_while_reestimating(
            ready, batches, dev, measure, lambda f: report("bn_similarity", f)
        ),
    )
    return ready, similarity


@torch.no_grad()
def similarity_while_reestimating(
    nets: Sequence[Network],
    batches: list[Batch],
    dev: torch.device,
    measure: str,
    progress: Callable[[float], None] | None = None,
) -> torch.Tensor:
    """Re-estimate both models' BatchNorm and return their CKA (L_A, L_B) from the same pass."""
    with reestimating_batch_norm(nets[0].module), reestimating_batch_norm(nets[1].module):
        return layer_similarity(nets[0], nets[1], batches, dev, progress, measure, whole=True)
