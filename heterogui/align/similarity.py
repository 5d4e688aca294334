"""The similarity pass: CKA between every block of A and of B (docs/method.md sec. 3).

CKA compares the blocks' outputs (the paper's measure) or their updates: what each block adds
to its input, its output minus the previous block's where the shapes agree. In a residual
model the stream changes little from block to block, so the outputs of all blocks look alike;
what each block writes tells them apart.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch

from heterogui.align.cka import CKAAccumulator, gram
from heterogui.errors import ConfigError
from heterogui.host_memory import release_freed_memory
from heterogui.models.capture import (
    Batch,
    CapturePass,
    per_input,
    run_passes,
    token_mask,
)
from heterogui.models.family import Network

# what CKA compares: each block's output (the paper's), or what each block adds to its input
MEASURES = ("outputs", "updates")


def resolve_measure(net: Network, measure: str) -> str:
    """Return the measure ``measure`` names for ``net``'s family ("auto": the family's).

    Raises:
        ConfigError: an unknown measure.
    """
    if measure == "auto":
        return net.family.default_measure
    if measure not in MEASURES:
        raise ConfigError(
            f"similarity measure {measure!r} is unknown; use auto or one of {MEASURES}"
        )
    return measure


def layer_modules(net: Network) -> list[str]:
    """Return the module name of every block except the head: the layers CKA compares."""
    return [f"blocks.{i}" for i in range(net.graph().num_blocks - 1)]


def layer_grams(
    module: torch.nn.Module,
    names: list[str],
    batch: Batch,
    capture: CapturePass | None = None,
    measure: str = "outputs",
) -> torch.Tensor:
    """Return the Gram matrix of every named layer's output on one batch: (L, n, n), float64.

    batch: on the module's device. capture: the pass that runs ``module`` batch after batch
    (it stops after the last layer once it knows the order); default: a whole forward.
    measure: see ``captured_grams``.
    """
    return captured_grams((capture or CapturePass(module, names))(batch), names, batch, measure)


def captured_grams(
    found: dict[str, torch.Tensor], names: list[str], batch: Batch, measure: str = "outputs"
) -> torch.Tensor:
    """Return the Gram matrix of every named layer's captured output: (L, n, n), float64.

    Token outputs have their padded tokens zeroed first. measure: "outputs" (each layer's
    output) or "updates" (what each layer adds to its input: its output minus the previous
    layer's, where the shapes agree; else its output).
    """
    mask = token_mask(batch)
    layout = "tokens" if mask is not None else "flat"
    feats = [found[n] for n in names]
    if measure == "updates":  # on the features as captured: their layouts may differ
        feats = [
            x - before if before is not None and before.shape == x.shape else x
            for before, x in zip([None, *feats[:-1]], feats, strict=True)
        ]
    return torch.stack([gram(per_input(x, layout, mask)) for x in feats])


class SimilaritySums:
    """The CKA sums of a similarity pass: a reference's layers against each other model's.

    ``add`` is a ``run_passes`` consumer; ``layers`` lists, per model, the modules it reads:
    its blocks but the head (``layer_modules``), or those given (a padded model's own blocks,
    whose outputs are the unpadded model's layers).
    """

    def __init__(
        self,
        nets: Sequence[Network],
        measure: str = "outputs",
        layers: Sequence[list[str]] | None = None,
    ) -> None:
        self.layers = [layer_modules(net) for net in nets] if layers is None else list(layers)
        self.measure = measure
        self._accs = [CKAAccumulator() for _ in nets[1:]]

    def add(self, batch: Batch, found: list[dict[str, torch.Tensor]]) -> None:
        """Add one batch's captured outputs (one dict per model, the reference's first)."""
        grams = [
            captured_grams(out, names, batch, self.measure)
            for out, names in zip(found, self.layers, strict=True)
        ]
        for acc, other in zip(self._accs, grams[1:], strict=True):
            acc.update(grams[0], other)

    def matrices(self) -> list[torch.Tensor]:
        """Return the CKA (L_ref, L_k) against each other model, summed over all processes."""
        for acc in self._accs:
            acc.all_reduce()  # the whole data's sums under torchrun (heterogui.distributed)
        return [acc.matrix() for acc in self._accs]


def layer_similarity(
    net_a: Network,
    net_b: Network,
    batches: Iterable[Batch],
    device: torch.device | str = "cpu",
    progress: Callable[[float], None] | None = None,
    measure: str = "outputs",
    whole: bool = False,
) -> torch.Tensor:
    """Return linear CKA between all non-head blocks: (L_A, L_B), float64.

    One Gram matrix per layer per batch; all pairs filled by batched products.
    measure: what CKA compares (``layer_grams``). whole: run every forward whole (a pass that
    also re-estimates BatchNorm, ``heterogui.ready``).
    """
    return layer_similarities(net_a, [net_b], batches, device, progress, measure, whole)[0]


@torch.no_grad()
def layer_similarities(
    reference: Network,
    others: Sequence[Network],
    batches: Iterable[Batch],
    device: torch.device | str = "cpu",
    progress: Callable[[float], None] | None = None,
    measure: str = "outputs",
    whole: bool = False,
) -> list[torch.Tensor]:
    """Return linear CKA between the reference's blocks and each other model's: (L_ref, L_k).

    One pass over the batches: the reference's Gram matrices are formed once per batch and
    compared with every other model's (an N-way merge aligns every model to one reference).
    """
    nets = [reference, *others]
    sums = SimilaritySums(nets, measure)
    modules = [net.module for net in nets]
    run_passes(modules, sums.layers, list(batches), device, [sums.add], progress, whole)
    release_freed_memory()  # the batches' activations: back to the system, not kept in the heap
    return sums.matrices()
