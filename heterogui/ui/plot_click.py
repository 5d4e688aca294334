"""Clicks on plotly figures, as Gradio events.

Gradio's Plot has no click event. ``click_bridge`` adds two hidden Number boxes and a hidden
button next to a plot; ``click_js`` is the page-side script that listens to ``plotly_click``
on the plot, writes the clicked point's x and y into the boxes and presses the button. The
button's click is a regular event with an api_name, so a script can do the same over the API.

A click is sent once plotly's double-click delay has passed without a second click: a double
click resets the zoom and is no click. Plotly.react keeps listeners, but a re-created plot div
(or a newPlot after a config change) loses them: a MutationObserver re-attaches the listener
to every plot div of that plot that lacks it. Each plot's script is installed once per page.
"""

from __future__ import annotations

from typing import Any

import gradio as gr

_SCRIPT = """
() => {
  const w = window;
  w.heteroguiClicks = w.heteroguiClicks || {};
  if (!w.heteroguiClicks[PLOT]) {
    let last = '';
    let lastAt = 0;
    const setNumber = (id, value) => {
      const el = document.querySelector('#' + id + ' input');
      if (!el) return false;
      el.value = String(value);
      el.dispatchEvent(new Event('input', { bubbles: true }));
      return true;
    };
    // A click waits out plotly's double-click delay: a mouse's double click resets the zoom
    // and is no click (its first click paired layers). A tap stays a click, a double tap two.
    let pending = null;
    let pointer = 'mouse';
    document.addEventListener('pointerdown', (e) => { pointer = e.pointerType; }, true);
    const cancel = () => { clearTimeout(pending); pending = null; };
    const send = (data) => {
      const pt = data && data.points && data.points[0];
      if (!pt || typeof pt.x !== 'number' || typeof pt.y !== 'number') return;
      const key = pt.y + ',' + pt.x;
      if (key === last && Date.now() - lastAt < 400) return;  // one click, one event
      last = key;
      lastAt = Date.now();
      cancel();
      pending = setTimeout(() => {
        pending = null;
        if (!setNumber(X_ID, pt.x) || !setNumber(Y_ID, pt.y)) return;
        setTimeout(() => {
          const button = document.querySelector('#' + BUTTON);
          if (button) button.click();
        }, 60);
      }, 320);
    };
    const hook = () => {
      document.querySelectorAll('#' + PLOT + ' .js-plotly-plot').forEach((gd) => {
        const ev = gd._ev;
        if (!gd.on || !ev) return;
        const has = ev.listeners
          ? ev.listeners('plotly_click').includes(send)
          : gd.heteroguiEv === ev;
        if (has) return;
        gd.on('plotly_click', send);
        gd.on('plotly_doubleclick', () => {
          // a tap reaches plotly as a touch and a mouse click 10 ms apart, which it calls a
          // double click: only a mouse's double click is one
          if (pointer !== 'touch') cancel();
        });
        gd.heteroguiEv = ev;
      });
    };
    let queued = false;
    new MutationObserver(() => {
      if (queued) return;
      queued = true;
      requestAnimationFrame(() => { queued = false; hook(); });
    }).observe(document.body, { childList: true, subtree: true });
    w.heteroguiClicks[PLOT] = hook;
  }
  w.heteroguiClicks[PLOT]();
  setTimeout(w.heteroguiClicks[PLOT], 300);
  return [];
}
"""


def click_js(plot_id: str, x_id: str, y_id: str, button_id: str) -> str:
    """Return the page script that turns a click on plot ``#plot_id`` into a button press."""
    script = _SCRIPT
    for name, value in (("PLOT", plot_id), ("X_ID", x_id), ("Y_ID", y_id), ("BUTTON", button_id)):
        script = script.replace(name, repr(value))
    return script


def click_bridge(
    ui: dict[str, Any], plot: str, name: str, x_label: str, y_label: str, precision: int | None
) -> None:
    """Add the hidden boxes ``{name}_x``, ``{name}_y`` and button ``name`` for clicks on ``plot``.

    plot: the plot's key in ``ui`` (its elem_id must be set); the boxes get the clicked x and y.
    Call ``wire_click`` in the tab's wire() to install the page script.
    """
    base = name.replace("_", "-")
    ui[f"{name}_x"] = gr.Number(
        label=x_label, visible="hidden", elem_id=f"{base}-x", precision=precision
    )
    ui[f"{name}_y"] = gr.Number(
        label=y_label, visible="hidden", elem_id=f"{base}-y", precision=precision
    )
    ui[name] = gr.Button(name, visible="hidden", elem_id=base)


def wire_click(ui: dict[str, Any], plot: str, name: str) -> None:
    """Install the page script of ``click_bridge`` on every render of the plot (no server call)."""
    base = name.replace("_", "-")
    js = click_js(ui[plot].elem_id, f"{base}-x", f"{base}-y", base)
    ui[plot].change(None, js=js, api_visibility="private", queue=False)
