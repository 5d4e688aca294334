"""Which CKA places the layers better: block outputs or block updates (docs/measures.md).

    heterogui bench measures --threads 1 --out docs

For every pair whose depths differ, SMA and LMA align the layers by the CKA of the blocks'
outputs (the paper's measure) and by that of their updates (what each block adds to its input,
``align.similarity``); each alignment is merged at rho 1 with the family's default fusion,
heads paired (``MEASURED_HEADS``), and scored on the pair's own metric:

- the zoo's depth pairs (ResNet, VGG, MNIST-1D ResNet, ViT), Joint accuracy, seeds 0-2 (seed s:
  training variant s and calibration draw s, as in docs/quality.md);
- MiniLM-L6 + MiniLM-L3, STS Spearman, calibration draws 0-2 (as in docs/transformers.md);
- the trained decoder pair, perplexity of prose and code, calibration draws 0-2;
- SmolLM2-135M + its copy without the 6 middle layers, perplexity, calibration draws (the true
  placement, B's layers at the layers they were copied from, is scored for reference).
"""

from __future__ import annotations

import json
import math
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from heterogui import run
from heterogui.align.similarity import MEASURES
from heterogui.bench.decoder_pairs import middle_block, smollm2_shallow_pair
from heterogui.bench.documents import finite, write_document
from heterogui.bench.quality_seed import calibration_batches
from heterogui.bench.transformers import minilm_pair
from heterogui.config import DataRef
from heterogui.datasets.images import load_split, task_subset
from heterogui.datasets.refs import tokenize
from heterogui.datasets.sentence_pairs import load_pairs
from heterogui.datasets.text_tasks import calibration_sentences
from heterogui.pipeline import Prepared, ZipSettings, prepare, realign, with_measure, zip_prepared
from heterogui.tasks import sentences as sts
from heterogui.tasks.classification import evaluate_merged
from heterogui.tasks.language import ALL_DOMAINS, BATCH, LANGUAGE, merged_logits, score_domains
from heterogui.zoo.decoder_training import decoder_pair_folders
from heterogui.zoo.pairs import load_pair
from heterogui.zoo.registry import variant_name

MODES = ("sma", "lma")
# the heads of every merge here, as docs/measures.md was measured: pairs compare alignments
MEASURED_HEADS = "pair"
ZOO_PAIRS = (
    "digits-resnet-depth",
    "digits-resnet-depth-width",
    "digits-vgg-depth",
    "mnist1d-resnet-depth",
    "digits-vit-depth-width",
)
# score(result) -> (value, {metric: value}); higher is better unless the pair says otherwise
Scorer = Callable[[Any], tuple[float, dict[str, float]]]


def _compare(prep: Prepared, score: Scorer) -> dict[str, dict[str, Any]]:
    """Return {"MODE|MEASURE": {slots, score, metrics}} for SMA and LMA under both measures."""
    out = {}
    for measure in MEASURES:
        measured = with_measure(prep, measure)
        for mode in MODES:
            aligned = realign(measured, mode)
            value, metrics = score(
                zip_prepared(aligned, ZipSettings(rho=1.0, heads=MEASURED_HEADS))
            )
            al = aligned.alignment
            out[f"{mode}|{measure}"] = {  # the shallower model's slots, stage by stage
                "slots": [
                    list(min(a, b, key=len))
                    for a, b in zip(al.positions_a, al.positions_b, strict=True)
                ],
                "score": value,
                "metrics": metrics,
            }
    return out


def zoo_draws(name: str, seeds: range) -> list[dict[str, Any]]:
    """Return ``_compare`` of a zoo depth pair on each seed (Joint accuracy, %)."""

    draws = []
    for seed in seeds:
        zoo = load_pair(variant_name(name, seed), "cpu")
        test = task_subset(load_split(zoo.dataset, "test", 0), (*zoo.classes_a, *zoo.classes_b))
        prep = prepare(zoo.net_a, zoo.net_b, calibration_batches(zoo.dataset, 200, seed, 50))

        def joint(result, test=test, prep=prep):
            m = evaluate_merged(result.model, test, result.spec.heads, 256, prep.device)
            return 100 * m.joint, {"joint": 100 * m.joint}

        draws.append(_compare(prep, joint))
    return draws


