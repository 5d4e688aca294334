"""Step 1 of a merge: the models on the device in eval mode, BatchNorm re-estimated.

When every model re-estimates its BatchNorm and the CKA would then run them over the same
batches (models whose depths do not fix the alignment), the CKA's Gram matrices come from the
re-estimation pass itself (``ready_with_similarities``): one forward of each model fewer. Those
features see each batch's own BatchNorm statistics (train mode) where a separate pass sees
their average (docs/method.md sec. 3 gives the measured difference; the alignment was the same
on every zoo pair of different depth).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import ExitStack

import torch

from heterogui.align.pad import ready_network
from heterogui.align.similarity import layer_similarities
from heterogui.fusion.bn import has_batch_norm, reestimate_batch_norm, reestimating_batch_norm
from heterogui.models.capture import Batch
from heterogui.models.family import Network
from heterogui.progress import Progress
from heterogui.stages import timed

# the stages that re-estimate the input models' BatchNorm (the second one with their CKA)
BN_STAGES = ("bn_inputs", "bn_similarity")
TO_DEVICE = "to_device"  # the stage that copies the models where they run (when they change)


def ready_with_similarities(
    nets: Sequence[Network],
    batches: list[Batch],
    dev: torch.device,
    reset_input_bn: bool,
    timings: dict[str, float],
    report: Progress,
    measure: str | None,
    reference: int = 0,
) -> tuple[list[Network], list[torch.Tensor] | None]:
    """Return the models on ``dev`` in eval mode, BatchNorm re-estimated, and maybe their CKA.

    A copy only when something would modify the caller's module (BatchNorm re-estimation, a
    move to ``dev``, .eval()); else its module is shared, read only. measure: the CKA the
    alignment reads (None: none wanted from this step). When every model re-estimates
    BatchNorm, one pass gives both (stage "bn_similarity"): the CKA of the reference's layers
    against each other model's, in order (``layer_similarities``). Else each model's BatchNorm
    pass runs alone (stage "bn_inputs") and the CKA is None: the caller runs its own pass.
    Copying and moving the models is stage "to_device" (the first CUDA call of a process
    starts its CUDA context there).
    """
    every = reset_input_bn and all(has_batch_norm(n.module) for n in nets)
    if measure is not None and every:
        ready = [timed(timings, TO_DEVICE, lambda n=n: ready_network(n, dev, True)) for n in nets]
        similarities = timed(
            timings,
            "bn_similarity",
            lambda: similarities_while_reestimating(
                ready, batches, dev, measure, reference, lambda f: report("bn_similarity", f)
            ),
        )
        return ready, similarities
    ready = []
    for net in nets:
        reset_bn = reset_input_bn and has_batch_norm(net.module)
        net = timed(timings, TO_DEVICE, lambda n=net, r=reset_bn: ready_network(n, dev, r))
        if reset_bn:
            timed(
                timings,
                "bn_inputs",
                lambda n=net: reestimate_batch_norm(
                    n.module, batches, dev, progress=lambda f: report("bn_inputs", f)
                ),
            )
        ready.append(net)
    return ready, None


@torch.no_grad()
def similarities_while_reestimating(
    nets: Sequence[Network],
    batches: list[Batch],
    dev: torch.device,
    measure: str,
    reference: int = 0,
    progress: Callable[[float], None] | None = None,
) -> list[torch.Tensor]:
    """Re-estimate every model's BatchNorm and return the CKA from the same pass.

    Returns the CKA (L_ref, L_k) of the reference's layers against each other model's, in
    order (``layer_similarities``).
    """
    others = [nets[k] for k in range(len(nets)) if k != reference]
    with ExitStack() as stack:
        for net in nets:
            stack.enter_context(reestimating_batch_norm(net.module))
        return layer_similarities(nets[reference], others, batches, dev, progress, measure, True)
