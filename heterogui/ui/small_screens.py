"""What the page adds for phones, tablets and narrow windows, where gradio's defaults fall short.

- The status line (``#status``: every step's result, error and progress) stays at the top of
  the screen on a narrow page (up to 1,024 px). There the columns stack, and a phone user who
  released a slider or tapped the CKA map saw neither the merge's progress nor its scores: the
  status line was a screen or more above, and those steps raise no toast. Gradio's container
  clips with ``overflow: hidden``, which stops anything inside it from sticking; ``clip`` cuts
  the same overflow and lets the status line stick.
- On a touch screen plotly shows every figure's toolbar at all times (it has no hover to wait
  for), and the toolbar covered the figures' titles and their block's label. It now shows on
  the figure a finger touched, as a mouse's hover shows it; hidden, it takes no taps.
- Sliders are 28 px tall targets on a touch screen (8 px before: a finger missed the thumb),
  moved by their thumb only: a swipe that began on a slider's track scrolled the page and also
  set the slider where the finger landed (its number box takes exact values).
- What scrolls into view (a box the keyboard focuses) stops below the status line.
- A dropdown's value too long for its box ends in an ellipsis before the arrow, which covered
  it; the Compare tab's two merge pickers stack on a phone (each had 135 px).
- On a phone the Export tab's recipe view has its toolbar (copy, "Save as recipe.yaml") on a
  line of its own: it covered the view's label.
- Toasts show at the bottom of a narrow page (``SMALL_SCREEN_HEAD``): at the top they covered
  the status line that stuck there, which says the same and more.
- ``FIT_JS`` (run once as the page loads) shrinks a figure title wider than its figure until it
  fits (down to 9 px; a phone cut "Layer CKA with the SMA path (score 1.290)" at "1.29"), and
  lays panels side by side (the Evaluate and Compare tabs' samples, the text pairs' similarity
  maps) out in balanced rows when the figure is narrower than 120 px a panel (six panels on a
  phone overlapped their captions); back in one row once wide again, and the figure still
  follows the page's width (a rotated phone). A figure asks for that layout with
  ``layout.meta.panels`` (its panel count).
"""

from __future__ import annotations

from heterogui.ui.plot_zoom import EACH_PLOT_JS

NARROW_PX = 1024  # the widest page whose status line sticks to the top of the screen
PANEL_PX = 120  # the narrowest sample panel: its captions' longest line at 10 px fits

# gradio scopes the rules of the page's CSS to its container's content, those inside @media
# only: the page's and the container's own rules stay outside (at any width: clip cuts what
# hidden did, and the scroll padding only moves what scrolls into view a little lower)
SMALL_SCREEN_CSS = """
.gradio-container { overflow: clip !important; }
html { scroll-padding-top: 6em; }  /* what scrolls into view (a focused box) clears #status */
/* a dropdown's value longer than its box ends in an ellipsis before the arrow (it ran on under
   the arrow: the Compare tab's pickers hid "76.89" behind it on a phone) */
.secondary-wrap:has(> .icon-wrap) > input {
  padding-right: 24px !important; text-overflow: ellipsis;
}
@media (max-width: NARROW_PXpx) {
  #status {
    position: sticky !important; top: 0; z-index: 50; overflow-y: auto;
    max-height: min(25vh, 8.5em);  /* a long message scrolls inside: an export's took 1/4 */
    background: var(--background-fill-primary) !important;
    box-shadow: 0 2px 6px rgba(0, 0, 0, 0.18); padding: 4px 8px !important;
  }
}
@media (max-width: 560px) {
  /* the recipe's label and its toolbar no longer share a line */
  #recipe-view .icon-button-wrapper {
    position: static !important; width: fit-content; margin-left: auto;
  }
}
@media (pointer: coarse) {
  .js-plotly-plot .modebar-container { opacity: 0; pointer-events: none; }
  .js-plotly-plot:hover .modebar-container, .js-plotly-plot:focus-within .modebar-container {
    opacity: 1; pointer-events: auto;
  }
  /* a finger moves a slider by its thumb only: a swipe that began on the track scrolled the
     page and also set the slider to where the finger landed */
  input[type=range] { height: 28px !important; pointer-events: none; }
  input[type=range]::-webkit-slider-thumb {
    width: 28px !important; height: 28px !important; pointer-events: auto;
  }
  input[type=range]::-moz-range-thumb {
    width: 28px !important; height: 28px !important; pointer-events: auto;
  }
}
""".replace("NARROW_PX", str(NARROW_PX))

