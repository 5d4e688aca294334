"""Benchmark rows over calibration draws (bench.seeds) and the tables that print them."""

from __future__ import annotations

import statistics

import pytest

from heterogui.bench.decoders_report import table
from heterogui.bench.seeds import SPREAD, PerSeed, over_seeds
from heterogui.bench.transformers import markdown


def _rows(seed: int) -> list[dict]:
    return [
        {"model": "A", "spearman": 0.9, "params_M": 22.5, "layers": 6},
        {
            "model": "merge sma",
            "spearman": [0.84, 0.85, 0.87][seed],
            "params_M": 22.5,
            "B slots": [[0, 1, 5], [0, 1, 5], [0, 4, 5]][seed],
            "alarms": [],
        },
    ]


def test_numbers_become_means_with_their_spread_and_other_cells_per_draw():
    rows = over_seeds(_rows, range(3))
    parent, merged = rows
    assert parent == _rows(0)[0]  # the same on every draw: no spread
    assert merged["spearman"] == pytest.approx(statistics.fmean([0.84, 0.85, 0.87]))
    assert merged[SPREAD]["spearman"] == pytest.approx(statistics.stdev([0.84, 0.85, 0.87]))
    assert isinstance(merged["B slots"], PerSeed)
    assert merged["B slots"] == [[0, 1, 5], [0, 1, 5], [0, 4, 5]]
    assert merged["alarms"] == []  # the same on every draw: kept as it is
    assert over_seeds(_rows, [1]) == [
        {k: v for k, v in row.items()} for row in _rows(1)
    ]  # one draw: the rows themselves, no spread


def test_the_tables_print_mean_and_spread_and_each_draws_value():
    rows = over_seeds(_rows, range(3))
    text = markdown(rows).splitlines()
    assert text[0] == "| model | spearman | params_M | layers | B slots | alarms |"
    assert (
        "| merge sma | 0.853 ± 0.015 | 22.500 | — | [0, 1, 5] / [0, 1, 5] / [0, 4, 5] | [] |"
        in text
    )
    decoder_rows = [
        {"model": "merge", "python-docs ppl": p, "slots_b": s, "alarms": []}
        for p, s in ((600.0, [0, 1]), (610.0, [0, 3]))
    ]
    printed = table(over_seeds(lambda k: [decoder_rows[k]], range(2)))
    assert "| merge | 0, 1 / 0, 3 | 605.0 ± 7.1 | none |" in printed.splitlines()


def test_draws_must_give_the_same_rows():
    with pytest.raises(ValueError, match="rows differ"):
        over_seeds(lambda seed: [{"model": f"row {seed}"}], range(2))
    with pytest.raises(ValueError, match="at least one seed"):
        over_seeds(_rows, [])


def gpt2_report(rows, **build) -> dict:
    """Return a decoder report with only the GPT-2 pair's table: ``rows(seed)`` over two draws,
    both models of a 4-layer, width-192 shape with ``build``'s extra facts."""
    shape = {"layers": 4, "hidden": 192, "heads": 3, "kv_heads": 1, "intermediate": 512}
    return {
        "command": "heterogui bench decoders --skip-pair --skip-smollm2 --seeds 2",
        "environment": {"threads": 1, "python": "3.11", "torch": "t", "transformers": "x"},
        "sizes": {"calibration": 32, "evaluation": 48, "smollm2_evaluation": 8},
        "seconds": 60.0,
        "gpt2": {
            "rows": over_seeds(rows, range(2)),
            "seeds": 2,
            "build": {w: {"shape": shape, "num_params": 2e7, **build} for w in "ab"},
            "calibration_texts": 32,
            "evaluation_texts_per_domain": 48,
            "seconds": 50.0,
        },
    }


def test_the_decoder_report_prints_the_gpt2_pair_with_its_heads_split_rows():
    from heterogui.bench.decoders_report import render_markdown

    def rows(seed: int) -> list[dict]:
        scores = {"python-docs ppl": 200.0 + seed, "python-source ppl": 500.0, "alarms": []}
        return [
            {"model": "A: GPT-2 trained on python-docs (prose)", **scores},
            {"model": "B: GPT-2 trained on python-source", **scores},
            {"model": "ensemble (mean of A's and B's probabilities)", **scores},
            {"model": "merge SMA rho=1, heads split", **scores, "python-docs ppl": 400.0 - seed},
        ]

    text = render_markdown(gpt2_report(rows, build_seconds=90.0, positions=160))
    assert "## The trained pair as GPT-2 models" in text
    intro = text.split("## The trained pair as GPT-2 models")[1].split("| model |")[0]
    assert "A: 4 layers, width 192, 3 heads, MLP 512, 20.0 M parameters" in intro
    assert "key/value" not in intro  # GPT-2 has one key/value head per query head
    assert "learned positions of a 160-token table" in intro  # the build marker's setting
    assert "| merge SMA rho=1, heads split |" in text and "399.5 ± 0.7" in text
    assert "| GPT-2 pair | merge SMA rho=1, heads split | none |" in text


def test_a_decoder_report_renders_the_same_from_its_json():
    """Columns that differ between draws (one value per draw) print the same after a JSON
    round trip, where their per-draw lists become plain lists."""
    import json

    from heterogui.bench.decoders_report import render_markdown

    def rows(seed: int) -> list[dict]:
        alarms = ["python-docs: perplexity 900.0 is 3.0x the worse parent's 300.0"] if seed else []
        return [
            {"model": "A: GPT-2 trained on python-docs (prose)", "python-docs ppl": 200.0},
            {
                "model": "merge SMA rho=1",
                "slots_b": [0, 3] if seed else [0, 1],
                "python-docs ppl": 400.0 - seed,
                "alarms": alarms,
            },
        ]

    report = gpt2_report(rows, build_seconds=9.0)
    text = render_markdown(report)
    assert "| 0, 1 / 0, 3 |" in text and "| none / python-docs: perplexity 900.0" in text
    assert render_markdown(json.loads(json.dumps(report))) == text