def minilm_draws(seeds: range) -> list[dict[str, Any]]:
    """Return ``_compare`` of MiniLM-L6 + MiniLM-L3 on each calibration draw (STS Spearman)."""

    pairs = load_pairs()
    a, b, tok = minilm_pair("cpu")

    def spearman(result):
        value = sts.sts_spearman(sts.merged_embedder(result.model), tok, pairs, "cpu")
        return value, {"spearman": value}

    return [
        _compare(prepare(a, b, tokenize(tok, calibration_sentences(256, seed), 32)), spearman)
        for seed in seeds
    ]


def _perplexity(pair, evaluation) -> Scorer:
    """Return a scorer of merged decoders: the geometric mean of the domains' perplexities."""

    def score(result):
        scores = score_domains(
            merged_logits(result.model), pair.a.tokenizer, evaluation.data, "cpu"
        )
        metrics = {f"{d} ppl": s.perplexity for d, s in scores.items()}
        return math.exp(statistics.fmean(math.log(v) for v in metrics.values())), metrics

    return score


def decoder_draws(seeds: range, smollm2: bool, evaluation_texts: int) -> list[dict[str, Any]]:
    """Return ``_compare`` of a decoder pair on each calibration draw (32 texts).

    smollm2: SmolLM2 + its copy without the middle layers (with the true placement's score
    under "true|outputs"), else the trained pair.
    """

    if smollm2:
        pair = smollm2_shallow_pair("cpu")
    else:
        pair = run.load_pair(*(str(f) for f in decoder_pair_folders()))
    evaluation = LANGUAGE.evaluation(DataRef(ALL_DOMAINS, "test", evaluation_texts, BATCH), pair)
    score = _perplexity(pair, evaluation)
    draws = []
    for seed in seeds:
        ref = DataRef(ALL_DOMAINS, "calibration", 32, BATCH, seed=seed)
        prep = run.analyse(pair, run.calibrate(pair, ref), measure="outputs")
        draw = _compare(prep, score)
        if smollm2:
            depth = pair.a.net.config.num_layers
            origins = {"a": [list(range(depth))], "b": [list(middle_block(depth, 6))]}
            true = realign(prep, "manual", origins)
            value, metrics = score(zip_prepared(true, ZipSettings(rho=1.0, heads=MEASURED_HEADS)))
            draw["true|outputs"] = {"slots": origins["b"], "score": value, "metrics": metrics}
        draws.append(draw)
    return draws


def summarise(draws: list[dict[str, Any]], higher: bool) -> dict[str, Any]:
    """Return each alignment's mean score over the draws, its slots per draw, and the change."""
    keys = list(draws[0])
    rows = {}
    for key in keys:
        values = [d[key]["score"] for d in draws]
        metrics = {
            m: statistics.fmean(d[key]["metrics"][m] for d in draws)
            for m in draws[0][key]["metrics"]
        }
        rows[key] = {
            "score": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "slots": [d[key]["slots"] for d in draws],
            "metrics": metrics,
        }
    for mode in MODES:
        old, new = rows[f"{mode}|outputs"]["score"], rows[f"{mode}|updates"]["score"]
        rows[f"{mode}|updates"]["better"] = new > old if higher else new < old
        rows[f"{mode}|updates"]["same"] = math.isclose(new, old, rel_tol=1e-9)
    return {"higher_is_better": higher, "draws": len(draws), "rows": rows}


def run_measures(
    seeds: int = 3, smollm2_draws: int = 1, evaluation: int = 48, smollm2_evaluation: int = 8
) -> dict[str, Any]:
    """Run every pair; return the report (pairs in order, with their summaries)."""
    start = time.perf_counter()
    report: dict[str, Any] = {"pairs": {}, "threads": torch.get_num_threads()}
    for name in ZOO_PAIRS:
        report["pairs"][name] = summarise(zoo_draws(name, range(seeds)), higher=True)
    report["pairs"]["minilm-l6-l3"] = summarise(minilm_draws(range(seeds)), higher=True)
    report["pairs"]["decoder-pair"] = summarise(
        decoder_draws(range(seeds), False, evaluation), higher=False
    )
    if smollm2_draws:
        report["pairs"]["smollm2-without-6-middle-layers"] = summarise(
            decoder_draws(range(smollm2_draws), True, smollm2_evaluation), higher=False
        )
    report["seconds"] = round(time.perf_counter() - start, 1)
    return report


