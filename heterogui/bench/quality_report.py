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
from heterogui.bench.quality_notes import (
    DEFAULT_NOTE,
    FUSION_NOTE,
    HEADS_NOTE,
    MEASURES_NOTE,
    NWAY_NOTE,
    PLACEMENT_NOTE,
    PROTOCOL,
)

METRICS = ("joint", "task_a", "task_b", "avg")
SECTIONS = ("rows", "rho", "knobs", "bn_kept", "calibration")
MERGE_PREFIXES = ("zip", "weight average", "permute")
TOLERANCE = 0.01  # the heterogeneous zip should be within 1 point of the homogeneous zip
ENSEMBLE_SHARE = 0.95  # the best merge should keep 95% of the ensemble's Joint accuracy
LEAST_SQUARES = ", least squares"  # the label suffix of least-squares fusion rows
SEQUENTIAL = ", sequential least squares"  # the label suffix of sequential least-squares rows
RENORMALIZED = ", renormalized"  # the label suffix of renormalized rows
HEADS_KEPT = "heads kept ("  # the label prefix of the rows that keep every attention head
HEADS_SELECTED = ", heads selected"  # the label suffix of rows that select heads (zip.select)
HEADS_SEARCHED = ", heads searched"  # the label suffix of rows that search heads (head_search)
BN_UNITS = ", BatchNorm units"  # the paper's fusion in BatchNorm units (fusion.bn_units)
AS_TRAINED = ", without BatchNorm units"  # least squares on the rows as trained
# the paper's fusion: the benchmarks' plain rows name it, as the default ("auto") is per family
PAPER = "average"
PAPER_KNOBS = {"fusion": PAPER, "bn_units": False}  # ZipSettings keywords of the paper's fusion


def fusion_knobs(fusion: str) -> dict[str, Any]:
    """Return the ZipSettings keywords of ``fusion``: the paper's on the weights as trained."""
    return dict(PAPER_KNOBS) if fusion == PAPER else {"fusion": fusion}


# (ZipSettings keywords, row label suffix): the paper's fusion, least-squares fusion
# (fusion.regression; in BatchNorm units, the default, and without), fusion in BatchNorm units
# (fusion.bn_units) and renormalization after the paper's fusion (fusion.renormalize)
VARIANTS = (
    (PAPER_KNOBS, ""),
    ({"fusion": "least_squares"}, LEAST_SQUARES),
    ({"fusion": "least_squares_sequential"}, SEQUENTIAL),
    ({"fusion": PAPER, "bn_units": True}, BN_UNITS),
    ({"fusion": "least_squares", "bn_units": False}, LEAST_SQUARES + AS_TRAINED),
    ({"fusion": "least_squares_sequential", "bn_units": False}, SEQUENTIAL + AS_TRAINED),
    ({"fusion": PAPER, "renormalize": True}, RENORMALIZED),
    ({"fusion": PAPER, "heads": "select"}, HEADS_SELECTED),
    ({"fusion": "least_squares", "heads": "select"}, LEAST_SQUARES + HEADS_SELECTED),
    ({"fusion": "least_squares_sequential", "heads": "select"}, SEQUENTIAL + HEADS_SELECTED),
    ({"fusion": "least_squares_sequential", "heads": "search"}, SEQUENTIAL + HEADS_SEARCHED),
)


def transformer_variants(mode: str) -> list[tuple[dict[str, Any], str]]:
    """Return the variants the transformer benches run under alignment ``mode``.

    The sequential refit takes about 40 s a MiniLM merge: the two learned alignments only. No
    head search: it merges once per head pair and sweep (about 70 MiniLM merges a sweep).
    """
    learned = mode.lower() in ("sma", "lma")
    return [
        (k, s)
        for k, s in VARIANTS
        if (not s.startswith(SEQUENTIAL) or learned)
        and k.get("heads") != "search"
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


def _best_zip(rows: dict[str, Any], variant: str | None = None) -> tuple[str | None, float | None]:
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


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}"


