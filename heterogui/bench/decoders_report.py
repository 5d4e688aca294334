"""docs/decoders.md from the report of ``heterogui bench decoders`` (tables, readings, alarms)."""

from __future__ import annotations

import math
from typing import Any

from heterogui.bench.seeds import cell as seed_cell
from heterogui.bench.seeds import columns as seed_columns
from heterogui.datasets.text_domains import DOMAINS
from heterogui.tasks.language import MAX_TOKENS

Row = dict[str, Any]
SMOLLM2_NOTE = (
    "SmolLM2 here is SmolLM2-135M-Instruct as shipped in a 4-bit (Q4_1) GGUF file, dequantized "
    "to float32: a dequantized 4-bit model, not the original full-precision weights."
)
NEW_TOKENS = 16  # greedy tokens compared per prompt
PAPER_NORMS = ", paper's norms"  # the label suffix of a merge with the paper's RMSNorms


def runs(values: list[int] | tuple[int, ...]) -> str:
    """Return increasing integers with runs shortened: "0-11, 18-29"; "0, 2, ..., 28"."""
    runs: list[list[int]] = []
    for i in values:
        if runs and i == runs[-1][-1] + 1:
            runs[-1].append(i)
        else:
            runs.append([i])
    if all(len(r) == 1 for r in runs) and len(values) > 4:
        return f"{values[0]}, {values[1]}, ..., {values[-1]}"
    return ", ".join(f"{r[0]}-{r[-1]}" if len(r) > 2 else ", ".join(map(str, r)) for r in runs)


def layer_list(keep: tuple[int, ...], depth: int) -> str:
    """Return kept layers as ranges ("0-11, 18-29 (24 of 30)")."""
    return f"{runs(keep)} ({len(keep)} of {depth})"


def _cell(value: Any, column: str) -> str:
    if value is None:
        return "—"
    if isinstance(value, list) and column in _LIST_COLUMNS and value and isinstance(value[0], list):
        # one value per calibration draw (``seeds.PerSeed``, a plain list once read from JSON)
        return " / ".join(_cell(v, column) for v in value)
    if isinstance(value, list):
        if column == "slots_b":
            return runs(value)
        if column == "alarms":
            return "none" if not value else "<br>".join(str(v) for v in value)
        return "[" + ", ".join(str(v) for v in value) + "]"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if column.endswith("ppl"):
            return f"{value:.1f}" if value < 1e4 else f"{value:.3g}"
        if column.endswith("bpb") or column == "repetition":
            return f"{value:.3f}"
        return f"{value:.2f}"
    return str(value)


_LIST_COLUMNS = ("slots_b", "alarms")  # columns whose one value is a list
_ORDER = (
    "model",
    "layers",
    "width",
    "params_M",
    "slots_b",
    *(f"{d} {m}" for d in DOMAINS for m in ("ppl", "bpb")),
    "repetition",
    "alarms",
    "note",
)


def table(rows: list[Row]) -> str:
    """Return rows as a markdown table (columns in first-seen order).

    Means over calibration draws show their standard deviation ("612.3 ± 4.1"), and a cell
    that differs between draws shows each draw's value ("0, 1 / 0, 3"): ``bench.seeds``.
    """
    seen = seed_columns(rows)
    columns = [c for c in _ORDER if c in seen] + [c for c in seen if c not in _ORDER]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_shown(r, c) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def _shown(row: Row, column: str) -> str:
    return seed_cell(row, column, lambda value: _cell(value, column))


def _draws(seeds: int) -> str:
    if seeds < 2:
        return ""
    return (
        f", {seeds} draws (seeds 0-{seeds - 1}; the models and the held-out texts stay): every "
        "score is the mean ± the standard deviation over the draws"
    )


def render_markdown(report: dict[str, Any]) -> str:
    """Return docs/decoders.md from a report."""
    lines = _intro_lines(report)
    lines += _pair_lines(report.get("pair"))
    lines += _gpt2_lines(report.get("gpt2"))
    lines += _self_lines(report.get("smollm2_self"))
    lines += _shallow_lines(report.get("smollm2_shallow"))
    lines += ["## Collapse alarms", "", *_alarm_lines(report), ""]
    return "\n".join(lines)