METRIC = {True: "higher is better", False: "lower is better"}


def render(report: dict[str, Any], command: str) -> str:
    """Return docs/measures.md from a report."""
    lines = [
        "# Aligning by block outputs or by block updates",
        "",
        f"Command: `{command}` ({report['seconds']:.0f} s, {report['threads']} torch thread(s)).",
        "",
        "SMA and LMA place the shallower model's layers by CKA. The paper compares the blocks' "
        "outputs; heterogui can compare their *updates* instead: what each block adds to its "
        "input (its output minus the previous block's where the shapes agree). Each alignment "
        "is merged at rho 1 with the family's default fusion, heads paired (`zip.heads: pair`, "
        "a ViT's default is split), and scored on the pair's metric "
        "(zoo: Joint accuracy, %; MiniLM: STS Spearman; decoders: the geometric mean of the "
        "prose and code perplexities, lower is better). Means over the draws; `slots`: the "
        "shallower model's slots per draw.",
        "",
        "| pair | alignment | slots, outputs | outputs | slots, updates | updates | change |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, pair in report["pairs"].items():
        rows = pair["rows"]
        for mode in MODES:
            old, new = rows[f"{mode}|outputs"], rows[f"{mode}|updates"]
            change = "same" if new["same"] else ("better" if new["better"] else "worse")
            lines.append(
                f"| {name} | {mode.upper()} | {_slots(old)} | {_value(old)} | {_slots(new)} | "
                f"{_value(new)} | {change} |"
            )
        if "true|outputs" in rows:
            true = rows["true|outputs"]
            lines.append(f"| {name} | true placement | {_slots(true)} | {_value(true)} | | | |")
    lines += ["", *_tally(report), "", "Per-metric means (decoders: both domains):", ""]
    for name, pair in report["pairs"].items():
        parts = [
            f"{key.replace('|', ' ')}: "
            + ", ".join(f"{m} {v:.4g}" for m, v in row["metrics"].items())
            for key, row in pair["rows"].items()
        ]
        lines.append(f"- {name} ({METRIC[pair['higher_is_better']]}): " + "; ".join(parts))
    return "\n".join(lines) + "\n"


def _tally(report: dict[str, Any]) -> list[str]:
    """Return one line per group of pairs: how often the updates aligned better or worse."""
    groups = {"zoo": list(ZOO_PAIRS), "MiniLM": ["minilm-l6-l3"]}
    groups["decoders"] = [n for n in report["pairs"] if n not in ZOO_PAIRS + ("minilm-l6-l3",)]
    lines = []
    for group, names in groups.items():
        rows = [
            report["pairs"][n]["rows"][f"{mode}|updates"]
            for n in names
            if n in report["pairs"]
            for mode in MODES
        ]
        better = sum(r["better"] and not r["same"] for r in rows)
        same = sum(r["same"] for r in rows)
        lines.append(
            f"- {group}: updates align better on {better}, the same on {same}, worse on "
            f"{len(rows) - better - same} of {len(rows)} alignments (SMA and LMA per pair)"
        )
    return lines


def _slots(row: dict[str, Any]) -> str:
    per_draw = [" ".join(",".join(map(str, stage)) for stage in slots) for slots in row["slots"]]
    return " / ".join(per_draw) if len(set(per_draw)) > 1 else per_draw[0]


def _value(row: dict[str, Any]) -> str:
    return f"{row['score']:.4g}" + (f" ± {row['std']:.2g}" if row["std"] else "")


def write(report: dict[str, Any], out: str | Path, command: str) -> str:
    """Write measures.md and measures.json into ``out``; return the markdown."""
    markdown = render(report, command)
    folder = Path(out)
    write_document(folder / "measures.md", markdown)
    payload = {"command": command, **finite(report)}
    write_document(folder / "measures.json", json.dumps(payload, indent=1) + "\n")
    return markdown
