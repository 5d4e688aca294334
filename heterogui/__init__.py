"""heterogui: training-free heterogeneous model merging, as a library and a workbench."""

__version__ = "0.1.0"
