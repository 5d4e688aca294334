"""Aggregates, checks and the markdown of the quality benchmark (``bench.quality``).

Pure functions over the JSON-ready dicts that ``bench.quality`` measures: nothing here runs a
model, and every number written comes from those dicts.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
from pathlib import Path
from typing import Any

import torch

from heterogui.bench.documents import finite, write_document
from heterogui.zoo.registry import ZOO_VERSION

METRICS = ("joint", "task_a", "task_b", "avg")
SECTIONS = ("rows", "rho", "knobs", "bn_kept", "calibration")
MERGE_PREFIXES = ("zip", "weight average", "permute")
TOLERANCE = 0.01  # the heterogeneous zip should be within 1 point of the homogeneous zip
ENSEMBLE_SHARE = 0.95  # the best merge should keep 95% of the ensemble's Joint accuracy
LEAST_SQUARES = ", least squares"  # the label suffix of least-squares fusion rows
SEQUENTIAL = ", sequential least squares"  # the label suffix of sequential least-squares rows
HEADS_REFIT = ", least squares, heads refit"  # least squares, then the heads' unmerge refit
RENORMALIZED = ", renormalized"  # the label suffix of renormalized rows
HEADS_KEPT = "heads kept ("  # the label prefix of the rows that keep every attention head
STREAM_KEPT = "stream kept ("  # ... that keep a transformer's residual stream unmerged
MLPS_KEPT = "MLPs kept ("  # ... that keep its MLPs' hidden features unmerged
KEPT = (HEADS_KEPT, STREAM_KEPT, MLPS_KEPT)  # the rows wider than the paper's width
HEADS_SELECTED = ", heads selected"  # the label suffix of rows that select heads (zip.select)
HEADS_SEARCHED = ", heads searched"  # the label suffix of rows that search heads (head_search)
HEADS_SPLIT = ", heads split"  # the label suffix of rows that split heads (fusion.split_heads)
BN_UNITS = ", BatchNorm units"  # the paper's fusion in BatchNorm units (fusion.bn_units)
AS_TRAINED = ", without BatchNorm units"  # least squares on the rows as trained
# the paper's fusion: the benchmarks' plain rows name it, as the default ("auto") is per family;
# the same for the heads: rows pair them unless their label says otherwise
PAPER = "average"
PAIRED = {"heads": "pair"}
PAPER_KNOBS = {"fusion": PAPER, "bn_units": False, **PAIRED}  # the paper's fusion and heads
SEQUENTIAL_KNOBS = {"fusion": "least_squares_sequential", **PAIRED}  # the best fusion, paired heads
# A zipped with the homogeneous B padded to a depth pair's depth (``quality_seed``): the label
PADDING_CONTROL = "padding control"


def fusion_knobs(fusion: str) -> dict[str, Any]:
    """Return the ZipSettings keywords of ``fusion``: the paper's on the weights as trained."""
    return dict(PAPER_KNOBS) if fusion == PAPER else {"fusion": fusion, **PAIRED}


# (ZipSettings keywords, row label suffix): the paper's fusion, least-squares fusion
# (fusion.regression; in BatchNorm units, the default, and without), fusion in BatchNorm units
# (fusion.bn_units), renormalization after the paper's fusion (fusion.renormalize) and the ways
# attention heads merge (zip.heads: select, search, split)
VARIANTS = (
    (PAPER_KNOBS, ""),
    ({"fusion": "least_squares", **PAIRED}, LEAST_SQUARES),
    ({"fusion": "least_squares_heads", **PAIRED}, HEADS_REFIT),
    (SEQUENTIAL_KNOBS, SEQUENTIAL),
    ({"fusion": PAPER, "bn_units": True, **PAIRED}, BN_UNITS),
    ({"fusion": "least_squares", "bn_units": False, **PAIRED}, LEAST_SQUARES + AS_TRAINED),
    ({"fusion": "least_squares_sequential", "bn_units": False, **PAIRED}, SEQUENTIAL + AS_TRAINED),
    ({"fusion": PAPER, "renormalize": True, **PAIRED}, RENORMALIZED),
    ({"fusion": PAPER, "heads": "select"}, HEADS_SELECTED),
    ({"fusion": "least_squares", "heads": "select"}, LEAST_SQUARES + HEADS_SELECTED),
    ({"fusion": "least_squares_sequential", "heads": "select"}, SEQUENTIAL + HEADS_SELECTED),
    ({"fusion": "least_squares_sequential", "heads": "search"}, SEQUENTIAL + HEADS_SEARCHED),
    ({"fusion": PAPER, "heads": "split"}, HEADS_SPLIT),
    ({"fusion": "least_squares", "heads": "split"}, LEAST_SQUARES + HEADS_SPLIT),
    ({"fusion": "least_squares_sequential", "heads": "split"}, SEQUENTIAL + HEADS_SPLIT),
)


