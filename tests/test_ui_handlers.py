"""Workbench handlers as plain functions (no server): load, align, zip, merge, evaluate, export.

Runs on the zoo's tiny pairs (built in seconds, then cached). The handlers take a Session and the
shared Resources, change the session and return a status message, or raise a HeteroguiError and
leave the session as it was.
"""

from __future__ import annotations

import dataclasses
import json
import re
import threading
import warnings
from contextlib import nullcontext
from functools import partial
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
import torch
import yaml
from conftest import drawn, table_cells

from heterogui import pipeline, sizes
from heterogui.align.alignment import layer_pairs
from heterogui.cache import cache_path
from heterogui.config import DEFAULT_RIDGE
from heterogui.errors import AlignmentError, Cancelled, ConfigError, ExportError, HeteroguiError
from heterogui.models.family import build_network
from heterogui.models.headers import read_safetensors_header
from heterogui.models.io import save_network
from heterogui.models.resnet import cifar_resnet
from heterogui.progress import STAGE_LABELS
from heterogui.sources import registry
from heterogui.sources.folder import load_merged
from heterogui.tasks.classification import evaluate_models
from heterogui.ui import (
    app,
    events,
    fig_neuron_hist,
    fig_neurons,
    tab_align,
    tab_compare,
    tab_evaluate,
    tab_export,
    tab_models,
    tab_neurons,
    tab_zip,
    tables,
    views,
    work,
    zip_overrides,
    zip_readout,
)
from heterogui.ui.heavy_slots import HeavySlots
from heterogui.ui.resources import Resources, ZooPairs
from heterogui.ui.session import Session
from heterogui.ui.summary import session_summary
from heterogui.zip.matchers import zip_match

pytestmark = pytest.mark.ui
PAIR = "tiny-digits-vgg-depth"


@pytest.fixture(scope="module")
def res(tmp_path_factory) -> Resources:
    exports = tmp_path_factory.getbasetemp()  # every test's tmp_path lies below it
    return Resources(ZooPairs(tiny=True), device="cpu", default_pair=PAIR, export_root=exports)


@pytest.fixture()
def session(res: Resources) -> Session:
    s = Session(device="cpu")
    message, extra = tab_models.on_start(s, res)
    assert "Loaded demo pair" in message and extra["tabs"] is not None
    return s


def is_fig(value) -> bool:
    return type(value).__name__ == "Figure"


def merge(
    session: Session,
    res: Resources,
    rho=1.0,
    alpha=0.5,
    beta=1.0,
    stop=None,
    fusion="auto",
    heads="auto",
) -> str:
    stop = work_blocks(session) if stop is None else stop
    return tab_zip.on_merge(
        session, res, "zip", alpha, beta, rho, stop, "cpu", fusion, False, heads
    )


def test_tables_show_each_rows_decimals_and_keep_numbers():
    # a history that met two tasks: each row's scores with its own task's decimals
    header = ["merge", "pair", "Joint", "Spearman", "rho", "renormalize", "parameters"]
    rows = [
        [1, "digits", 96.0, None, 1.0, False, 1234567],
        [2, "minilm", None, 0.87101, 0.5, True, 22713216],
    ]
    shown = tables.table(header, rows, dict.fromkeys(["Joint", "Spearman"], [2, 4]))
    assert table_cells(shown) == rows  # numbers, which sort as numbers
    assert table_cells(shown, shown=True) == [
        ["1", "digits", "96.00", "", "1", "false", "1,234,567"],
        ["2", "minilm", "", "0.8710", "0.5", "true", "22,713,216"],
    ]
    assert tables.table(header, []) is None


def work_blocks(session: Session) -> int:
    return session.prepared.padded_a.graph().num_blocks - 1


def test_start_opens_the_demo_pair_and_every_tab_renders(session, res):
    assert session.demo == PAIR and session.prepared is not None
    page = views.render(session, res, views.SCOPES)
    assert set(page) >= {n for s in views.SCOPES for n in views.views_of(s)} - {"export_dir"}
    heatmap = page["heatmap"]
    assert [t.type for t in heatmap.data] == ["heatmap", "scatter"]
    assert "alignment path" in heatmap.data[1].name
    # a click or tap takes the cell under it, never the path's nearest marker; the cells on
    # the path say they are paired
    path = heatmap.data[1]
    assert path.hoverinfo == "skip"
    assert heatmap.layout.uirevision.startswith(f"{session.pair_name} |")  # a zoom's owner
    on_path = {(int(a), int(b)) for a, b in zip(path.y, path.x, strict=True)}
    texts = heatmap.data[0].text
    assert on_path and all(
        ("paired" in texts[i][j]) == ((i, j) in on_path)
        for i in range(len(texts))
        for j in range(len(texts[0]))
    )
    cka = [v for row in heatmap.data[0].z for v in row]  # colours span the pair's own range
    assert (heatmap.data[0].zmin, heatmap.data[0].zmax) == (min(cka), max(cka))
    assert all(drawn(v, "paper_bgcolor") == "rgba(0,0,0,0)" for v in page.values() if is_fig(v))
    assert "Compatible" in page["verdict"]
    assert page["segments"] and all(len(row) == 4 for row in page["segments"])
    assert "estimate" in page["readout"]
    assert [r[0] for r in table_cells(page["metrics"])] == ["A", "B", "ensemble"]
    # VGG models: their scores are of the BatchNorm the analysis re-estimated, and it says so
    assert page["metrics"]["label"].endswith(
        "statistics re-estimated on the calibration data, as the merge reads them"
    )


def test_alignment_modes_and_a_hand_edited_mapping(session, res):
    for mode in ("lma", "uniform", "head", "head_tail", "sma"):
        assert mode in tab_align.on_mode(session, res, mode, None)
        assert session.prepared.alignment.mode == mode
    mapping = session.prepared.alignment.mapping()
    shallow = "a" if len(mapping["a"][0]) < len(mapping["b"][0]) else "b"
    edited = json.loads(json.dumps(mapping))
    edited[shallow][0] = [0, 1] if edited[shallow][0] != [0, 1] else [0, 2]
    tab_align.on_mapping(session, res, json.dumps(edited))
    assert session.prepared.alignment.mapping() == edited
    assert session.prepared.alignment.mode == "manual"
    view = tab_align.render(session, res)
    assert json.loads(view["mapping"]) == edited
    assert f"{session.prepared.alignment.score:.3f}" in view["align_score"]


def test_a_mode_that_places_the_layers_alike_keeps_the_merge(session, res, tmp_path):
    tab_align.on_mode(session, res, "sma", None)
    merge(session, res, rho=0.5)
    merged = session.result
    same = json.dumps(session.prepared.alignment.mapping())
    tab_align.on_mode(session, res, "manual", same)  # the same placement, another mode
    assert session.prepared.alignment.mode == "manual" and session.result is merged
    message, _ = tab_export.on_export(session, res, str(tmp_path / "out"), False)
    assert "It holds merge #" in message  # not refused as made before the alignment changed
    recipe = yaml.safe_load((tmp_path / "out" / "recipe.yaml").read_text())
    assert recipe["alignment"]["mode"] == "sma"  # the merge's own, which repeats it


def test_switching_back_to_an_alignment_reuses_its_statistics(session, res, monkeypatch):
    first = session.prepared
    assert first.alignment.mode == "sma"
    merge(session, res)
    before = {k: v.clone() for k, v in session.result.model.state_dict().items()}
    placement = lambda p: (p.alignment.positions_a, p.alignment.positions_b)  # noqa: E731
    other = next(
        m
        for m in ("lma", "uniform", "head")
        if "statistics recomputed" in tab_align.on_mode(session, res, m, None)
    )
    second = session.prepared
    assert placement(second) != placement(first)

    def forbidden(*args, **kwargs):
        raise AssertionError("a placement visited before must not run the models again")

    monkeypatch.setattr(work, "realign", forbidden)
    assert "from before, no new pass" in tab_align.on_mode(session, res, "sma", None)
    assert session.prepared is first
    assert "from before, no new pass" in tab_align.on_mode(session, res, other, None)
    assert session.prepared is second
    tab_align.on_mode(session, res, "sma", None)
    merge(session, res)
    again = session.result.model.state_dict()
    assert all(torch.equal(before[k], again[k]) for k in before)
    # nothing is kept beyond half the statistics budget: then the pass runs again
    monkeypatch.undo()
    monkeypatch.setenv("HETEROGUI_STATS_BUDGET_MB", "0.000001")
    session.kept.clear()
    session.result = None
    tab_align.on_mode(session, res, other, None)  # session.visited: within 1 byte, none
    assert session.visited == []
    assert "statistics recomputed" in tab_align.on_mode(session, res, "sma", None)


@pytest.mark.parametrize(
    "text, words",
    [
        ('{"a": [[0, 0], [0, 1]], "b": [[0, 1, 2], [0, 1, 2]]}', "not monotone"),
        ('{"a": [[0, 1], [0, 1]], "b": [[0, 2, 1], [0, 1, 2]]}', "must keep every slot"),
        ("not a mapping at all: [", "mapping"),
        ('{"a": [[0]], "b": [[0]]}', "stage"),
    ],
)
def test_a_bad_mapping_is_refused_and_the_old_one_kept(session, res, text, words):
    before = session.prepared
    with pytest.raises(AlignmentError, match=words):
        tab_align.on_mapping(session, res, text)
    assert session.prepared is before


def test_knobs_that_did_not_change_keep_the_status_line(session, res):
    """A dropdown left without a choice (or tabbed through) sends the same knobs again: the
    status line is kept, not replaced by "Settings changed"."""
    n = work_blocks(session)
    said = tab_zip.on_knobs(session, res, "zip", 0.5, 1.0, 0.6, n)
    assert said.startswith("Settings changed") and session.settings.rho == 0.6
    assert tab_zip.on_knobs(session, res, "zip", 0.5, 1.0, 0.6, n) is None
    assert tab_zip.on_knobs(session, res, "zip", 0.5, 1.0, 0.7, n).startswith("Settings changed")


