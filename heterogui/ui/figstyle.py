"""The look every workbench figure shares, light or dark.

Figures get transparent backgrounds and translucent grid lines, so they sit on the page's own
background; in dark mode ``DARK_CSS`` turns their text (labels on the data points too) and
axis lines light (CSS outranks the colours plotly writes inline). Hover labels keep plotly's
own contrast. ``STATUS_CSS`` keeps Gradio's time estimates out of the status line, breaks
every table's column names between words only ("stage" broke into three lines on a phone),
keeps the history table's column names and the Zip readout's cells whole (they scroll
sideways: a narrow screen broke "49.78" into "49.7" over "8"; the readout's border fits its
rows; the Compare table's cells likewise; a text pair's scores, whose models' names wrap
instead) and draws a language merge's collapse alarm red.
"""

from __future__ import annotations

import html

import plotly.graph_objects as go
import plotly.io as pio

GRID = "rgba(128, 128, 128, 0.25)"
_AXES = {"gridcolor": GRID, "zerolinecolor": GRID, "linecolor": GRID}
CLEAR = "rgba(0,0,0,0)"
# plotly's own look with the workbench's: transparent backgrounds, translucent grid lines on
# every axis. A figure's own settings outrank its template, so no figure sets these.
TEMPLATE = go.layout.Template(pio.templates["plotly"])
TEMPLATE.layout.update(paper_bgcolor=CLEAR, plot_bgcolor=CLEAR, xaxis=_AXES, yaxis=_AXES)

# Gradio's time estimate for a step is its average over every earlier run of that event, by
# any user and for any pair (a MiniLM merge would be promised the digits pair's time): the status
# line shows the step's own stage and true share of work instead, and no estimate.
STATUS_CSS = """
#status .eta-bar, #status .progress-text { display: none !important; }
th, th * { word-break: normal !important; overflow-wrap: normal !important; }
#history thead th, #history thead th * { white-space: nowrap !important; }
#readout table { display: block; overflow-x: auto; width: fit-content; max-width: 100%; }
#readout td {
  white-space: nowrap !important; word-break: normal !important; overflow-wrap: normal !important;
}
#readout th { white-space: normal !important; }
#compare-table table { display: block; overflow-x: auto; max-width: 100%; }
#compare-table td { white-space: nowrap !important; }
#text-scores td:not(:first-child) * { white-space: nowrap !important; }
#lm-alarm { border-left: 6px solid #d62728; padding: 4px 10px; }
#lm-alarm, #lm-alarm * { color: #d62728 !important; }
#samples, #sim-plot { border: none !important; }
"""

DARK_CSS = """
.dark .js-plotly-plot :is(.infolayer, .xaxislayer-above, .yaxislayer-above,
  .xaxislayer-below, .yaxislayer-below, .overaxes-above, .annotation, .legend) text,
.dark .js-plotly-plot .scatterlayer .textpoint text {
  fill: #e5e7eb !important;
}
.dark .js-plotly-plot .main-svg { background: transparent !important; }
.dark .js-plotly-plot .zerolinelayer path { stroke: rgba(229, 231, 235, 0.4) !important; }
"""


def plain(text: str) -> str:
    """Return ``text`` as a figure shows it, character for character: plotly reads tags and
    entities in labels (a typed sentence "Use the <b>bold</b> tag" showed in bold)."""
    return html.escape(text, quote=False)


def style(fig: go.Figure) -> go.Figure:
    """Return ``fig`` with the shared look (changed in place): ``TEMPLATE`` as its template.

    The template is validated once, here at import; plotly would validate it again on every
    assignment (tens of milliseconds a figure, about half of a slider release's drawing), so
    it is assigned unvalidated, as plotly itself assigns its default template to a new figure.
    The figure gets its own copy.
    """
    layout = fig.layout
    validate = layout._validate
    layout._validate = False
    try:
        layout.template = TEMPLATE
    finally:
        layout._validate = validate
    return fig
