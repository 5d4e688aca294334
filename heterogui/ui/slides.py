"""Every current figure and table of a session, for slides: one click, one .zip.

The server sends the figures as plotly JSON with the tables as CSV (``figures_payload``); the
page turns each figure into PNG and SVG with the plotly.js it already runs (``DOWNLOAD_JS``)
and saves one .zip. Nothing new is installed for it, and the images are exactly what the page
shows, on a white background.
"""

from __future__ import annotations

import csv
import io
import re
from typing import Any

import plotly.graph_objects as go

from heterogui.pipeline import is_merge_of
from heterogui.ui import (
    history,
    tab_align,
    tab_compare,
    tab_evaluate,
    tab_neurons,
    tab_zip,
)
from heterogui.ui.figstyle import style
from heterogui.ui.resources import Resources
from heterogui.ui.session import Session

FIGURE_TABS = {
    "alignment": tab_align,
    "neurons": tab_neurons,
    "zip": tab_zip,
    "evaluate": tab_evaluate,
    "compare": tab_compare,
}


def session_figures(session: Session, res: Resources) -> dict[str, go.Figure]:
    """Return every figure the tabs show now, named "<tab>-<figure>".

    The Zip tab's figures show the current settings: when they are not those of the last
    merge (a slider moved without merging), they are estimates, named "...-estimate" and
    titled so, beside the other tabs' figures of the merge.
    """
    result = session.result
    estimate = session.prepared is not None and not (
        result is not None and is_merge_of(result, session.settings)
    )
    out = {}
    for tab, module in FIGURE_TABS.items():
        for view, value in module.render(session, res).items():
            if isinstance(value, go.Figure):
                name = view.removesuffix("_plot").removeprefix(f"{tab}_")
                figure = style(value)
                if tab == "zip" and estimate:
                    title = figure.layout.title.text or name
                    figure.update_layout(title_text=f"Estimate, not merged: {title}")
                    name += "-estimate"
                out[f"{tab}-{name}"] = figure
    return out


