"""A plot keeps the user's zoom while the workbench redraws the same view.

Gradio re-creates a plot's div whenever its figure changes, so plotly's own ``uirevision`` never
sees the previous plot, and a zoom was lost at every redraw: the Neurons map on every slider
release, the CKA map on every click that pairs two layers. ``ZOOM_JS`` (run once as the page
loads) remembers the axis ranges a user zoomed to on each plot block, with the figure's
``layout.uirevision``, and sets them again on the new plot when its uirevision is the same. A
figure without a uirevision, or with another one (another merge point, another pair), starts
unzoomed; a double click (plotly's autoscale) forgets the zoom.

On a touch screen (a coarse pointer: a tablet, a phone) a figure does not zoom on a drag
(plotly's dragmode false): a swipe over a figure zoomed into it instead of scrolling the page.
A tap still shows the hover and clicks (pairs layers on the CKA map); the toolbar's zoom
button still zooms.
"""

from __future__ import annotations

# Calls ``watch(plot)`` on every plotly figure the page draws, once a frame at most (gradio
# re-creates a figure's div on every redraw); ``watch`` marks the plots it has seen.
EACH_PLOT_JS = """let queued = false;
  new MutationObserver(() => {
    if (queued) return;
    queued = true;
    requestAnimationFrame(() => {
      queued = false;
      document.querySelectorAll(".js-plotly-plot").forEach(watch);
    });
  }).observe(document.body, { childList: true, subtree: true });"""

ZOOM_JS = """
() => {
  const kept = new Map();  // plot block id -> {rev, ranges: {"xaxis.range[0]": ..., ...}}
  const RANGE = /^([xy]axis\\d*)\\.range\\[[01]\\]$/;
  const AUTO = /^([xy]axis\\d*)\\.autorange$/;
  const touch = window.matchMedia("(pointer: coarse)").matches;
  const watch = (gd) => {
    if (gd.heteroguiZoom || !gd.on || !gd._fullLayout) return;
    gd.heteroguiZoom = true;
    // a finger's swipe over a figure scrolls the page (it zoomed in and hid rows); a tap
    // still hovers and clicks, and the toolbar's zoom still zooms
    const update = touch ? { dragmode: false } : {};
    const rev = gd._fullLayout.uirevision;
    const id = gd.closest(".block")?.id;
    if (rev === undefined || rev === null || !id) {
      if (touch) window.Plotly.relayout(gd, update);
      return;
    }
    const saved = kept.get(id);
    if (saved && saved.rev === rev) {
      Object.assign(update, saved.ranges);
    } else {
      kept.set(id, { rev, ranges: {} });
    }
    if (Object.keys(update).length) window.Plotly.relayout(gd, update);
    gd.on("plotly_relayout", (change) => {
      const entry = kept.get(id);
      if (!entry || entry.rev !== rev) return;  // a newer figure owns the block
      for (const [key, value] of Object.entries(change || {})) {
        if (RANGE.test(key)) {
          entry.ranges[key] = value;
        } else if (AUTO.test(key) && value) {
          const axis = key.match(AUTO)[1];
          for (const k of Object.keys(entry.ranges)) {
            if (k.startsWith(axis + ".")) delete entry.ranges[k];
          }
        }
      }
    });
  };
  ${each_plot}
}
""".replace("${each_plot}", EACH_PLOT_JS)
