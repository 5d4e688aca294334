"""The Compare tab: two merges side by side, and the 2-D sweep (handlers, no browser)."""

from __future__ import annotations

import dataclasses

import pytest

from heterogui import sweep
from heterogui.errors import ConfigError
from heterogui.ui import (
    compare_grid,
    history,
    tab_align,
    tab_compare,
    tab_evaluate,
    tab_models,
    tab_zip,
    views,
)
from heterogui.ui.resources import Resources, ZooPairs
from heterogui.ui.session import Session

PAIR = "tiny-digits-vgg-depth"


@pytest.fixture(scope="module")
def res(tmp_path_factory) -> Resources:
    exports = tmp_path_factory.getbasetemp()
    return Resources(ZooPairs(tiny=True), device="cpu", default_pair=PAIR, export_root=exports)


@pytest.fixture()
def session(res) -> Session:
    s = Session(device="cpu")
    tab_models.on_start(s, res)
    return s


def _blocks(session: Session) -> int:
    return session.prepared.padded_a.graph().num_blocks - 1


def _merge(session, res, rho, beta=1.0) -> int:
    tab_zip.on_merge(session, res, "zip", 0.5, beta, rho, _blocks(session), "cpu")
    return session.merge_count


def test_two_merges_side_by_side_with_their_differences(session, res):
    first = _merge(session, res, 1.0)
    tab_align.on_mode(session, res, "lma", None)  # the second merge aligns differently
    second = _merge(session, res, 0.5, beta=0.5)
    assert "Comparing merge" in tab_compare.on_compare(session, res, first, second)
    page = tab_compare.render(session, res)
    rows = {
        line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:5]]
        for line in page["compare_table"].splitlines()[2:]
    }
    h1, h2 = session.history[first - 1], session.history[second - 1]
    assert rows["rho"] == ["1", "0.5", "-0.5"] and rows["beta"] == ["1", "0.5", "-0.5"]
    assert rows["alignment"] == [h1["alignment"], h2["alignment"], "differs"]
    p1, p2 = h1["parameters"], h2["parameters"]
    assert rows["parameters (effective)"] == [f"{p1:,}", f"{p2:,}", f"{p2 - p1:+,}"]
    assert float(rows["Joint %"][0]) == h1["Joint"] and float(rows["Joint %"][1]) == h2["Joint"]
    # Widths: one bar series per merge, equal to each merge's own widths.
    bars = {t.name: list(t.y) for t in page["compare_widths"].data if t.type == "bar"}
    spaces = list(page["compare_widths"].data[0].x)
    for merge in (first, second):
        widths = session.details[merge]["widths"]
        assert bars[f"merge #{merge}"] == [widths[s][2] for s in spaces]
    # Alignment: the pairs only one merge has are named in the common numbering.
    pairs1, pairs2 = (set(session.details[m]["pairs"]) for m in (first, second))
    text = page["compare_alignment"]
    if pairs1 == pairs2:
        assert "the same layer pairs" in text
    else:
        assert all(f"A{i}–B{j}" in text for i, j in pairs1 ^ pairs2)
    # Samples: both merges' predictions on the same samples.
    titles = " ".join(a.text for a in page["compare_samples"].layout.annotations)
    assert f"#{first}:" in titles and f"#{second}:" in titles


def test_compare_refuses_what_it_cannot_show(session, res):
    first = _merge(session, res, 1.0)
    assert tab_compare.render(session, res)["compare_left"]["value"] is None  # one merge only
    with pytest.raises(ConfigError, match="two different merges"):
        tab_compare.on_compare(session, res, first, first)
    with pytest.raises(ConfigError, match="not a merge of this pair"):
        tab_compare.on_compare(session, res, first, 99)
    with pytest.raises(ConfigError, match="pick the second merge"):
        tab_compare.on_compare(session, res, first, None)
    assert session.pinned == []


def test_pinned_merges_stay_in_memory_while_old_ones_go(session, res):
    first = _merge(session, res, 1.0)
    second = _merge(session, res, 0.8)
    page = tab_compare.render(session, res)  # before any Compare: the two latest, preselected
    assert (page["compare_left"]["value"], page["compare_right"]["value"]) == (first, second)
    tab_compare.on_compare(session, res, first, second)
    for rho in (0.7, 0.6, 0.5, 0.4, 0.3):
        _merge(session, res, rho)
    newest = sorted(session.kept)[-history.KEEP_RESULTS :]
    assert set(session.kept) == {first, second, *newest}
    assert tab_compare.render(session, res)["compare_samples"] is not None


