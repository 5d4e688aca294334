"""The Evaluate tab's language-model panels (docs/method.md sec. 11): the perplexity and bits per
byte of A, B, their ensemble and the merge per domain, with the collapse alarm, and A's, B's and
the merge's continuations of typed prompts side by side.
"""

from __future__ import annotations

import math
from typing import Any

import gradio as gr

from heterogui.config import check_seed
from heterogui.datasets.refs import parse_lines
from heterogui.errors import ConfigError
from heterogui.tasks.base import GENERATIONS
from heterogui.ui import labels, tables, work
from heterogui.ui.resources import Resources
from heterogui.ui.session import Session

MODELS = (("A", "a"), ("B", "b"), ("ensemble", "ensemble"))  # table label, baseline key
GEN_MODES = ("greedy", "sampled")
GEN_TOKENS = 32  # new tokens per continuation (each re-runs the whole sequence: no cache)
BITS_DIGITS = 4  # the decimals of bits per byte in the perplexity table
GEN_PROMPTS = "The Python tutorial explains\ndef read_config(path):"


def build_language_panels(ui: dict[str, Any]) -> None:
    """Create the perplexity table (with the collapse alarm) and the generations panel."""
    ui["panel_perplexity"] = gr.Group(visible=False)
    with ui["panel_perplexity"]:
        ui["lm_alarm"] = gr.Markdown(visible=False, elem_id="lm-alarm")
        ui["lm_scores"] = gr.Dataframe(
            elem_id="lm-scores",
            interactive=False,
            label="Perplexity and bits per byte on held-out text per domain (lower is "
            "better); the ensemble averages A's and B's next-token probabilities",
        )
        with gr.Row():
            ui["lm_info"] = gr.Markdown()
            ui["lm_evaluate"] = gr.Button("Refresh evaluation", scale=0, min_width=180)
    ui["panel_generations"] = gr.Group(visible=False)
    with ui["panel_generations"]:
        with gr.Row():
            ui["gen_prompts"] = gr.Textbox(
                lines=4,
                scale=4,
                value=GEN_PROMPTS,
                label="Prompts, one per line (1 to 4)",
                elem_id="gen-prompts",
            )
            with gr.Column(scale=1):
                ui["gen_mode"] = gr.Radio(
                    list(GEN_MODES),
                    value="greedy",
                    label="Decoding",
                    info="greedy: the most likely token; sampled: drawn (top 50, temperature "
                    "0.8) with the seed",
                )
                # no precision: gradio would round 1.5 to 2, which the handler refuses instead
                ui["gen_seed"] = gr.Number(value=0, label="Seed", minimum=0, step=1)
                with gr.Row():
                    ui["generate"] = gr.Button("Generate", variant="primary", elem_id="generate")
                    ui["gen_cancel"] = gr.Button("Cancel", variant="stop", elem_id="gen-cancel")
        ui["gen_view"] = gr.Dataframe(
            headers=["prompt", "A", "B", "merged"],
            interactive=False,
            wrap=True,
            elem_id="gen-view",
            label=f"Continuations side by side (up to {GEN_TOKENS} new tokens each)",
        )
        ui["gen_info"] = gr.Markdown()


def perplexity_rows(session: Session) -> tuple[list[str], list[list[Any]]]:
    """Return the perplexity table's header and rows: A, B, ensemble (and merged).

    Columns: per domain the perplexity and the bits per byte, then the parameters (effective).
    A merge not scored yet has empty cells.
    """
    sizes = session.reference_sizes or {}
    models = [(label, session.baseline.get(key), sizes.get(label)) for label, key in MODELS]
    if session.result is not None:
        models.append(("merged", session.merged_metrics, session.merged_size))
    domains = list(
        dict.fromkeys(
            d
            for _, scores, _ in models
            if isinstance(scores, dict)
            for d, v in scores.items()
            if isinstance(v, dict)
        )
    )
    header = ["model"]
    for d in domains:
        header += [f"{d} perplexity", f"{d} bits/byte"]
    rows = []
    for label, scores, size in models:
        row: list[Any] = [label]
        for d in domains:
            one = scores.get(d) if isinstance(scores, dict) else None
            one = one if isinstance(one, dict) else {}
            row += [_number(one.get("perplexity")), _number(one.get("bits_per_byte"))]
        rows.append([*row, (size or {}).get("parameters")])
    return [*header, "parameters"], rows


