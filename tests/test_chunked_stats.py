"""Statistics collected part by part within a memory budget give the merge of one pass."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_decoder
from test_decoder import batches

import heterogui.pipeline as pipeline
from heterogui.models.hf.decoder_io import network_from_hf
from heterogui.pipeline import ZipSettings, prepare, zip_prepared


@pytest.mark.parametrize(
    "settings",
    [
        ZipSettings(rho=0.5),
        ZipSettings(rho=1.0, stop=3),
        ZipSettings(rho=0.5, fusion="least_squares"),
    ],
)
def test_a_merge_within_a_statistics_budget_equals_the_one_pass_merge(settings, monkeypatch):
    deep = network_from_hf(tiny_decoder(hidden=48, layers=4, heads=6, kv=2, inter=80, seed=1))
    wide = network_from_hf(tiny_decoder(hidden=72, layers=2, heads=9, kv=3, inter=96, seed=2))
    calib = batches()
    whole = zip_prepared(prepare(deep, wide, calib, device="cpu"), settings)
    passes = []
    collect = pipeline.collect_moments
    monkeypatch.setattr(
        pipeline,
        "collect_moments",
        lambda *a, **k: passes.append(k.get("spaces")) or collect(*a, **k),
    )
    budget = 200_000  # bytes: a few merge points at a time
    prepared = prepare(deep, wide, calib, device="cpu", stats_budget=budget)
    assert prepared.stats == {}  # nothing held between zips
    parts = zip_prepared(prepared, settings)
    assert len(passes) > 2 and all(p for p in passes)
    assert set().union(*passes) >= {"stream", "layer0.q", "layer0.mlp"}
    assert parts.widths() == whole.widths()
    for space, match in whole.matches.items():
        assert torch.equal(match.groups, parts.matches[space].groups), space
    one, other = whole.model.state_dict(), parts.model.state_dict()
    assert all(torch.equal(one[k], other[k]) for k in one)


def test_the_cli_merge_within_a_tiny_budget_writes_the_same_model(tmp_path, monkeypatch):
    from safetensors.torch import load_file
    from test_decoder import write_recipe

    from heterogui.cli import main

    recipe = write_recipe(tmp_path, zip={"rho": 0.5})
    assert main(["merge", str(recipe), "--out", str(tmp_path / "one")]) == 0
    monkeypatch.setenv("HETEROGUI_STATS_BUDGET_MB", "0.2")
    assert main(["merge", str(recipe), "--out", str(tmp_path / "two")]) == 0
    one = load_file(str(tmp_path / "one" / "model.safetensors"))
    two = load_file(str(tmp_path / "two" / "model.safetensors"))
    assert one.keys() == two.keys() and all(torch.equal(one[k], two[k]) for k in one)
    for budget in ("lots", "inf", "0", "-5"):  # inf failed with an OverflowError's traceback
        monkeypatch.setenv("HETEROGUI_STATS_BUDGET_MB", budget)
        assert main(["merge", str(recipe), "--out", str(tmp_path / "three")]) == 2
        assert not (tmp_path / "three").exists()


@pytest.mark.parametrize("n_batches", [4, 40])
def test_the_statistics_a_pass_holds_stay_within_what_the_budget_counts(n_batches, monkeypatch):
    """What pass_bytes counts bounds the moments' buffers throughout a pass."""
    from heterogui.align.pad import pad_network
    from heterogui.zip import collect
    from heterogui.zip.stats import Moments

    deep = network_from_hf(tiny_decoder(hidden=48, layers=4, heads=6, kv=2, inter=80, seed=1))
    wide = network_from_hf(tiny_decoder(hidden=72, layers=2, heads=9, kv=3, inter=96, seed=2))
    wide = pad_network(wide, ((0, 1),), (4,))
    calib = (batches(n_batches) * 3)[:n_batches]
    live: list[Moments] = []
    peak = [0]

    def held() -> int:
        total = 0
        for m in live:
            tensors = (m.total, m._pending.product, m._outer, m._corr, m._sigma, m._squares)
            total += sum(t.numel() * t.element_size() for t in tensors if t is not None)
        return total

    def watched(name):
        method = getattr(Moments, name)

        def run(self, *args, **kwargs):
            if self not in live:
                live.append(self)
            out = method(self, *args, **kwargs)
            extra = sum(t.numel() * t.element_size() for t in out) if name == "_correlation" else 0
            peak[0] = max(peak[0], held() + extra)  # a correlation being formed counts too
            return out

        monkeypatch.setattr(Moments, name, run)

    for name in ("_accumulate", "settle", "_correlation", "compact"):
        watched(name)
    stats = collect.collect_moments((deep, wide), calib)
    ga, gb = deep.graph(), wide.graph()
    spaces = collect.shared_spaces((ga, gb))
    counted = collect.pass_bytes(ga, gb, spaces, len(calib))
    assert all(m.compacted for m in stats.values())
    assert counted / 3 < peak[0] <= counted  # a bound, and not a loose one
