"""The analysis of a pair: the passes ``pipeline.prepare`` runs and a new alignment's.

After the BatchNorm re-estimation (``heterogui.ready``), a pair is analysed in about one pass
where it can be (``analysed_in_one_pass`` for equal depths, ``analysed_from_probe`` from the
first batch's CKA), else by a CKA pass (``with_measure``) and a feature pass of the padded pair
(``realign``, which a switch of the alignment mode also calls). docs/method.md secs. 1-6.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from heterogui.align.alignment import Alignment, align
from heterogui.align.pad import pad_network
from heterogui.align.segment import NEEDS_SIMILARITY
from heterogui.align.similarity import layer_similarity, resolve_measure
from heterogui.models.capture import Batch
from heterogui.models.family import Network
from heterogui.models.graph import ModelGraph
from heterogui.prepared import Prepared
from heterogui.progress import Progress
from heterogui.ready import BN_STAGES, TO_DEVICE, similarities_while_reestimating
from heterogui.stages import timed
from heterogui.zip.collect import pass_bytes, shared_spaces, similarity_and_moments
from heterogui.zip.reuse import own_layers, realigned_moments

PREPARE_ONLY_STAGES = (*BN_STAGES, TO_DEVICE, "similarity", "probe", "probe_padding", "analysis")
# The fewest batches for which the CKA of the first one places the layers before one pass
# (``analysed_from_probe``): the probe is then at most an eighth of the data. With SmolLM2 on 4
# batches of 8 texts it cost a quarter of a pass and placed a layer elsewhere than the whole
# CKA: slower than two passes (docs/benchmarks.md, speed).
PROBE_BATCHES = 8


def statistics_fit(
    graph_a: ModelGraph, graph_b: ModelGraph, batches: int, budget: int | None
) -> bool:
    """Return whether one pass may hold every merge point's statistics (None: no budget)."""
    return (
        budget is None
        or pass_bytes(graph_a, graph_b, shared_spaces((graph_a, graph_b)), batches) <= budget
    )


def analysed_in_one_pass(
    analysis: Prepared, mode: str, measure: str, progress: Progress | None = None
) -> Prepared:
    """Return ``prepare``'s result for a pair the CKA cannot re-place, from one pass.

    Every stage of equal depth (``placed_by_depths``): each block keeps its slot, nothing is
    padded, and the CKA and the feature statistics share one forward of A and B (timed and
    reported as the stage "analysis").
    """
    report = progress or (lambda _stage, _frac: None)
    measure = resolve_measure(analysis.net_a, measure)
    (similarity,), stats = timed(
        analysis.timings,
        "analysis",
        lambda: similarity_and_moments(
            (analysis.net_a, analysis.net_b),
            analysis.batches,
            analysis.device,
            lambda f: report("analysis", f),
            measure,
        ),
    )
    ga, gb = analysis.net_a.graph(), analysis.net_b.graph()
    alignment = timed(analysis.timings, "alignment", lambda: align(ga, gb, similarity, mode))
    return replace(
        analysis,
        similarities={measure: similarity},
        measure=measure,
        alignment=alignment,
        padded_a=analysis.net_a,
        padded_b=analysis.net_b,
        stats=stats,
    )


def analysed_from_probe(
    analysis: Prepared,
    mode: str,
    manual: dict[str, list[list[int]]] | None,
    measure: str,
    progress: Progress | None = None,
) -> Prepared | None:
    """Return ``prepare``'s result from about one pass: the CKA and the statistics together.

    For ``PROBE_BATCHES`` batches or more. The CKA of the first batch alone (stage "probe";
    none for the modes that do not read it) places the layers; the pair padded so then runs
    once over every batch (stage "analysis") for both the whole CKA, read at the padded
    models' own blocks (they compute the unpadded models' layers), and the feature statistics.
    When the whole CKA places the layers elsewhere, ``realign`` collects the merge points
    whose blocks moved (the guess's padding is then kept as stage "probe_padding"). None
    (nothing run but the probe): the padded pair's statistics exceed the budget.
    """
    report = progress or (lambda _stage, _frac: None)
    timings = analysis.timings
    ga, gb = analysis.net_a.graph(), analysis.net_b.graph()
    probe = _probe(analysis, mode, measure, report) if mode in NEEDS_SIMILARITY else None
    guess = align(ga, gb, probe, mode, manual)
    padded = padded_pair(analysis, guess, timings)
    pa, pb = padded[0].graph(), padded[1].graph()
    if not statistics_fit(pa, pb, len(analysis.batches), analysis.stats_budget):
        return None
    prepared = _analysed_padded(analysis, guess, padded, measure, report)
    similarity = prepared.similarities[measure]
    final = timed(timings, "alignment", lambda: align(ga, gb, similarity, mode, manual))
    if final.placement == guess.placement:
        return replace(prepared, alignment=final)
    timings["probe_padding"] = timings.pop("padding")  # kept: realign re-times its own
    return realign(prepared, mode, manual, progress)


def _probe(analysis: Prepared, mode: str, measure: str, report: Progress) -> torch.Tensor:
    """Return the CKA of the first batch alone (timed and reported as the stage "probe")."""
    return timed(
        analysis.timings,
        "probe",
        lambda: layer_similarity(
            analysis.net_a,
            analysis.net_b,
            analysis.batches[:1],
            analysis.device,
            lambda f: report("probe", f),
            measure,
        ),
    )


