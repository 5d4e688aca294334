"""The measures benchmark's summary: which measure aligned better, per pair and per group."""

from __future__ import annotations

import torch

from heterogui.bench.measures import render, summarise
from heterogui.sizes import batch_flops


def _draw(scores: dict[str, float], slots: dict[str, list[list[int]]]) -> dict:
    return {
        key: {"slots": slots[key], "score": value, "metrics": {"m": value}}
        for key, value in scores.items()
    }


def test_the_summary_says_better_worse_or_same_in_the_pairs_direction():
    keys = ("sma|outputs", "lma|outputs", "sma|updates", "lma|updates")
    slots = {k: [[0, 1, 3]] for k in keys}
    moved = dict(slots, **{"sma|updates": [[0, 2, 3]]})
    draws = [
        _draw(dict(zip(keys, (10.0, 20.0, 30.0, 20.0), strict=True)), slots),
        _draw(dict(zip(keys, (12.0, 20.0, 34.0, 20.0), strict=True)), moved),
    ]
    lower = summarise(draws, higher=False)["rows"]  # perplexities: 32 is worse than 11
    assert lower["sma|updates"]["score"] == 32.0 and lower["sma|updates"]["std"] > 0
    assert not lower["sma|updates"]["better"] and lower["lma|updates"]["same"]
    higher = summarise(draws, higher=True)
    assert higher["rows"]["sma|updates"]["better"]
    report = {"pairs": {"decoder-pair": higher}, "threads": 1, "seconds": 1.0}
    text = render(report, "heterogui bench measures")
    assert "| decoder-pair | SMA | 0,1,3 | 11 ± 1.4 | 0,1,3 / 0,2,3 | 32 ± 2.8 | better |" in text
    assert "| decoder-pair | LMA | 0,1,3 | 20 | 0,1,3 | 20 | same |" in text
    assert "- decoders: updates align better on 1, the same on 1, worse on 0 of 2" in text


def test_batch_flops_counts_every_linear_and_conv_multiply_add_of_the_batches():
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.Flatten(), torch.nn.Linear(4 * 5 * 5, 6)
    )
    batches = [torch.randn(2, 3, 5, 5), torch.randn(3, 3, 5, 5)]
    per_input = 4 * 5 * 5 * (3 * 3 * 3) + 6 * 100  # conv outputs x 27, linear outputs x 100
    assert batch_flops(net, batches, "cpu") == 2 * 5 * per_input
    assert net.training  # left in the mode it had
