"""``heterogui bench speed|quality|transformers``: arguments, dispatch and printing."""

from __future__ import annotations

import argparse


def _quality(args: argparse.Namespace) -> int:
    from heterogui.bench.quality import run_quality_cli

    return run_quality_cli(args)


def _speed(args: argparse.Namespace) -> int:
    from heterogui.bench.speed import speed_report

    print(speed_report(args))
    if args.latency:  # the workbench's own handlers: measured by the ui package
        from heterogui.ui.latency import format_latency, slider_latency
        from heterogui.zoo.registry import PAIRS

        print("workbench slider latency (re-merge after a release, then its metrics):")
        print(format_latency([slider_latency(name, device=args.device) for name in PAIRS]))
    return 0


def _transformers(args: argparse.Namespace) -> int:
    from heterogui.bench.transformers import transformer_tables

    print(transformer_tables(args))
    return 0


def add_bench_arguments(subparsers: argparse._SubParsersAction) -> None:
    """Register ``speed``, ``quality`` and ``transformers`` on the ``bench`` subparsers."""
    from heterogui.bench.speed import add_speed_arguments
    from heterogui.bench.transformers import add_transformer_arguments
    from heterogui.cli_zoo import add_bench_quality_arguments

    speed = subparsers.add_parser("speed", help="merge time vs forward passes; matcher speed")
    add_speed_arguments(speed)
    speed.set_defaults(func=_speed)
    quality = subparsers.add_parser("quality", help="accuracy table of merges of the zoo pairs")
    add_bench_quality_arguments(quality)
    quality.set_defaults(func=_quality)
    tables = subparsers.add_parser("transformers", help="the MiniLM tables of docs/transformers.md")
    add_transformer_arguments(tables)
    tables.set_defaults(func=_transformers)