def _intro_lines(report: dict[str, Any]) -> list[str]:
    """Return the title, the command, the run's environment and sizes, and what is scored."""
    env, sizes = report["environment"], report["sizes"]
    return [
        "# Decoder language models: merges of different depth and width",
        "",
        f"Command: `{report['command']}`",
        "",
        f"Run: {report['seconds']:.0f} s on the CPU ({env['threads']} torch threads), Python "
        f"{env['python']}, torch {env['torch']}, transformers {env['transformers']}. "
        f"Calibration: {sizes['calibration']} texts of both domains (half each) of at most "
        f"{MAX_TOKENS} tokens; evaluation: held-out texts per domain, {sizes['evaluation']} for "
        f"the trained pair and {sizes['smollm2_evaluation']} for SmolLM2. {SMOLLM2_NOTE}",
        "",
        "Scores: perplexity (ppl, lower is better; the models share SmolLM2's tokenizer, so "
        "perplexities compare) and bits per byte (bpb) of the held-out texts of the two built-in "
        "domains, `python-docs` (English prose of the Python documentation) and `python-source` "
        "(Python standard-library code). The ensemble is the mean of A's and B's next-token "
        "probabilities; a merge's logits are the mean of its two heads' logits, exactly what its "
        "exported causal-LM folder computes. `slots_b`: the layer slots of A that B's layers are "
        "aligned to. `repetition`: the worst repeated-4-gram rate of a model's greedy "
        "continuations of two fixed prompts. `alarms`: the collapse alarm (a domain whose "
        "perplexity is over twice the worse parent's, or a repetition over 50% and over the "
        "most repetitive parent's by more than 20 points). The Llama merges weigh their merged "
        "RMSNorms (`zip.norm_weights`, the default; docs/method.md sec. 9); a row ending in "
        f'"{PAPER_NORMS}" is the row above it with the paper\'s norms, merged again unless '
        "weighing changed nothing (every norm scale 1, as at rho 1 with equal widths: then "
        "its note says so and its scores are the row above's).",
        "",
    ]


def _pair_lines(pair: dict[str, Any] | None) -> list[str]:
    """Return the trained Llama pair's section (none without its table)."""
    if not pair:
        return []
    a, b = pair["build"]["a"], pair["build"]["b"]
    return [
        "## The trained pair",
        "",
        "`heterogui.zoo.decoder_pair` trains two Llama causal LMs from scratch here "
        "(built once into the heterogui cache; references `decoder-pair:a` and "
        "`decoder-pair:b`): A on the training split of `python-docs`, B on that of "
        "`python-source`, with SmolLM2's tokenizer and attention layout (head_dim 64, 3 query "
        "heads per key/value head, rope_theta 100000), so they also merge with SmolLM2. "
        f"A: {_shape(a)}; B: {_shape(b)}. Build: {a.get('build_seconds')} s and "
        f"{b.get('build_seconds')} s.",
        "",
        "Baselines: *dropped layers* is the deeper model (A) cut to B's depth by keeping "
        "evenly spaced layers (what a merge of that depth could be without B at all). A "
        "*weight average* needs equal shapes: A and B differ in width "
        f"({a['shape']['hidden']} vs {b['shape']['hidden']}), so it does not apply here (see "
        "the SmolLM2 tables for pairs where it does). " + _calibration(pair),
        *_table_and_reading(pair["rows"]),
    ]


def _self_lines(selfm: dict[str, Any] | None) -> list[str]:
    """Return the section on SmolLM2 merged with a permuted copy (none without its table)."""
    if not selfm:
        return []
    t = selfm["timing"]
    same = sum(g["identical"] for g in selfm["greedy"])
    return [
        "## SmolLM2 merged with a permuted copy of itself",
        "",
        "B is SmolLM2 with every permutable space shuffled (`heterogui.models.permute`: whole "
        "key/value groups with their query heads, MLP neurons, the residual stream): the "
        "same function in another neuron order. The merge (SMA, rho 1) should find the "
        "permutation and give SmolLM2 back; a weight average without alignment shows what "
        f"happens without. Max |logit difference| of the merge vs SmolLM2 over the held-out "
        f"texts: **{selfm['max_abs_logit_diff']:.2e}**. Greedy continuations "
        f"({NEW_TOKENS} tokens) identical for {same} of {len(selfm['greedy'])} prompts.",
        "",
        table(selfm["rows"]),
        "",
        "| prompt | SmolLM2 | merge | identical |",
        "|---|---|---|---|",
        *[
            f"| {g['prompt']!r} | {g['smollm2']!r} | {g['merged']!r} | {g['identical']} |"
            for g in selfm["greedy"]
        ],
        "",
        *_timing_lines(t),
    ]


def _timing_lines(t: dict[str, Any]) -> list[str]:
    """Return the subsection on the time and peak memory of the SmolLM2 self-merge."""
    return [
        "### Time and memory of a SmolLM2 merge",
        "",
        f"Measured in a fresh process with {t['threads']} torch thread(s): SmolLM2 and its "
        f"permuted copy (two 30-layer models, {t['merged_params_M']:.1f} M parameters "
        f"merged), {t['calibration_texts']} calibration texts of at most {t['max_tokens']} "
        "tokens. Peak RSS is the process's maximum resident set size "
        "(`resource.getrusage`), read after loading and again after the merge.",
        "",
        "| step | value |",
        "|---|---|",
        f"| load SmolLM2 and make the permuted copy | {t['load_s']:.1f} s |",
        f"| calibrate and analyse (statistics, alignment) | {t['calibrate_and_analyse_s']:.1f} s |",
        f"| zip at rho 1 (matching, fusion, build) | {t['zip_s']:.1f} s |",
        f"| merge total (analyse + zip) | {t['merge_s']:.1f} s |",
        f"| peak RSS after loading | {t['peak_rss_after_loading_mib']} MiB |",
        f"| peak RSS after the merge | {t['peak_rss_after_merge_mib']} MiB |",
        "",
    ]