def test_grid_scores_every_cell_and_a_cell_loads_its_setting(session, res):
    message = compare_grid.on_grid(session, res, "beta")
    assert "25 merges" in message
    grid = session.grid
    assert {(p["rho"], p["beta"]) for p in grid} == {
        (r, b) for r in compare_grid.GRID_RHOS for b in compare_grid.GRID_VALUES["beta"]
    }
    # Each cell is the merge those settings give (checked on one cell against a direct merge).
    point = next(p for p in grid if p["rho"] == 0.5 and p["beta"] == 0.25)
    direct = sweep.sweep_grid(
        session.pair,
        session.prepared,
        session.settings,
        session.evaluation,
        {"rho": [0.5], "beta": [0.25]},
    )
    assert direct == [point]
    # At rho = 0 every beta gives the ensemble's effective size.
    ensemble = session.reference_sizes["ensemble"]["parameters"]
    assert {p["parameters"] for p in grid if p["rho"] == 0.0} == {ensemble}
    page = tab_compare.render(session, res)
    heat = page["grid_plot"].data[0]
    assert heat.z[list(heat.y).index(0.25)][list(heat.x).index(0.5)] == point["score"]
    layout = page["grid_plot"].layout  # a tick at the centre of every cell
    assert list(layout.xaxis.tickvals) == list(heat.x) and list(layout.yaxis.tickvals) == list(
        heat.y
    )
    cells = page["grid_cell"]["choices"]
    scores = [grid[k]["score"] for _, k in cells]
    assert scores == sorted(scores, reverse=True)  # best first
    best = cells[0][1]
    assert "loaded and merged" in compare_grid.on_grid_load(session, res, best)
    settings = session.result.settings
    assert (settings.rho, settings.beta) == (grid[best]["rho"], grid[best]["beta"])
    assert session.history[-1]["score"] == grid[best]["score"]
    knobs = views.render(session, res, ("knobs",))
    assert knobs["rho"] == grid[best]["rho"] and knobs["beta"] == grid[best]["beta"]


def test_grid_over_the_stop_point_uses_real_blocks(session, res):
    compare_grid.on_grid(session, res, "stop")
    stops = sorted({p["stop"] for p in session.grid})
    assert stops[0] >= 1 and stops[-1] == _blocks(session) and len(stops) >= 2
    with pytest.raises(ConfigError, match="second knob"):
        compare_grid.on_grid(session, res, "temperature")


def test_an_export_after_a_realignment_asks_for_a_merge_of_it(session, res):
    from heterogui.ui import exporting

    with pytest.raises(ConfigError, match="merge first"):
        exporting.session_run(session)
    merge = _merge(session, res, 1.0)
    assert exporting.session_run(session).result is session.result
    tab_align.on_mode(session, res, "lma", None)  # the merge no longer fits the alignment
    with pytest.raises(ConfigError, match=f"merge #{merge} was made before the models, the"):
        exporting.session_run(session)
    with pytest.raises(ConfigError, match=f"merge #{merge} was made .* to measure a merge"):
        tab_compare.on_resemblance(session, res)
    said = tab_evaluate.on_evaluate(session, res)
    assert said.startswith(f"Merge #{merge} was made before") and "to score a merge" in said


def test_the_last_merge_is_measured_against_both_parents(session, res):
    with pytest.raises(ConfigError, match="merge first"):
        tab_compare.on_resemblance(session, res)
    merge = _merge(session, res, 0.5)
    assert f"merge #{merge}" in tab_compare.on_resemblance(session, res)
    found = session.resemblance[1]
    page = tab_compare.render(session, res)
    lines = {t.name: t for t in page["resemblance_plot"].data}
    assert list(lines["CKA with A"].y) == found.to_a and list(lines["CKA with B"].y) == found.to_b
    closer_a = sum(a > b for a, b in zip(found.to_a, found.to_b, strict=True))
    assert f"{closer_a} layers are closer to A" in page["resemblance_info"]
    assert len(found.to_a) == _blocks(session)
    # a merge that stops before its first layer merges none: said in words, no pass run
    tab_zip.on_merge(session, res, "zip", 0.5, 1.0, 1.0, 0, "cpu")
    assert f"merge #{session.merge_count}" in tab_compare.on_resemblance(session, res)
    page = tab_compare.render(session, res)
    assert (
        page["resemblance_info"] == f"Merge #{session.merge_count} merges no layer (stop point 0)."
    )


