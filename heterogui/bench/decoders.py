"""Merges of decoder language models: the tables of docs/decoders.md (and docs/decoders.json).

    heterogui bench decoders --threads 1 --out-md docs/decoders.md --out-json docs/decoders.json

1. The trained pair (``heterogui.zoo.decoder_pair``: A, 4 layers of width 192, on English prose;
   B, 2 layers of width 384, on Python code): perplexity and bits per byte per domain of A, B,
   their ensemble, naive baselines and merges (SMA and LMA alignment, rho 1 and 0.5), with the
   collapse alarm of every merge.
2. SmolLM2-135M-Instruct (``smollm2:135m-instruct``, a dequantized 4-bit model) merged with a
   neuron-permuted copy of itself: how far the merge is from SmolLM2 (max |logit difference|,
   greedy continuations), a weight average without alignment for contrast, and the wall time and
   peak memory (RSS) of the merge, measured in a process of its own.
3. SmolLM2 merged with a shallower copy of itself (its 6 middle layers removed; a copy without
   every other layer is scored too, but it is no language model any more): perplexities of both,
   the ensemble, the weight average (same width, SMA padding) and merges (SMA, and the true
   alignment given by hand), with their alarms.
4. The trained pair as GPT-2 models (``GPT2PairSettings``: the same shapes, data and training):
   A, B, their ensemble and SMA merges at rho 1 and 0.5 with every fusion and heads setting
   GPT-2 takes, heads split included (its attention has no rotary positions).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from heterogui import run
from heterogui.bench.decoder_pairs import (
    SHALLOW_DROP,
    SMOLLM2,
    average_row,
    dropped_network,
    evenly,
    merge_rows,
    middle_block,
    model_rows,
    net_facts,
    score_row,
    smollm2_shallow_pair,
)
from heterogui.bench.decoders_report import SMOLLM2_NOTE, Row, layer_list, render_markdown
from heterogui.bench.documents import finite, write_document
from heterogui.bench.isolated import in_fresh_process
from heterogui.bench.quality_report import environment
from heterogui.bench.seeds import over_seeds
from heterogui.config import DataRef
from heterogui.pipeline import Prepared, realign
from heterogui.sources import registry
from heterogui.sources.base import Pair
from heterogui.tasks.language import ALL_DOMAINS, BATCH, LANGUAGE, network_logits, score_domains
from heterogui.zoo.decoder_pair import DecoderPairSettings, GPT2PairSettings, marker
from heterogui.zoo.decoder_training import decoder_pair_folders

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Sizes:
    """How much data the benchmark uses (texts of at most MAX_TOKENS tokens)."""

    calibration: int = 32
    evaluation: int = 48
    smollm2_evaluation: int = 8
    threads: int | None = None


def pair_table(sizes: Sizes, device: str = "cpu", seeds: int = 1) -> dict[str, Any]:
    """Return the trained pair's rows and facts (module docstring, item 1).

    seeds: calibration draws (seeds 0 .. seeds-1; the models and the evaluation texts stay);
    the rows are their means with the spread (``bench.seeds``).
    """

    def rows_of(pair: Pair, folder_a: Path, evaluation: Any, seed: int) -> list[Row]:
        return _pair_rows(pair, folder_a, evaluation, sizes, device, seed)

    return _trained_table(DecoderPairSettings(), sizes, device, seeds, rows_of)


def gpt2_table(sizes: Sizes, device: str = "cpu", seeds: int = 1) -> dict[str, Any]:
    """Return the GPT-2 pair's rows and facts (module docstring, item 4)."""

    def rows_of(pair: Pair, _folder_a: Path, evaluation: Any, seed: int) -> list[Row]:
        names = ("A: GPT-2 trained on python-docs (prose)", "B: GPT-2 trained on python-source")
        prep, rows, parents = _draw(pair, evaluation, sizes, device, seed, names)
        return rows + merge_rows(pair, prep, evaluation, parents, "SMA", heads_split=True)

    return _trained_table(GPT2PairSettings(), sizes, device, seeds, rows_of)


