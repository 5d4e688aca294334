"""N-way benchmark: three models merged at once, one after another, and their ensemble.

Written to docs/nway.{md,json} by ``heterogui bench nway``. For every zoo group (three models
on three disjoint tasks of digits: 4, 3 and 3 classes) and every seed, it scores each model
alone, the ensemble of all three, the N-way zip (``heterogui.nway``: all three at once, with
the paper's fusion, least squares and its sequential refit, both in BatchNorm units as by
default: ``fusion.bn_units``) and sequential merging (two
models, then the merge, held as one network, with the third: both orders, with the same
fusions), all at rho = 1 (the merged widths are one model's). The protocol is docs/method.md
sec. 11 with three tasks: Joint accuracy is the argmax over every head's softmax on the test
inputs of all tasks.

Seed s uses training variant s of the group (model k trained with seed k + 3s) and draws the
calibration inputs with seed s. Every number in the written files comes from this run.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from heterogui.bench.documents import finite, write_document
from heterogui.bench.quality_report import environment, fusion_knobs, stats
from heterogui.bench.quality_seed import calibration_batches, parameter_count
from heterogui.datasets.images import Split, load_split, task_subset
from heterogui.fusion.merged import as_network
from heterogui.models.family import Head, Network
from heterogui.nway import prepare_group, zip_group_prepared
from heterogui.pipeline import ZipSettings, merge_networks, prepare, zip_prepared
from heterogui.tasks.classification import Metrics, collect_outputs, score_outputs
from heterogui.zoo.pairs import load_group, pair_spec, variant_name

GROUPS = ("digits-resnet-trio", "digits-resnet-trio-homogeneous")
FUSION_LABEL = {
    "average": "paper's fusion",
    "least_squares": "least squares",
    "least_squares_heads": "least squares, heads refit",
    "least_squares_sequential": "sequential least squares",
}


# the two orders of sequential merging: (first, second, third) model indices
ORDERS = {"(A+B)+C": (0, 1, 2), "(C+B)+A": (2, 1, 0)}


@dataclass(frozen=True)
class NwayConfig:
    """What the benchmark runs (calibration inputs per seed, batch sizes, device)."""

    groups: tuple[str, ...] = GROUPS
    seeds: tuple[int, ...] = (0, 1, 2)
    calib_size: int = 200
    batch_size: int = 50
    eval_batch_size: int = 500
    device: str = "cpu"
    command: str = ""


def _score(
    outputs: Sequence[torch.Tensor],
    heads: Sequence[Sequence[Head]],
    test: Split,
    run: Sequence[bool] | None = None,
) -> Metrics:
    """Return the metrics of per-model ``outputs`` on ``test`` (run: which outputs count)."""
    if run is not None:
        outputs = [o if keep else None for o, keep in zip(outputs, run, strict=True)]
    return score_outputs(outputs, heads, test.labels)


def _collect(fn: Callable[[torch.Tensor], Any], test: Split, cfg: NwayConfig) -> list:
    """Return ``fn``'s outputs on the test inputs (one tensor per model)."""
    return collect_outputs(fn, test.inputs, cfg.eval_batch_size, cfg.device)


def _outputs(nets: Sequence[Network]) -> Callable[[torch.Tensor], tuple[torch.Tensor, ...]]:
    """Return a function running every model (eval mode) on a batch: one output per model."""
    return lambda x: tuple(net.module.eval()(x) for net in nets)


def _row(metrics: Metrics, params: int, seconds: float | None = None) -> dict[str, Any]:
    tasks = {f"task_{k}": acc for k, acc in enumerate(metrics.tasks)}
    return {
        "joint": metrics.joint,
        **tasks,
        "avg": metrics.avg,
        "params": params,
        "seconds": seconds,
    }


def _sequential(
    nets: Sequence[Network], order: tuple[int, ...], batches: list, cfg: NwayConfig
) -> dict[str, tuple[Any, Any, float]]:
    """Return per fusion (merged model, its heads, seconds): two models merged, then the third.

    The first pair is prepared once (its statistics do not depend on the fusion); the seconds
    of each fusion count that preparation, its zip and the second merge.
    """
    first, second, third = (nets[k] for k in order)
    start = time.perf_counter()
    prepared = prepare(first, second, batches, device=cfg.device)
    prepare_seconds = time.perf_counter() - start
    out = {}
    for fusion in FUSION_LABEL:
        start = time.perf_counter()
        settings = ZipSettings(rho=1.0, **fusion_knobs(fusion))
        both = as_network(zip_prepared(prepared, settings).model, "merge of two")
        result = merge_networks(both, third, batches, settings, device=cfg.device)
        seconds = prepare_seconds + time.perf_counter() - start
        out[fusion] = (result.model, result.spec.heads, seconds)
    return out


