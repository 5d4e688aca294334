"""``heterogui bench speed|quality|nway|transformers|decoders|measures|scale``: arguments, dispatch,
output.

The benchmark modules (torch, transformers) are imported when a benchmark runs, so that
``heterogui --help`` answers at once.
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator
from pathlib import Path

from heterogui.cli_args import count, device_name, inputs_count, thread_count, whole_number
from heterogui.cli_zoo import add_bench_quality_arguments, print_quality_summary
from heterogui.errors import ConfigError, ExportError
from heterogui.folders import check_writable


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Run the block with ``threads`` torch threads (0: unchanged), then restore the count."""
    import torch

    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _quality(args: argparse.Namespace) -> int:
    from heterogui.bench.quality import run_quality
    from heterogui.bench.quality_report import command_line

    check_writable(args.out)  # before the run, not after it
    with torch_threads(args.threads):
        report = run_quality(
            pairs=args.pairs,
            seeds=tuple(range(args.seeds)),
            out_dir=args.out,
            tiny=args.tiny,
            device=args.device,
            command=command_line(args),
        )
    print_quality_summary(report, args.out)
    return 0


def _nway(args: argparse.Namespace) -> int:
    from heterogui.bench.nway import GROUPS, NwayConfig, render_nway, run_nway
    from heterogui.zoo.registry import GROUPS as ZOO_GROUPS

    wrong = [g for g in args.groups or () if g not in ZOO_GROUPS]
    if wrong:  # before any model is built: a pair of two models has no third to merge
        raise ConfigError(
            f"--groups {' '.join(wrong)}: not a zoo group of three models; known: "
            f"{', '.join(sorted(ZOO_GROUPS))}"
        )
    command = " ".join(
        [
            "heterogui bench nway",
            *([f"--groups {' '.join(args.groups)}"] if args.groups else []),
            f"--seeds {args.seeds}",
            *([f"--out {args.out}"] if args.out else []),
            *([f"--threads {args.threads}"] if args.threads else []),
        ]
    )
    cfg = NwayConfig(
        tuple(args.groups or GROUPS), tuple(range(args.seeds)), device=args.device, command=command
    )
    if args.out is not None:
        check_writable(args.out)
    with torch_threads(args.threads):
        report = run_nway(cfg, args.out)
    print(render_nway(report))
    if args.out:
        print(f"wrote {args.out}/nway.md and {args.out}/nway.json")
    return 0


def _speed(args: argparse.Namespace) -> int:
    from heterogui.bench.speed import speed_report

    if args.latency:  # the workbench's own handlers: measured by the ui package
        from heterogui.ui.latency import format_latency, latency_of_every_pair

        print("workbench slider latency (re-merge after a release, then its metrics):")
        print(format_latency(latency_of_every_pair(args.device, minilm=args.minilm)))
    print(speed_report(args))  # last: with --json its last line is the JSON object
    return 0


def _speed_pair(args: argparse.Namespace) -> int:
    import json

    from heterogui.bench.speed_pair import PAIRS, measured

    try:
        options = json.loads(args.options)
    except ValueError as exc:
        raise ConfigError(
            f"speed-pair options are not JSON ({exc}); give '{{\"pair\": NAME}}'"
        ) from exc
    if not isinstance(options, dict) or options.get("pair") not in PAIRS:
        raise ConfigError(
            f"speed-pair options {args.options!r} name no known pair; give "
            f"'{{\"pair\": NAME}}' with NAME one of {list(PAIRS)}"
        )
    _check_pair_options(options)
    print(json.dumps(measured(options)))
    return 0


# speed-pair's options beside "pair": their type and least value (a bool: true or false)
PAIR_OPTIONS = {
    "quick": (bool, None),
    "device": (str, None),
    "threads": (int, 1),
    "width": (int, 1),
    "inputs": (int, 4),
    "texts": (int, 4),
    "bert_inputs": (int, 4),
}


def _check_pair_options(options: dict) -> None:
    """Refuse an unknown speed-pair option, or one of the wrong type or range, naming it."""
    unknown = sorted(set(options) - {"pair", *PAIR_OPTIONS})
    if unknown:
        raise ConfigError(
            f"speed-pair options: unknown keys {unknown}; known: {['pair', *PAIR_OPTIONS]}"
        )
    for key, value in options.items():
        kind, least = PAIR_OPTIONS.get(key, (str, None))
        wrong = not isinstance(value, kind) or (kind is int and isinstance(value, bool))
        if wrong or (least is not None and value < least):
            want = {bool: "true or false", str: "a string"}.get(kind, f"a whole number >= {least}")
            raise ConfigError(f"speed-pair option {key!r} must be {want}, got {value!r}")
    if "threads" in options:
        try:
            thread_count(str(options["threads"]))
        except argparse.ArgumentTypeError as exc:
            raise ConfigError(f"speed-pair option 'threads': {exc}") from None
    if "device" in options:
        try:
            device_name(options["device"])
        except argparse.ArgumentTypeError as exc:
            raise ConfigError(f"speed-pair option 'device': {exc}") from None