def _pair_checks(pair: str, result: dict[str, Any], results: dict[str, Any]) -> list[dict]:
    """Return the checks of one pair (see ``checks``)."""
    rows, out = result["rows"], []
    best_label, best = _best_zip(rows)
    ref = result.get("reference")
    if ref in results:
        homo_label, homo = _best_zip(results[ref]["rows"])
        out.append(
            _check(
                "best heterogeneous zip within 1 point of the best homogeneous zip (Joint)",
                pair,
                best >= homo - TOLERANCE,
                f"{best_label} {_pct(best)} vs {ref} {homo_label} {_pct(homo)}: "
                f"{100 * (best - homo):+.1f} points",
            )
        )
    for label in ("permute", "weight average"):
        if label in rows:
            other = mean(rows[label])
            out.append(
                _check(
                    f"zip above {label} (Joint)",
                    pair,
                    best > other,
                    f"{best_label} {_pct(best)} vs {label} {_pct(other)}",
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
            f"ensemble {_pct(ensemble)} vs best merge {top} {_pct(merges[top])}",
        )
    )
    out.append(
        _check(
            "best zip at least 95% of the ensemble (Joint)",
            pair,
            best >= ENSEMBLE_SHARE * ensemble,
            f"{best_label} {_pct(best)} = {best / ensemble:.3f} of the ensemble {_pct(ensemble)}",
        )
    )
    if not result.get("layer_norm"):  # a LayerNorm over [x_A ; x_B] is not two LayerNorms
        out.append(_rho0_check(pair, result))
    if result.get("depths_differ"):
        learned = max(mean(rows.get(f"zip ({m})")) or 0.0 for m in LEARNED)
        fixed = max(mean(rows.get(f"zip ({m})")) or 0.0 for m in ("uniform", "head"))
        out.append(
            _check(
                "SMA or LMA (any placement) at least as good as uniform/head (Joint)",
                pair,
                learned >= fixed,
                f"best of SMA/LMA {_pct(learned)} vs best of uniform/head {_pct(fixed)}",
            )
        )
    return out


def _rho0_check(pair: str, result: dict[str, Any]) -> dict[str, Any]:
    """rho = 0 must equal the ensemble of the BN-re-estimated A and B, seed by seed."""
    rho0, ens = result["rho"]["0.0"], result["rows"]["ensemble (BN re-estimated)"]
    same = all(rho0[k]["values"] == ens[k]["values"] for k in METRICS)
    gap = max(rho0["max_logit_gap"]["values"])
    return _check(
        "rho = 0 equals the ensemble (BN re-estimated)",
        pair,
        same and gap < 1e-3,
        f"Joint {_pct(mean(rho0))} vs {_pct(mean(ens))}; max |logit gap| {gap:.2e}",
    )