def _trained_table(
    settings: DecoderPairSettings,
    sizes: Sizes,
    device: str,
    seeds: int,
    rows_of: Callable[[Pair, Path, Any, int], list[Row]],
) -> dict[str, Any]:
    """Return a trained pair's rows over the calibration draws (``rows_of(pair, folder of A,
    evaluation, seed)``) and its build facts; the pair is built first if needed."""
    start = time.perf_counter()
    folder_a, folder_b = decoder_pair_folders(settings=settings)
    build = {w: marker(f) for w, f in (("a", folder_a), ("b", folder_b))}
    pair = run.load_pair(str(folder_a), str(folder_b), device=device)
    evaluation = LANGUAGE.evaluation(DataRef(ALL_DOMAINS, "test", sizes.evaluation, BATCH), pair)
    return {
        "rows": over_seeds(lambda seed: rows_of(pair, folder_a, evaluation, seed), range(seeds)),
        "seeds": seeds,
        "build": {
            w: {
                **{k: m.get(k) for k in ("shape", "num_params", "held_out", "build_seconds")},
                "positions": (m.get("settings") or {}).get("positions"),
            }
            for w, m in build.items()
        },
        "calibration_texts": sizes.calibration,
        "evaluation_texts_per_domain": sizes.evaluation,
        "seconds": round(time.perf_counter() - start, 1),
    }


def _draw(
    pair: Pair, evaluation: Any, sizes: Sizes, device: str, seed: int, names: tuple[str, str]
) -> tuple[Prepared, list[Row], dict[str, Any]]:
    """Calibrate and analyse a trained pair on calibration draw ``seed``; return the analysis,
    the parents' and the ensemble's rows and the parents' scores (``model_rows``)."""
    ref = DataRef(ALL_DOMAINS, "calibration", sizes.calibration, BATCH, seed=seed)
    prep = run.analyse(pair, run.calibrate(pair, ref), device=device)
    rows, parents = model_rows(pair, prep, evaluation, names)
    return prep, rows, parents


def _pair_rows(
    pair: Pair, folder_a: Path, evaluation: Any, sizes: Sizes, device: str, seed: int
) -> list[Row]:
    """Return the trained pair's rows on calibration draw ``seed`` (folder_a: A, to drop layers)."""
    names = ("A: trained on python-docs (prose)", "B: trained on python-source (code)")
    prep, rows, parents = _draw(pair, evaluation, sizes, device, seed, names)
    keep = evenly(prep.net_a.config.num_layers, prep.net_b.config.num_layers)
    dropped = dropped_network(folder_a, keep, "A-dropped")
    dropped.module.to(prep.device)
    dropped_scores = score_domains(
        network_logits(dropped.module), pair.a.tokenizer, evaluation.data, prep.device
    )
    rows.append(
        score_row(
            f"baseline: A with layers {list(keep)} only (dropped to B's depth)",
            {d: s.to_dict() for d, s in dropped_scores.items()},
            **net_facts(dropped),
        )
    )
    rows.append(average_row(pair, prep, evaluation, parents))
    rows += merge_rows(pair, prep, evaluation, parents, "SMA")
    for mode, label in (("lma", "LMA"), ("lma_first", "LMA first"), ("lma_similar", "LMA similar")):
        rows += merge_rows(pair, realign(prep, mode), evaluation, parents, label)
    return rows


def smollm2_self_merge_measured(sizes: Sizes) -> dict[str, Any]:
    """Run ``smollm2_self_merge`` in a fresh Python process (its own peak RSS).

    Raises:
        RuntimeError: the measuring process failed (its last lines of error output).
    """
    options = {
        "calibration": sizes.calibration,
        "evaluation": sizes.smollm2_evaluation,
        "threads": sizes.threads or torch.get_num_threads(),
    }
    target = "heterogui.bench.decoder_pairs:self_merge_measurement"
    return in_fresh_process(target, options, "the SmolLM2 self-merge")


def smollm2_shallow_table(sizes: Sizes, device: str = "cpu", seeds: int = 1) -> dict[str, Any]:
    """Return SmolLM2 + a shallower copy of itself (module docstring, item 3).

    The copy drops the middle SHALLOW_DROP layers; a copy with every other layer dropped is
    scored too (not merged: it is no language model any more). seeds: calibration draws (seeds
    0 .. seeds-1; the models and the evaluation texts stay); the rows are their means with the
    spread (``bench.seeds``).
    """
    start = time.perf_counter()
    loaded = registry.load(SMOLLM2, device=device)
    depth = loaded.net.config.num_layers
    evaluation_ref = DataRef(ALL_DOMAINS, "test", sizes.smollm2_evaluation, BATCH)
    every_other = tuple(range(0, depth, 2))
    broken = dropped_network(loaded.folder, every_other, "SmolLM2 every other layer")
    evaluation = LANGUAGE.evaluation(evaluation_ref, Pair(loaded, loaded))
    broken_scores = score_domains(
        network_logits(broken.module.to(device)), loaded.tokenizer, evaluation.data, device
    )
    info = score_row(
        f"not merged: SmolLM2 layers {layer_list(every_other, depth)}",
        {d: s.to_dict() for d, s in broken_scores.items()},
        **net_facts(broken),
    )
    del broken
    pair = smollm2_shallow_pair(device, loaded)
    keep = middle_block(depth, SHALLOW_DROP)
    draw = lambda seed: _shallow_rows(pair, keep, evaluation, info, sizes, device, seed)  # noqa: E731
    return {
        "rows": over_seeds(draw, range(seeds)),
        "seeds": seeds,
        "kept_layers": list(keep),
        "depth": depth,
        "calibration_texts": sizes.calibration,
        "evaluation_texts_per_domain": sizes.smollm2_evaluation,
        "seconds": round(time.perf_counter() - start, 1),
    }


