"""The Neurons tab's figures at transformer scale (1,536 + 1,536 features) and on small layers.

A synthetic layer whose features share latent factors gives a correlation matrix with strongly
correlated pairs across and within the two models; the project's own zip matcher merges it. The
figures are checked against numbers computed here independently of ``fig_neurons``: the detail
heatmap is the reordered correlation at full resolution, the boxes are the shown groups, the
histogram counts every merged pair, and the titles and legends state the same numbers.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from conftest import drawn

from heterogui.ui import fig_neurons
from heterogui.ui.fig_neuron_hist import correlation_histogram
from heterogui.ui.fig_neurons import (
    CROSS,
    WITHIN,
    detail_figure,
    neuron_view,
    overview_figure,
)
from heterogui.zip.matchers import MATCHERS
from heterogui.zip.widths import target_width

N_A = N_B = 1536


def layer_corr(n_a: int, n_b: int, seed: int, samples: int = 384, factors: int = 160):
    """Return the (O, O) correlation of features that each read one shared latent factor."""
    gen = torch.Generator().manual_seed(seed)
    o = n_a + n_b
    z = torch.randn(samples, factors, generator=gen, dtype=torch.float64)
    which = torch.randint(0, factors, (o,), generator=gen)
    weight = 0.2 + 2.0 * torch.rand(o, generator=gen, dtype=torch.float64)
    feats = z[:, which] * weight + torch.randn(samples, o, generator=gen, dtype=torch.float64)
    return torch.corrcoef(feats.T)


def zip_of(corr: torch.Tensor, n_a: int, n_b: int, rho: float = 1.0):
    width = target_width(n_a, n_b, rho)
    return MATCHERS["zip"](corr, n_a, n_b, width=width, alpha=0.5, beta=1.0)


@pytest.fixture(scope="module")
def big():
    corr = layer_corr(N_A, N_B, seed=0)
    return corr.numpy(), zip_of(corr, N_A, N_B)


def groups_of(match) -> dict[int, np.ndarray]:
    """Return every group of two or more features: id -> its features (naive loop)."""
    g = match.groups.numpy()
    out = {}
    for gid in range(match.width):
        members = np.flatnonzero(g == gid)
        if members.size > 1:
            out[gid] = members
    return out


def strength(corr: np.ndarray, members: np.ndarray) -> float:
    sub = corr[np.ix_(members, members)]
    return float(sub[np.triu_indices(members.size, 1)].mean())


def is_cross(members: np.ndarray, n_a: int) -> bool:
    return bool((members < n_a).any() and (members >= n_a).any())


def merged_pairs(corr: np.ndarray, match) -> dict[str, list[float]]:
    """Return the correlation of every pair of features sharing a group, A-B or same model."""
    out = {"cross": [], "within": []}
    for members in groups_of(match).values():
        for k, i in enumerate(members):
            for j in members[k + 1 :]:
                out["cross" if (i < match.n_a) != (j < match.n_a) else "within"].append(corr[i, j])
    return out


def label(feature: int, n_a: int) -> str:
    return f"A{feature}" if feature < n_a else f"B{feature - n_a}"


def heatmap(fig):
    (heat,) = [t for t in fig.data if t.type == "heatmap"]
    return heat


def number(text: str, pattern: str) -> int:
    found = re.search(pattern, text)
    assert found, f"{pattern!r} not in {text!r}"
    return int(found.group(1).replace(",", ""))


def test_detail_shows_the_strongest_groups_at_full_resolution(big):
    corr, match = big
    view = neuron_view(corr, N_A, N_B, match)
    fig = detail_figure(view, "layer0.ffn")
    # the page keeps a zoom through redraws of the same merge point (ui.plot_zoom)
    kept = {detail_figure(view, "layer0.ffn", "p").layout.uirevision}
    kept.add(detail_figure(view, "layer0.ffn", "p").layout.uirevision)  # a redraw: the same
    assert len(kept) == 1 and fig.layout.uirevision not in kept  # another pair: another zoom
    assert detail_figure(view, "layer1.ffn", "p").layout.uirevision not in kept
    heat = heatmap(fig)
    z = np.asarray(heat.z, dtype=np.float64)
    shown = view.order[view.detail]
    # Full resolution: one cell per pair of shown features, the reordered correlation itself.
    assert z.shape == (shown.size, shown.size) and 40 <= shown.size <= fig_neurons.MAX_FEATURES
    np.testing.assert_allclose(z, corr[np.ix_(shown, shown)], atol=5e-4)
    assert list(heat.x) == list(heat.y) == [label(f, N_A) for f in shown.tolist()]

    # The shown groups are whole, and the strongest of their kind (cross-model first).
    groups = groups_of(match)
    ids = set(match.groups.numpy()[shown].tolist())
    assert all(np.isin(groups[g], shown).all() for g in ids)
    power = {g: strength(corr, m) for g, m in groups.items()}
    for kind in (True, False):
        mine = [g for g in groups if is_cross(groups[g], N_A) == kind]
        inside = [power[g] for g in mine if g in ids]
        outside = [power[g] for g in mine if g not in ids]
        assert inside and outside
        assert min(inside) >= max(outside) - 1e-12
    n_cross = sum(is_cross(groups[g], N_A) for g in ids)
    assert len(ids) == fig_neurons.DETAIL_GROUPS and n_cross == len(ids) - len(ids) // 4

    # One box per shown group, around exactly its members on the diagonal.
    boxes = fig.layout.shapes
    assert len(boxes) == len(ids)
    for box in boxes:
        lo, hi = int(box.x0 + 0.5), int(box.x1 + 0.5)
        assert (box.y0, box.y1) == (box.x0, box.x1) and hi - lo >= 2
        (gid,) = set(match.groups.numpy()[shown[lo:hi]].tolist())
        assert hi - lo == groups[gid].size

    # The title says what is shown, with the true numbers.
    title = fig.layout.title.text
    counts = match.counts()
    assert number(title, r"(\d+) of [\d,]+ merged groups") == len(ids)
    assert number(title, r"of ([\d,]+) merged groups") == len(groups)
    assert number(title, r"of ([\d,]+) cross-model,") == counts.cross
    assert number(title, r"of ([\d,]+) within-model\)") == len(groups) - counts.cross
    assert number(title, r"([\d,]+) of 3,072 features") == shown.size
    assert number(title, r"groups: ([\d,]+) cross-model") == counts.cross
    assert title.index("<br>") < 40  # a short first line; the details in the subtitle


def test_overview_averages_all_features_in_display_order(big):
    corr, match = big
    view = neuron_view(corr, N_A, N_B, match)
    fig = overview_figure(view, "layer0.ffn")
    z = np.asarray(heatmap(fig).z, dtype=np.float64)
    factor = 3072 // 128
    assert z.shape == (128, 128)
    mat = corr[np.ix_(view.order, view.order)]
    off = mat[:factor, factor : 2 * factor].mean()
    diag = mat[:factor, :factor]
    self_out = (diag.sum() - np.trace(diag)) / (factor * factor - factor)
    np.testing.assert_allclose([z[0, 1], z[0, 0]], [off, self_out], atol=5e-4)
    title = fig.layout.title.text
    assert "all 3,072 features" in title and "24×24 blocks" in title
    # The boxes mark the detail's features: every detail position is inside one.
    inside = np.zeros(3072, dtype=bool)
    for box in fig.layout.shapes:
        inside[int(box.x0 + 0.5) : int(box.x1 + 0.5)] = True
    assert inside[view.detail].all() and inside.sum() == view.detail.size
    # What the page gets stays small: a few ten thousand numbers per heatmap.
    detail = np.asarray(heatmap(detail_figure(view, "layer0.ffn")).z)
    assert z.size + detail.size < 100_000


def test_histogram_counts_merged_pairs_and_says_the_same_numbers(big):
    corr, match = big
    truth = merged_pairs(corr, match)
    fig = correlation_histogram(corr, match, N_A, "layer0.ffn")
    bars = {t.name: np.asarray(t.y) for t in fig.data if t.type == "bar"}
    (line,) = [t for t in fig.data if t.type == "scatter"]
    edges = np.linspace(-1, 1, 41)
    names = {}
    for key, words in (("cross", "across A and B"), ("within", "within one model")):
        (name,) = [n for n in bars if n.startswith(words)]
        names[key] = name
        assert bars[name].sum() == len(truth[key]) > 100  # counts, not shares
        expected, _ = np.histogram(np.clip(truth[key], -1, 1), bins=edges)
        np.testing.assert_array_equal(bars[name], expected)
        assert number(name, r"\(([\d,]+) pairs\)") == len(truth[key])
    title = fig.layout.title.text
    total = len(truth["cross"]) + len(truth["within"])
    assert number(title, r"([\d,]+) merged pairs") == total
    assert number(title, r"([\d,]+) across A and B") == len(truth["cross"])
    assert number(title, r"([\d,]+) within one model") == len(truth["within"])
    assert fig.layout.yaxis.title.text == "merged pairs" and fig.layout.barmode == "stack"
    # All A-B pairs: a share per bin on the right axis, named so.
    assert line.yaxis == "y2" and "share, right axis" in line.name
    background, _ = np.histogram(corr[:N_A, N_A:], bins=edges)
    np.testing.assert_allclose(np.asarray(line.y), background / (N_A * N_B), atol=1e-5)
    assert fig.layout.yaxis2.tickformat == ".0%"
    # The same numbers as the map: pairs here, groups there, each named.
    sub = detail_figure(neuron_view(corr, N_A, N_B, match), "x").layout.title.text
    assert number(sub, r"groups: ([\d,]+) cross-model") == match.counts().cross
    assert "pairs" not in sub


def test_a_small_layer_is_shown_whole_at_full_resolution():
    n_a, n_b = 16, 24
    corr = layer_corr(n_a, n_b, seed=3, samples=200, factors=6)
    match = zip_of(corr, n_a, n_b, rho=0.75)
    corr = corr.numpy()
    view = neuron_view(corr, n_a, n_b, match)
    fig = fig_neurons.neuron_figure(corr, n_a, n_b, match, "block0")
    heat = heatmap(fig)
    z = np.asarray(heat.z, dtype=np.float64)
    assert view.full and z.shape == (40, 40)
    np.testing.assert_allclose(z, corr[np.ix_(view.order, view.order)], atol=5e-4)
    assert sorted(heat.x) == sorted(label(f, n_a) for f in range(40))
    groups = groups_of(match)
    assert len(fig.layout.shapes) == len(groups) > 3
    # Each group sits together, A's members first; the strip marks each feature's kind.
    pos = {f: p for p, f in enumerate(view.order.tolist())}
    for members in groups.values():
        at = sorted(pos[f] for f in members.tolist())
        assert at == list(range(at[0], at[0] + members.size))
        assert view.order[at].tolist() == sorted(members.tolist())
        kind = CROSS if is_cross(members, n_a) else WITHIN
        assert (view.kinds[at] == kind).all()
    strip = {t.name: len(t.x) for t in fig.data if t.type == "scatter"}
    assert sum(strip.values()) == 40
    assert strip["merged across A and B"] == sum(
        m.size for m in groups.values() if is_cross(m, n_a)
    )
    title = fig.layout.title.text
    assert "all 40 features at full resolution" in title
    assert number(title, r"groups: ([\d,]+) cross-model") == match.counts().cross


def test_an_unmerged_large_layer_says_so():
    n = 300
    corr = layer_corr(n, n, seed=1, samples=200, factors=40).numpy()
    view = neuron_view(corr, n, n, None)
    fig = detail_figure(view, "layer5.ffn")
    shown = view.order[view.detail]
    assert shown.tolist() == list(range(128)) + list(range(n, n + 128))
    np.testing.assert_allclose(
        np.asarray(heatmap(fig).z, dtype=np.float64), corr[np.ix_(shown, shown)], atol=5e-4
    )
    assert "nothing merged" in fig.layout.title.text and not fig.layout.shapes
    hist = correlation_histogram(corr, None, n, "layer5.ffn")
    (bars,) = hist.data
    assert sum(bars.y) == n * n and "not merged" in hist.layout.title.text


def test_the_tab_shows_the_overview_for_large_layers_only(big):
    from heterogui.ui import tab_neurons
    from heterogui.ui.figstyle import style

    corr, match = big
    views = tab_neurons.space_views(corr, N_A, match, "layer0.ffn", "the last merge")
    assert views["overview_box"]["visible"] is True
    assert views["neuron_overview"] is not None
    info, title = views["neuron_info"], views["neuron_map"].layout.title.text
    shown = number(title, r"(\d+) of [\d,]+ merged groups")
    assert number(info, r"the (\d+) strongest merged groups") == shown
    assert number(info, r"([\d,]+) features, each group boxed") == number(
        title, r"([\d,]+) of 3,072 features"
    )
    assert "3,072 features (1,536 of A, 1,536 of B)" in info
    for key in ("neuron_map", "neuron_overview", "neuron_hist"):  # the app's shared look
        fig = style(views[key])
        assert drawn(fig, "paper_bgcolor") == "rgba(0,0,0,0)"
        assert fig.layout.margin.t >= 90  # room for the title, its subtitle and the legend

    small = layer_corr(16, 24, seed=3, samples=200, factors=6)
    views = tab_neurons.space_views(small.numpy(), 16, zip_of(small, 16, 24), "b0", "x")
    assert views["overview_box"]["visible"] is False and views["neuron_overview"] is None
    assert "all shown at full resolution" in views["neuron_info"]