def run_seed(name: str, seed: int, cfg: NwayConfig) -> dict[str, dict[str, Any]]:
    """Return the rows of one group and seed: label -> Joint, per-task, Avg, params, seconds."""
    spec = pair_spec(variant_name(name, seed))
    nets = load_group(spec.name, cfg.device)
    batches = calibration_batches(spec.dataset, cfg.calib_size, seed, cfg.batch_size)
    classes = tuple(c for task in spec.classes() for c in task)
    test = task_subset(load_split(spec.dataset, "test", 0), classes)
    heads = [net.task_heads() for net in nets]

    outputs = _collect(_outputs(nets), test, cfg)  # each model once: alone and the ensemble
    rows: dict[str, dict[str, Any]] = {}
    for k, net in enumerate(nets):
        only = [m == k for m in range(len(nets))]
        rows["ABC"[k] + " alone"] = _row(
            _score(outputs, heads, test, only), parameter_count(net.module)
        )
    total = sum(parameter_count(net.module) for net in nets)
    rows["ensemble"] = _row(_score(outputs, heads, test), total)
    start = time.perf_counter()
    prepared = prepare_group(nets, batches, device=cfg.device)  # the same for every fusion
    prepare_seconds = time.perf_counter() - start
    ready = _collect(_outputs(prepared.nets), test, cfg)  # the models as the merge sees them
    rows["ensemble (BN re-estimated)"] = _row(_score(ready, heads, test), total)
    for fusion in FUSION_LABEL:
        start = time.perf_counter()
        result = zip_group_prepared(prepared, ZipSettings(rho=1.0, **fusion_knobs(fusion)))
        seconds = prepare_seconds + time.perf_counter() - start
        merged = _collect(result.model.eval(), test, cfg)
        rows[f"N-way zip, {FUSION_LABEL[fusion]}"] = _row(
            _score(merged, result.spec.heads, test), parameter_count(result.model), seconds
        )
    sequential = {label: _sequential(nets, order, batches, cfg) for label, order in ORDERS.items()}
    for fusion in FUSION_LABEL:
        for order_label, order in ORDERS.items():
            model, merged_heads, seconds = sequential[order_label][fusion]
            metrics = _score(_collect(model.eval(), test, cfg), merged_heads, test)
            label = f"sequential {order_label}, {FUSION_LABEL[fusion]}"
            rows[label] = _row(_reordered(metrics, order), parameter_count(model), seconds)
    return rows


def _reordered(metrics: Metrics, order: tuple[int, ...]) -> Metrics:
    """Return ``metrics`` with its per-task accuracies in the models' order (A, B, C)."""
    tasks = [None] * len(order)
    counts = [0] * len(order)
    for position, model in enumerate(order):
        tasks[model], counts[model] = metrics.tasks[position], metrics.counts[position]
    names = tuple(metrics.names[order.index(m)] for m in range(len(order)))
    return Metrics(metrics.joint, tuple(tasks), tuple(counts), names)


def run_nway(cfg: NwayConfig, out_dir: str | Path | None = None) -> dict[str, Any]:
    """Run every group and seed; write nway.json and nway.md into ``out_dir`` when given."""
    start = time.perf_counter()
    results: dict[str, Any] = {}
    for name in cfg.groups:
        runs = [run_seed(name, seed, cfg) for seed in cfg.seeds]
        results[name] = {
            "description": pair_spec(name).description,
            "classes": [list(c) for c in pair_spec(name).classes()],
            "rows": {
                label: {key: stats([run[label][key] for run in runs]) for key in runs[0][label]}
                for label in runs[0]
            },
        }
    report = {
        "command": cfg.command,
        "seeds": list(cfg.seeds),
        "calibration_inputs": cfg.calib_size,
        "environment": environment(cfg.device),
        "seconds": time.perf_counter() - start,
        "groups": results,
    }
    if out_dir is not None:
        out = Path(out_dir)
        write_document(out / "nway.json", json.dumps(finite(report), indent=1) + "\n")
        write_document(out / "nway.md", render_nway(report))
    return report