def test_estimate_predicts_the_merge(session, res):
    n = work_blocks(session)
    for rho, stop in ((1.0, n), (0.5, n), (0.0, n), (0.7, n - 1), (1.0, 1)):
        tab_zip.on_knobs(session, res, "zip", 0.5, 1.0, rho, stop)
        est = sizes.estimate(session.prepared, session.settings)
        merge(session, res, rho=rho, stop=stop)
        assert est["widths"] == session.result.widths()
        assert est["parameters"] == sum(p.numel() for p in session.result.model.parameters())
        assert est["flops"] == session.merged_size["stored_flops"]
        exact = sizes.merge_size(session.result)  # the matchings count the shared groups
        assert est["effective"] == {k: exact[k] for k in ("parameters", "flops")}
    zip_overrides.on_set_override(session, res, "block0", None, 5)
    est = sizes.estimate(session.prepared, session.settings)
    tab_zip.on_merge(session, res, "zip", 0.5, 1.0, 1.0, n, "cpu")
    assert est["widths"]["block0"][2] == session.result.widths()["block0"][2] == 5
    table = tab_zip.render(session, res)["widths_table"]
    assert "width=5" in str(table)
    # each point inside a block says whose layers it merges (an identity layer's width too)
    named = [re.fullmatch(r"(\S+) \(A(\d+| identity) ↔ B(\d+| identity)\)", r[0]) for r in table]
    assert named[0] and named[0][1] == "block0" and sum(map(bool, named)) > 1
    assert all(m or row[0].endswith("stream") for m, row in zip(named, table, strict=True))
    zip_overrides.on_clear_overrides(session, res)
    assert session.settings.overrides == {}
    # the page's boxes send text: blank is "not given" (a number box sent 0, read as a width)
    zip_overrides.on_set_override(session, res, "block0", "0.2", "")
    assert session.settings.overrides == {"block0": {"rho": 0.2}}
    zip_overrides.on_set_override(session, res, "block0", " ", "5")
    assert session.settings.overrides == {"block0": {"width": 5}}
    zip_overrides.on_set_override(session, res, "block0", "", "")
    assert session.settings.overrides == {}
    with pytest.raises(ConfigError, match="rho 'abc' is not a number; type one or leave it"):
        zip_overrides.on_set_override(session, res, "block0", "abc", None)


def test_make_settings_takes_the_fusion_and_refuses_an_unknown_one():
    plain = work.make_settings("zip", 0.5, 1.0, 0.5, 3, None, 4)
    assert (plain.fusion, plain.ridge, plain.stop) == ("auto", DEFAULT_RIDGE, 3)
    fitted = work.make_settings("zip", 0.5, 1.0, 0.5, 4, None, 4, fusion="least_squares")
    assert (fitted.fusion, fitted.ridge, fitted.stop) == ("least_squares", DEFAULT_RIDGE, None)
    assert fitted == dataclasses.replace(plain, fusion="least_squares", stop=None)
    ridged = work.make_settings("zip", 0.5, 1.0, 0.5, 3, None, 4, "least_squares", 0.1)
    assert ridged.ridge == 0.1
    with pytest.raises(ConfigError, match="fusion 'magic' is unknown"):
        work.make_settings("zip", 0.5, 1.0, 0.5, 3, None, 4, fusion="magic")
    for ridge in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ConfigError, match="ridge"):
            work.make_settings("zip", 0.5, 1.0, 0.5, 3, None, 4, "least_squares", ridge)


def test_a_slider_sent_nan_by_a_script_is_refused_in_one_line(session, res):
    # the page's sliders never send NaN, a script over the HTTP API may: int() failed with an
    # "Unexpected error (ValueError)" where alpha, beta and rho were refused by name
    for value in (float("nan"), float("inf")):
        with pytest.raises(ConfigError, match=f"stop = {value} is not a finite number"):
            work.make_settings("zip", 0.5, 1.0, 0.5, value, None, 4)
        with pytest.raises(ConfigError, match=f"stop = {value} is not a finite number"):
            tab_zip.on_knobs(session, res, "zip", 0.5, 1.0, 0.5, value)
        with pytest.raises(
            ConfigError, match=f"calibration inputs = {value} is not a finite number"
        ):
            tab_models.on_analyse(session, res, "digits", None, value)
    assert work.whole(3.0, "stop") == 3


def test_least_squares_fusion_from_the_zip_tab_to_compare_and_a_recipe(session, res, tmp_path):
    n = work_blocks(session)
    merge(session, res, rho=0.5, fusion="average")
    average = {k: v.clone() for k, v in session.result.model.state_dict().items()}
    # The dropdown changes the settings only (as the matcher does); Merge then uses them.
    tab_zip.on_knobs(session, res, "zip", 0.5, 1.0, 0.5, n, "least_squares")
    assert session.settings.fusion == "least_squares"
    assert session.result.settings.fusion == "average"
    assert "estimate" in tab_zip.render(session, res)["readout"]  # a merge is due
    with pytest.raises(ConfigError, match="fusion 'magic' is unknown"):
        tab_zip.on_knobs(session, res, "zip", 0.5, 1.0, 0.5, n, "magic")
    assert session.settings.fusion == "least_squares"  # a refused value changes nothing
    message = tab_zip.on_merge(session, res, "zip", 0.5, 1.0, 0.5, n, "cpu", "least_squares")
    assert "Merge #2 done" in message and "fusion: least squares (ridge 0.01)" in message
    assert session.result.settings.fusion == "least_squares"
    # Same pair, statistics and matching: the same shapes, other weights (the trunk's too).
    fitted = session.result.model.state_dict()
    assert session.result.widths() == session.details[1]["widths"]
    assert fitted.keys() == average.keys()
    assert all(fitted[k].shape == average[k].shape for k in fitted)
    changed = [k for k in fitted if not torch.equal(fitted[k], average[k])]
    assert any(k.startswith("trunk.") and k.endswith("weight") for k in changed)
    assert session.merged_metrics is not None
    # What each merge used shows wherever settings do.
    summary = session_summary(session)
    assert summary["settings"]["fusion"] == "least_squares"
    assert summary["settings"]["ridge"] == DEFAULT_RIDGE
    assert [h["fusion"] for h in summary["history"]] == ["average", "least_squares"]
    # one meaning per key: the merge's sizes as its history row counts them
    last = summary["history"][-1]
    assert summary["merged"]["parameters"] == last["parameters"] != last["stored parameters"]
    stored = sum(p.numel() for p in session.result.model.parameters())
    assert summary["merged"]["stored_parameters"] == last["stored parameters"] == stored
    assert [h["ridge"] for h in session.history] == [None, DEFAULT_RIDGE]
    labels = {number: label for label, number in tab_compare.merge_choices(session)}
    assert "least squares" in labels[2] and "least squares" not in labels[1]
    assert re.match(r"#2 · Joint % \d+\.\d\d · rho 0.5 alpha", labels[2]), labels[2]
    assert "Comparing merge #1 with #2" in tab_compare.on_compare(session, res, 1, 2)
    table = tab_compare.render(session, res)["compare_table"].splitlines()
    assert "| fusion | average | least_squares | differs |" in table
    assert "| ridge | — | 0.01 | differs |" in table
    history = tab_evaluate.render(session, res)["history"]
    column = history["headers"].index("fusion")
    assert [row[column] for row in table_cells(history)] == ["average", "least_squares"]
    assert zip_readout.knob_values(session)["fusion"] == "least_squares"
    # An exported recipe carries the fusion; importing it sets the dropdown again.
    tab_export.on_export(session, res, str(tmp_path / "fitted"), False)
    assert "fusion: least_squares" in (tmp_path / "fitted" / "recipe.yaml").read_text()
    other = Session(device="cpu")
    tab_export.on_import(other, res, str(tmp_path / "fitted" / "recipe.yaml"), None)
    assert other.settings.fusion == "least_squares" and other.settings.ridge == DEFAULT_RIDGE
    assert views.render(other, res, ("knobs",))["fusion"] == "least_squares"
    again = other.result.model.state_dict()
    assert all(torch.equal(fitted[k].cpu(), again[k].cpu()) for k in fitted)
    # A knob moved afterwards keeps the recipe's ridge (the tab has no ridge control).
    other.settings = dataclasses.replace(other.settings, ridge=0.5)
    tab_zip.on_knobs(other, res, "zip", 0.5, 1.0, 0.4, None, "least_squares")
    assert other.settings.ridge == 0.5 and other.settings.rho == 0.4
    # A slider release re-merges with the fusion the dropdown shows.
    tab_zip.on_release(session, res, True, "zip", 0.5, 1.0, 0.6, n, "cpu", "least_squares")
    assert session.result.settings.fusion == "least_squares" and session.history[-1]["rho"] == 0.6
    # Calls without the fusion take "auto": least squares for this VGG pair, and the knob
    # stays "auto" (another pair resolves it again); "average" is the paper's.
    tab_zip.on_merge(session, res, "zip", 0.5, 1.0, 0.5, n, "cpu")
    assert session.result.settings.fusion == "least_squares" and session.settings.fusion == "auto"
    assert all(torch.equal(session.result.model.state_dict()[k], fitted[k]) for k in fitted)
    assert "estimate" not in tab_zip.render(session, res)["readout"]  # the merge's own sizes
    merge(session, res, rho=0.5, fusion="average")
    assert all(torch.equal(session.result.model.state_dict()[k], average[k]) for k in average)


def test_make_settings_takes_the_renormalization():
    plain = work.make_settings("zip", 0.5, 1.0, 0.5, 3, None, 4)
    assert plain.renormalize is False
    fixed = work.make_settings("zip", 0.5, 1.0, 0.5, 3, None, 4, renormalize=True)
    assert fixed.renormalize is True
    assert fixed == dataclasses.replace(plain, renormalize=True)
    both = work.make_settings("zip", 0.5, 1.0, 0.5, 3, None, 4, "least_squares", 0.1, True)
    assert (both.fusion, both.ridge, both.renormalize) == ("least_squares", 0.1, True)


