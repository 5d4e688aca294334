"""Speed of a real transformer merge: MiniLM-L6 + MiniLM-L3 on calibration sentences.

Part of ``heterogui bench speed --minilm`` (docs/method.md sec. 1). A BERT merge runs A and B twice
over the calibration data (CKA pass, feature pass); BERT has no BatchNorm, so the merged model is
not run. The ratio is the merge time over the time of those forward passes alone.
"""

from __future__ import annotations

import resource
import time
from typing import Any

import torch

from heterogui import run
from heterogui.bench.floor import floor_seconds, weights_mib
from heterogui.bench.timing import clock, sync
from heterogui.config import DataRef
from heterogui.models.capture import to_device
from heterogui.pipeline import ZipSettings, prepare, resolve_device, zip_prepared
from heterogui.sources import minilm

PASSES_PER_INPUT_MODEL = 2


@torch.no_grad()
def forward_seconds(module: torch.nn.Module, batches: list[dict], device: torch.device) -> float:
    """Return the best time of one eval-mode pass of ``module`` over the token batches."""
    module.eval()
    moved = [to_device(b, device) for b in batches]
    module(**moved[0])  # warm-up
    return clock(lambda: [module(**b) for b in moved], device, repeats=3)


def bench_minilm(n_sentences: int = 256, batch_size: int = 32, device: str = "auto") -> dict:
    """Merge the MiniLM pair on ``n_sentences`` calibration sentences and time every stage."""
    dev = resolve_device(device)
    pair = run.load_pair(f"minilm:{minilm.L6_NAME}", f"minilm:{minilm.L3_NAME}")
    a, b = pair.a.net, pair.b.net
    ref = DataRef("sentences", size=n_sentences, batch_size=batch_size)
    batches = run.calibrate(pair, ref).batches
    tokens = sum(int(x["attention_mask"].sum()) for x in batches)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    prep = prepare(a, b, batches, device=dev)
    result = zip_prepared(prep, ZipSettings())
    sync(dev)
    total = time.perf_counter() - start
    t_a = forward_seconds(prep.padded_a.module, batches, dev)
    t_b = forward_seconds(prep.padded_b.module, batches, dev)
    t_m = forward_seconds(result.model, batches, dev)
    needed = PASSES_PER_INPUT_MODEL * (t_a + t_b)
    remerge = clock(lambda: zip_prepared(prep, ZipSettings(rho=0.5)), dev, repeats=2)
    return {
        "pair": "all-MiniLM-L6-v2 + paraphrase-MiniLM-L3-v2",
        "device": str(dev),
        "threads": torch.get_num_threads(),
        "sentences": n_sentences,
        "tokens": tokens,
        "forward_a": t_a,
        "forward_b_padded": t_b,
        "forward_merged": t_m,
        "forward_needed": needed,
        "floor": floor_seconds(t_a, t_b, t_m, batch_norm=False),
        "weights_mib": weights_mib([a.module, b.module, result.model]),
        "stages": {
            **{f"prepare.{k}": v for k, v in prep.timings.items()},
            **{f"zip.{k}": v for k, v in result.timings.items()},
        },
        "total": total,
        "ratio": total / needed,
        "remerge_from_cache": remerge,
        "statistics_mib": sum(m.outer.numel() * 8 for m in prep.stats.values()) / 2**20,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_before_merge_mib": rss_before,
        "peak_cuda_mib": torch.cuda.max_memory_allocated(dev) / 2**20
        if dev.type == "cuda"
        else None,
    }


def format_minilm(m: dict[str, Any]) -> str:
    """Return the MiniLM benchmark figures as readable text."""
    lines = [
        f"merge of {m['pair']} on {m['sentences']} sentences ({m['tokens']} tokens), "
        f"device {m['device']}, {m['threads']} threads",
        f"  forward passes alone: A {m['forward_a']:.3f}s, padded B {m['forward_b_padded']:.3f}s, "
        f"merged {m['forward_merged']:.3f}s; needed by a merge (2xA + 2xB): "
        f"{m['forward_needed']:.3f}s",
    ]
    lines += [f"  {name:<22} {sec:8.3f}s" for name, sec in m["stages"].items()]
    lines += [
        f"  total merge time       {m['total']:8.3f}s",
        f"  ratio total / forward passes needed: {m['ratio']:.1f}",
        f"  floor (one statistics pass of A and of padded B): {m['floor']:.3f}s; "
        f"merge / floor: {m['total'] / m['floor']:.1f}",
        f"  re-merge from cached statistics (rho 0.5): {m['remerge_from_cache']:.3f}s",
        f"  statistics kept: {m['statistics_mib']:.0f} MiB; weights of A, B and the merge "
        f"{m['weights_mib']:.0f} MiB; peak RSS {m['peak_rss_mib']:.0f} MiB "
        f"(after loading, before the merge: {m['rss_before_merge_mib']:.0f} MiB)",
    ]
    if m["peak_cuda_mib"] is not None:
        lines.append(f"  peak CUDA memory: {m['peak_cuda_mib']:.0f} MiB")
    return "\n".join(lines)