def _pct(entry: dict[str, Any]) -> str:
    if entry["mean"] is None:
        return "-"
    if len(entry["values"]) < 2:  # one seed: no spread to give
        return f"{100 * entry['mean']:.1f}"
    return f"{100 * entry['mean']:.1f} ± {100 * entry['std']:.1f}"


def render_nway(report: dict[str, Any]) -> str:
    """Return the markdown of a ``run_nway`` report (tables and computed findings)."""
    seeds = len(report["seeds"])
    lines = [
        "# Merging three models: N-way zip, sequential merges and the ensemble",
        "",
        f"Generated by `{report['command']}` ({seeds} seed(s), "
        f"{report['calibration_inputs']} calibration inputs, {report['environment']['threads']} "
        f"torch thread(s), {report['environment']['device']}; {report['seconds']:.0f} s). "
        "Joint: accuracy of the argmax over every head's softmax on the test inputs of all three "
        "tasks; Task A/B/C: each head on its own task's inputs; mean ± std over seeds (seed s: "
        "models trained with seeds 3s, 3s + 1, 3s + 2, calibration drawn with seed s). "
        "Share: Joint / the ensemble's Joint. All merges at rho = 1 (one model's widths).",
        "",
        "- **N-way zip**: all three models at once (`heterogui.nway`, docs/method.md sec. 12).",
        "- **sequential (X+Y)+Z**: X and Y merged, the merge held as one network with both "
        "heads, then merged with Z.",
        "- **ensemble (BN re-estimated)**: the three models with their BatchNorm statistics "
        "re-estimated on the calibration data, as every merge sees them (the plain ensemble "
        "keeps the training statistics; the share is against the plain ensemble).",
        "",
    ]
    for name, group in report["groups"].items():
        rows = group["rows"]
        ensemble = rows["ensemble"]["joint"]["mean"]
        tasks = ", ".join(f"{'ABC'[k]}: {c}" for k, c in enumerate(group["classes"]))
        lines += [
            f"## {name}",
            "",
            f"{group['description']}. Classes per task: {tasks}.",
            "",
            "| | Joint | Task A | Task B | Task C | Avg | share | params | seconds |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for label, row in rows.items():
            joint = row["joint"]["mean"]
            share = "-" if joint is None or not ensemble else f"{joint / ensemble:.3f}"
            seconds = row["seconds"]["mean"]
            lines.append(
                f"| {label} | {_pct(row['joint'])} | {_pct(row['task_0'])} | "
                f"{_pct(row['task_1'])} | {_pct(row['task_2'])} | {_pct(row['avg'])} | {share} | "
                f"{int(row['params']['mean']):,} | "
                f"{'-' if seconds is None else f'{seconds:.1f}'} |"
            )
        lines += ["", *findings(rows), ""]
    return "\n".join(lines)


def findings(rows: dict[str, Any]) -> list[str]:
    """Return computed sentences: the best N-way and sequential merge against each other."""

    def best(prefix: str) -> tuple[str, float]:
        found = [(k, v["joint"]["mean"]) for k, v in rows.items() if k.startswith(prefix)]
        return max(found, key=lambda item: item[1])

    ensemble = rows["ensemble"]["joint"]["mean"]
    nway, seq = best("N-way"), best("sequential")
    lines = [
        f"- Best N-way merge: {nway[0]} ({100 * nway[1]:.1f}, {nway[1] / ensemble:.3f} of the "
        "ensemble).",
        f"- Best sequential merge: {seq[0]} ({100 * seq[1]:.1f}, {seq[1] / ensemble:.3f} of the "
        "ensemble).",
    ]
    for fusion in FUSION_LABEL.values():
        at_once = rows[f"N-way zip, {fusion}"]["joint"]["mean"]
        seqs = [
            v["joint"]["mean"]
            for k, v in rows.items()
            if k.startswith("sequential (") and k.endswith(f", {fusion}")
        ]
        wins = sum(at_once > s for s in seqs)
        lines.append(
            f"- {fusion[0].upper()}{fusion[1:]}: N-way {100 * at_once:.1f} against sequential "
            f"{', '.join(f'{100 * s:.1f}' for s in seqs)} (the two orders): N-way better than "
            f"{wins} of {len(seqs)}."
        )
    return lines
