"""Merge-quality benchmark on the built-in zoo, written to docs/quality.{md,json}.

The protocol is that of docs/method.md sec. 11.

For every zoo pair and every seed, it evaluates A alone, B alone, their ensemble, weight average
and permute (where the widths allow, on the SMA-padded topology), the zip with every alignment
(SMA, LMA, uniform, head; one alignment when the depths are equal), the homogeneous zip of the
pair's reference pair, and sweeps of the zip ratio rho, of alpha/beta and of the number of
calibration inputs; and it compares re-estimating A's and B's BatchNorm on the calibration data
first (``reset_input_bn=True``, the default) with keeping their training statistics.

Seeds: seed s uses training variant s of every pair (A trained with seed 2s, B with 2s + 1;
variant 0 is the demo zoo, the others are built into the zoo cache on first use) and draws the
calibration inputs with seed s (which samples of the calibration split, and their order). Both
sources of variance are in the spread: with one fixed pair of models, the calibration seeds alone
gave stds of a few tenths of a point, while two trainings that differed only in the last bits of
their arithmetic moved a depth merge by 7 points. Every number in the written files comes from
this run. The measurements of one pair and seed: ``heterogui.bench.quality_seed``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import torch

from heterogui.bench.quality_markdown import render_markdown
from heterogui.bench.quality_report import (
    aggregate,
    checks,
    environment,
    python_command,
    stats,
    write_outputs,
)
from heterogui.bench.quality_seed import (
    KNOBS,
    MODE_LABEL,
    QualityConfig,
    depths_differ,
    run_seed,
    sweep_mode,
)
from heterogui.zoo.pairs import PAIRS, TINY_PAIRS, build_zoo, load_pair, pair_spec, variant_name

log = logging.getLogger(__name__)


def _with_references(names: Sequence[str]) -> list[str]:
    """Return the pairs to run: ``names`` plus the homogeneous pairs they refer to."""
    out = list(names)
    for name in names:
        ref = pair_spec(name).reference
        if ref is not None and ref not in out:
            out.append(ref)
    return out


def run_pair(name: str, cfg: QualityConfig) -> dict[str, Any]:
    """Return the per-seed runs (seed s: training variant s) and their aggregates of one pair."""
    start = time.perf_counter()
    runs, accuracy = [], []
    for seed in cfg.seeds:
        log.info("quality: %s seed %d", name, seed)
        zoo = load_pair(variant_name(name, seed), cfg.device)
        accuracy.append(zoo.task_accuracy)
        runs.append(run_seed(zoo, seed, cfg))
    spec = pair_spec(name)
    return {
        "description": spec.description,
        "kind": spec.kind,
        "dataset": spec.dataset,
        "reference": spec.reference,
        "classes_a": list(zoo.classes_a),
        "classes_b": list(zoo.classes_b),
        "task_accuracy": {w: stats([a[w] for a in accuracy]) for w in ("a", "b")},
        "params": {"a": zoo.net_a.parameter_count(), "b": zoo.net_b.parameter_count()},
        "depths_differ": depths_differ(zoo.net_a, zoo.net_b),
        "layer_norm": any(isinstance(m, torch.nn.LayerNorm) for m in zoo.net_a.module.modules()),
        "sweep_mode": MODE_LABEL[sweep_mode(zoo)],
        "seconds": time.perf_counter() - start,
        **aggregate(runs),
    }


def run_quality(
    pairs: Sequence[str] | None = None,
    seeds: Sequence[int] = (0, 1, 2),
    calib_sizes: Sequence[int | None] | None = None,
    rhos: Sequence[float] | None = None,
    out_dir: str | None = "docs",
    tiny: bool = False,
    calib_size: int | None = None,
    device: str = "cpu",
    command: str | None = None,
) -> dict[str, Any]:
    """Run the benchmark; write ``out_dir``/quality.md and quality.json (unless None).

    tiny: use the tiny zoo (TINY_PAIRS) and small sweeps: a smoke run for tests.

    Raises:
        ConfigError: unknown pairs.
    """
    registry = TINY_PAIRS if tiny else PAIRS
    names = _with_references(list(pairs) if pairs else list(registry))
    cfg = QualityConfig(
        pairs=tuple(names),
        seeds=tuple(seeds),
        calib_size=calib_size or (50 if tiny else 200),
        calib_sizes=tuple(calib_sizes or ((20, 50) if tiny else (10, 25, 50, 100, 200, None))),
        rhos=tuple(rhos or ((0.0, 0.5, 1.0) if tiny else (0.0, 0.25, 0.5, 0.75, 1.0))),
        knobs=KNOBS[:2] if tiny else KNOBS,
        device=device,
        tiny=tiny,
        command=command or python_command(pairs, seeds, out_dir, tiny),
    )
    start = time.perf_counter()
    build_zoo([variant_name(n, seed) for seed in cfg.seeds for n in names], tiny=tiny)
    results = {name: run_pair(name, cfg) for name in names}
    report = {
        "command": cfg.command,
        "config": {k: v for k, v in cfg.__dict__.items() if k != "extra"},
        "environment": environment(cfg.device),
        "pairs": results,
        "seconds": time.perf_counter() - start,
    }
    report["checks"] = checks(results)
    if out_dir is not None:
        write_outputs(report, render_markdown(report), out_dir)
    return report
