"""Statistics a new alignment keeps from the previous one (``analysis.realign``).

A merge point's statistics are the features of A and B at its captures, block by block. In a
padded model a block is either one of the model's own blocks or an identity block that passes
the stream on. An own block j computes what it computes in the unpadded model: its input is
the stream after own block j - 1, whatever identity blocks stand between them. An identity
block after own block j computes a function of that stream alone (every family builds its
identity layers from the block before them). So the features a capture sees depend only on
the block's *role* in each model, ("block", j) or ("identity after", j), and on the capture's
module inside the block: two alignments whose blocks play the same roles at a merge point in
both models have the same statistics there, and a realignment collects only the others.

Identity blocks that compute the identity exactly (a zeroed residual branch: ResNets, VGG,
pre-norm decoders, ViT) give the very same features, bit for bit. The post-LayerNorm BERT
identity layer reproduces its input only up to the LayerNorm epsilons and float rounding
(docs/transformers.md): there a block's features also depend on the identity blocks before
it, so a point keeps its statistics only where the blocks up to its own play the same roles
(a kept point then holds the very statistics a fresh pass would, and an exported recipe
repeats the merge bit for bit; least squares turned the difference into 1e-5 relative in the
weights).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Sequence

import torch

from heterogui.models.capture import Batch
from heterogui.models.family import Network
from heterogui.zip.collect import StatKey, capture_points, collect_moments, shared_spaces
from heterogui.zip.stats import Moments

Role = tuple[str, int]


def block_roles(padded: Network, original: Network) -> list[Role]:
    """Return the role of every block of ``padded`` (``original`` padded, or itself)."""
    inserted = padded.identity_blocks - original.identity_blocks
    roles: list[Role] = []
    own = 0
    for block in range(padded.graph().num_blocks):
        if block in inserted:
            roles.append(("identity after", own - 1))
        else:
            roles.append(("block", own))
            own += 1
    return roles


def own_layers(padded: Network, original: Network) -> list[str]:
    """Return the modules of ``padded`` whose outputs are ``original``'s layers (its blocks
    but the head, ``align.similarity.layer_modules``), in order: its own blocks."""
    layers = original.graph().num_blocks - 1
    return [
        f"blocks.{k}"
        for k, (role, own) in enumerate(block_roles(padded, original))
        if role == "block" and own < layers
    ]


def point_signatures(
    padded: tuple[Network, Network], originals: tuple[Network, Network]
) -> dict[StatKey, Hashable]:
    """Return, for every merge point of the padded pair, what its statistics depend on.

    The signature is the roles of the point's block in A and in B (of the blocks up to it,
    where identity blocks are not exact) and the capture modules inside the block (their
    names below ``blocks.K``); a capture outside its block's module gets no signature, and its
    point is always collected afresh.
    """
    roles = [block_roles(p, o) for p, o in zip(padded, originals, strict=True)]
    # identity blocks that are not exact (a family that fits them): the roles before count too
    exact = all(net.family.fit_identity is None for net in originals)

    def role(model: int, block: int) -> Hashable:
        return roles[model][block] if exact else tuple(roles[model][: block + 1])

    inside: dict[StatKey, list[tuple[str, str]] | None] = {}
    for space, module, layout, block in capture_points(padded[0].graph()):
        key = (space, block)
        prefix = f"blocks.{block}"
        found = inside.setdefault(key, [])
        if found is None or not (module == prefix or module.startswith(prefix + ".")):
            inside[key] = None
        else:
            found.append((module[len(prefix) :], layout))
    return {
        key: (tuple(sorted(mods)), role(0, key[1]), role(1, key[1]))
        for key, mods in inside.items()
        if mods is not None
    }


def kept_moments(
    stats: dict[StatKey, Moments],
    before: dict[StatKey, Hashable],
    after: dict[StatKey, Hashable],
    wanted: Iterable[StatKey],
) -> dict[StatKey, Moments]:
    """Return the ``wanted`` points of the new alignment whose statistics ``stats`` holds.

    before / after: ``point_signatures`` of the alignment ``stats`` came from and of the new
    one. The Moments objects are shared, not copied (compact statistics are read only).
    """
    by_signature = {before[k]: m for k, m in stats.items() if k in before}
    return {
        key: by_signature[after[key]]
        for key in wanted
        if key in after and after[key] in by_signature
    }


def realigned_moments(
    originals: tuple[Network, Network],
    before: tuple[Network, Network] | tuple[None, None],
    stats: dict[StatKey, Moments],
    after: tuple[Network, Network],
    batches: Sequence[Batch],
    device: torch.device | str,
    progress: Callable[[float], None] | None = None,
    regroup: bool = True,
) -> dict[StatKey, Moments]:
    """Return the feature statistics of the pair padded as ``after``.

    originals: A and B unpadded; before: them padded as ``stats`` were collected (None, None:
    no statistics to keep). Merge points whose blocks play the same roles keep their
    statistics; one pass collects the others and stops after the last block it needs.
    regroup: as ``collect_moments`` (False: the batches as given, as ``stats`` were collected
    by a pass that also gave the CKA, so kept and new statistics come from one grouping).
    """
    graphs = (after[0].graph(), after[1].graph())
    shared = set(shared_spaces(graphs))
    wanted = [(s, b) for s, _, _, b in capture_points(graphs[0]) if s in shared]
    kept = {}
    if stats and before[0] is not None:
        old = point_signatures(before, originals)
        kept = kept_moments(stats, old, point_signatures(after, originals), wanted)
    missing = set(wanted) - set(kept)
    if not missing:
        return kept
    return kept | collect_moments(
        after, batches, device, progress=progress, points=missing, regroup=regroup
    )
