"""Benchmarks: merge quality on the built-in zoo (``quality``) and merge speed (``speed``)."""
