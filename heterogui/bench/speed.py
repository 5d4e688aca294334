"""Speed benchmark: what a merge costs next to the forward passes it needs (docs/method.md sec. 1).

Prints, per pair (``speed_pair``: two ResNets of different depth; with ``--minilm`` the MiniLM
pair, with ``--smollm`` SmolLM2 and a shallower copy), the time of every merge stage, the total,
its floor and their ratio, the interactive steps (re-merge, alignment switch, another merge
point on the Neurons tab), memory, and the precision of the statistics; then the greedy zip
matcher against the straightforward loop at O = 2x256, 2x512, 2x1024 features.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import torch

from heterogui.bench.floor import contract, memory_goal_mib
from heterogui.bench.isolated import in_fresh_process
from heterogui.bench.timing import clock
from heterogui.zip.matchers import zip_match, zip_match_naive


def random_correlation(n_a: int, n_b: int, seed: int = 0) -> torch.Tensor:
    """Return the correlation of n_a + n_b features that share a low-rank signal."""
    gen = torch.Generator().manual_seed(seed)
    o = n_a + n_b
    latent = torch.randn(2048, o // 4, generator=gen, dtype=torch.float64)
    mix = torch.randn(o // 4, o, generator=gen, dtype=torch.float64)
    feats = latent @ mix + 0.5 * torch.randn(2048, o, generator=gen, dtype=torch.float64)
    return torch.corrcoef(feats.T)


def bench_matcher(sizes=(256, 512, 1024)) -> list[dict[str, Any]]:
    """Time the fast zip matcher against the straightforward loop; check they agree."""
    rows = []
    for n in sizes:
        corr = random_correlation(n, n)
        fast_t = clock(lambda c=corr, k=n: zip_match(c, k, k, k), torch.device("cpu"))
        start = time.perf_counter()
        naive = zip_match_naive(corr, n, n, n)
        naive_t = time.perf_counter() - start
        same = bool(torch.equal(naive.groups, zip_match(corr, n, n, n).groups))
        rows.append(
            {
                "features": f"2x{n}",
                "naive": naive_t,
                "fast": fast_t,
                "speedup": naive_t / fast_t,
                "same_matching": same,
            }
        )
    return rows


def format_pair(m: dict[str, Any]) -> str:
    """Return one pair's figures as readable text."""
    passes = "2 x (A + B) + merged" if m["batch_norm"] else "A + B"
    lines = [
        f"merge of {m['pair']} on {m['inputs']}, device {m['device']}, {m['threads']} thread(s)",
        f"  forward passes alone: padded A {m['forward_a']:.3f}s, padded B {m['forward_b']:.3f}s,"
        f" merged {m['forward_merged']:.3f}s",
    ]
    lines += [f"  {name:<22} {sec:8.3f}s" for name, sec in m["stages"].items()]
    p = m["precision"]
    lines += [
        f"  total merge time       {m['total']:8.3f}s",
        f"  floor ({passes}): {m['floor']:.3f}s; merge / floor: {m['total'] / m['floor']:.2f}",
        "  re-merge from cached statistics (slower of rho "
        f"{' and '.join(map(str, m['remerge_rhos']))}): {m['remerge_from_cache']:.3f}s "
        f"(rho {m['remerge_rhos'][0]} again: {m['remerge_repeated']:.3f}s); "
        f"alignment switch to {m['realign_mode']}: "
        f"{m['realign']:.3f}s; another merge point on the Neurons tab: "
        + _neurons_point(m["neurons_point_s"]),
        f"  statistics kept: {m['statistics_mib']:.1f} MiB; weights of A, B and the merge "
        f"{m['weights_mib']:.1f} MiB; peak RSS {m['peak_rss_mib']:.0f} MiB (before the merge "
        f"{m['rss_before_merge_mib']:.0f} MiB)" + _over_the_start(m),
        f"  statistics products {m['products_gmac']:.1f} G multiply-adds against "
        f"{m['forward_gmac']:.1f} G in the padded A and B's pass over the same batches "
        f"({m['products_gmac'] / m['forward_gmac']:.2f})",
        f"  float32 batch products vs float64: max correlation difference "
        f"{p['max_corr_diff']:.1e}; same matching at {p['same_matching']} of "
        f"{p['merge_points']} merge points",
    ]
    if m["peak_cuda_mib"] is not None:
        lines.append(f"  peak CUDA memory: {m['peak_cuda_mib']:.0f} MiB")
    return "\n".join(lines)