def _number(value: Any) -> Any:
    """Return a score for a table; a non-finite one as text (tables take no inf/NaN)."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else str(value)


def perplexity_table(session: Session) -> tuple[list[str], list[list[Any]], dict[str, int]]:
    """Return the perplexity table: header, rows and the decimals of its score columns (the
    task's for perplexity, 4 for bits per byte), as the page and the slides' CSV show it."""
    header, rows = perplexity_rows(session)
    digits = {
        h: session.task.score_digits if h.endswith(" perplexity") else BITS_DIGITS
        for h in header
        if h.endswith((" perplexity", " bits/byte"))
    }
    return header, rows, digits


def perplexity_views(session: Session) -> dict[str, Any]:
    """Return the perplexity table, the collapse alarm (shown only when raised) and a summary."""
    header, rows, digits = perplexity_table(session)
    task, alarm = session.task, labels.alarm_line(labels.merge_alarms(session))
    scored = [(label, session.baseline.get(key)) for label, key in MODELS]
    if session.result is not None:
        scored.append(("merged", session.merged_metrics))
    heads = [(label, task.headline(scores)) for label, scores in scored]
    means = ", ".join(f"{label} {task.score_text(v)}" for label, v in heads)
    label = labels.metric_label(task)  # the task's metric is already a mean (of perplexity)
    info = f"**{label[0].upper()}{label[1:]}**: {means}."
    merged = session.merged_metrics
    if session.result is not None and merged is None:
        info += " The merge is not scored yet: press Refresh evaluation."
    elif isinstance(merged, dict) and merged.get("repetition") is not None:
        info += (
            f" Repetition of the merge's greedy text: {merged['repetition']:.2f} (share of "
            "repeated 4-grams in its continuations of fixed prompts)."
        )
    elif session.result is None:
        info += " Merge (Zip tab) to add the merged model."
    return {
        "lm_scores": gr.update(
            value=tables.table(header, rows, digits),
            headers=header,
        ),
        "lm_alarm": gr.update(value=alarm, visible=bool(alarm)),
        "lm_info": info,
    }


def shown(text: str) -> str:
    """Return a continuation as its cell shows it: an empty one, or one made only of whitespace,
    says so (an empty-looking cell reads as a failure), counting line breaks and other blanks."""
    if not text:
        return "(nothing: it ended at once)"
    if text.strip():
        return text
    breaks = text.count("\n")
    counts = ((breaks, "line break"), (len(text) - breaks, "blank"))
    parts = [f"{n} {word}{'s' if n != 1 else ''}" for n, word in counts if n]
    return f"(whitespace only: {', '.join(parts)})"


def generation_views(session: Session) -> dict[str, Any]:
    """Return the last generations side by side (a row per prompt) and what they came from."""
    done = session.generations
    if not done:
        return {
            "gen_view": None,
            "gen_info": "Type prompts and press Generate: A, B and the merge continue each.",
        }
    texts = done["texts"]
    rows = [
        [prompt, *(shown(texts[m][k]) if m in texts else "—" for m in ("A", "B", "merged"))]
        for k, prompt in enumerate(done["prompts"])
    ]
    how = f"sampled with seed {done['seed']}" if done["sample"] else "greedy"
    if done["merge"] is None:
        info = f"Continuations of A and B ({how}); merge to add the merged model's."
    elif done["merge"] != session.merge_count:
        info = (
            f"Continuations ({how}) of merge #{done['merge']}; the current merge is "
            f"#{session.merge_count}: press Generate again to see its text."
        )
    else:
        info = f"Continuations ({how}) by A, B and merge #{done['merge']}."
    return {
        "gen_view": gr.update(value=rows, headers=["prompt", "A", "B", "merged"]),
        "gen_info": info,
    }


def on_generate(
    session: Session,
    res: Resources,
    typed: str | None,
    mode: str | None,
    seed: float | None,
    progress=None,
) -> str:
    """Continue typed prompts with A, B and the merge, side by side (api: /generate)."""
    work.require_prepared(session)
    task = session.task
    if GENERATIONS not in task.panels:
        raise ConfigError(
            f"{task.title} models do not generate text: load two causal language models"
        )
    if mode not in GEN_MODES:
        raise ConfigError(f"decoding {mode!r} is unknown: choose {' or '.join(GEN_MODES)}")
    if seed is not None and not (math.isfinite(seed) and float(seed).is_integer()):
        raise ConfigError(f"seed {seed} is not a whole number from 0 to 2**63 - 1: type 0 or 7")
    check_seed(int(seed or 0), "seed")
    sample = mode == "sampled"
    done = work.generate(session, parse_lines(typed), sample, int(seed or 0), GEN_TOKENS, progress)
    how = f"sampled (seed {int(seed or 0)})" if sample else "greedy"
    merged = "" if "merged" in done["texts"] else " Merge to add the merged model."
    count = len(done["prompts"])
    return f"Generated {how} continuations of {count} prompt{'' if count == 1 else 's'}.{merged}"