def _shallow_rows(
    pair: Pair,
    keep: tuple[int, ...],
    evaluation: Any,
    info: Row,
    sizes: Sizes,
    device: str,
    seed: int,
) -> list[Row]:
    """Return the SmolLM2 shallow pair's rows on calibration draw ``seed``."""
    ref = DataRef(ALL_DOMAINS, "calibration", sizes.calibration, BATCH, seed=seed)
    prep = run.analyse(pair, run.calibrate(pair, ref), device=device)
    rows, parents = model_rows(pair, prep, evaluation, ("A: SmolLM2", f"B: {pair.b.name}"))
    rows.append(info)
    rows.append(average_row(pair, prep, evaluation, parents))
    rows += merge_rows(pair, prep, evaluation, parents, "SMA")
    origins = {"a": [list(range(pair.a.net.config.num_layers))], "b": [list(keep)]}
    prep = realign(prep, "manual", origins)  # the SMA statistics are freed
    rows += merge_rows(pair, prep, evaluation, parents, "manual (B's layers at their origins)")
    return rows


# ---------------------------------------------------------------- report


def command_line(args: argparse.Namespace) -> str:
    """Return the ``heterogui bench decoders`` command line that ``args`` stand for."""
    parts = ["heterogui bench decoders"]
    if args.threads:
        parts.append(f"--threads {args.threads}")
    parts += [
        f"--calibration {args.calibration}",
        f"--evaluation {args.evaluation}",
        f"--smollm2-evaluation {args.smollm2_evaluation}",
    ]
    if args.skip_smollm2:
        parts.append("--skip-smollm2")
    if args.skip_pair:
        parts.append("--skip-pair")
    if args.skip_gpt2:
        parts.append("--skip-gpt2")
    if args.seeds > 1:
        parts.append(f"--seeds {args.seeds}")
    if args.out_md:
        parts.append(f"--out-md {args.out_md}")
    if args.out_json:
        parts.append(f"--out-json {args.out_json}")
    return " ".join(parts)


def _timed(name: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    start = time.perf_counter()
    out = fn()
    log.info("%s took %.1f s", name, time.perf_counter() - start)
    return out


def decoder_report(args: argparse.Namespace) -> dict[str, Any]:
    """Run the benchmark as ``heterogui bench decoders`` asks; return the report."""
    start = time.perf_counter()
    sizes = Sizes(args.calibration, args.evaluation, args.smollm2_evaluation, args.threads)
    dev = "cpu"
    report: dict[str, Any] = {
        "command": command_line(args),
        "environment": {
            **environment(dev),
            "transformers": metadata.version("transformers"),
            "cpus": os.cpu_count(),
        },
        "sizes": dataclasses.asdict(sizes),
        "smollm2_note": SMOLLM2_NOTE,
    }
    if not args.skip_pair:
        report["pair"] = _timed("trained pair", lambda: pair_table(sizes, dev, args.seeds))
    if not args.skip_gpt2:
        report["gpt2"] = _timed("GPT-2 pair", lambda: gpt2_table(sizes, dev, args.seeds))
    if not args.skip_smollm2:
        report["smollm2_self"] = _timed(
            "SmolLM2 self-merge", lambda: smollm2_self_merge_measured(sizes)
        )
        report["smollm2_shallow"] = _timed(
            "SmolLM2 shallow", lambda: smollm2_shallow_table(sizes, dev, args.seeds)
        )
    report["seconds"] = round(time.perf_counter() - start, 1)
    return report


def run_decoders(args: argparse.Namespace) -> str:
    """Run the benchmark, write the files asked for, and return the markdown."""
    report = decoder_report(args)
    markdown = render_markdown(report)
    if args.out_json:
        write_document(args.out_json, json.dumps(finite(report), indent=1, allow_nan=False) + "\n")
    if args.out_md:
        write_document(args.out_md, markdown)
    return markdown