def _analysed_padded(
    analysis: Prepared,
    guess: Alignment,
    padded: tuple[Network, Network],
    measure: str,
    report: Progress,
) -> Prepared:
    """Return ``analysis`` with the padded pair's CKA and statistics, from one pass ("analysis").

    The CKA is read at the padded models' own blocks, so it is that of the unpadded models.
    """
    net_a, net_b = analysis.net_a, analysis.net_b
    (similarity,), stats = timed(
        analysis.timings,
        "analysis",
        lambda: similarity_and_moments(
            padded,
            analysis.batches,
            analysis.device,
            lambda f: report("analysis", f),
            measure,
            layers=[own_layers(padded[0], net_a), own_layers(padded[1], net_b)],
        ),
    )
    return replace(
        analysis,
        similarities={measure: similarity},
        measure=measure,
        alignment=guess,
        padded_a=padded[0],
        padded_b=padded[1],
        stats=stats,
    )


def with_measure(prepared: Prepared, measure: str, progress: Progress | None = None) -> Prepared:
    """Return ``prepared`` whose alignment reads the CKA of ``measure`` (same alignment).

    The first time a measure is asked for, one similarity pass computes its matrix and adds it
    to the analysis's ``similarities``; realign to place the layers by it.

    Raises:
        ConfigError: an unknown measure.
    """
    measure = resolve_measure(prepared.net_a, measure)
    if measure not in prepared.similarities:
        report = progress or (lambda _stage, _frac: None)
        nets, batches, device = (prepared.net_a, prepared.net_b), prepared.batches, prepared.device
        step = lambda f: report("similarity", f)  # noqa: E731
        if "bn_similarity" in prepared.timings:
            # the analysis's CKA came from its BatchNorm pass (train-mode BatchNorm): so does
            # this one, as ``prepare`` computes it, or a recipe would not repeat the alignment.
            # The pass re-estimates the same statistics from the same batches.
            similarity = similarities_while_reestimating(
                nets, batches, device, measure, progress=step
            )[0]
        else:
            similarity = layer_similarity(*nets, batches, device, progress=step, measure=measure)
        prepared.similarities[measure] = similarity
    return replace(prepared, measure=measure)


def realign(
    prepared: Prepared,
    mode: str,
    manual: dict[str, list[list[int]]] | None = None,
    progress: Progress | None = None,
) -> Prepared:
    """Return ``prepared`` with a new alignment: re-pad and re-run the feature pass."""
    report = progress or (lambda _stage, _frac: None)
    # keep the timings of the passes realign does not repeat; its own stages start afresh
    timings = {k: v for k, v in prepared.timings.items() if k in PREPARE_ONLY_STAGES}
    alignment = timed(
        timings,
        "alignment",
        lambda: align(
            prepared.net_a.graph(), prepared.net_b.graph(), prepared.similarity, mode, manual
        ),
    )
    padded_a, padded_b = padded_pair(prepared, alignment, timings)
    ga, gb = padded_a.graph(), padded_b.graph()
    stats = {}  # when they do not fit, each zip collects them part by part
    if statistics_fit(ga, gb, len(prepared.batches), prepared.stats_budget):
        stats = timed(
            timings,
            "features",
            lambda: realigned_moments(
                (prepared.net_a, prepared.net_b),
                (prepared.padded_a, prepared.padded_b),
                prepared.stats,
                (padded_a, padded_b),
                prepared.batches,
                prepared.device,
                lambda f: report("features", f),
                regroup=not grouped_as_given(prepared),
            ),
        )
    return replace(
        prepared,
        alignment=alignment,
        padded_a=padded_a,
        padded_b=padded_b,
        stats=stats,
        timings=timings,
    )


def padded_pair(
    prepared: Prepared, alignment: Alignment, timings: dict[str, float]
) -> tuple[Network, Network]:
    """Return ``prepared``'s A and B padded as ``alignment`` places them (stage "padding")."""
    return timed(
        timings,
        "padding",
        lambda: tuple(
            pad_aligned(net, pos, alignment.depths, prepared.batches, prepared.device)
            for net, pos in zip((prepared.net_a, prepared.net_b), alignment.placement, strict=True)
        ),
    )


def grouped_as_given(prepared: Prepared) -> bool:
    """Return True when ``prepared``'s statistics came from the batches as given.

    A pass that also gave the CKA (stage "analysis": the one-pass analyses) takes them as
    given; a feature pass of its own regroups token batches by length (``collect_moments``).
    """
    return "analysis" in prepared.timings


def pad_aligned(
    net: Network,
    positions: tuple[tuple[int, ...], ...],
    depths: tuple[int, ...],
    batches: list[Batch],
    device: torch.device,
) -> Network:
    """Pad ``net`` to ``depths``; let the family finish its new identity blocks if it needs to."""
    padded = pad_network(net, positions, depths)
    new_blocks = sorted(padded.identity_blocks - net.identity_blocks)
    if padded is not net and new_blocks and padded.family.fit_identity is not None:
        padded.family.fit_identity(padded, new_blocks, batches, device)
    return padded
