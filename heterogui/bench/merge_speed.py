"""One pair's merge, timed stage by stage next to its floor (``heterogui bench speed``).

``measure_pair`` runs the engine's own path (``pipeline.prepare`` then ``zip_prepared``) on a
pair and calibration batches, then times, on the same prepared statistics:

- the forward passes alone (the floor: docs/method.md sec. 1, ``floor.floor_seconds``);
- a re-merge from the cached statistics at another zip ratio (a slider move): the slower of
  two ratios not zipped before, and one zipped before (the matcher reuses its kept steps,
  ``zip.greedy``);
- an alignment switch (``realign`` to the other automatic mode: re-pad, new statistics);
- showing another merge point on the Neurons tab (the tab's own render, figures to JSON);
- the statistics' precision: the correlations and matchings of float32 batch products against
  float64 products of the same features (``zip.stats``).

Peak memory is this process's peak RSS (``memory.peak_rss_mib``); ``bench speed`` runs each pair
in a process of its own.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import torch

from heterogui.analysis import grouped_as_given
from heterogui.bench.floor import floor_seconds, weights_mib
from heterogui.bench.memory import peak_rss_mib
from heterogui.bench.timing import clock, sync
from heterogui.models.capture import Batch, run_model, to_device
from heterogui.models.family import Network
from heterogui.pipeline import (
    Prepared,
    ZipSettings,
    correlation,
    match_spaces,
    prepare,
    realign,
    zip_prepared,
)
from heterogui.prepared import MergeResult
from heterogui.ready import BN_STAGES
from heterogui.sizes import batch_flops
from heterogui.zip.collect import collect_moments, shared_spaces
from heterogui.zip.plan import stop_point


@torch.no_grad()
def forward_seconds(module: torch.nn.Module, batches: list[Batch], device: torch.device) -> float:
    """Return the best time of one eval-mode pass of ``module`` over the batches."""
    module.eval()
    moved = [to_device(b, device) for b in batches]
    run_model(module, moved[0])  # warm-up
    return clock(lambda: [run_model(module, b) for b in moved], device, repeats=3)


def measure_pair(
    label: str,
    net_a: Network,
    net_b: Network,
    batches: list[Batch],
    device: torch.device,
    *,
    remerge_rhos: tuple[float, float] = (0.5, 0.75),
) -> dict[str, Any]:
    """Merge ``net_a`` and ``net_b`` at the default settings and return the figures.

    Keys: pair, device, threads, total (s), stages (s per stage), forward_a / forward_b
    (padded models) / forward_merged (s), floor (s), weights_mib (A, B, merge),
    statistics_mib, products_gmac and forward_gmac (``statistics_work``), peak_rss_mib,
    rss_before_merge_mib, peak_cuda_mib, remerge_from_cache (the slower re-merge to the
    ``remerge_rhos``, each a width not zipped before),
    remerge_repeated (the first of them again), realign (s, and the mode switched to),
    neurons_point_s, precision.
    """
    prep, result, total, rss_before, peak = _timed_merge(net_a, net_b, batches, device)
    forwards = _forward_figures(prep, result, batches, device)
    cached = _cache_timings(prep, device, remerge_rhos)
    return {
        "pair": label,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "total": total,
        "stages": {
            **{f"prepare.{k}": v for k, v in prep.timings.items()},
            **{f"zip.{k}": v for k, v in result.timings.items()},
        },
        **forwards,
        **_memory_figures(net_a, net_b, prep, result, device, peak, rss_before),
        **cached,
        "neurons_point_s": _neurons_point_seconds(prep, result),
        "precision": statistics_precision(prep),
    }


def _timed_merge(
    net_a: Network, net_b: Network, batches: list[Batch], device: torch.device
) -> tuple[Prepared, MergeResult, float, float, float]:
    """Return prep, result, total (s), RSS before and peak RSS after the default-settings merge."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    rss_before = peak_rss_mib()
    start = time.perf_counter()
    prep = prepare(net_a, net_b, batches, device=device)
    result = zip_prepared(prep, ZipSettings())
    sync(device)
    total = time.perf_counter() - start
    peak = peak_rss_mib()
    return prep, result, total, rss_before, peak


def _forward_figures(
    prep: Prepared, result: MergeResult, batches: list[Batch], device: torch.device
) -> dict[str, Any]:
    """Return the forward_a / forward_b / forward_merged times, the floor and batch_norm."""
    t_a = forward_seconds(prep.padded_a.module, batches, device)
    t_b = forward_seconds(prep.padded_b.module, batches, device)
    t_m = forward_seconds(result.model, batches, device)
    batch_norm = any(stage in prep.timings for stage in BN_STAGES)
    if batch_norm:  # BN passes run the models as they are, not padded
        t_a0 = forward_seconds(prep.net_a.module, batches, device)
        t_b0 = forward_seconds(prep.net_b.module, batches, device)
        floor = floor_seconds(t_a, t_b, t_m, batch_norm=True) - (t_a + t_b) + (t_a0 + t_b0)
    else:
        floor = floor_seconds(t_a, t_b, t_m, batch_norm=False)
    return {
        "forward_a": t_a,
        "forward_b": t_b,
        "forward_merged": t_m,
        "floor": floor,
        "batch_norm": batch_norm,
    }