def _shallow_lines(shallow: dict[str, Any] | None) -> list[str]:
    """Return the section on SmolLM2 merged with a shallower copy (none without its table)."""
    if not shallow:
        return []
    kept = tuple(shallow["kept_layers"])
    return [
        "## SmolLM2 merged with a shallower copy of itself",
        "",
        f"B is SmolLM2 without its {shallow['depth'] - len(kept)} middle layers (layers "
        f"{layer_list(kept, shallow['depth'])}, built by removing layers from the "
        "transformers model's `model.layers` and its config), so B is also the *dropped "
        "layers* baseline. The row *not merged* is SmolLM2 with every other layer removed: "
        "that copy is no language model any more, so it is not merged. A and B have the "
        "same width (576), so the weight average applies: B padded to 30 layers by SMA "
        "(identity layers), then averaged weight by weight without alignment. The *manual* "
        "merges align B's layers with the layers of A they were copied from (the true "
        "alignment), so A's middle layers meet B's identity (padding) layers. "
        f"Calibration: {shallow['calibration_texts']} texts"
        + _draws(shallow.get("seeds", 1))
        + f"; {shallow['evaluation_texts_per_domain']} held-out texts per domain; "
        f"{shallow['seconds']:.0f} s.",
        "",
        table(shallow["rows"]),
        "",
        _reading(shallow["rows"]),
        "",
    ]


def _reading(rows: list[Row]) -> str:
    """Return one generated sentence per domain: the best merge against A, B and the ensemble."""
    by_name = {r["model"].split(":")[0]: r for r in rows}
    merges = [r for r in rows if r["model"].startswith("merge")]
    if not merges or "A" not in by_name or "B" not in by_name:
        return ""
    parts = []
    for domain in DOMAINS:
        key = f"{domain} ppl"
        best = min(merges, key=lambda r: r[key] if r[key] is not None else math.inf)
        ensemble = next((r[key] for r in rows if r["model"].startswith("ensemble")), None)
        parts.append(
            f"on {domain} the best merge ({best['model']}) has perplexity "
            f"{_cell(best[key], key)}, against A {_cell(by_name['A'][key], key)}, "
            f"B {_cell(by_name['B'][key], key)} and the ensemble {_cell(ensemble, key)}"
        )
    return "Reading: " + "; ".join(parts) + "."


def _shape(build: dict[str, Any], gpt2: bool = False) -> str:
    s = build.get("shape") or {}
    n = build.get("num_params") or 0
    heads = (
        f"{s.get('heads')} heads"
        if gpt2
        else f"{s.get('heads')} heads / {s.get('kv_heads')} key/value heads"
    )
    return (
        f"{s.get('layers')} layers, width {s.get('hidden')}, {heads}, "
        f"MLP {s.get('intermediate')}, {n / 1e6:.1f} M parameters"
    )


def _gpt2_lines(gpt2: dict[str, Any] | None) -> list[str]:
    """Return the GPT-2 pair's section (none without its table)."""
    if not gpt2:
        return []
    a, b = gpt2["build"]["a"], gpt2["build"]["b"]
    table = f" of a {a['positions']}-token table" if a.get("positions") else ""
    return [
        "## The trained pair as GPT-2 models",
        "",
        "`heterogui.zoo.decoder_pair.GPT2PairSettings` trains the same pair as GPT-2 models "
        f"(learned positions{table}, LayerNorm, GELU, biases; SmolLM2's tokenizer; "
        "the same data, steps and seeds): A on `python-docs`, B on `python-source`. "
        f"A: {_shape(a, gpt2=True)}; B: {_shape(b, gpt2=True)}. Build: "
        f"{a.get('build_seconds')} s and {b.get('build_seconds')} s. GPT-2 has no rotary "
        "positions, so its heads also split (`zip.heads: split`, docs/method.md sec. 8); SMA "
        "by the CKA of the layer outputs (the GPT-2 family's default). " + _calibration(gpt2),
        *_table_and_reading(gpt2["rows"]),
    ]


def _calibration(trained: dict[str, Any]) -> str:
    """Return the sentence on a trained pair's calibration draws, held-out texts and time."""
    return (
        f"Calibration: {trained['calibration_texts']} texts"
        + _draws(trained.get("seeds", 1))
        + f"; {trained['evaluation_texts_per_domain']} held-out texts per domain; "
        f"{trained['seconds']:.0f} s."
    )


def _table_and_reading(rows: list[Row]) -> list[str]:
    return ["", table(rows), "", _reading(rows), ""]


def _alarm_lines(report: dict[str, Any]) -> list[str]:
    out = ["| table | merge | alarms |", "|---|---|---|"]
    for key, title in (
        ("pair", "trained pair"),
        ("gpt2", "GPT-2 pair"),
        ("smollm2_self", "SmolLM2 + permuted copy"),
        ("smollm2_shallow", "SmolLM2 + shallower copy"),
    ):
        for row in (report.get(key) or {}).get("rows", []):
            if "alarms" in row and not row["model"].endswith("not applicable"):
                out.append(f"| {title} | {row['model']} | {_shown(row, 'alarms')} |")
    return out