def transformer_variants(mode: str, heads_split: bool = True) -> list[tuple[dict[str, Any], str]]:
    """Return the variants the transformer benches run under alignment ``mode``.

    The sequential refit takes about 40 s a MiniLM merge: the two learned alignments only. No
    head search: it merges once per head pair and sweep (about 70 MiniLM merges a sweep).
    heads_split: include the rows that split heads (families whose heads split: BERT, ViT).
    """
    learned = mode.lower() in ("sma", "lma")
    return [
        (k, s)
        for k, s in VARIANTS
        if (not s.startswith(SEQUENTIAL) or learned)
        and k.get("heads") != "search"
        and (heads_split or k.get("heads") != "split")
        and not batch_norm_variant(s)
    ]


def batch_norm_variant(suffix: str) -> bool:
    """Return whether the variant of ``suffix`` differs from another only with BatchNorm."""
    return suffix in (BN_UNITS, LEAST_SQUARES + AS_TRAINED, SEQUENTIAL + AS_TRAINED)


VARIANT_NAMES = {
    "": "average",
    LEAST_SQUARES: "least squares",
    SEQUENTIAL: "sequential least squares",
    BN_UNITS: "average in BatchNorm units",
    LEAST_SQUARES + AS_TRAINED: "least squares, without BatchNorm units",
    SEQUENTIAL + AS_TRAINED: "sequential least squares, without BatchNorm units",
    RENORMALIZED: "renormalized",
    HEADS_SELECTED: "heads selected",
    LEAST_SQUARES + HEADS_SELECTED: "least squares, heads selected",
    SEQUENTIAL + HEADS_SELECTED: "sequential least squares, heads selected",
    SEQUENTIAL + HEADS_SEARCHED: "sequential least squares, heads searched",
    HEADS_SPLIT: "heads split",
    LEAST_SQUARES + HEADS_SPLIT: "least squares, heads split",
    SEQUENTIAL + HEADS_SPLIT: "sequential least squares, heads split",
    HEADS_REFIT: "least squares, heads refit",
}
LEARNED = ("SMA", "LMA", "LMA first", "LMA similar")  # the alignments that read the CKA
PLACEMENTS = ("LMA", "LMA first", "LMA similar")  # where LMA puts a block in its segment
PLACE_WORDS = ("last", "first", "most similar")


def stats(values: list[Any]) -> dict[str, Any]:
    """Return mean, sample std (0 for one value) and the values; None when any is None."""
    if any(v is None for v in values) or not values:
        return {"mean": None, "std": None, "values": values}
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": mean, "std": std, "values": values}


