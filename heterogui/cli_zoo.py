"""``heterogui zoo build|list`` and the arguments of ``heterogui bench quality`` (printing here).

The CLI module dispatches to these functions; everything else in the zoo logs instead of
printing.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from heterogui.cli_args import count, device_name, thread_count
from heterogui.errors import ConfigError


def _progress(stage: str, fraction: float) -> None:
    print(f"\r{stage:<40} {fraction:6.1%}", end="", file=sys.stderr, flush=True)


def zoo_build_cli(args: argparse.Namespace) -> int:
    """Build the zoo pairs that are missing (all with --force); print what was done.

    ``decoder-pair`` among --pairs also builds the trained decoder pair (never by default: it
    takes minutes and the package of SmolLM2's tokenizer).
    """
    from heterogui.sources.zoo import DECODER_PAIR
    from heterogui.zoo.pairs import build_zoo

    start = time.perf_counter()
    names = args.pairs  # None: every image pair
    _check_names(names or [], DECODER_PAIR)  # before minutes of training go into the others
    if names and DECODER_PAIR in names and not args.tiny:
        from heterogui.zoo.decoder_training import decoder_pair_folders

        folders = decoder_pair_folders(progress=_progress, force=args.force)
        print(file=sys.stderr)
        print(f"{DECODER_PAIR:<30} ready in {', '.join(str(f) for f in folders)}")
        names = [n for n in names if n != DECODER_PAIR]
    entries = []
    if names is None or names:
        entries = build_zoo(names, progress=_progress, force=args.force, tiny=args.tiny)
        print(file=sys.stderr)
    for e in entries:
        state = "cached" if e.was_built else f"trained {', '.join(e.trained) or 'nothing'}"
        acc = ", ".join(f"{w.upper()} {100 * a:.1f}%" for w, a in e.task_accuracy.items())
        print(f"{e.name:<30} {state:<18} task accuracy {acc}  ({e.folder})")
    print(f"zoo ready in {time.perf_counter() - start:.1f}s")
    return 0


def _check_names(names: list[str], decoder_pair: str) -> None:
    """Raise if a name is neither a zoo pair, group or variant nor the decoder pair.

    Raises:
        ConfigError: the unknown names, with every name ``--pairs`` takes.
    """
    from heterogui.zoo.registry import GROUPS, PAIRS, pair_spec

    unknown = []
    for name in names:
        try:
            if name != decoder_pair:
                pair_spec(name)
        except ConfigError:
            unknown.append(name)
    if unknown:
        raise ConfigError(
            f"unknown zoo pair {', '.join(map(repr, unknown))}; --pairs takes {sorted(PAIRS)}, "
            f"the groups {sorted(g for g in GROUPS if not g.startswith('tiny-'))}, "
            f"{decoder_pair!r} (the decoder language models), training variants NAME@1, "
            "NAME@2, ... and the tests' tiny pairs (heterogui zoo list --tiny)"
        )


def _shape(shape: dict[str, Any]) -> str:
    depths = "+".join(str(d) for d in shape["depths"])
    widths = "/".join(str(w) for w in shape["widths"])
    return f"{shape['family']} {depths} @ {widths}"


def _acc(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}%"


def zoo_list_cli(args: argparse.Namespace) -> int:
    """Print every zoo pair (built or not, shapes, sizes, task accuracies), then the groups."""
    from heterogui.zoo.pairs import list_zoo

    rows = list_zoo(tiny=args.tiny)
    header = (
        f"{'pair':<30} {'kind':<12} {'built':<6} {'A':<28} {'B':<28} {'params A/B':<20} acc A/B"
    )
    print(header)
    for r in rows:
        params = f"{r['params_a']:,}/{r['params_b']:,}"
        print(
            f"{r['name']:<30} {r['kind']:<12} {'yes' if r['built'] else 'no':<6} "
            f"{_shape(r['shape_a']):<28} {_shape(r['shape_b']):<28} {params:<20} "
            f"{_acc(r['task_accuracy_a'])}/{_acc(r['task_accuracy_b'])}"
        )
        print(f"  {r['description']}")
    _print_groups(args.tiny)
    if not args.tiny:
        _print_decoder_pair()
    return 0


def _print_decoder_pair() -> None:
    """Print the trained decoder pair: shapes, whether it is built, held-out perplexities."""
    from heterogui.sources.zoo import DECODER_PAIR, DECODER_PREFIX
    from heterogui.zoo.decoder_pair import pair_status

    print(
        f"\ndecoder language models (recipes: {DECODER_PREFIX}a|b; workbench demo pair "
        f"{DECODER_PAIR}; heterogui zoo build --pairs {DECODER_PAIR}, about 5 minutes):"
    )
    for m in pair_status():
        shape = m["shape"]
        line = (
            f"{DECODER_PREFIX}{m['which']:<16} {'yes' if m['built'] else 'no':<6} "
            f"llama {shape['layers']} layers @ {shape['hidden']}, trained on {m['trained_on']}"
        )
        if m["built"]:
            ppl = " / ".join(f"{d} {s['perplexity']:.1f}" for d, s in m["held_out"].items())
            line += f"; {m['num_params']:,} params; held-out perplexity {ppl}"
        print(line)


def _print_groups(tiny: bool) -> None:
    """Print the zoo's groups of three or more models (the tiny ones with ``--tiny``)."""
    from heterogui.zoo.pairs import is_built
    from heterogui.zoo.registry import GROUPS

    groups = [g for name, g in GROUPS.items() if name.startswith("tiny-") == tiny]
    if not groups:
        return
    print("\ngroups of three or more models (recipes with models: [...]; heterogui bench nway):")
    for g in groups:
        built = "yes" if is_built(g.name) else "no"
        print(f"{g.name:<30} {built:<6} zoo:{g.name}/{'|'.join(g.letters)}")
        print(f"  {g.description}")


def add_zoo_arguments(subparsers: argparse._SubParsersAction) -> None:
    """Register ``build`` and ``list`` on the ``zoo`` subparsers."""
    build = subparsers.add_parser("build", help="train and cache the demo pairs that are missing")
    build.add_argument("--force", action="store_true", help="retrain even cached pairs")
    build.add_argument(
        "--pairs",
        nargs="+",
        default=None,
        help="pair names (default: every image pair; decoder-pair: the trained decoder pair)",
    )
    build.add_argument("--tiny", action="store_true", help="the tiny test zoo")
    build.set_defaults(func=zoo_build_cli)
    listing = subparsers.add_parser("list", help="list the demo pairs")
    listing.add_argument("--tiny", action="store_true", help="the tiny test zoo")
    listing.set_defaults(func=zoo_list_cli)


def add_bench_quality_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``heterogui bench quality`` to ``parser``."""
    parser.add_argument("--tiny", action="store_true", help="tiny zoo, small sweeps (smoke run)")
    parser.add_argument("--pairs", nargs="+", default=None, help="pair names (default: all)")
    parser.add_argument(
        "--seeds",
        type=count,
        default=3,
        help="seeds 0..N-1: each retrains A and B and redraws the calibration inputs",
    )
    parser.add_argument("--out", default="docs", help="folder for quality.md and quality.json")
    parser.add_argument("--device", type=device_name, default="cpu", help="cpu, cuda or auto")
    parser.add_argument(
        "--threads", type=thread_count, default=None, help="torch CPU threads while benchmarking"
    )


def print_quality_summary(report: dict[str, Any], out_dir: str) -> None:
    """Print the checks of a quality run and where its files are."""
    for c in report["checks"]:
        mark = "ok  " if c["passed"] else "FAIL"
        print(f"{mark} {c['pair']}: {c['check']}: {c['detail']}")
    print(f"wrote {out_dir}/quality.md and {out_dir}/quality.json in {report['seconds']:.0f}s")
