"""What the page adds for keyboard and screen-reader users, where gradio's defaults fall short.

- A slider moved with the arrow, Home, End or Page keys is released when the key is: gradio
  fires a slider's ``release`` (which re-merges, with "Re-merge when a slider is released") on
  the pointer only, so keyboard users moved the ratio and nothing followed.
- A slider's number box releases the slider (a re-merge) when it is clicked or left, or Enter
  is pressed in it, only if its value changed: gradio released it on every click and blur, so
  clicking or tabbing through the Zip tab's boxes merged without a change, and on Enter never.
- The status line (``#status``: every step's result, error and progress) is a polite live
  region, so that a screen reader announces what a step did, not only the toasts.
- Every figure is an image named by its block's label and its title (a screen reader read a
  heat map as a list of tick labels).
- Sliders, radio buttons and check boxes show a focus ring: gradio's theme showed none on a
  focused slider, and a 16-pixel change on a radio button.
- A step that switches tabs moves the focus to the tab shown only once the user has pressed a
  key or clicked (``window.heteroguiTouched``): at the page's start it drew a focus ring on a
  tab nobody chose.
"""

from __future__ import annotations

# run once as the page loads (gradio's launch(js=...))
PAGE_JS = """
() => {
  const keys = new Set(["ArrowLeft", "ArrowRight", "ArrowUp", "ArrowDown", "Home", "End",
                        "PageUp", "PageDown"]);
  document.addEventListener("keyup", (event) => {
    const target = event.target;
    if (target instanceof HTMLInputElement && target.type === "range" && keys.has(event.key)) {
      target.dispatchEvent(new PointerEvent("pointerup", { bubbles: true }));
    }
  });
  // a slider's number box releases the slider when it is clicked and when it loses focus,
  // changed or not: focus passing through it (a click, Tab) re-merged. Only a value that
  // changed since the box took focus or was last released is released.
  const released = new WeakMap();
  const sliderBox = (target) => target instanceof HTMLInputElement && target.type === "number"
    && target.closest(".block")?.querySelector("input[type=range]") != null;
  // Enter in a slider's number box releases the slider, as leaving the box does (typing
  // 0.3 and Enter merged nothing until the focus moved on)
  document.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && sliderBox(event.target)) {
      event.target.dispatchEvent(new FocusEvent("blur"));
    }
  });
  document.addEventListener("focusin", (event) => {
    if (sliderBox(event.target)) released.set(event.target, event.target.value);
  }, true);
  for (const type of ["blur", "pointerup"]) {
    document.addEventListener(type, (event) => {
      const box = event.target;
      if (!sliderBox(box)) return;
      if (released.get(box) === box.value) {
        event.stopImmediatePropagation();  // captured on the way down: gradio never sees it
      } else {
        released.set(box, box.value);
      }
    }, true);
  }
  const announce = () => {
    const status = document.getElementById("status");
    if (!status) return false;
    status.setAttribute("role", "status");
    status.setAttribute("aria-live", "polite");
    return true;
  };
  if (!announce()) {
    const watch = new MutationObserver(() => { if (announce()) watch.disconnect(); });
    watch.observe(document.body, { childList: true, subtree: true });
  }
  const describe = () => {
    for (const plot of document.querySelectorAll(".js-plotly-plot")) {
      const block = plot.closest(".block");
      const label = block?.querySelector("[data-testid=block-label]")?.textContent?.trim() || "";
      const title = plot.querySelector(".gtitle")?.textContent?.trim() || "";
      const text = [label, title].filter(Boolean).join(": ");
      if (text && plot.getAttribute("aria-label") !== text) {
        plot.setAttribute("role", "img");
        plot.setAttribute("aria-label", text);
      }
    }
  };
  // a step that switches tabs moves the focus to the tab shown (app.FIT_FIGURES_JS), once the
  // user has pressed a key or clicked: not at the page's start, where it drew a focus ring
  window.heteroguiTouched = false;
  for (const type of ["pointerdown", "keydown"]) {
    document.addEventListener(type, () => { window.heteroguiTouched = true; }, true);
  }
  new MutationObserver(describe).observe(document.body, { childList: true, subtree: true });
}
"""

FOCUS_CSS = """
input[type=range]:focus-visible, input[type=radio]:focus-visible,
input[type=checkbox]:focus-visible {
  outline: 2px solid var(--color-accent, #f97316) !important; outline-offset: 2px;
}
"""