# gradio's toasts lie outside the container's content, where the page's CSS inside @media does
# not reach: this rule goes into the page's <head> as it is
SMALL_SCREEN_HEAD = """<style>
@media (max-width: NARROW_PXpx) {
  .gradio-container .toast-wrap { top: auto !important; bottom: 12px !important; }
}
</style>""".replace("NARROW_PX", str(NARROW_PX))

FIT_JS = """
() => {
  const MIN_TITLE_PX = 9;
  const fitTitle = (gd) => {
    const title = gd.querySelector(".gtitle");
    const size = gd._fullLayout?.title?.font?.size;
    if (!title || !size) return;
    const frame = gd.getBoundingClientRect();
    const fits = () => {
      const box = title.getBoundingClientRect();
      return box.left >= frame.left - 1 && box.right <= frame.right + 1;
    };
    for (let px = size; !fits() && px > MIN_TITLE_PX; ) {
      px = Math.max(MIN_TITLE_PX, px - 1);
      title.style.fontSize = px + "px";
    }
  };
  // panels side by side (layout.meta.panels: sample images, similarity maps) in balanced rows
  // of as many as fit: each row's titles sit in a band as tall as the top margin, as the first
  // row's do. Every update keeps autosize: a height alone pins plotly's width, and the figure
  // stopped following the page (a rotated phone cut panels off).
  const axis = (letter, s) => `${letter}axis${s === 1 ? "" : s}`;  // plotly's own names
  const regrid = (gd) => {
    const k = gd.layout?.meta?.panels;
    if (!k) return;
    const width = gd.getBoundingClientRect().width;
    if (!width) return;  // on a hidden tab: laid out once shown (its resize redraws it)
    const bucket = Math.round(width / 20);  // once per width: its own redraw changes nothing
    if (gd.heteroguiBucket === bucket) return;
    gd.heteroguiBucket = bucket;
    const full = gd._fullLayout, m = full.margin;
    // the panels share the plot's area, less what tick labels and a colour bar take
    const area = full._size?.w || width - m.l - m.r;
    const fit = Math.max(1, Math.min(k, Math.floor(area / (gd.layout.meta.panel_px || PANEL_PX))));
    const rows = Math.ceil(k / fit), cols = Math.ceil(k / rows);  // 3 + 3, not 5 + 1
    const shape = cols === k ? "row" : `${cols} ${bucket}`;
    if ((gd.heteroguiShape || "row") === shape) return;
    if (!gd.heteroguiRow) {  // the figure as drawn: one row
      const row = { height: full.height, autosize: true, width: null };
      for (let s = 1; s <= k; s++) {
        row[`${axis("x", s)}.domain`] = full[axis("x", s)].domain.slice();
        row[`${axis("y", s)}.domain`] = full[axis("y", s)].domain.slice();
        row[`annotations[${s - 1}].x`] = full.annotations[s - 1].x;
        row[`annotations[${s - 1}].y`] = full.annotations[s - 1].y;
      }
      gd.heteroguiRow = { row, panelHeight: full.height - m.t - m.b };
    }
    gd.heteroguiShape = shape;
    if (shape === "row") {
      window.Plotly.relayout(gd, gd.heteroguiRow.row);
      return;
    }
    const panel = Math.min(area / cols, gd.heteroguiRow.panelHeight);
    const inner = rows * panel + (rows - 1) * m.t;
    const update = { height: inner + m.t + m.b, autosize: true, width: null };
    for (let s = 0; s < k; s++) {
      const top = Math.floor(s / cols) * (panel + m.t), column = s % cols;
      const x0 = column / cols + 0.01, x1 = (column + 1) / cols - 0.01;
      const y1 = 1 - top / inner, y0 = Math.max(0, 1 - (top + panel) / inner);
      update[`${axis("x", s + 1)}.domain`] = [x0, x1];
      update[`${axis("y", s + 1)}.domain`] = [y0, y1];
      update[`annotations[${s}].x`] = (x0 + x1) / 2;
      update[`annotations[${s}].y`] = y1;
    }
    window.Plotly.relayout(gd, update);
  };
  const watch = (gd) => {
    if (gd.heteroguiFit || !gd.on || !gd._fullLayout) return;
    gd.heteroguiFit = true;
    gd.on("plotly_afterplot", () => { regrid(gd); fitTitle(gd); });
    regrid(gd);
    fitTitle(gd);
  };
  EACH_PLOT
}
""".replace("PANEL_PX", str(PANEL_PX)).replace("EACH_PLOT", EACH_PLOT_JS)