def test_figures_for_slides_hold_every_figure_and_the_tables(session, res):
    import csv
    import io
    import json

    from heterogui.ui import tab_export

    with pytest.raises(ConfigError, match="load and analyse"):
        tab_export.on_figures(Session(), res)
    merge = _merge(session, res, 0.5)
    message, extra = tab_export.on_figures(session, res)
    payload = json.loads(extra["figures_payload"])
    assert payload["name"] == f"{PAIR}-merge{merge}-figures"
    names = set(payload["figures"])
    assert {"alignment-heatmap", "zip-sizes", "zip-arch", "neurons-neuron_map"} <= names
    assert message.startswith(f"Collected {len(names)} figures and the tables")
    # The figures are the tabs' own, as plotly JSON.
    heat = payload["figures"]["alignment-heatmap"]["data"][0]
    assert heat["type"] == "heatmap"
    assert len(heat["z"]) == session.prepared.similarity.shape[0]
    rows = list(csv.reader(io.StringIO(payload["tables"]["metrics.csv"])))
    assert [r[0] for r in rows[1:]] == ["A", "B", "ensemble", "merged"]
    assert float(rows[-1][1]) == session.history[-1]["Joint"]
    history = list(csv.reader(io.StringIO(payload["tables"]["history.csv"])))
    assert len(history) == 1 + len(session.history) and "rho" in history[0]
    # a slider moved without merging: the Zip tab's figures are estimates, and say so
    session.settings = dataclasses.replace(session.settings, rho=0.25)
    _, extra = tab_export.on_figures(session, res)
    figures = json.loads(extra["figures_payload"])["figures"]
    assert "zip-sizes" not in figures and "neurons-neuron_map" in figures
    assert figures["zip-sizes-estimate"]["layout"]["title"]["text"].startswith(
        "Estimate, not merged: "
    )


def test_a_click_on_the_grid_loads_that_cell(session, res):
    compare_grid.on_grid(session, res, "alpha")
    point = next(p for p in session.grid if p["rho"] == 0.75 and p["alpha"] == 0.3)
    assert "loaded and merged" in compare_grid.on_grid_click(session, res, 0.75, 0.3)
    settings = session.result.settings
    assert (settings.rho, settings.alpha) == (0.75, 0.3)
    assert session.history[-1]["score"] == point["score"]
    with pytest.raises(ConfigError, match="no merge of the sweep at rho 0.6"):
        compare_grid.on_grid_click(session, res, 0.6, 0.3)


def test_the_sweeps_use_the_zip_tabs_settings_not_the_last_merges(session, res):
    from heterogui.ui import tab_evaluate, zip_overrides

    zip_overrides.on_set_override(session, res, "block0", None, 3)
    _merge(session, res, 1.0)
    assert session.result.widths()["block0"][2] == 3
    zip_overrides.on_clear_overrides(session, res)  # cleared after the merge: gone for good
    compare_grid.on_grid(session, res, "alpha")
    plain = sweep.sweep_grid(
        session.pair,
        session.prepared,
        session.settings,
        session.evaluation,
        {"rho": compare_grid.GRID_RHOS, "alpha": compare_grid.GRID_VALUES["alpha"]},
    )
    assert session.grid == plain
    ensemble = session.reference_sizes["ensemble"]["parameters"]
    assert {p["parameters"] for p in session.grid if p["rho"] == 0.0} == {ensemble}
    zip_overrides.on_set_override(session, res, "block0", None, 4)  # after the sweep ran
    cell = next(k for k, p in enumerate(session.grid) if p["rho"] == 1.0 and p["alpha"] == 0.5)
    compare_grid.on_grid_load(session, res, cell)  # the cell's merge, as the sweep made it
    assert session.result.settings.overrides == {}
    assert session.history[-1]["score"] == session.grid[cell]["score"]
    zip_overrides.on_set_override(session, res, "block0", None, 3)  # set, not merged yet
    tab_evaluate.on_sweep(session, res)  # sweeps what the Zip tab shows
    at_one = next(p for p in session.sweep if p["rho"] == 1.0)
    assert at_one["parameters"] < session.grid[cell]["parameters"]


def test_the_grid_over_the_stop_point_marks_a_full_zip_at_its_last_stop(session, res):
    _merge(session, res, 1.0)  # a full zip: its settings hold no stop
    assert session.settings.stop is None
    compare_grid.on_grid(session, res, "stop")
    marker = compare_grid.grid_views(session)["grid_plot"].data[-1]
    assert marker.name == "current setting"
    assert (marker.x[0], marker.y[0]) == (1.0, _blocks(session))