def _neurons_point(seconds: float | None) -> str:
    """Return the Neurons tab's figure, or why it is missing."""
    if seconds is None:
        return "not measured (the workbench's gradio and plotly are not installed)"
    return f"{seconds:.3f}s (slowest point)"


def _over_the_start(m: dict[str, Any]) -> str:
    """Return the memory over the process's start against the goal (measured in a process of
    its own only: ``speed_pair.measured``)."""
    if "start_rss_mib" not in m:
        return ""
    return (
        f"; over the process's start ({m['start_rss_mib']:.0f} MiB) "
        f"{m['peak_rss_mib'] - m['start_rss_mib']:.0f} MiB against the goal of "
        f"2 x weights + statistics = {memory_goal_mib(m):.0f} MiB"
    )


def format_matcher(matcher: list[dict[str, Any]]) -> str:
    """Return the matcher timings as readable text."""
    lines = ["zip matcher, fast vs straightforward loop (same matching required):"]
    lines += [
        f"  O = {r['features']:<7} naive {r['naive']:8.3f}s  fast {r['fast']:8.3f}s  "
        f"speed-up {r['speedup']:6.1f}x  same matching: {r['same_matching']}"
        for r in matcher
    ]
    return "\n".join(lines)


def measure(name: str, options: dict[str, Any]) -> dict[str, Any]:
    """Return the figures of pair ``name``, measured in a fresh Python process.

    Raises:
        RuntimeError: the measuring process failed (its last lines of error output).
    """
    options = {**options, "pair": name}
    return in_fresh_process("heterogui.bench.speed_pair:measured", options, f"the {name} pair")


def speed_report(args: argparse.Namespace) -> str:
    """Run the speed benchmark as ``heterogui bench speed`` asks and return its figures.

    Each pair runs in a process of its own (``speed_pair``), so peak memory is per pair. With
    ``--json`` the last line is one JSON object: {"pairs": {"resnet": {...}, "minilm": {...},
    "smollm": {...}}} (with ``--same-depth`` also "resnet_width" and "minilm_permuted", with
    ``--bert-base`` "bert_base") with
    merge_s, floor_s, ratio_to_floor, remerge_s, realign_s, neurons_point_s, peak_rss_mib,
    weights_mib, stats_mib, products_gmac, forward_gmac, precision and stages per pair
    (``floor.contract``).
    """
    if args.threads:
        torch.set_num_threads(args.threads)
    options = {
        "quick": args.quick,
        "device": args.device,
        "width": args.width,
        "inputs": args.inputs,
        "bert_inputs": getattr(args, "bert_inputs", 1024),
        "threads": args.threads or torch.get_num_threads(),
    }
    names = ["resnet"] + [n for n in ("minilm", "smollm", "bert_base") if getattr(args, n, False)]
    if getattr(args, "same_depth", False):  # pairs analysed in one pass
        names += ["resnet_width"] + (["minilm_permuted"] if "minilm" in names else [])
    pairs = {name: measure(name, options) for name in names}
    parts = [format_pair(m) for m in pairs.values()]
    parts.append(format_matcher(bench_matcher((64, 128) if args.quick else (256, 512, 1024))))
    if getattr(args, "json", False):
        parts.append(json.dumps({"pairs": {k: contract(v) for k, v in pairs.items()}}))
    return "\n".join(parts)