def _aggregate_entries(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """Aggregate one row over seeds: numbers become stats, other fields keep one per seed."""
    out: dict[str, Any] = {}
    for key in entries[0]:
        values = [e.get(key) for e in entries]
        numeric = all(v is None or isinstance(v, int | float) for v in values)
        out[key] = stats(values) if numeric else {"values": values}
    return out


def aggregate(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Return every section of the per-seed runs aggregated label by label."""
    out: dict[str, Any] = {}
    for section in SECTIONS:
        labels = list(runs[0][section])
        out[section] = {
            label: _aggregate_entries([run[section][label] for run in runs]) for label in labels
        }
    return out


def attach_references(results: dict[str, Any]) -> None:
    """Add each heterogeneous pair's "homogeneous zip" rows: its reference pair's SMA zips."""
    for result in results.values():
        ref = result.get("reference")
        if ref in results:
            for suffix in VARIANT_NAMES:
                if f"zip (SMA{suffix})" not in results[ref]["rows"]:
                    continue
                row = dict(results[ref]["rows"][f"zip (SMA{suffix})"])
                row["source"] = {"values": [ref]}
                label = f"homogeneous zip ({ref}{suffix})"
                result["rows"][label] = row


def mean(row: dict[str, Any] | None, key: str = "joint") -> float | None:
    """Return the mean of ``key`` in an aggregated row (None when absent)."""
    return None if row is None else row.get(key, {}).get("mean")


def variant_of(label: str) -> str:
    """Return the variant suffix of a zip row label ("zip (LMA first, least squares)": ", least
    squares"; "" for the paper's fusion)."""
    _, comma, rest = label[label.index("(") + 1 : -1].partition(", ")
    return comma + rest


def _zip_rows(rows: dict[str, Any], variant: str | None = None) -> dict[str, Any]:
    """Return the zip rows (of one variant, by its label suffix, when given)."""
    return {
        k: v
        for k, v in rows.items()
        if k.startswith("zip (") and (variant is None or variant_of(k) == variant)
    }


def best_zip(rows: dict[str, Any], variant: str | None = None) -> tuple[str | None, float | None]:
    """Return the label and Joint of the best zip row (of a variant); (None, None) if none."""
    zips = _zip_rows(rows, variant)
    if not zips:
        return None, None
    label = max(zips, key=lambda k: mean(zips[k]))
    return label, mean(zips[label])


def ensemble_joint(rows: dict[str, Any]) -> float:
    """Return the better ensemble's Joint (as trained or BN re-estimated)."""
    return max(mean(rows["ensemble"]), mean(rows["ensemble (BN re-estimated)"]))


def _check(name: str, pair: str, passed: bool, detail: str) -> dict[str, Any]:
    return {"check": name, "pair": pair, "passed": bool(passed), "detail": detail}


def pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}"


def _pair_checks(pair: str, result: dict[str, Any], results: dict[str, Any]) -> list[dict]:
    """Return the checks of one pair (see ``checks``)."""
    rows, out = result["rows"], []
    best_label, best = best_zip(rows)
    out.extend(_homogeneous_checks(pair, result, results, best_label, best))
    for label in ("permute", "weight average"):
        if label in rows:
            other = mean(rows[label])
            out.append(
                _check(
                    f"zip above {label} (Joint)",
                    pair,
                    best > other,
                    f"{best_label} {pct(best)} vs {label} {pct(other)}",
                )
            )
    ensemble = ensemble_joint(rows)
    merges = {k: mean(v) for k, v in rows.items() if k.startswith(MERGE_PREFIXES)}
    top = max(merges, key=merges.get)
    out.append(
        _check(
            "ensemble at or above every merge (Joint)",
            pair,
            ensemble >= merges[top],
            f"ensemble {pct(ensemble)} vs best merge {top} {pct(merges[top])}",
        )
    )
    out.append(
        _check(
            "best zip at least 95% of the ensemble (Joint)",
            pair,
            best >= ENSEMBLE_SHARE * ensemble,
            f"{best_label} {pct(best)} = {best / ensemble:.3f} of the ensemble {pct(ensemble)}",
        )
    )
    if not result.get("layer_norm"):  # a LayerNorm over [x_A ; x_B] is not two LayerNorms
        out.append(_rho0_check(pair, result))
    if result.get("depths_differ"):
        out.append(_placement_check(pair, rows))
    return out


def _homogeneous_checks(
    pair: str,
    result: dict[str, Any],
    results: dict[str, Any],
    best_label: str | None,
    best: float | None,
) -> list[dict[str, Any]]:
    """Return the check against the reference pair's best zip (none without its results)."""
    ref = result.get("reference")
    if ref not in results:
        return []
    rows, homo_rows = result["rows"], results[ref]["rows"]
    homo_label, homo = best_zip(homo_rows)
    # the pairs' ensembles differ too (B differs): what each merge loses against its own
    # ensemble, and each task's own head (Joint also weighs the two heads against each other)
    ens, homo_ens = ensemble_joint(rows), ensemble_joint(homo_rows)
    shares = (
        f"{best / ens:.3f} vs {homo / homo_ens:.3f} of their ensembles, "
        f"ensemble minus merge {100 * (ens - best):.1f} vs {100 * (homo_ens - homo):.1f} points; "
        f"Avg of Task A and Task B {pct(mean(rows[best_label], 'avg'))} vs "
        f"{pct(mean(homo_rows[homo_label], 'avg'))}"
    )
    out = [
        _check(
            "best heterogeneous zip within 1 point of the best homogeneous zip (Joint)",
            pair,
            best >= homo - TOLERANCE,
            f"{best_label} {pct(best)} vs {ref} {homo_label} {pct(homo)}: "
            f"{100 * (best - homo):+.1f} points ({shares})",
        )
    ]
    control = mean(rows.get(PADDING_CONTROL + SEQUENTIAL))
    same = mean(homo_rows.get(f"zip (SMA{SEQUENTIAL})"))
    if control is not None and same is not None:  # the depth merge with the homogeneous B
        out.append(
            _check(
                "padding control within 1 point of the homogeneous zip, both sequential least "
                "squares (Joint; the same B: the cost of the depth merge itself)",
                pair,
                control >= same - TOLERANCE,
                f"{PADDING_CONTROL}{SEQUENTIAL} {pct(control)} vs {ref} zip (SMA{SEQUENTIAL}) "
                f"{pct(same)}: {100 * (control - same):+.1f} points",
            )
        )
    return out


def _placement_check(pair: str, rows: dict[str, Any]) -> dict[str, Any]:
    """Return the check that a learned placement is at least as good as a fixed one."""
    learned = max(mean(rows.get(f"zip ({m})")) or 0.0 for m in LEARNED)
    fixed = max(mean(rows.get(f"zip ({m})")) or 0.0 for m in ("uniform", "head"))
    return _check(
        "SMA or LMA (any placement) at least as good as uniform/head (Joint)",
        pair,
        learned >= fixed,
        f"best of SMA/LMA {pct(learned)} vs best of uniform/head {pct(fixed)}",
    )


def _rho0_check(pair: str, result: dict[str, Any]) -> dict[str, Any]:
    """rho = 0 must equal the ensemble of the BN-re-estimated A and B, seed by seed."""
    rho0, ens = result["rho"]["0.0"], result["rows"]["ensemble (BN re-estimated)"]
    same = all(rho0[k]["values"] == ens[k]["values"] for k in METRICS)
    gap = max(rho0["max_logit_gap"]["values"])
    return _check(
        "rho = 0 equals the ensemble (BN re-estimated)",
        pair,
        same and gap < 1e-3,
        f"Joint {pct(mean(rho0))} vs {pct(mean(ens))}; max |logit gap| {gap:.2e}",
    )


def checks(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Return the protocol's expectations, checked on the aggregated results of every pair.

    Heterogeneous zip (best alignment) within 1 point of the homogeneous zip (and the padding
    control within 1 point of it); zip above permute
    and weight average; the ensemble at or above every merge; rho = 0 equal to the ensemble of
    the BN-re-estimated models; SMA or LMA at least as good as uniform/head.
    """
    attach_references(results)
    return [c for pair, r in results.items() for c in _pair_checks(pair, r, results)]


def write_outputs(report: dict[str, Any], markdown: str, out_dir: str | Path) -> None:
    """Write quality.json and quality.md into ``out_dir`` (each atomically)."""
    out = Path(out_dir)
    write_document(
        out / "quality.json", json.dumps(finite(report), indent=1, allow_nan=False) + "\n"
    )
    write_document(out / "quality.md", markdown)


def python_command(pairs: Any, seeds: Any, out_dir: Any, tiny: bool) -> str:
    """Return the Python call that ``run_quality`` stands for (for the report's header)."""
    args = f"pairs={list(pairs) if pairs else None}, seeds={tuple(seeds)}, out_dir={out_dir!r}"
    return f"python -c 'from heterogui.bench.quality import run_quality; run_quality({args}" + (
        ", tiny=True)'" if tiny else ")'"
    )


def environment(device: str) -> dict[str, Any]:
    """Return the versions, threads, device, CPU kernels and zoo version a run used."""
    return {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),  # ATen's kernels here
        "threads": torch.get_num_threads(),
        "device": device,
        "zoo_version": ZOO_VERSION,  # the zoo's models (version 4 on: the same on every machine)
    }


def command_line(args: argparse.Namespace) -> str:
    """Return the ``heterogui bench quality`` command line that ``args`` stand for."""
    parts = ["heterogui bench quality"]
    if args.tiny:
        parts.append("--tiny")
    if args.pairs:
        parts.append("--pairs " + " ".join(args.pairs))
    parts += [f"--seeds {args.seeds}", f"--out {args.out}"]
    if args.threads:
        parts.append(f"--threads {args.threads}")
    return " ".join(parts)