def checks(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Return the protocol's expectations, checked on the aggregated results of every pair.

    Heterogeneous zip (best alignment) within 3 points of the homogeneous zip; zip above permute
    and weight average; the ensemble at or above every merge; rho = 0 equal to the ensemble of
    the BN-re-estimated models; SMA or LMA at least as good as uniform/head.
    """
    attach_references(results)
    return [c for pair, r in results.items() for c in _pair_checks(pair, r, results)]


def fmt(row: dict[str, Any] | None, key: str = "joint") -> str:
    """Return "mean ± std" in percent of an aggregated metric, or "—"."""
    if row is None or row.get(key, {}).get("mean") is None:
        return "—"
    s = row[key]
    return f"{100 * s['mean']:.1f} ± {100 * s['std']:.1f}"


def _count(row: dict[str, Any], key: str) -> str:
    value = row.get(key, {}).get("mean")
    if value is None:
        return "—"
    return f"{value:.2f}" if key == "seconds" else f"{int(round(value)):,}"


def _table(header: list[str], lines: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return out + ["| " + " | ".join(line) + " |" for line in lines]


def _summary(report: dict[str, Any]) -> list[str]:
    cols = ["ensemble", "ensemble (BN re-estimated)", "weight average", "permute"]
    zips = ["zip (SMA)", "zip (LMA)", "zip (uniform)", "zip (head)", "padding control"]
    lines = []
    for pair, r in report["pairs"].items():
        rows = r["rows"]
        homo = next((v for k, v in rows.items() if k.startswith("homogeneous zip")), None)
        cells = [fmt(rows.get(c)) for c in cols] + [fmt(homo)] + [fmt(rows.get(z)) for z in zips]
        cells.append(fmt(rows.get(f"zip ({r['sweep_mode']}{LEAST_SQUARES})")))
        lines.append([pair, r["kind"], *cells])
    header = [
        "pair",
        "kind",
        "ensemble",
        "ensemble (BN re-est.)",
        "weight avg",
        "permute",
        "homogeneous zip",
        "zip SMA",
        "zip LMA",
        "zip uniform",
        "zip head",
        "padding control",
        "zip least squares (sweep alignment)",
    ]
    return _table(header, lines)


def _placement_summary(report: dict[str, Any]) -> list[str]:
    """Return the depth pairs' zips per LMA placement, both fusions."""
    lines = []
    for pair, r in report["pairs"].items():
        if r.get("depths_differ"):
            rows = r["rows"]
            cells = [
                fmt(rows.get(f"zip ({p}{suffix})"))
                for suffix in ("", LEAST_SQUARES, SEQUENTIAL)
                for p in PLACEMENTS
            ]
            lines.append([pair, *cells])
    header = ["pair", *(f"{p} (segment {w})" for p, w in zip(PLACEMENTS, PLACE_WORDS, strict=True))]
    header += [f"{p}, least squares" for p in PLACEMENTS]
    header += [f"{p}, sequential" for p in PLACEMENTS]
    return _table(header, lines)


def _fusion_summary(report: dict[str, Any]) -> list[str]:
    """Return the best zip of each variant over every alignment, as a share of the ensemble."""
    lines = []
    for pair, r in report["pairs"].items():
        rows, ensemble = r["rows"], ensemble_joint(r["rows"])
        cells = []
        for suffix in VARIANT_NAMES:
            label, best = _best_zip(rows, suffix)
            if label is None:
                cells += ["—", "—"]
            else:
                cells += [f"{_pct(best)} ({label[5:-1]})", f"{best / ensemble:.3f}"]
        lines.append([pair, _pct(ensemble), *cells])
    header = ["pair", "ensemble"]
    for name in VARIANT_NAMES.values():
        header += [f"best zip, {name}", "/ ensemble"]
    return _table(header, lines)


def _heads_summary(report: dict[str, Any]) -> list[str]:
    """Return the transformer pairs' best zip at the paper's width against "heads kept" rows."""
    lines = []
    for pair, r in report["pairs"].items():
        rows = r["rows"]
        kept = {k: v for k, v in rows.items() if k.startswith(HEADS_KEPT)}
        if not kept:
            continue
        ensemble, (best_label, best) = ensemble_joint(rows), _best_zip(rows)
        cells = [f"{_pct(best)} ({best_label[5:-1]})", f"{best / ensemble:.3f}"]
        cells.append(_count(rows[best_label], "params"))
        for label, row in kept.items():
            cells += [f"{fmt(row)} ({label[len(HEADS_KEPT) : -1]})", f"{mean(row) / ensemble:.3f}"]
        cells.append(_count(next(iter(kept.values())), "params"))
        lines.append([pair, _pct(ensemble), _count(rows["ensemble"], "params"), *cells])
    header = ["pair", "ensemble", "params", "best zip (paper's width)", "/ ensemble", "params"]
    header += ["heads kept, paper's fusion", "/ ensemble"]
    header += ["heads kept, sequential least squares", "/ ensemble", "params"]
    return _table(header, lines) if lines else []


def _variant_findings(report: dict[str, Any]) -> list[str]:
    """Return one line per variant: where its best zip beats the paper's fusion, and by how much;
    then the fusions in BatchNorm units against the same fusions on the weights as trained."""
    out = [
        _gain_line(report, suffix, "", name, "the paper's fusion")
        for suffix, name in list(VARIANT_NAMES.items())[1:]
        if suffix != BN_UNITS  # the last lines
    ]
    for suffix, base, name in BN_UNITS_AGAINST:
        out.append(_gain_line(report, suffix, base, name, "the same without BatchNorm units"))
    return [line for line in out if line]


# (variant in BatchNorm units, the same fusion on the weights as trained, name)
BN_UNITS_AGAINST = (
    (BN_UNITS, "", "average in BatchNorm units"),
    (LEAST_SQUARES, LEAST_SQUARES + AS_TRAINED, "least squares in BatchNorm units"),
    (SEQUENTIAL, SEQUENTIAL + AS_TRAINED, "sequential least squares in BatchNorm units"),
)


def _gain_line(report: dict[str, Any], suffix: str, base: str, name: str, against: str) -> str:
    """Return where the best zip of variant ``suffix`` beats that of ``base``, by how much ("" if
    no pair has both)."""
    gains = {}
    for pair, r in report["pairs"].items():
        _, before = _best_zip(r["rows"], base)
        _, best = _best_zip(r["rows"], suffix)
        if best is not None and before is not None:
            gains[pair] = 100 * (best - before)
    if not gains:
        return ""
    worse = [f"{p} ({g:+.1f})" for p, g in gains.items() if g < 0]
    return (
        f"- {name}: best zip above {against} on {sum(g > 0 for g in gains.values())} "
        f"of {len(gains)} pairs, mean {sum(gains.values()) / len(gains):+.1f} points; "
        f"did not help on: {', '.join(worse) if worse else 'none'}"
    )


def _placement_findings(report: dict[str, Any]) -> list[str]:
    """Return, per variant, which LMA placement is best on how many depth pairs."""
    out = []
    for suffix in ("", LEAST_SQUARES, SEQUENTIAL):
        wins = dict.fromkeys(PLACEMENTS, 0)
        pairs = 0
        for r in report["pairs"].values():
            rows = r["rows"]
            joints = {p: mean(rows.get(f"zip ({p}{suffix})")) for p in PLACEMENTS}
            if r.get("depths_differ") and None not in joints.values():
                pairs += 1
                top = max(joints.values())
                for p, j in joints.items():
                    wins[p] += j == top
        if pairs:
            counts = ", ".join(f"{p} {n}" for p, n in wins.items())
            out.append(
                f"- {VARIANT_NAMES[suffix]}: best (ties count for each) on {counts} of {pairs} "
                "depth pairs"
            )
    return out


def _pair_section(pair: str, r: dict[str, Any]) -> list[str]:
    acc = r["task_accuracy"]
    out = [
        f"### {pair}",
        "",
        f"{r['description']}. Task A classes {r['classes_a']}, task B "
        f"classes {r['classes_b']}; own-task test accuracy A {fmt(acc, 'a')}, "
        f"B {fmt(acc, 'b')}; parameters A {r['params']['a']:,}, B {r['params']['b']:,}.",
        "",
    ]
    lines = [
        [label, *(fmt(row, k) for k in METRICS), _count(row, "params"), _count(row, "seconds")]
        for label, row in r["rows"].items()
    ]
    out += _table(["row", "Joint", "Task A", "Task B", "Avg", "params", "merge s"], lines)
    mode = r["sweep_mode"]
    out += [
        "",
        f"Zip ratio rho ({mode} zip; rho = 1 is the paper's width, rho = 0 the ensemble):",
        "",
    ]
    lines = [[k, fmt(v), fmt(v, "avg"), _count(v, "params")] for k, v in r["rho"].items()]
    out += _table(["rho", "Joint", "Avg", "params"], lines)
    out += ["", f"Calibration inputs ({mode} zip):", ""]
    lines = [[k, fmt(v), fmt(v, "avg"), _count(v, "seconds")] for k, v in r["calibration"].items()]
    out += _table(["inputs", "Joint", "Avg", "merge s"], lines)
    out += ["", f"Matcher knobs ({mode} zip):", ""]
    lines = [[k, fmt(v), fmt(v, "avg")] for k, v in r["knobs"].items()]
    out += _table(["knobs", "Joint", "Avg"], lines)
    return [*out, ""]


def _bn_section(report: dict[str, Any]) -> list[str]:
    lines = []
    for pair, r in report["pairs"].items():
        rows, kept, mode = r["rows"], r["bn_kept"], r["sweep_mode"]
        cells = [rows[f"zip ({mode})"], kept["zip"], r["rho"]["0.0"], kept["rho=0"]]
        cells += [rows["ensemble (BN re-estimated)"], rows["ensemble"]]
        lines.append([pair, mode, *(fmt(c) for c in cells)])
    header = ["pair", "alignment", "zip, BN re-estimated (default)", "zip, BN kept"]
    header += ["rho=0, re-estimated", "rho=0, kept", "ensemble, re-estimated"]
    return _table([*header, "ensemble, as trained"], lines)


def render_markdown(report: dict[str, Any]) -> str:
    """Return docs/quality.md: command, protocol, summary, checks and one section per pair."""
    cfg, env = report["config"], report["environment"]
    out = [
        "# Merge quality on the built-in zoo",
        "",
        f"Command: `{report['command']}`",
        "",
        f"Run: {report['seconds']:.0f} s on {env['device']} ({env['threads']} torch threads), "
        f"torch {env['torch']}, Python {env['python']}; seeds {list(cfg['seeds'])}, "
        f"{cfg['calib_size']} calibration inputs in batches of {cfg['batch_size']}, zip "
        "defaults alpha 0.5, beta 1, rho 1.",
        "",
        PROTOCOL,
        "",
        "## Summary (Joint, %)",
        "",
    ]
    out += _summary(report)
    out += [
        "",
        "## Fusion and renormalization (Joint, %, best alignment)",
        "",
        FUSION_NOTE,
        "",
    ]
    out += _fusion_summary(report)
    out += ["", *_variant_findings(report), "", DEFAULT_NOTE]
    out += ["", "## Where LMA places a block inside its segment (Joint, %)", "", PLACEMENT_NOTE, ""]
    out += _placement_summary(report)
    out += ["", *_placement_findings(report)]
    heads = _heads_summary(report)
    if heads:
        out += ["", "## Where a transformer merge loses: its attention heads (Joint, %)", ""]
        out += [HEADS_NOTE, "", *heads]
    out += ["", "## More than two models", "", NWAY_NOTE]
    out += ["", "## Aligning by block updates", "", MEASURES_NOTE]
    out += ["", "## Checks", ""]
    out += [
        f"- [{'x' if c['passed'] else ' '}] {c['pair']}: {c['check']}: {c['detail']}"
        for c in report["checks"]
    ]
    out += [
        "",
        "## BatchNorm of A and B: re-estimated on the calibration data or kept (Joint, %)",
        "",
        "`prepare(reset_input_bn=True)` (the default) re-estimates A's and B's BatchNorm "
        "on the mixed calibration data before merging; `False` keeps their training "
        "statistics (the merged model's BatchNorm is re-estimated in both cases).",
        "",
    ]
    out += _bn_section(report)
    out += ["", "## Per pair", ""]
    for pair, r in report["pairs"].items():
        out += _pair_section(pair, r)
    return "\n".join(out).rstrip() + "\n"


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
    """Return the versions, threads and device a run used."""
    return {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "threads": torch.get_num_threads(),
        "device": device,
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