def test_renormalize_from_the_zip_tab_to_compare_history_and_summary(session, res):
    """On the BatchNorm demo pair the switch is carried everywhere and changes no weight."""
    n = work_blocks(session)
    merge(session, res, rho=0.5, fusion="average")
    plain = {k: v.clone() for k, v in session.result.model.state_dict().items()}
    # The checkbox changes the settings only (as the dropdowns do); Merge then uses them.
    tab_zip.on_knobs(session, res, "zip", 0.5, 1.0, 0.5, n, "average", True)
    assert session.settings.renormalize is True
    assert session.result.settings.renormalize is False
    assert "estimate" in tab_zip.render(session, res)["readout"]  # a merge is due
    assert "renormalize True" in tab_models.carried_knobs(session)
    message = tab_zip.on_merge(session, res, "zip", 0.5, 1.0, 0.5, n, "cpu", "average", True)
    assert "Merge #2 done" in message and "fusion:" not in message
    assert "renormalize: no LayerNorm/RMSNorm or value outputs to rescale" in message
    assert session.result.settings.renormalize is True
    assert "renormalize" in session.result.timings
    # VGG has BatchNorm only: nothing to rescale, the same weights (BN re-estimation's job).
    fixed = session.result.model.state_dict()
    assert fixed.keys() == plain.keys()
    assert all(torch.equal(fixed[k], plain[k]) for k in plain)
    # What each merge used shows wherever settings do.
    summary = session_summary(session)
    assert summary["settings"]["renormalize"] is True
    assert [h["renormalize"] for h in summary["history"]] == [False, True]
    labels = {number: label for label, number in tab_compare.merge_choices(session)}
    assert "renormalized" in labels[2] and "renormalized" not in labels[1]
    tab_compare.on_compare(session, res, 1, 2)
    table = tab_compare.render(session, res)["compare_table"].splitlines()
    assert "| renormalize | off | on | differs |" in table
    history = tab_evaluate.render(session, res)["history"]
    column = history["headers"].index("renormalize")
    assert [row[column] for row in table_cells(history)] == [False, True]
    assert zip_readout.knob_values(session)["renormalize"] is True
    assert views.render(session, res, ("knobs",))["renormalize"] is True
    # A slider release re-merges with the switch the checkbox shows, the fusion with it.
    tab_zip.on_release(session, res, True, "zip", 0.5, 1.0, 0.6, n, "cpu", "least_squares", True)
    last = session.result.settings
    assert (last.fusion, last.renormalize, last.rho) == ("least_squares", True, 0.6)
    tab_zip.on_release(session, res, False, "zip", 0.5, 1.0, 0.7, n, "cpu", "average", False)
    assert session.settings.renormalize is False and session.result.settings.renormalize
    # Calls without it (scripts written before it) merge without renormalization.
    merge(session, res, rho=0.5)
    assert session.result.settings.renormalize is False
    assert [h["renormalize"] for h in session.history] == [False, True, True, False]


def test_renormalize_changes_a_vit_merge_and_survives_a_recipe(res, tmp_path):
    vit = Session(device="cpu")
    tab_models.on_load_pair(vit, res, "tiny-digits-vit-depth")
    n = work_blocks(vit)
    merge(vit, res, rho=0.5)
    plain = {k: v.clone() for k, v in vit.result.model.state_dict().items()}
    message = tab_zip.on_merge(vit, res, "zip", 0.5, 1.0, 0.5, n, "cpu", "average", True)
    assert "Merge #2 done" in message and "renormalized " in message
    assert "to the parents' average statistics" in message and "renormalize:" not in message
    # Same statistics and matching: the same shapes, other weights (the norms it rescaled).
    fixed = vit.result.model.state_dict()
    assert vit.result.widths() == vit.details[1]["widths"]
    assert fixed.keys() == plain.keys()
    assert all(fixed[k].shape == plain[k].shape for k in fixed)
    changed = [k for k in fixed if not torch.equal(fixed[k], plain[k])]
    assert changed and any("layernorm" in k for k in changed)
    assert vit.merged_metrics is not None
    assert [h["renormalize"] for h in vit.history] == [False, True]
    # An exported recipe carries the switch; importing it ticks the checkbox again.
    tab_export.on_export(vit, res, str(tmp_path / "fixed"), False)
    assert "renormalize: true" in (tmp_path / "fixed" / "recipe.yaml").read_text()
    other = Session(device="cpu")
    tab_export.on_import(other, res, str(tmp_path / "fixed" / "recipe.yaml"), None)
    assert other.settings.renormalize is True
    assert views.render(other, res, ("knobs",))["renormalize"] is True
    again = other.result.model.state_dict()
    assert all(torch.equal(fixed[k].cpu(), again[k].cpu()) for k in fixed)


def test_selected_heads_change_a_vit_merge_and_survive_a_recipe(res, tmp_path):
    vit = Session(device="cpu")
    tab_models.on_load_pair(vit, res, "tiny-digits-vit-depth")
    n = work_blocks(vit)
    merge(vit, res, fusion="average", heads="pair")
    plain = {k: v.clone() for k, v in vit.result.model.state_dict().items()}
    # The dropdown changes the settings only; Merge then uses them.
    tab_zip.on_knobs(vit, res, "zip", 0.5, 1.0, 1.0, n, "average", False, "select")
    assert vit.settings.heads == "select" and vit.result.settings.heads == "pair"
    assert "heads select" in tab_models.carried_knobs(vit)
    message = tab_zip.on_merge(vit, res, "zip", 0.5, 1.0, 1.0, n, "cpu", "average", False, "select")
    assert "Merge #2 done" in message and "heads selected: " in message
    taken = [int(x) for x in message.split("heads selected: ")[1].split(";")[0].split()[::7][:2]]
    assert sum(taken) > 0  # merged head pairs, each counted once
    # The same matching and widths; the attention weights of the merged heads differ.
    fixed = vit.result.model.state_dict()
    assert vit.result.widths() == vit.details[1]["widths"]
    changed = [k for k in fixed if not torch.equal(fixed[k], plain[k])]
    assert any("attention.query" in k for k in changed)
    assert [h["heads"] for h in vit.history] == ["pair", "select"]
    assert session_summary(vit)["settings"]["heads"] == "select"
    labels = {number: label for label, number in tab_compare.merge_choices(vit)}
    assert "heads selected" in labels[2] and "heads selected" not in labels[1]
    tab_compare.on_compare(vit, res, 1, 2)
    assert "| heads | pair | select | differs |" in tab_compare.render(vit, res)["compare_table"]
    check_heads_round_trip(vit, res, tmp_path / "selected", "select")
    # A slider release re-merges with the dropdown's choice.
    tab_zip.on_release(vit, res, True, "zip", 0.5, 1.0, 0.5, n, "cpu", "average", False, "select")
    assert vit.result.settings.heads == "select"
    with pytest.raises(ConfigError, match="heads 'both' is unknown"):
        tab_zip.on_knobs(vit, res, "zip", 0.5, 1.0, 1.0, n, "average", False, "both")


def check_heads_round_trip(session: Session, res: Resources, folder, heads: str) -> None:
    """An exported recipe carries the heads; importing it sets the dropdown and merges again
    to the same weights."""
    tab_export.on_export(session, res, str(folder), False)
    assert f"heads: {heads}" in (folder / "recipe.yaml").read_text()
    other = Session(device="cpu")
    tab_export.on_import(other, res, str(folder / "recipe.yaml"), None)
    assert views.render(other, res, ("knobs",))["heads"] == heads
    fixed, again = session.result.model.state_dict(), other.result.model.state_dict()
    assert all(torch.equal(fixed[k].cpu(), again[k].cpu()) for k in fixed)


