"""docs/quality.md from a quality report (``heterogui bench quality``): the summary tables,
the findings per setting, the checks and one section per pair.

The report itself (rows, aggregation, goal checks) is ``quality_report``'s.
"""

from __future__ import annotations

from typing import Any

from heterogui.bench.quality_notes import (
    DEFAULT_NOTE,
    FUSION_NOTE,
    KEPT_NOTE,
    MEASURES_NOTE,
    NWAY_NOTE,
    PLACEMENT_NOTE,
    PROTOCOL,
)
from heterogui.bench.quality_report import (
    AS_TRAINED,
    BN_UNITS,
    KEPT,
    LEAST_SQUARES,
    METRICS,
    PADDING_CONTROL,
    PLACE_WORDS,
    PLACEMENTS,
    SEQUENTIAL,
    VARIANT_NAMES,
    best_zip,
    ensemble_joint,
    mean,
    pct,
)


def fmt(row: dict[str, Any] | None, key: str = "joint") -> str:
    """Return "mean ± std" in percent of an aggregated metric, or "—"."""
    if row is None or row.get(key, {}).get("mean") is None:
        return "—"
    s = row[key]
    if len(s.get("values", ())) < 2:  # one seed: no spread to give
        return f"{100 * s['mean']:.1f}"
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
    zips = ["zip (SMA)", "zip (LMA)", "zip (uniform)", "zip (head)", PADDING_CONTROL]
    lines = []
    for pair, r in report["pairs"].items():
        rows = r["rows"]
        homo = next((v for k, v in rows.items() if k.startswith("homogeneous zip")), None)
        cells = [fmt(rows.get(c)) for c in cols] + [fmt(homo)] + [fmt(rows.get(z)) for z in zips]
        cells.append(fmt(rows.get(f"zip ({r['sweep_mode']}{LEAST_SQUARES})")))
        cells.append(fmt(rows.get(PADDING_CONTROL + SEQUENTIAL)))
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
        "padding control, sequential least squares",
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
            label, best = best_zip(rows, suffix)
            if label is None:
                cells += ["—", "—"]
            else:
                cells += [f"{pct(best)} ({label[5:-1]})", f"{best / ensemble:.3f}"]
        lines.append([pair, pct(ensemble), *cells])
    header = ["pair", "ensemble"]
    for name in VARIANT_NAMES.values():
        header += [f"best zip, {name}", "/ ensemble"]
    return _table(header, lines)


def _kept_summary(report: dict[str, Any]) -> list[str]:
    """Return the transformer pairs' best zip at the paper's width against the rows that keep
    one part unmerged ("heads kept", "stream kept", "MLPs kept": ``quality_seed.kept_rows``)."""
    found: dict[str, tuple[list[str], dict[str, list[str]]]] = {}
    for pair, r in report["pairs"].items():
        rows = r["rows"]
        kept = {k: v for k, v in rows.items() if k.startswith(KEPT)}
        if not kept:
            continue
        ensemble, (best_label, best) = ensemble_joint(rows), best_zip(rows)
        first = [pair, pct(ensemble), _count(rows["ensemble"], "params")]
        first += [f"{pct(best)} ({best_label[5:-1]})", f"{best / ensemble:.3f}"]
        first.append(_count(rows[best_label], "params"))
        parts = {}
        for label, row in kept.items():
            part, detail = label[:-1].split(" (", 1)
            mode, *how = detail.split(", ")
            name = ", ".join([part, *(how or ["paper's fusion"])])
            parts[name] = [f"{fmt(row)} ({mode})", f"{mean(row) / ensemble:.3f}"]
            parts[name].append(_count(row, "params"))
        found[pair] = (first, parts)
    if not found:
        return []
    names = list(dict.fromkeys(n for _, parts in found.values() for n in parts))
    header = ["pair", "ensemble", "params", "best zip (paper's width)", "/ ensemble", "params"]
    for name in names:
        header += [name, "/ ensemble", "params"]
    lines = [
        [*first, *(cell for n in names for cell in parts.get(n, ["—"] * 3))]
        for first, parts in found.values()
    ]
    return _table(header, lines)


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
        _, before = best_zip(r["rows"], base)
        _, best = best_zip(r["rows"], suffix)
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
    kept = _kept_summary(report)
    if kept:
        out += ["", "## Where a transformer merge loses: heads, stream, MLPs (Joint, %)", ""]
        out += [KEPT_NOTE, "", *kept]
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
