"""The workbench: a Gradio app over the heterogui pipeline (docs/architecture.md).

Only this package imports gradio and plotly. Modules split by role: ``session`` (the per-browser
state), ``resources`` (read-only things sessions share), ``sources`` (loading models), ``work``
and ``evaluation`` (what the buttons do, no gradio), ``fig_*`` (pure plotly figures), ``tab_*``
(one module per tab: layout, handlers, wiring), ``views`` (the tabs' views an event redraws),
``events`` (a handler as a Gradio event) and ``app`` (assembly and ``main``). Importing
``heterogui.ui`` imports neither gradio nor plotly.
"""