def test_split_heads_in_the_workbench_halve_every_head_and_survive_a_recipe(res, tmp_path):
    vit = Session(device="cpu")
    tab_models.on_load_pair(vit, res, "tiny-digits-vit-depth")
    n = work_blocks(vit)
    merge(vit, res, fusion="average", heads="pair")
    paired = vit.result
    tab_zip.on_knobs(vit, res, "zip", 0.5, 1.0, 1.0, n, "average", False, "split")
    estimated = zip_readout.readout(vit)
    assert not estimated["exact"]
    message = tab_zip.on_merge(vit, res, "zip", 0.5, 1.0, 1.0, n, "cpu", "average", False, "split")
    assert "Merge #2 done" in message
    assert "heads split: every head of A and B kept, cut from 8 to 4" in message
    split = vit.result
    config, before = split.spec.trunk_config, paired.spec.trunk_config
    assert config.head_dim == 4 and before.head_dim == 8
    # each layer holds every head of both (A's and B's own, or one model's in an identity slot)
    dead = vit.prepared.padded_a.graph().dead, vit.prepared.padded_b.graph().dead
    kept = [split.matches[f"layer{i}.qk"] for i in range(config.num_layers)]
    for i, m in enumerate(kept):
        space = f"layer{i}.qk"
        assert m.width == (
            m.n_b if space in dead[0] else m.n_a if space in dead[1] else m.n_a + m.n_b
        )
    assert any(f"layer{i}.qk" in dead[0] | dead[1] for i in range(config.num_layers))
    assert list(config.heads) == [m.width // 8 for m in kept]
    # the readout's estimate was the merge it made
    shown = zip_readout.readout(vit)
    assert shown["exact"] and shown["widths"] == estimated["widths"]
    assert estimated["sizes"]["merged"]["stored_parameters"] == sum(
        p.numel() for p in split.model.parameters()
    )
    assert vit.merged_metrics is not None or "evaluated" in tab_evaluate.on_evaluate_pending(
        vit, res
    )
    labels = {number: label for label, number in tab_compare.merge_choices(vit)}
    assert "heads split" in labels[2] and "heads split" not in labels[1]
    views.render(vit, res, ("zip", "neurons", "evaluate", "export"))
    tab_neurons.on_space(vit, res, "layer0.qk")
    info = tab_neurons.render(vit, res)["neuron_info"]
    want = config.heads[0] * 4
    assert "**Heads split:** every head of A and B is kept here side by side" in info
    assert f"cut from 8 to 4 features after fusion (docs/method.md sec. 8): {want} features" in info
    tab_neurons.on_space(vit, res, "stream")
    assert "Heads split" not in tab_neurons.render(vit, res)["neuron_info"]
    check_heads_round_trip(vit, res, tmp_path / "split", "split")


def test_searched_heads_in_the_workbench_say_what_the_search_kept(res, tmp_path):
    vit = Session(device="cpu")
    tab_models.on_load_pair(vit, res, "tiny-digits-vit-depth")
    n = work_blocks(vit)
    tab_zip.on_merge(vit, res, "zip", 0.5, 1.0, 1.0, n, "cpu", "average", False, "select")
    selected = vit.result
    message = tab_zip.on_merge(vit, res, "zip", 0.5, 1.0, 1.0, n, "cpu", "average", False, "search")
    assert "heads searched: " in message and "merges tried" in message
    searched = vit.result
    tried, value = searched.searched
    assert f"best of {tried} merges tried" in message and "search " in message  # its stage time
    assert value <= search_divergence(selected) + 1e-12
    assert zip_readout.readout(vit)["exact"]  # the merge is current: it was an estimate
    again = tab_zip.on_merge(vit, res, "zip", 0.5, 1.0, 1.0, n, "cpu", "average", False, "search")
    assert "has these settings (nothing to re-merge)" in again and vit.result is searched
    assert [h["heads"] for h in vit.history] == ["select", "search"]
    labels = {number: label for label, number in tab_compare.merge_choices(vit)}
    assert "heads searched" in labels[2] and "heads searched" not in labels[1]
    check_heads_round_trip(vit, res, tmp_path / "searched", "search")


def search_divergence(result):
    from heterogui import head_search

    prepared = result.prepared
    return head_search.divergence(result.model, prepared, head_search.parent_outputs(prepared))


def test_selecting_heads_of_a_cnn_pair_says_so_and_changes_nothing(session, res):
    n = work_blocks(session)
    merge(session, res, fusion="average")
    plain = {k: v.clone() for k, v in session.result.model.state_dict().items()}
    message = tab_zip.on_merge(
        session, res, "zip", 0.5, 1.0, 1.0, n, "cpu", "average", False, "select"
    )
    assert "heads: no merged attention heads to select" in message
    fixed = session.result.model.state_dict()
    assert all(torch.equal(fixed[k], plain[k]) for k in plain)


def test_remerge_reuses_cached_statistics_and_is_fast(session, res, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("a slider move must not re-run the models")

    monkeypatch.setattr(work, "realign", forbidden)
    monkeypatch.setattr("heterogui.run.prepare", forbidden)
    monkeypatch.setattr("heterogui.pipeline.collect_moments", forbidden)
    monkeypatch.setattr("heterogui.analysis.layer_similarity", forbidden)
    prepared = session.prepared
    merge(session, res)  # first call pays one-off costs
    n = work_blocks(session)
    for rho, alpha, beta, stop in ((0.8, 0.5, 1.0, n), (0.5, 0.3, 0.5, n), (0.5, 0.3, 0.5, n - 1)):
        tab_zip.on_release(session, res, True, "zip", alpha, beta, rho, stop, "cpu")
        views.render(session, res, ("zip", "neurons", "evaluate", "export"))
        assert session.prepared is prepared
        assert session.result.settings.rho == rho
    assert [h["merge"] for h in session.history] == [1, 2, 3, 4]
    # A release shows the merge first; its test metrics follow in a second step.
    assert session.merged_metrics is None and session.history[-1]["Joint"] is None
    rows = _readout_rows(tab_zip.render(session, res)["readout"])
    assert rows["merged"][-1] == "—" and "after the merge is evaluated" in rows["head"]
    said = tab_evaluate.on_evaluate_pending(session, res)
    # every score with two decimals, as the tables show them ("Task B 100.0" before)
    assert re.search(r"evaluated: Joint \d+\.\d\d, Task A \d+\.\d\d, Task B \d+\.\d\d", said)
    assert session.history[-1]["Joint"] == round(100 * session.merged_metrics.joint, 2)
    # The readout beside the sliders shows every model's headline score once it is known.
    rows = _readout_rows(tab_zip.render(session, res)["readout"])
    assert rows["model"][-1] == "Joint %"
    # The scored step redraws the Zip tab's readout alone: the same text, no figures.
    scored = views.render(session, res, tab_zip.SCORED_SCOPES)
    assert scored["readout"] == tab_zip.render(session, res)["readout"]
    assert not {"sizes_plot", "arch_plot", "widths_plot"} & set(scored)
    assert views.views_of("readout") == ("readout",)
    # Of the Evaluate tab it redraws the scores and history alone, as the whole tab draws them;
    # the samples drawn with the merge stay.
    whole = views.render(session, res, ("evaluate",))
    assert set(views.views_of("scores")) < set(views.views_of("evaluate"))
    assert not {"samples_plot", "predictions", "sample_ids", "sweep_plot"} & set(scored)
    assert set(scored) & set(whole) == {"metrics", "history", "history_plot"}
    for name in ("metrics", "history"):
        assert scored[name]["headers"] == whole[name]["headers"]
        for shown in (False, True):
            assert table_cells(scored[name], shown) == table_cells(whole[name], shown)
    assert table_cells(scored["metrics"])[-1][0] == "merged"
    assert scored["history_plot"].to_json() == whole["history_plot"].to_json()
    assert float(rows["merged"][-1]) == session.history[-1]["Joint"]
    for name in ("A", "B", "ensemble"):
        assert float(rows[name][-1]) == round(100 * session.baseline[name.lower()].joint, 2)
    assert tab_evaluate.on_evaluate_pending(session, res) is None  # nothing left to do
    headers = tab_evaluate.render(session, res)["history"]["headers"]
    assert headers[:4] == ["merge", "pair", "Joint", "Task A"]  # scores before settings
    assert headers[-1] == "seconds" and "score" not in headers
    # every score shows two decimals in the readout and the status line (the readout dropped
    # trailing zeros: "96" beside "97.11"); the tables keep numbers, which sort as numbers
    two = re.compile(r"^-?\d+\.\d\d$")
    assert all(two.match(rows[name][-1]) for name in ("A", "B", "ensemble", "merged"))
    merged_scores = [c for c in table_cells(whole["metrics"])[-1][1:-2] if c is not None]
    assert merged_scores and all(isinstance(c, float) for c in merged_scores)
    # the tables show them as the readout does, and the parameters with thousands separators
    texts = table_cells(whole["metrics"], shown=True)
    assert [row[1] for row in texts] == [
        rows[name][-1] for name in ("A", "B", "ensemble", "merged")
    ]
    assert texts[-1][-2] == f"{session.merged_size['parameters']:,}"
    assert table_cells(whole["metrics"])[-1][-2] == session.merged_size["parameters"]
    assert re.search(r"Joint % \d+\.\d\d\.", tab_zip._score_text(session, True))


def _readout_rows(text: str) -> dict[str, list[str]]:
    rows = {"head": text.split("\n")[0]}
    for line in text.splitlines():
        if line.startswith("| ") and not line.startswith("|---"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows[cells[0]] = cells
    return rows


def test_slider_without_auto_merge_only_updates_the_estimate(session, res):
    tab_zip.on_release(session, res, False, "zip", 0.5, 1.0, 0.4, work_blocks(session), "cpu")
    assert session.result is None and session.settings.rho == 0.4
    assert "estimate" in tab_zip.render(session, res)["readout"]


def test_a_release_or_merge_that_changes_nothing_adds_no_merge(session, res):
    n = work_blocks(session)
    tab_zip.on_release(session, res, True, "zip", 0.5, 1.0, 0.5, n, "cpu")
    first, rows = session.result, len(session.history)
    assert session.merged_metrics is None  # a release leaves the scores to the next step
    message = tab_zip.on_merge(session, res, "zip", 0.5, 1.0, 0.5, n, "cpu")
    joint = session.history[-1]["Joint"]
    said = (
        f"Merge #{session.merge_count} has these settings (nothing to re-merge): Joint % {joint}."
    )
    assert message == said
    assert session.result is first and len(session.history) == rows
    assert session.merged_metrics is not None and joint is not None
    # a release queued behind that Merge (or a key released at the slider's end, or focus
    # leaving its number box) keeps the status line: the merge's message, read out once
    assert tab_zip.on_release(session, res, True, "zip", 0.5, 1.0, 0.5, n, "cpu") is None
    assert session.result is first and len(session.history) == rows
    tab_zip.on_merge(session, res, "zip", 0.5, 1.0, 0.75, n, "cpu")
    assert session.result is not first and len(session.history) == rows + 1


def test_cancel_stops_a_merge_and_keeps_the_previous_result(session, res):
    merge(session, res)
    kept = session.result
    assert "Nothing is running" in tab_zip.on_cancel(session, res)
    assert not session.cancel_requested  # a Cancel with nothing running is void
    session.running = True  # what the app sets while one of this session's heavy steps runs

    def press_cancel(stage, frac):  # the user presses Cancel while the merge runs
        tab_zip.on_cancel(session, res)

    settings = dataclasses.replace(session.settings, rho=0.5)
    kept_line = r"^stopped during [a-z][^;']*; the previous result is kept$"  # a stage in words
    with pytest.raises(Cancelled, match=kept_line):
        work.merge(session, res, settings, progress=press_cancel)
    session.running = False
    assert session.result is kept and len(session.history) == 1
    merge(session, res, rho=0.5)  # usable again
    assert session.result is not kept


def test_a_merge_queued_behind_a_cancelled_one_is_dropped_too(session, res, monkeypatch):
    """A Merge click during a merge runs after it; after a Cancel, it goes with it."""
    clock = [100.0]
    monkeypatch.setattr(events.time, "monotonic", lambda: clock[0])

    def cancelled(session, res, progress=None):
        raise Cancelled("stopped during matching neurons; the previous result is kept")

    def merged(session, res, progress=None):
        return "Merge #2 done"

    def step(handler):
        with warnings.catch_warnings():  # gr.Info outside a server warns
            warnings.simplefilter("ignore")
            fn = events.event_function(handler, res, (), [], 0, lambda s: nullcontext())
            return fn(session, None)[1]

    assert "Cancelled" in step(cancelled)
    clock[0] += 0.3  # the queued click starts as the cancelled step ends
    assert "dropped too" in step(merged)
    clock[0] += 0.3  # a click after that merges
    assert step(merged) == "Merge #2 done"
    assert "Cancelled" in step(cancelled)
    clock[0] += 1.0  # a click a second after the Cancel's answer merges
    assert step(merged) == "Merge #2 done"
    # a step that reached the server before the cancelled one stopped waited behind it
    assert "Cancelled" in step(cancelled)
    clock[0] += 5.0
    with pytest.raises(Cancelled, match="dropped too"):
        events.run_step(session, True, lambda: "Merge #3 done", arrived=clock[0] - 5.5)
    assert events.run_step(session, True, lambda: "Merge #3 done", arrived=clock[0]) == (
        "Merge #3 done"
    )


def test_a_release_s_scoring_after_a_cancelled_merge_keeps_the_cancel_s_line(session, res):
    """The scoring that follows a slider release (chained) is no step queued behind the
    cancelled merge: it runs (nothing to score: the Cancel's line stays), and a step that was
    queued behind the merge is still dropped."""

    def cancelled(session, res, progress=None):
        raise Cancelled("stopped during matching neurons; the previous result is kept")

    def step(handler, chained=False):
        with warnings.catch_warnings():  # gr.Info outside a server warns
            warnings.simplefilter("ignore")
            fn = events.event_function(
                handler, res, (), [], 0, lambda s: nullcontext(), chained=chained
            )
            return fn(session, None)[1]

    merge(session, res)
    assert "Cancelled" in step(cancelled)
    kept = step(tab_evaluate.on_evaluate_pending, chained=True)
    assert kept == gr.skip()  # the status line keeps the Cancel's message
    assert "dropped too" in step(lambda session, res, progress=None: "Merge #2 done")


def test_cancel_drops_a_step_that_waits_for_another_user_s(res):
    """Two users, one heavy slot: the second user's step waits, in the app, where that user's
    Cancel drops it before it runs; the first user's step is not touched."""
    slots = HeavySlots(1)
    first, second = Session(device="cpu"), Session(device="cpu")
    started, finish, ran = threading.Event(), threading.Event(), []

    def long_step():
        started.set()
        finish.wait(30)
        return "first done"

    def run(session, step, out):
        slot = partial(slots.held, session, lambda: None)
        try:
            out.append(events.run_step(session, True, step, slot=slot))
        except Cancelled as exc:
            out.append(exc)

    one, two = [], []
    t1 = threading.Thread(target=run, args=(first, long_step, one))
    t1.start()
    assert started.wait(30)
    t2 = threading.Thread(target=run, args=(second, lambda: ran.append(1), two))
    t2.start()
    for _ in range(300):  # until the second step waits for the slot
        if second.waiting:
            break
        threading.Event().wait(0.01)
    assert second.waiting and not second.running
    assert "is dropped" in tab_zip.on_cancel(second, res)
    t2.join(30)
    assert isinstance(two[0], Cancelled) and "dropped before it started" in str(two[0])
    assert ran == [] and not second.waiting
    assert "Nothing is running" in tab_zip.on_cancel(second, res)  # and stays so
    finish.set()
    t1.join(30)
    assert one == ["first done"] and not first.cancel_requested
    second.cancelled_at = None  # a later click (one right after the Cancel goes with it)
    slot = partial(slots.held, second, lambda: None)
    assert events.run_step(second, True, lambda: "second done", slot=slot) == "second done"


def test_cancel_during_an_export_says_the_export_cannot_stop(session, res):
    session.running, session.cannot_stop = True, "The export is being written"
    assert "Cancel cannot stop that" in tab_zip.on_cancel(session, res)
    assert not session.cancel_requested
    session.running, session.cannot_stop = False, None


def test_bad_data_or_a_cancelled_analysis_keeps_the_analysis_and_the_merge(session, res, tmp_path):
    from safetensors.torch import save_file

    merge(session, res)
    kept = (session.prepared, session.result, session.calibration, session.data)
    wrong = tmp_path / "wrong-shape.safetensors"
    save_file({"inputs": torch.randn(32, 3, 32, 32)}, str(wrong))
    empty = tmp_path / "empty.safetensors"
    save_file({"inputs": torch.randn(0, 1, 8, 8)}, str(empty))
    for path in (wrong, empty):
        with pytest.raises(HeteroguiError, match="calibration|inputs"):
            tab_models.on_analyse(session, res, "file", str(path), 64)
        assert (session.prepared, session.result, session.calibration, session.data) == kept
    with pytest.raises(ConfigError, match="type the path of a calibration file"):
        tab_models.on_analyse(session, res, "file", "", 64)
    session.running = True

    def press_cancel(stage, frac):  # the user presses Cancel while the analysis runs
        tab_zip.on_cancel(session, res)

    with pytest.raises(Cancelled, match="the previous result is kept"):
        other = dataclasses.replace(session.calibration.ref, size=48, sha256=None)
        work.analyse(session, res, other, progress=press_cancel)
    session.running = False
    assert (session.prepared, session.result, session.calibration, session.data) == kept
    tab_export.on_export(session, res, str(tmp_path / "still"), False)  # the merge is there
    assert (tmp_path / "still" / "model.safetensors").is_file()


def test_a_demo_pair_calibrates_on_the_number_of_inputs_asked_for(session, res):
    shared = session.prepared
    assert session.calibration.count == 256 and session.data is None
    tab_models.on_analyse(session, res, "digits", None, 64)
    assert session.calibration.count == 64 and session.prepared is not shared
    tab_models.on_analyse(session, res, "digits", None, 256)  # its own default: shared again
    assert session.data is None and session.prepared is shared


def test_neuron_view_follows_the_matching(session, res):
    merge(session, res, rho=0.5)
    points = tab_neurons.merge_points(session.prepared)
    # a point inside one block names the layers it merges as the CKA map does (its name is
    # its slot after padding, not the shallower model's layer number)
    prep = session.prepared
    paired = set(layer_pairs(prep.alignment, prep.net_a.graph(), prep.net_b.graph()))
    named = [re.search(r"\(A(\d+) ↔ B(\d+)\)", label) for label, _ in points]
    assert any(named) and all((int(m[1]), int(m[2])) in paired for m in named if m)
    for _, space in points:
        tab_neurons.on_space(session, res, space)
        view = tab_neurons.render(session, res)
        assert view["neuron_map"] is not None and view["neuron_hist"] is not None
    with pytest.raises(ConfigError, match="unknown merge point"):
        tab_neurons.on_space(session, res, "nowhere")


@pytest.mark.parametrize("pair", [PAIR, "tiny-digits-vit-depth"])
def test_neurons_tab_before_a_merge_matches_its_point_as_a_merge_would(res, pair):
    """Without a merge (after opening a pair or switching the alignment) the tab matches only
    the point it shows (with its attention layer's head group): the same groups as matching
    every point, at rho 0.5 and at a stop point before the last block."""
    viewer = Session(device="cpu")
    tab_models.on_load_pair(viewer, res, pair)
    prep, n = viewer.prepared, work_blocks(viewer)
    points = [space for _, space in tab_neurons.merge_points(prep)]
    heads = {s for s in points if prep.padded_a.graph().spaces[s].head_dim}
    assert pair == PAIR or heads  # the ViT pair has attention spaces
    for space in heads:  # Q/K and V/O of one layer share a head pairing: matched together
        layer = space.split(".")[0]
        assert tab_neurons.paired_points(prep, space) == {f"{layer}.qk", f"{layer}.vo"}
    paired = pipeline.ZipSettings(heads="pair")  # not split: the heads of a layer pair as one
    for settings, stop in ((dataclasses.replace(paired, rho=0.5), n), (paired, n - 1)):
        every = pipeline.match_spaces(prep, settings, stop)
        for space in points:
            _, match = tab_neurons.space_match(prep, settings, space, stop)
            if space not in every:
                assert match is None  # after the stop point
                continue
            assert torch.equal(match.groups, every[space].groups), space
            assert match.width == every[space].width


def test_large_layers_get_a_detail_and_an_overview():
    gen = torch.Generator().manual_seed(0)
    feats = torch.randn(2000, 600, generator=gen, dtype=torch.float64)
    corr = torch.corrcoef(feats.T)
    match = zip_match(corr, 300, 300, width=400)
    view = fig_neurons.neuron_view(corr.numpy(), 300, 300, match)
    fig = fig_neurons.detail_figure(view, "wide")  # the strongest groups at full resolution
    heat = next(t for t in fig.data if t.type == "heatmap")
    assert np.asarray(heat.z).shape == (view.detail.size,) * 2 and view.detail.size <= 256
    assert "48 of" in fig.layout.title.text and "of 600 features" in fig.layout.title.text
    overview = fig_neurons.overview_figure(view, "wide")  # everything, averaged
    heat = next(t for t in overview.data if t.type == "heatmap")
    assert np.asarray(heat.z).shape == (120, 120)
    assert "5×5 blocks" in overview.layout.title.text
    hist = fig_neuron_hist.correlation_histogram(corr.numpy(), match, 300, "wide")
    assert all(len(t.y) == 40 for t in hist.data)


def test_evaluate_samples_sweep_and_history(session, res):
    merge(session, res, rho=0.5)
    header, rows = tab_evaluate.metric_rows(session)
    assert header[:5] == ["model", "Joint %", "Task A %", "Task B %", "Avg %"]
    assert [r[0] for r in rows] == ["A", "B", "ensemble", "merged"]
    assert all(v is not None for v in rows[3][1:])
    tab_evaluate.on_samples(session, res, "3, 1, 4")
    view = tab_evaluate.render(session, res)
    assert len(view["samples_plot"].data) == 3
    assert [r[0] for r in view["predictions"]["value"]] == [3, 1, 4]
    with pytest.raises(ConfigError, match="do not exist"):
        tab_evaluate.on_samples(session, res, "0, 99999")
    for typed in ("3, x", "1e400", "2.5"):  # never read as other numbers than those typed
        with pytest.raises(ConfigError, match="is not a sample number: type whole numbers"):
            tab_evaluate.on_samples(session, res, typed)
    assert session.samples == [3, 1, 4]
    tab_evaluate.on_samples(session, res, " 3;1\n4 ")
    assert session.samples == [3, 1, 4]
    tab_evaluate.on_random(session, res)
    assert len(session.samples) == 6
    tab_evaluate.on_sweep(session, res)
    assert [p["rho"] for p in session.sweep] == list(tab_evaluate.SWEEP_RHOS)
    params = [p["parameters"] for p in session.sweep]
    # rho = 0 computes exactly the ensemble; the paper's width computes with fewer weights
    # (a least-squares fusion, the ResNets' default, is not monotone between: sizes.py)
    assert params[0] == session.reference_sizes["ensemble"]["parameters"] > params[-1]
    merge(session, res, rho=0.8)  # a rho move keeps the sweep and marks the new rho
    view = tab_evaluate.render(session, res)
    assert view["sweep_plot"] is not None and len(table_cells(view["history"])) == 2


def test_export_then_import_repeats_the_merge_bit_for_bit(session, res, tmp_path):
    tab_align.on_mode(session, res, "lma", None)
    merge(session, res, rho=0.6, alpha=0.4, stop=work_blocks(session) - 1)
    out = tmp_path / "merged"
    message, extra = tab_export.on_export(session, res, str(out), False)
    assert str(out) in message and extra["export_file"].endswith(".zip")
    names = {p.name for p in out.iterdir()}
    assert names >= {"model.safetensors", "config.json", "recipe.yaml", "report.json"}
    card = (out / "README.md").read_text()
    assert (
        "alignment.svg" in card and "Joint" in card and "<svg" in (out / "widths.svg").read_text()
    )
    before = (out / "model.safetensors").read_bytes()
    with pytest.raises(ExportError, match="already exists"):
        tab_export.on_export(session, res, str(out), False)
    assert (out / "model.safetensors").read_bytes() == before
    other = Session(device="cpu")
    tab_export.on_import(other, res, str(out / "recipe.yaml"), None)
    exported = load_merged(out).state_dict()
    again = other.result.model.state_dict()
    assert exported.keys() == again.keys()
    assert all(torch.equal(exported[k], again[k].cpu()) for k in exported)
    assert other.prepared.alignment.mapping() == session.prepared.alignment.mapping()
    assert other.merged_metrics == session.merged_metrics


def test_an_export_right_after_a_release_scores_the_merge_first(session, res, tmp_path):
    merge(session, res)
    n = work_blocks(session)
    tab_zip.on_release(session, res, True, "zip", 0.5, 1.0, 0.5, n, "cpu")  # over the API:
    assert session.merged_metrics is None  # /remerge leaves the scores to the page's next step
    message, _ = tab_export.on_export(session, res, str(tmp_path / "out"), False)
    assert (
        "(heterogui format)" in message
        and "It holds merge #2." in message
        and "settings changed" not in message
    )
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert session.merged_metrics is not None and session.history[-1]["Joint"] is not None
    merged = report["metrics"]["merged"]
    assert merged["joint"] == session.merged_metrics.joint and "ensemble" in report["metrics"]
    assert "Joint" in (tmp_path / "out" / "README.md").read_text()
    # knobs moved without a merge: the export is still the last merge, and says so
    tab_zip.on_knobs(session, res, "zip", 0.5, 1.0, 0.9, n, "average")
    message, _ = tab_export.on_export(session, res, str(tmp_path / "again"), False)
    assert "(heterogui format)" in message and "It holds merge #2." in message
    assert "settings changed since that merge (rho 0.9, fusion average)" in message
    assert yaml.safe_load((tmp_path / "again" / "recipe.yaml").read_text())["zip"]["rho"] == 0.5


def test_the_export_writes_the_weights_dtype_chosen(session, res, tmp_path):
    merge(session, res)
    views = tab_export.render(session, res)
    assert views["export_dtype"]["choices"][0] == ("auto (float32)", "auto")  # zoo: float32
    message, _ = tab_export.on_export(session, res, str(tmp_path / "half"), False, None, "bfloat16")
    assert "Weights: stored in bfloat16, as asked" in message
    header = read_safetensors_header(tmp_path / "half" / "model.safetensors")
    assert {v["dtype"] for v in header.values() if v["dtype"] != "I64"} == {"BF16"}
    report = json.loads((tmp_path / "half" / "report.json").read_text())
    assert report["weights_dtype"] == "bfloat16"
    message, _ = tab_export.on_export(session, res, str(tmp_path / "auto"), False)
    assert "Weights: stored in float32, the dtype both source models are stored in" in message


def test_importing_a_bad_recipe_says_why(session, res):
    before = session.result
    with pytest.raises(ConfigError, match="unknown keys"):
        tab_export.on_import(session, res, None, "model_a: {path: x}\nmodel_b: {path: y}\nfoo: 1")
    with pytest.raises(ConfigError, match="upload a recipe"):
        tab_export.on_import(session, res, None, "  ")
    trio = "models: [zoo:tiny-digits-vgg-trio/a, zoo:tiny-digits-vgg-trio/b, zoo:x/c]"
    with pytest.raises(ConfigError, match="merges 3 models and the workbench merges two"):
        tab_export.on_import(session, res, None, trio)
    assert session.result is before


def test_bad_model_inputs_show_a_message_and_keep_the_session(session, res, tmp_path):
    with pytest.raises(HeteroguiError, match="does not exist"):
        tab_models.on_load_model(
            session, res, "a", "folder", None, str(tmp_path / "no"), None, None
        )
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(HeteroguiError, match="0 .safetensors and 0 .json files"):
        tab_models.on_load_model(session, res, "a", "upload", None, None, [str(text)], None)
    fake = tmp_path / "model.safetensors"
    fake.write_bytes(b"definitely not safetensors")
    config = tmp_path / "config.json"
    torch.manual_seed(0)
    save_network(build_network(cifar_resnet((1,), 1, 5, 1)), tmp_path / "resnet")
    config.write_text((tmp_path / "resnet" / "config.json").read_text())
    with pytest.raises(HeteroguiError, match="not a valid safetensors"):
        tab_models.on_load_model(
            session, res, "b", "upload", None, None, [str(fake), str(config)], None
        )
    assert session.demo == PAIR and session.prepared is not None
    quoted = f"  '{tmp_path / 'resnet'}' "  # as copied "as path" from a file manager
    tab_models.on_load_model(session, res, "b", "folder", None, quoted, None, None)
    assert "Cannot merge" in tab_models.render(session, res)["verdict"]
    with pytest.raises(HeteroguiError, match="vgg"):
        tab_models.on_analyse(session, res, "digits", None, 64)
    tab_models.on_load_model(session, res, "b", "zoo", f"{PAIR}/b", None, None, None)
    tab_models.on_analyse(session, res, "digits", None, 64)
    assert session.prepared is not None and session.calibration.count == 64


def test_a_new_pair_shows_its_models_and_the_knobs_it_keeps(session, res):
    merge(session, res, rho=0.5)
    message, extra = tab_models.on_load_pair(session, res, "tiny-digits-vgg-width")
    assert "Zip knobs kept from before: rho 0.5" in message
    for which in ("a", "b"):
        assert extra[f"source_{which}"]["value"] == "zoo"
        assert extra[f"zoo_{which}"]["value"] == f"tiny-digits-vgg-width/{which}"
    assert tab_models.render(session, res)["pair_choice"]["value"] == "tiny-digits-vgg-width"
    tab_zip.on_knobs(session, res, "zip", 0.5, 1.0, 1.0, None)
    assert "kept from before" not in tab_models.on_load_pair(session, res, PAIR)[0]


def test_two_sessions_share_nothing(res):
    one, two = Session(device="cpu"), Session(device="cpu")
    tab_models.on_load_pair(one, res, PAIR)
    tab_models.on_load_pair(two, res, "tiny-digits-vgg-width")
    tab_align.on_mode(one, res, "uniform", None)
    merge(one, res, rho=0.5)
    assert two.result is None and two.history == [] and two.demo == "tiny-digits-vgg-width"
    assert two.prepared.alignment.mode == "sma" and one.sid != two.sid


def test_a_demo_pair_is_scored_once_for_every_session(res, monkeypatch):
    # A, B and the ensemble of a demo pair: scored when a session first opens it, then shared
    first = Session(device="cpu")
    tab_models.on_load_pair(first, res, PAIR)
    calls = []
    scored = work.run.evaluate_models
    monkeypatch.setattr(work.run, "evaluate_models", lambda *a: calls.append(a) or scored(*a))
    second = Session(device="cpu")
    tab_models.on_load_pair(second, res, PAIR)
    assert calls == [] and second.baseline == first.baseline
    assert set(second.baseline) == {"a", "b", "ensemble"}
    merge(second, res, rho=0.5)  # a session's merge leaves the shared scores as they were
    assert set(first.baseline) == {"a", "b", "ensemble"} and first.merged_metrics is None


def test_handler_errors_become_messages_in_the_page(session, res):
    def broken(session, res, value, progress=None):
        raise AlignmentError(f"bad value {value}")

    fn = events.event_function(broken, res, ("align",), ["heatmap"], 1)
    with pytest.warns(UserWarning, match="bad value 7"):  # gr.Warning outside a server
        out = fn(session, 7, None)
    assert out[0] is session and out[1] == "**Error:** bad value 7"
    assert out[2]["pair"] == PAIR
    with pytest.warns(UserWarning, match="stream end"):  # a "<" shows as text, not as a tag
        out = fn(session, "got '<stream end>'; write plain YAML", None)
    assert out[1] == "**Error:** bad value got '&lt;stream end>'; write plain YAML"

    def crash(session, res, progress=None):
        raise RuntimeError("boom")

    with pytest.warns(UserWarning, match="boom"):
        out = events.event_function(crash, res, (), [], 0)(session, None)
    assert "Unexpected error" in out[1] and "boom" in out[1]


def test_warnings_a_step_logs_reach_the_page(session, res):
    """What the CLI prints as a warning (unscaled data, a short draw) shows in the status line
    and as a toast; another thread's warnings (another session, the idle prefetch) do not."""
    import logging
    import threading

    def warns(session, res, progress=None):
        logging.getLogger("heterogui.datasets.refs").warning("inputs are read unscaled")
        other = threading.Thread(
            target=logging.getLogger("heterogui.x").warning, args=("not mine",)
        )
        other.start()
        other.join()
        return "Analysed."

    with pytest.warns(UserWarning, match="inputs are read unscaled"):
        out = events.event_function(warns, res, (), [], 0)(session, None)
    assert out[1] == "Analysed. **Warning:** inputs are read unscaled"


def test_a_toast_event_shows_its_success_as_a_toast_too(session, res, monkeypatch):
    shown: list[str] = []
    monkeypatch.setattr(events.gr, "Info", shown.append)

    def done(session, res, progress=None):
        return "Merge #7 done in **0.1 s**."

    out = events.event_function(done, res, (), [], 0, toast=True)(session, None)
    assert out[1] == "Merge #7 done in **0.1 s**." and shown == ["Merge #7 done in 0.1 s."]
    events.event_function(done, res, (), [], 0)(session, None)  # not asked: the line alone
    assert len(shown) == 1


def test_parse_auth():
    assert app.parse_auth("ann:secret") == ("ann", "secret")
    assert app.parse_auth(None) is None
    with pytest.raises(ValueError):
        app.parse_auth("no-colon")


def test_slider_latency_of_a_tiny_pair(res):
    from heterogui.ui.latency import format_latency, slider_latency

    report = slider_latency(PAIR, moves=({"rho": 0.5}, {"alpha": 0.3}, {"stop": -1}), res=res)
    assert report["pair"] == PAIR and report["moves"] == 3 and report["device"] == "cpu"
    for key in ("zip_s", "merge_s", "metrics_s", "total_s"):
        assert 0 < report[key]["median"] <= report[key]["max"]
    assert report["figure_bytes"] > 0  # times are reported, not asserted (machines vary)
    switch = report["switch"]  # SMA and LMA place this pair's layers differently
    assert switch["mode"] == "lma" and switch["merge_s"] <= switch["total_s"]
    assert all(switch[k] > 0 for k in ("cold_s", "idle_pass_s", "switch_s"))
    text = format_latency([report])
    assert PAIR in text and "switch to lma: cold" in text


def test_downloads_and_refused_uploads_leave_no_files_behind(session, res, tmp_path):
    from pathlib import Path

    from heterogui.ui.app import end_session

    merge(session, res, rho=0.5)
    _, first = tab_export.on_export(session, res, str(tmp_path / "one"), False)
    folder = Path(session.workdir)
    assert Path(first["export_file"]).parent == folder / "downloads"
    _, second = tab_export.on_export(session, res, str(tmp_path / "two"), False)
    # one download at a time, in the session's own folder (gradio serves its own copy)
    assert sorted(p.name for p in (folder / "downloads").iterdir()) == ["two.zip"]
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text((tmp_path / "one" / "config.json").read_text())
    (bad / "model.safetensors").write_bytes(b"not safetensors")
    files = [str(bad / "config.json"), str(bad / "model.safetensors")]
    with pytest.raises(HeteroguiError, match="not a valid safetensors") as refused:
        tab_models.on_load_model(session, res, "b", "upload", None, None, files, None)
    # named as uploaded, not by the session's temporary copy
    assert str(refused.value).startswith("model.safetensors is not a valid safetensors file")
    assert str(folder) not in str(refused.value)
    assert sorted(p.name for p in folder.iterdir()) == ["downloads"]  # no copy of the upload
    end_session(session)  # what gradio calls when it drops the session
    assert not folder.exists() and session.workdir is None


def test_an_export_uploads_as_a_model_and_merges_again(session, res, tmp_path):
    merge(session, res, rho=0.5)
    message, extra = tab_export.on_export(session, res, str(tmp_path / "first"), False)
    other = Session(device="cpu")
    loaded, pickers = tab_models.on_load_model(
        other, res, "a", "upload", None, None, [extra["export_file"]], None
    )
    assert "**first** (upload)" in loaded  # A's picker shows it; B's is left as it was
    assert pickers == {"source_a": {"__type__": "update", "value": "upload"}}
    # kept in the cache by content, not in the session's folder: a recipe that names it repeats
    # after the session ends; the same .zip again is the same kept folder
    kept = Path(other.a.ref)
    assert kept.parent.parent == cache_path("uploads") and kept.name == "first"
    assert other.a.folder == kept and not list(Path(other.workdir).iterdir())
    again = Session(device="cpu")
    tab_models.on_load_model(again, res, "a", "upload", None, None, [extra["export_file"]], None)
    assert again.a.ref == other.a.ref
    again.remove_files()
    assert registry.load(other.a.ref).sha256 == other.a.sha256
    assert [h.name for h in other.a.net.task_heads()] == [f"{PAIR}/a", f"{PAIR}/b"]
    with torch.no_grad():  # the upload computes what the merge computed
        x = torch.randn(4, 1, 8, 8)
        want = torch.cat(session.result.model(x), 1)
        assert (other.a.net.module(x) - want).abs().max() < 1e-5
    tab_models.on_load_model(other, res, "b", "zoo", "tiny-digits-vgg-width/b", None, None, None)
    tab_models.on_analyse(other, res, "digits", None, 64)
    merge(other, res, rho=1.0)
    heads = [h.name for model_heads in other.result.spec.heads for h in model_heads]
    assert heads == [f"{PAIR}/a", f"{PAIR}/b", "tiny-digits-vgg-width/b"]
    assert other.evaluation is None  # B's task is there twice: no Joint, and the page says so
    why = "the models' heads share classes, so Joint and per-task accuracy are undefined"
    assert f"{why}: not scored." in tab_evaluate.on_evaluate(other, res)  # "no evaluation data"
    assert tab_zip._score_text(other, True) == f"{why}: not scored."
    files = [str(tmp_path / "first" / n) for n in ("config.json", "model.safetensors")]
    _, pickers = tab_models.on_load_model(other, res, "b", "upload", None, None, files, None)
    assert other.b.source == "upload" and len(other.b.net.task_heads()) == 2
    assert pickers == {"source_b": {"__type__": "update", "value": "upload"}}


def test_a_vit_pair_runs_end_to_end_with_image_panels(res, tmp_path):
    vit = Session(device="cpu")
    tab_models.on_load_pair(vit, res, "tiny-digits-vit-depth")
    assert vit.task.kind == "image_classification" and vit.a.net.family.name == "vit"
    assert vit.prepared.padded_a.identity_blocks  # A (1 layer) padded to B's 2 layers
    merge(vit, res, rho=0.5)
    page = views.render(vit, res, views.SCOPES)
    shown = {k: v["visible"] for k, v in page.items() if k.startswith("panel_")}
    assert shown == {
        "panel_metrics": True,
        "panel_samples": True,
        "panel_sweep": True,
        "panel_spearman": False,
        "panel_similarity": False,
        "panel_perplexity": False,
        "panel_generations": False,
    }
    assert [r[0] for r in table_cells(page["metrics"])] == ["A", "B", "ensemble", "merged"]
    assert page["heatmap"] is not None and page["neuron_map"] is not None
    # heads split keeps every head: the tab opens on a merge point where features merge
    first = page["space"]["value"]
    assert not vit.prepared.padded_a.graph().spaces[first].head_dim
    assert vit.result.matches[first].width < sum(vit.result.widths()[first][:2])
    tab_evaluate.on_samples(vit, res, "0, 2, 5")
    assert len(tab_evaluate.render(vit, res)["samples_plot"].data) == 3
    tab_evaluate.on_sweep(vit, res)
    assert [p["rho"] for p in vit.sweep] == list(tab_evaluate.SWEEP_RHOS)
    tab_neurons.on_space(vit, res, "layer0.qk")  # layer 1 of A is an identity layer
    assert tab_neurons.render(vit, res)["neuron_map"] is not None
    out = tmp_path / "vit"
    tab_export.on_export(vit, res, str(out), False)
    assert json.loads((out / "config.json").read_text())["heterogui"] == "merged"


def test_evaluation_progress_reports_true_shares_of_the_work(session, res):
    calls = []
    task, prep = session.task, session.prepared
    scores = task.score_models(prep, session.evaluation, session.pair, lambda *c: calls.append(c))
    for which in ("a", "b", "ensemble"):  # each model's outputs serve its row and the ensemble
        alone = evaluate_models(prep.net_a, prep.net_b, which, session.evaluation.data)
        assert scores[which] == alone
    n_a = sum(p.numel() for p in prep.net_a.module.parameters())
    n_b = sum(p.numel() for p in prep.net_b.module.parameters())
    total = n_a + n_b  # A and B run once each; the ensemble reuses their outputs
    assert [s for s, _ in calls] == ["evaluate"] * 3
    assert [f for _, f in calls] == pytest.approx([0, n_a / total, 1])
    merge(session, res)
    calls.clear()
    session.merged_metrics = None
    assert work.evaluate_pending(session, res, lambda *c: calls.append(c))
    assert calls == [("evaluate", 0.0), ("evaluate", 1.0)]


def test_architecture_picture_marks_identity_layers_the_stop_point_and_heads(session, res):
    n = work_blocks(session)
    merge(session, res, rho=0.5, stop=n - 1)
    fig = tab_zip.render(session, res)["arch_plot"]
    texts = list(fig.data[0].customdata)
    merged = [t for t in texts if "merged layer" in t]
    assert len(merged) == n - 1  # one merged layer per slot before the stop point
    widths = session.result.widths()
    space = session.prepared.padded_a.graph().block_out[0]
    assert merged[0].startswith(f"slot 0: merged layer, width {widths[space][2]}")
    # Identity layers: every slot of a stage that a model has no layer of (hollow boxes).
    al = session.prepared.alignment
    identity = [t for t in texts if t.split(": ", 1)[1].startswith("identity")]
    real = sum(len(p) for p in al.positions_a) + sum(len(p) for p in al.positions_b)
    assert len(identity) == 2 * sum(al.depths) - real > 0
    hollow = [s for s in fig.layout.shapes if s.line.dash == "dot" and s.type == "rect"]
    assert len(hollow) == len(identity)
    heads = [t for t in texts if "head" in t]
    assert len(heads) == 2 and all("classes" in h for h in heads)
    # a head's box says its class count only (its hover says the rest): "head 10" overflowed
    labels = [fig.data[0].text[k] for k, t in enumerate(texts) if "head" in t]
    assert labels == [re.search(r"(\d+) classes", h).group(1) for h in heads]
    assert any("stop point" in a.text for a in fig.layout.annotations)


def test_the_neurons_tab_reuses_the_correlation_it_just_drew(session, res):
    """The tab reads the core's kept correlation (the one re-merges match on), read-only."""

    from heterogui.zip.collect import pooled_moments

    prep = session.prepared
    space = tab_neurons.merge_points(prep)[0][1]
    first = tab_neurons.correlation(prep, space, None)
    again = tab_neurons.correlation(prep, space, None)
    assert np.shares_memory(again, first) and not first.flags.writeable
    assert np.shares_memory(first, pipeline.correlation(prep, space, None).numpy())
    want = pooled_moments(prep.stats, prep.padded_a.graph(), space).corr().float().numpy()
    assert np.array_equal(first, want)
    # another analysis object over the same statistics: the same numbers; a merge point seen
    # in one block reads the correlations its compact statistics keep (no copy)
    other = dataclasses.replace(prep)
    fresh = tab_neurons.correlation(other, space, None)
    assert np.array_equal(fresh, want)
    blocks = {c.block for c in prep.padded_a.graph().spaces[space].captures}
    assert np.shares_memory(fresh, first) == (len(blocks) == 1)


def test_a_mis_wired_event_fails_when_the_app_is_built(res):
    def takes_one(session, res, cell, progress=None):
        return "ok"

    events.event_function(takes_one, res, (), [], 1)  # as wired: fine
    with pytest.raises(TypeError, match="takes_one does not take 2 input"):
        events.event_function(takes_one, res, (), [], 2)


def test_a_pair_of_equal_depth_is_analysed_in_one_pass_and_never_realigned(monkeypatch):
    """The workbench on a width pair: one pass reported as "analysis", a mode switch that
    keeps every statistic (no pass), and a merge from them."""
    res = Resources(ZooPairs(tiny=True), device="cpu")  # its own: no analysis shared yet
    wide = Session(device="cpu")
    shown: list[str] = []  # what the progress bar shows
    bar = events.progress_adapter(lambda _frac, desc="": shown.append(desc))
    tab_models.on_load_pair(wide, res, "tiny-digits-vgg-width", bar)
    prep = wide.prepared
    assert "analysis" in prep.timings and "features" not in prep.timings
    assert STAGE_LABELS["analysis"] in shown and STAGE_LABELS["features"] not in shown, set(shown)
    monkeypatch.setattr("heterogui.zip.reuse.collect_moments", _forbidden_pass)
    monkeypatch.setattr("heterogui.pipeline.collect_moments", _forbidden_pass)
    for mode in ("lma", "uniform", "head"):
        assert "same placement: statistics kept" in tab_align.on_mode(wide, res, mode, None)
        assert all(wide.prepared.stats[k] is m for k, m in prep.stats.items())
    assert "Merge #1 done" in merge(wide, res, rho=0.5)


def _forbidden_pass(*_args, **_kwargs):
    raise AssertionError("a feature pass ran")


def test_one_rho_at_every_attention_layer_keeps_all_heads(res):
    vit = Session(device="cpu")
    tab_models.on_load_pair(vit, res, "tiny-digits-vit-depth")  # 1 layer and 2: one shared
    ga, gb = vit.prepared.padded_a.graph(), vit.prepared.padded_b.graph()
    layers = [n for n in ("layer0.qk", "layer1.qk") if n not in ga.dead | gb.dead]
    assert len(layers) == 1  # the other meets an identity layer: nothing there to zip
    choices = dict((v, k) for k, v in zip_overrides.override_choices(vit.prepared))
    assert f"(1: {layers[0]}; rho only)" in choices[zip_overrides.EVERY_ATTENTION_LAYER]
    assert sorted(n for n in choices if n.endswith(".qk")) == layers
    every = zip_overrides.EVERY_ATTENTION_LAYER
    with pytest.raises(ConfigError, match="takes a rho, not a width"):
        zip_overrides.on_set_override(vit, res, every, None, 8)
    message = zip_overrides.on_set_override(vit, res, every, 0.0, None)
    assert f"1 attention layer ({layers[0]}): rho=0.0" in message
    # the ViT default (heads auto) pairs heads once an override sizes attention layers
    assert "Heads split" not in message
    vit.settings = dataclasses.replace(vit.settings, heads="split")  # asked for: the override
    message = zip_overrides.on_set_override(vit, res, every, 0.0, None)  # cannot take
    assert "Heads split keeps every head of these layers" in message
    vit.settings = dataclasses.replace(vit.settings, heads="pair")
    message = zip_overrides.on_set_override(vit, res, every, 0.0, None)
    assert "rho=0.0." in message and "Heads split" not in message
    assert vit.settings.overrides == {name: {"rho": 0.0} for name in layers}
    merge(vit, res, rho=1.0, heads="pair")  # the paper's heads: a split keeps them all anyway
    live = [n for n in vit.result.widths() if n not in ga.dead | gb.dead]
    assert "stream" in live and any(n.endswith(".qk") for n in live)  # A's real layer's heads
    for name in live:  # heads kept, the rest zipped at rho 1
        n_a, n_b, width = vit.result.widths()[name]
        assert width == (n_a + n_b if name.endswith((".qk", ".vo")) else max(n_a, n_b)), name
    zip_overrides.on_set_override(vit, res, every, None, None)  # no rho: their overrides go
    assert vit.settings.overrides == {}


def test_a_model_card_names_its_head_classes_as_runs(session, res):
    from heterogui.ui.loading import model_card

    for which in ("a", "b"):
        loaded = getattr(session, which)
        card = model_card(loaded, which)
        for head in loaded.net.task_heads():
            classes = sorted(head.classes)
            runs = []  # consecutive classes written "first-last", others alone
            for c in classes:
                if runs and c == runs[-1][-1] + 1:
                    runs[-1].append(c)
                else:
                    runs.append([c])
            text = ", ".join(f"{r[0]}-{r[-1]}" if len(r) > 1 else str(r[0]) for r in runs)
            assert f"{head.name} (classes {text})" in card and "classes [" not in card


def test_the_stop_slider_s_value_stays_within_its_range(session, res):
    # a pair with fewer blocks after a deeper one: the page kept the old value past the new
    # maximum and refused every later event ("Value 11 is greater than maximum value 7")
    n = work_blocks(session)
    assert session.settings.stop is None  # a full zip: the slider's end
    for update in (tab_zip.render(session, res), views.render(session, res, ("knobs",))):
        assert update["stop"]["maximum"] == n and update["stop"]["value"] == n


def test_a_zoo_pair_loaded_model_by_model_keeps_the_pairs_name(res):
    # an imported recipe loads zoo:PAIR/a and zoo:PAIR/b: its merges were filed under
    # "PAIR/a + PAIR/b", apart from the same pair's other merges in the history and Compare
    session = Session(device="cpu")
    for which in "ab":
        tab_models.on_load_model(
            session, res, which, "zoo", f"tiny-digits-vgg-depth/{which}", None, None, None
        )
    assert session.pair_name == "tiny-digits-vgg-depth"
    tab_models.on_load_model(session, res, "b", "zoo", "tiny-digits-vgg-width/b", None, None, None)
    assert session.pair_name == f"{session.a.name} + {session.b.name}"  # two pairs' models


def test_a_realignment_drops_the_overrides_of_points_only_one_model_uses(res):
    # an override set before a realignment that puts an identity block at its merge point
    # blocked every merge ("only one model uses"), and the menu no longer offered it to remove
    vit = Session(device="cpu")
    tab_models.on_load_pair(vit, res, "tiny-digits-vit-depth")
    takers = zip_overrides.taking_spaces(vit.prepared)
    alone = next(n for n in ("layer0.ffn", "layer1.ffn") if n not in takers)
    kept = next(n for n in ("layer0.ffn", "layer1.ffn") if n in takers)
    layer = alone.split(".")[0] + ".*"  # a pattern that matches that layer's points only
    overrides = {alone: {"rho": 0.5}, kept: {"rho": 0.5}, "*.qk": {"rho": 0.0}, layer: {"rho": 1}}
    vit.settings = dataclasses.replace(vit.settings, overrides=overrides)
    message = tab_align.on_mode(vit, res, "lma", None)
    dropped = ", ".join(sorted([alone, layer]))
    assert f"Overrides of {dropped} were removed: only one model uses those merge points now" in (
        message
    )
    assert vit.settings.overrides == {kept: {"rho": 0.5}, "*.qk": {"rho": 0.0}}
    assert "Merge #1 done" in merge(vit, res, rho=1.0, heads="pair")


def test_a_toasted_step_that_warns_toasts_its_result_and_each_warning_once(res, monkeypatch):
    """A Models-tab step (a toast for its result) that logs a warning: the warning has its
    own toast, the result's toast does not repeat it, and the status line says both."""
    import logging

    from heterogui.ui import events

    said: list[tuple[str, str]] = []
    monkeypatch.setattr(events.gr, "Info", lambda text: said.append(("info", text)))
    monkeypatch.setattr(events.gr, "Warning", lambda text: said.append(("warning", text)))

    def step(session, res, progress=None):
        logging.getLogger("heterogui.run").warning("269 inputs, not the 1024 asked for")
        return "Analysed the pair."

    out = events.event_function(step, res, (), [], 0, toast=True)(Session(), None)
    assert said == [
        ("info", "Analysed the pair."),
        ("warning", "269 inputs, not the 1024 asked for"),
    ]
    assert out[1] == "Analysed the pair. **Warning:** 269 inputs, not the 1024 asked for"