def _transformers(args: argparse.Namespace) -> int:
    from heterogui.bench.transformers import transformer_tables

    with torch_threads(args.threads):
        print(transformer_tables(args))
    return 0


def _decoders(args: argparse.Namespace) -> int:
    from heterogui.bench.decoders import run_decoders

    for name in ("calibration", "evaluation", "smollm2_evaluation"):
        if getattr(args, name) < 4:
            option = "--" + name.replace("_", "-")
            raise ConfigError(f"{option} {getattr(args, name)} is too small: use at least 4 texts")
    for path in (args.out_md, args.out_json):
        if path is not None:
            if not path.strip():
                raise ExportError("give an output file (--out-md, --out-json)")
            check_writable(Path(path).parent, path)
    with torch_threads(args.threads):
        print(run_decoders(args))
    for path in (args.out_md, args.out_json):
        if path:
            print(f"wrote {path}")
    return 0


def _measures(args: argparse.Namespace) -> int:
    from heterogui.bench.measures import render, run_measures, write

    command = f"heterogui bench measures --seeds {args.seeds} --smollm2-draws {args.smollm2_draws}"
    command += f" --threads {args.threads}" if args.threads else ""
    command += f" --out {args.out}" if args.out else ""
    if args.out is not None:
        check_writable(args.out)
    with torch_threads(args.threads):
        report = run_measures(args.seeds, args.smollm2_draws)
    if args.out:
        print(write(report, args.out, command))
        print(f"wrote {args.out}/measures.md and {args.out}/measures.json")
    else:
        print(render(report, command))
    return 0


def _scale(args: argparse.Namespace) -> int:
    from heterogui.bench.scale import ScaleOptions, scale_report

    options = ScaleOptions(
        layers_a=args.layers_a,
        layers_b=args.layers_b,
        hidden=args.hidden,
        intermediate=args.intermediate,
        heads=args.heads,
        kv_heads=args.kv_heads,
        vocab=args.vocab,
        texts=args.texts,
        tokens=args.tokens,
        batch=args.batch,
        budget_mb=args.budget_mb,
        threads=args.threads,
        device=args.device,
        seed=args.seed,
        export=args.export,
    )
    print(scale_report(options, args.json))  # with --json its last line is the JSON object
    return 0


