"""Colours the workbench's figures rely on read for colour-blind viewers and on every cell.

Colour vision deficiency is simulated with Machado, Oliveira and Fernandes (2009) at full
severity on linear RGB; colour differences are CIELAB distances (delta E 1976), contrast is
WCAG's ratio of relative luminances.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from heterogui.ui.fig_compare import CONTOUR_INK, LIGHT_VIRIDIS, grid_figure
from heterogui.ui.neuron_view import KINDS

SIMULATIONS = {
    "normal": np.eye(3),
    "protanopia": np.array(
        [
            [0.152286, 1.052583, -0.204868],
            [0.114503, 0.786281, 0.099216],
            [-0.003882, -0.048116, 1.051998],
        ]
    ),
    "deuteranopia": np.array(
        [
            [0.367322, 0.860646, -0.227968],
            [0.280085, 0.672501, 0.047413],
            [-0.011820, 0.042940, 0.968881],
        ]
    ),
}


def linear(colour: str) -> np.ndarray:
    c = np.array([int(colour[i : i + 2], 16) for i in (1, 3, 5)]) / 255
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def lab(rgb_linear: np.ndarray) -> np.ndarray:
    xyz = (
        np.clip(rgb_linear, 0, 1)
        @ np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]]).T
    )
    f = xyz / np.array([0.95047, 1.0, 1.08883])
    f = np.where(f > 0.008856, np.cbrt(f), 7.787 * f + 16 / 116)
    return np.array([116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])])


def luminance(colour: str) -> float:
    return float(linear(colour) @ np.array([0.2126, 0.7152, 0.0722]))


@pytest.mark.parametrize("vision", list(SIMULATIONS))
def test_the_neuron_kinds_stay_apart_for_colour_blind_viewers(vision):
    """Kept alone, merged across, merged within, dropped: the strip and the histogram tell
    them by colour alone. The green and orange before were delta E 4.6 apart to a protanope."""
    m = SIMULATIONS[vision]
    for (_, a, ca), (_, b, cb) in itertools.combinations(KINDS, 2):
        gap = np.linalg.norm(lab(linear(ca) @ m.T) - lab(linear(cb) @ m.T))
        assert gap > 25, f"{a} and {b}: delta E {gap:.1f} with {vision}"


def test_the_sweep_maps_contours_read_on_every_cell_and_have_no_legend_swatch():
    """The dark contours and labels keep 4.5:1 (WCAG text) on every colour of the scale; white
    ones were 1.3:1 on viridis yellow, and their white legend line vanished on a white page."""
    ink = luminance(CONTOUR_INK)
    for _, colour in LIGHT_VIRIDIS:
        assert (luminance(colour) + 0.05) / (ink + 0.05) >= 4.5, colour
    points = [
        {"rho": r, "beta": b, "score": 50 + 10 * r + b, "parameters": int(1e5 * (2 - r))}
        for r in (0.25, 0.5, 0.75)
        for b in (0.0, 1.0)
    ]
    fig = grid_figure(points, "beta", "Joint", (0.5, 1.0))
    heat, contours = fig.data[0], fig.data[1]
    assert [list(s) for s in heat.colorscale] == [list(s) for s in LIGHT_VIRIDIS]
    assert contours.line.color == contours.contours.labelfont.color == CONTOUR_INK
    assert (
        contours.showlegend is False and "contours: effective parameters" in fig.layout.title.text
    )
