"""Speed benchmark: what a merge costs next to the forward passes it needs (docs/method.md sec. 1).

Prints, for two ResNets of different depth, the time of the forward passes alone, the time of
every merge stage, the total, their ratio and peak memory; and the greedy zip matcher against
the straightforward loop at O = 2x256, 2x512, 2x1024 features.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from typing import Any

import torch

from heterogui.bench.bert_speed import format_minilm
from heterogui.bench.floor import contract, floor_seconds, weights_mib
from heterogui.bench.timing import clock, sync
from heterogui.models.family import Network, build_network
from heterogui.models.resnet import cifar_resnet
from heterogui.pipeline import ZipSettings, prepare, resolve_device, zip_prepared
from heterogui.zip.matchers import zip_match, zip_match_naive

# A merge runs each of A and B three times over the calibration data (BN re-estimation, CKA,
# feature statistics) and the merged model once (BN re-estimation).
PASSES_PER_INPUT_MODEL = 3


@torch.no_grad()
def forward_seconds(model: torch.nn.Module, batches: list[torch.Tensor], device) -> float:
    """Return the time of one eval-mode pass of ``model`` over the batches."""
    model.eval()
    model(batches[0].to(device))  # warm-up
    return clock(lambda: [model(b.to(device)) for b in batches], device, repeats=3)


def resnet_pair(width: int, depths_a, depths_b, seed: int = 0) -> tuple[Network, Network]:
    """Return two randomly initialised CIFAR ResNets (speed does not depend on training)."""
    torch.manual_seed(seed)
    a = build_network(cifar_resnet(depths_a, width, 5, 3), label="A")
    b = build_network(cifar_resnet(depths_b, width, 5, 3), label="B")
    return a, b


def bench_merge(
    width: int = 2,
    depths_a=(3, 3, 3),
    depths_b=(2, 2, 2),
    n_inputs: int = 256,
    batch_size: int = 64,
    device: str = "auto",
) -> dict[str, Any]:
    """Merge two ResNets of different depth on random 32x32 images and time every stage."""
    dev = resolve_device(device)
    a, b = resnet_pair(width, depths_a, depths_b)
    gen = torch.Generator().manual_seed(0)
    batches = list(torch.randn(n_inputs, 3, 32, 32, generator=gen).split(batch_size))
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    start = time.perf_counter()
    prep = prepare(a, b, batches, device=dev)
    result = zip_prepared(prep, ZipSettings())
    sync(dev)
    total = time.perf_counter() - start
    t_a = forward_seconds(prep.net_a.module, batches, dev)
    t_b = forward_seconds(prep.net_b.module, batches, dev)
    t_m = forward_seconds(result.model, batches, dev)
    forwards = PASSES_PER_INPUT_MODEL * (t_a + t_b) + t_m
    remerge = clock(lambda: zip_prepared(prep, ZipSettings(rho=0.5)), dev, repeats=3)
    stats_bytes = sum(m.outer.numel() * 8 for m in prep.stats.values())
    weights = [prep.net_a.module, prep.net_b.module, result.model]
    return {
        "pair": f"ResNet{_depth(depths_a)}x{width} vs ResNet{_depth(depths_b)}x{width}",
        "device": str(dev),
        "threads": torch.get_num_threads(),
        "inputs": n_inputs,
        "forward_a": t_a,
        "forward_b": t_b,
        "forward_merged": t_m,
        "forward_needed": forwards,
        "floor": floor_seconds(t_a, t_b, t_m, batch_norm=True),
        "weights_mib": weights_mib(weights),
        "stages": {
            **{f"prepare.{k}": v for k, v in prep.timings.items()},
            **{f"zip.{k}": v for k, v in result.timings.items()},
        },
        "total": total,
        "ratio": total / forwards,
        "remerge_from_cache": remerge,
        "statistics_mib": stats_bytes / 2**20,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_cuda_mib": torch.cuda.max_memory_allocated(dev) / 2**20
        if dev.type == "cuda"
        else None,
    }


def _depth(depths) -> int:
    return 2 + 2 * sum(depths)


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


def format_report(merge: dict[str, Any], matcher: list[dict[str, Any]]) -> str:
    """Return the benchmark figures as readable text."""
    lines = [
        f"merge of {merge['pair']} on {merge['inputs']} inputs, device {merge['device']}, "
        f"{merge['threads']} threads",
        f"  forward passes alone: A {merge['forward_a']:.3f}s, B {merge['forward_b']:.3f}s, "
        f"merged {merge['forward_merged']:.3f}s; needed by a merge "
        f"(3xA + 3xB + merged): {merge['forward_needed']:.3f}s",
    ]
    lines += [f"  {name:<22} {sec:8.3f}s" for name, sec in merge["stages"].items()]
    lines += [
        f"  total merge time       {merge['total']:8.3f}s",
        f"  ratio total / forward passes needed: {merge['ratio']:.2f}",
        f"  floor (one statistics pass of A and B, one BN pass of each, one of the merge): "
        f"{merge['floor']:.3f}s; merge / floor: {merge['total'] / merge['floor']:.2f}",
        f"  re-merge from cached statistics: {merge['remerge_from_cache']:.3f}s",
        f"  statistics kept: {merge['statistics_mib']:.1f} MiB; weights of A, B and the merge "
        f"{merge['weights_mib']:.1f} MiB; peak RSS {merge['peak_rss_mib']:.0f} MiB",
    ]
    if merge["peak_cuda_mib"] is not None:
        lines.append(f"  peak CUDA memory: {merge['peak_cuda_mib']:.0f} MiB")
    lines.append("zip matcher, fast vs straightforward loop (same matching required):")
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
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "heterogui",
            "bench",
            "speed-pair",
            json.dumps({**options, "pair": name}),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-5:])
        raise RuntimeError(f"measuring the {name} pair failed:\n{tail}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def speed_report(args: argparse.Namespace) -> str:
    """Run the speed benchmark as ``heterogui bench speed`` asks and return its figures.

    Each pair runs in a process of its own (``speed_pair``), so peak memory is per pair. With
    ``--json`` the last line is one JSON object: {"pairs": {"resnet": {...}, "minilm": {...}}}
    with merge_s, floor_s, ratio_to_floor, remerge_s, peak_rss_mib, weights_mib, stats_mib and
    stages per pair (``floor.contract``).
    """
    if args.threads:
        torch.set_num_threads(args.threads)
    options = {
        "quick": args.quick,
        "device": args.device,
        "width": args.width,
        "inputs": args.inputs,
        "threads": args.threads or torch.get_num_threads(),
    }
    pairs = {"resnet": measure("resnet", options)}
    matcher = bench_matcher((64, 128) if args.quick else (256, 512, 1024))
    parts = [format_report(pairs["resnet"], matcher)]
    if args.minilm:
        pairs["minilm"] = measure("minilm", options)
        parts.append(format_minilm(pairs["minilm"]))
    if getattr(args, "json", False):
        parts.append(json.dumps({"pairs": {k: contract(v) for k, v in pairs.items()}}))
    return "\n".join(parts)