def add_scale_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the options of ``heterogui bench scale`` (defaults: TinyLlama-1.1B's shape)."""
    parser.add_argument("--layers-a", type=count, default=22, help="layers of Llama A")
    parser.add_argument("--layers-b", type=count, default=16, help="layers of Llama B")
    parser.add_argument("--hidden", type=count, default=2048, help="hidden width of A and B")
    parser.add_argument("--intermediate", type=count, default=5632, help="MLP width of A and B")
    parser.add_argument("--heads", type=count, default=32, help="query heads per layer")
    parser.add_argument("--kv-heads", type=count, default=4, help="key/value heads per layer")
    parser.add_argument("--vocab", type=count, default=32000, help="vocabulary size")
    parser.add_argument("--texts", type=count, default=8, help="calibration texts (random ids)")
    parser.add_argument("--tokens", type=count, default=128, help="tokens per calibration text")
    parser.add_argument("--batch", type=count, default=4, help="calibration texts per batch")
    parser.add_argument(
        "--budget-mb",
        type=float,
        default=None,
        help="statistics budget in MiB (default: a quarter of this machine's memory)",
    )
    parser.add_argument("--threads", type=thread_count, default=None, help="torch CPU threads")
    parser.add_argument("--device", type=device_name, default="cpu", help="cpu, cuda or auto")
    parser.add_argument(
        "--seed", type=whole_number(0), default=0, help="seed of the weights and the data"
    )
    parser.add_argument(
        "--export",
        metavar="DIR",
        default=None,
        help="then write the merge as a Hugging Face causal-LM folder DIR (a new folder) and "
        "report the export's time and memory",
    )
    parser.add_argument(
        "--json", action="store_true", help="print, as the last line, one JSON object of figures"
    )


def add_speed_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the options of ``heterogui bench speed``."""
    parser.add_argument("--device", type=device_name, default="auto", help="auto, cpu or cuda")
    parser.add_argument("--width", type=count, default=2, help="ResNet width multiplier")
    parser.add_argument("--inputs", type=inputs_count, default=256, help="calibration inputs")
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    parser.add_argument("--threads", type=thread_count, default=None, help="torch CPU threads")
    parser.add_argument(
        "--minilm", action="store_true", help="also merge the MiniLM pair (L6 + L3) on sentences"
    )
    parser.add_argument(
        "--smollm",
        action="store_true",
        help="also merge SmolLM2-135M with a shallower copy of itself on Python texts",
    )
    parser.add_argument(
        "--bert-base",
        action="store_true",
        help="also merge a BERT-base-sized pair built from config (12 + 6 layers, random "
        "weights) on --bert-inputs random sequences of 128 tokens: a GPU-scale pair",
    )
    parser.add_argument(
        "--bert-inputs",
        type=inputs_count,
        default=1024,
        help="calibration sequences of --bert-base",
    )
    parser.add_argument(
        "--same-depth",
        action="store_true",
        help="also merge pairs of equal depth, analysed in one pass: ResNet20 at two widths, "
        "and with --minilm all-MiniLM-L6-v2 with a permuted copy of itself",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help='print, as the last line, one JSON object {"pairs": {...}} with merge_s, floor_s, '
        "remerge_s, peak_rss_mib, weights_mib, stats_mib and stages per pair",
    )
    parser.add_argument(
        "--latency",
        action="store_true",
        help="also time the workbench's slider re-merge for every zoo pair (about 1 minute; "
        "builds missing zoo pairs first), and with --minilm for the MiniLM pair",
    )


def add_transformer_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the options of ``heterogui bench transformers``."""
    parser.add_argument(
        "--calibration", type=inputs_count, default=256, help="calibration sentences"
    )
    parser.add_argument("--device", type=device_name, default="auto", help="auto, cpu or cuda")
    parser.add_argument("--skip-identity", action="store_true", help="no identity-layer table")
    parser.add_argument("--skip-classification", action="store_true")
    parser.add_argument("--threads", type=thread_count, default=None, help="torch CPU threads")
    parser.add_argument(
        "--seeds", type=count, default=1, help="calibration draws of the STS and classes tables"
    )


def add_decoder_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the options of ``heterogui bench decoders``."""
    parser.add_argument(
        "--calibration", type=inputs_count, default=32, help="calibration texts (both domains)"
    )
    parser.add_argument(
        "--evaluation", type=count, default=48, help="held-out texts per domain (trained pairs)"
    )
    parser.add_argument(
        "--smollm2-evaluation", type=count, default=8, help="held-out texts per domain (SmolLM2)"
    )
    parser.add_argument("--skip-smollm2", action="store_true", help="without the SmolLM2 tables")
    parser.add_argument(
        "--skip-pair", action="store_true", help="without the trained Llama pair's table"
    )
    parser.add_argument("--skip-gpt2", action="store_true", help="without the GPT-2 pair's table")
    parser.add_argument(
        "--seeds",
        type=count,
        default=1,
        help="calibration draws of the trained pairs' and the SmolLM2 shallow copy's tables",
    )
    parser.add_argument("--threads", type=thread_count, default=None, help="torch CPU threads")
    parser.add_argument("--out-md", default=None, help="write the markdown here (docs/decoders.md)")
    parser.add_argument("--out-json", default=None, help="write the JSON here (docs/decoders.json)")


def add_bench_arguments(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``bench`` subcommands (speed, quality, nway, transformers, decoders, measures,
    scale)."""
    speed = subparsers.add_parser("speed", help="merge time vs forward passes; matcher speed")
    add_speed_arguments(speed)
    speed.set_defaults(func=_speed)
    pair = subparsers.add_parser(
        "speed-pair", help="one pair of bench speed, measured in this process"
    )
    pair.add_argument(
        "options",
        help='JSON: {"pair": "resnet" | "minilm" | "smollm" | "resnet_width" | '
        '"minilm_permuted" | "bert_base", "inputs": N, "threads": N, ...}',
    )
    pair.set_defaults(func=_speed_pair)
    quality = subparsers.add_parser("quality", help="accuracy table of merges of the zoo pairs")
    add_bench_quality_arguments(quality)
    quality.set_defaults(func=_quality)
    nway = subparsers.add_parser(
        "nway", help="three zoo models merged at once vs one after another vs the ensemble"
    )
    nway.add_argument("--groups", nargs="+", help="zoo groups (default: the digits trios)")
    nway.add_argument("--seeds", type=count, default=3, help="training/calibration seeds")
    nway.add_argument("--out", help="write nway.md and nway.json into this folder")
    nway.add_argument(
        "--threads", type=thread_count, default=0, help="torch threads (default: unchanged)"
    )
    nway.add_argument("--device", type=device_name, default="cpu", help="cpu or cuda")
    nway.set_defaults(func=_nway)
    tables = subparsers.add_parser("transformers", help="the MiniLM tables of docs/transformers.md")
    add_transformer_arguments(tables)
    tables.set_defaults(func=_transformers)
    decoders = subparsers.add_parser(
        "decoders", help="the decoder LM tables of docs/decoders.md (trained pairs, SmolLM2)"
    )
    add_decoder_arguments(decoders)
    decoders.set_defaults(func=_decoders)
    measures = subparsers.add_parser(
        "measures", help="align depth pairs by CKA of block outputs or of block updates"
    )
    measures.add_argument("--seeds", type=count, default=3, help="draws of every pair but SmolLM2")
    measures.add_argument(
        "--smollm2-draws",
        type=whole_number(0),
        default=1,
        help="calibration draws of SmolLM2 (0: skip it)",
    )
    measures.add_argument("--out", help="write measures.md and measures.json into this folder")
    measures.add_argument(
        "--threads", type=thread_count, default=0, help="torch threads (default: unchanged)"
    )
    measures.set_defaults(func=_measures)
    scale = subparsers.add_parser(
        "scale", help="merge a ~1B-parameter Llama pair built from config: time and peak memory"
    )
    add_scale_arguments(scale)
    scale.set_defaults(func=_scale)