def _cache_timings(
    prep: Prepared, device: torch.device, remerge_rhos: tuple[float, float]
) -> dict[str, Any]:
    """Return the re-merge from the cached statistics (slower, repeated) and realign times."""
    remerge = max(
        clock(lambda r=rho: zip_prepared(prep, ZipSettings(rho=r)), device) for rho in remerge_rhos
    )
    repeated = clock(lambda: zip_prepared(prep, ZipSettings(rho=remerge_rhos[0])), device)
    other = "lma" if prep.alignment.mode != "lma" else "sma"
    realign_s = clock(lambda: realign(prep, other), device)
    return {
        "remerge_from_cache": remerge,
        "remerge_rhos": remerge_rhos,
        "remerge_repeated": repeated,
        "realign": realign_s,
        "realign_mode": other,
    }


def _memory_figures(
    net_a: Network,
    net_b: Network,
    prep: Prepared,
    result: MergeResult,
    device: torch.device,
    peak: float,
    rss_before: float,
) -> dict[str, Any]:
    """Return the weights', statistics' and peak memory figures, with ``statistics_work``."""
    return {
        "weights_mib": weights_mib([net_a.module, net_b.module, result.model]),
        "statistics_mib": sum(m.nbytes for m in prep.stats.values()) / 2**20,
        **statistics_work(prep),
        "peak_rss_mib": peak,
        "rss_before_merge_mib": rss_before,
        "peak_cuda_mib": torch.cuda.max_memory_allocated(device) / 2**20
        if device.type == "cuda"
        else None,
    }


def statistics_work(prep: Prepared) -> dict[str, float]:
    """Return the multiply-adds (billions) of the statistics' products and of the pass they need.

    products_gmac: every merge point's feature rows times the product blocks a row adds to
    (``Moments.products_per_row``); forward_gmac: the linear and convolution layers of the
    padded A and B over the same batches (one statistics pass, the floor's part that the
    products ride on).
    """
    products = sum(m.count * m.products_per_row for m in prep.stats.values())
    forward = sum(
        batch_flops(net.module, prep.batches, prep.device) // 2
        for net in (prep.padded_a, prep.padded_b)
    )
    return {"products_gmac": products / 1e9, "forward_gmac": forward / 1e9}


def statistics_precision(prep: Prepared) -> dict[str, Any]:
    """Return how far float32 batch products move the correlations and matchings.

    The feature pass is run again with the features cast to float64 (float64 products), on
    the batches grouped as the statistics' pass had them (as given after a one-pass analysis);
    for every merge point of the default merge: the largest absolute correlation difference,
    and whether the matching (the groups) is the same.
    """
    ga, gb = prep.padded_a.graph(), prep.padded_b.graph()
    settings = ZipSettings()
    stop = stop_point(ga, settings)
    exact_stats = collect_moments(
        (prep.padded_a, prep.padded_b),
        prep.batches,
        prep.device,
        dtype=torch.float64,
        regroup=not grouped_as_given(prep),
    )
    exact = dataclasses.replace(prep, stats=exact_stats, keep_correlations=False)
    worst, spaces = 0.0, shared_spaces((ga, gb))
    for space in spaces:
        if any(c.block < stop for c in ga.spaces[space].captures):
            diff = correlation(exact, space, stop) - correlation(prep, space, stop)
            worst = max(worst, float(diff.abs().max()))
    ours, theirs = match_spaces(prep, settings, stop), match_spaces(exact, settings, stop)
    same = [s for s in ours if torch.equal(ours[s].groups, theirs[s].groups)]
    return {
        "max_corr_diff": worst,
        "same_matching": len(same),
        "merge_points": len(ours),
        "differing": sorted(set(ours) - set(same)),
    }


def _neurons_point_seconds(prep: Prepared, result: Any) -> float | None:
    """Return the Neurons tab's slowest merge point (``ui.latency``; gradio and plotly there).

    None where the workbench's packages are not installed (an engine-only environment, such
    as a GPU machine's image): the merge's own figures do not need them.
    """
    try:
        from heterogui.ui.latency import neurons_point_seconds
    except ModuleNotFoundError as error:
        if error.name not in ("gradio", "plotly"):
            raise
        return None
    return neurons_point_seconds(prep, result)
