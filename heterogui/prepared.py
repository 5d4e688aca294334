"""What a merge's analysis produces (``Prepared``) and what a merge returns (``MergeResult``).

``pipeline.prepare`` makes the first, ``pipeline.zip_prepared`` the second; both are read
only once made (their derived values are kept per object: ``memo``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from heterogui.align.alignment import Alignment
from heterogui.config import SPLIT_HEADS
from heterogui.fusion.fuse import SpaceTransform
from heterogui.fusion.merged import MergedModel, MergedSpec
from heterogui.fusion.norm_weights import weighed_scales
from heterogui.fusion.split_heads import split_widths
from heterogui.models.capture import Batch
from heterogui.models.family import Network
from heterogui.models.graph import space_order
from heterogui.zip.collect import StatKey
from heterogui.zip.matchers import Match
from heterogui.zip.plan import ZipSettings
from heterogui.zip.stats import Moments


@dataclass
class Prepared:
    """What steps 1-4 produce; everything a re-merge needs.

    stats_budget: the most bytes of feature statistics held at once (None: no limit). When all
    merge points' statistics need more, ``stats`` stays empty and every zip collects them part
    by part (``chunked_matches``): a pass over the calibration data per part, each part matched
    and dropped before the next, with the same matches as one pass.
    keep_correlations: keep the correlations formed from ``stats`` while this object lives
    (``correlation``); off for the short-lived parts of ``chunked_matches``.
    similarities: the CKA matrix of each measure computed for this analysis (shared by every
    Prepared derived from it; ``with_measure`` adds to it), measure: the one the alignment reads.
    """

    net_a: Network
    net_b: Network
    similarities: dict[str, torch.Tensor]
    alignment: Alignment
    padded_a: Network
    padded_b: Network
    stats: dict[StatKey, Moments]
    batches: list[Batch]
    device: torch.device
    timings: dict[str, float] = field(default_factory=dict)
    stats_budget: int | None = None
    keep_correlations: bool = True
    measure: str = "outputs"

    @property
    def similarity(self) -> torch.Tensor | None:
        """Return the CKA matrix the alignment reads: the one of ``measure`` (None: none)."""
        return self.similarities.get(self.measure)


@dataclass
class MergeResult:
    """The merged model with everything that explains it."""

    model: MergedModel
    spec: MergedSpec
    alignment: Alignment
    matches: dict[str, Match]
    transforms: dict[str, SpaceTransform]
    prepared: Prepared
    settings: ZipSettings
    timings: dict[str, float] = field(default_factory=dict)
    renormalized: int = 0  # merged outputs renormalization rescaled (settings.renormalize)
    searched: tuple[int, float] | None = None  # a head search's merges tried and divergence

    @property
    def norm_weighted(self) -> bool:
        """Return whether the merge weighed its stream's RMSNorms (``fusion.norm_weights``)."""
        graph = self.prepared.padded_a.graph()
        return self.settings.norm_weights and weighed_scales(graph, self.matches) is not None

    def widths(self) -> dict[str, tuple[int, int, int]]:
        """Return (n_A, n_B, merged width) for every merge point (of the merged model: an
        attention space's heads halved by a heads split), in ``space_order``."""
        merged = {s: m.width for s, m in self.matches.items()}
        merged = split_widths(self.prepared.padded_a.graph(), merged, self.split_rank)
        order = sorted(self.matches, key=space_order)
        return {s: (self.matches[s].n_a, self.matches[s].n_b, merged[s]) for s in order}

    @property
    def split_rank(self) -> int | None:
        """Return the merged heads' size when a heads split cut them, else None."""
        if self.settings.heads != SPLIT_HEADS:
            return None
        return getattr(self.spec.trunk_config, "head_dim", None)  # None: no attention to split