def _csv(header: list[str], rows: list[list[Any]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def session_tables(session: Session) -> dict[str, str]:
    """Return the scores table (A, B, ensemble, merged) and the history as CSV texts."""
    tables = {}
    scores = tab_evaluate.score_table(session) if session.task is not None else None
    if scores is not None:
        tables["metrics.csv"] = _csv(scores[0], _rounded(*scores))
    if session.history:
        tables["history.csv"] = _csv(*history.history_table(session.history, flops=True))
    return tables


def _rounded(header: list[str], rows: list[list[Any]], digits: dict[str, int]) -> list[list[Any]]:
    """Return ``rows`` with the scores of the columns in ``digits`` rounded as the page shows
    them (the tables on the page keep full numbers and show them rounded)."""
    places = [digits.get(h) for h in header]
    return [
        [
            round(v, d) if d is not None and isinstance(v, float) else v
            for v, d in zip(row, places, strict=True)
        ]
        for row in rows
    ]


def figures_payload(session: Session, res: Resources) -> dict[str, Any]:
    """Return what the page turns into the .zip: name, figures (plotly JSON) and tables."""
    name = re.sub(r"[^A-Za-z0-9._-]", "_", session.pair_name or "heterogui")
    tag = f"-merge{session.merge_count}" if session.result is not None else ""
    figures = {k: f.to_plotly_json() for k, f in session_figures(session, res).items()}
    return {"name": f"{name}{tag}-figures", "figures": figures, "tables": session_tables(session)}


# Runs in the page after /figures: PNG and SVG of every figure, the CSV tables, one stored
# (uncompressed) .zip; returns the payload unchanged.
DOWNLOAD_JS = r"""
async (payload) => {
  if (!payload) return payload;
  const data = JSON.parse(payload);
  const Plotly = window.Plotly;
  if (!Plotly) {
    alert("The figures are not drawn yet: open a tab with a figure first.");
    return payload;
  }
  // the button counts the figures while they are drawn, then says what was saved
  const button = document.querySelector("#download-figures");
  const label = button ? button.textContent : "";
  const show = (text) => { if (button) button.textContent = text; };
  const total = Object.keys(data.figures).length;
  if (button) button.disabled = true;
  try {
  const enc = new TextEncoder();
  const files = [];
  const bytesOf = (url) => {
    const [head, body] = url.split(",", 2);
    if (head.endsWith(";base64")) return Uint8Array.from(atob(body), (c) => c.charCodeAt(0));
    return enc.encode(decodeURIComponent(body));
  };
  for (const [name, fig] of Object.entries(data.figures)) {
    show(`Drawing figure ${files.length / 2 + 1} of ${total} (PNG and SVG)…`);
    const layout = Object.assign({}, fig.layout, {paper_bgcolor: "white", plot_bgcolor: "white"});
    const size = {width: 1200, height: layout.height || 450};
    const png = await Plotly.toImage({data: fig.data, layout}, {format: "png", scale: 2, ...size});
    const svg = await Plotly.toImage({data: fig.data, layout}, {format: "svg", ...size});
    files.push([name + ".png", bytesOf(png)], [name + ".svg", bytesOf(svg)]);
  }
  for (const [name, text] of Object.entries(data.tables)) files.push([name, enc.encode(text)]);
  const crcTable = Array.from({length: 256}, (_, n) => {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    return c >>> 0;
  });
  const crc32 = (bytes) => {
    let c = 0xffffffff;
    for (const b of bytes) c = crcTable[(c ^ b) & 0xff] ^ (c >>> 8);
    return (c ^ 0xffffffff) >>> 0;
  };
  const parts = [], central = [];
  const now = new Date();
  const time = (now.getHours() << 11) | (now.getMinutes() << 5) | (now.getSeconds() >> 1);
  const date = ((now.getFullYear() - 1980) << 9) | ((now.getMonth() + 1) << 5) | now.getDate();
  let offset = 0;
  for (const [name, bytes] of files) {
    const fname = enc.encode(name), crc = crc32(bytes);
    const local = new DataView(new ArrayBuffer(30));
    local.setUint32(0, 0x04034b50, true); local.setUint16(4, 20, true);
    local.setUint16(10, time, true); local.setUint16(12, date, true);
    local.setUint32(14, crc, true); local.setUint32(18, bytes.length, true);
    local.setUint32(22, bytes.length, true); local.setUint16(26, fname.length, true);
    const dir = new DataView(new ArrayBuffer(46));
    dir.setUint32(0, 0x02014b50, true); dir.setUint16(4, 20, true); dir.setUint16(6, 20, true);
    dir.setUint16(12, time, true); dir.setUint16(14, date, true);
    dir.setUint32(16, crc, true); dir.setUint32(20, bytes.length, true);
    dir.setUint32(24, bytes.length, true); dir.setUint16(28, fname.length, true);
    dir.setUint32(42, offset, true);
    parts.push(local, fname, bytes);
    central.push(dir, fname);
    offset += 30 + fname.length + bytes.length;
  }
  const size = central.reduce((n, p) => n + p.byteLength, 0);
  const end = new DataView(new ArrayBuffer(22));
  end.setUint32(0, 0x06054b50, true); end.setUint16(8, files.length, true);
  end.setUint16(10, files.length, true); end.setUint32(12, size, true);
  end.setUint32(16, offset, true);
  const blob = new Blob([...parts, ...central, end], {type: "application/zip"});
  const link = document.createElement("a");
  link.href = URL.createObjectURL(blob);
  link.download = data.name + ".zip";
  document.body.appendChild(link);
  link.click();
  link.remove();
  show(`Saved ${data.name}.zip (${total} figures, ${Object.keys(data.tables).length} tables)`);
  setTimeout(() => show(label), 6000);
  } catch (err) {
    show(label);
    alert(`The figures could not be saved: ${err}`);
  } finally {
    if (button) button.disabled = false;
  }
  return payload;
}
"""
