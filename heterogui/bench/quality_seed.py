"""One pair and one seed of the merge-quality benchmark (``heterogui.bench.quality``).

``run_seed`` measures, on the test split of the pair's two tasks, A alone, B alone, their
ensembles, weight average and permute (where the widths allow), the zip with every alignment and
fusion variant, the zips that keep a part of a transformer unmerged, the padding control of a
depth pair, the sweeps of rho and alpha/beta on statistics reused, the zip with A's and B's own
BatchNorm statistics kept, and the sweep of the number of calibration inputs (docs/method.md
sec. 11). ``QualityConfig`` says what is run.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from heterogui.align.pad import pad_network
from heterogui.bench.quality_report import (
    HEADS_KEPT,
    HEADS_SPLIT,
    METRICS,
    MLPS_KEPT,
    PADDING_CONTROL,
    PAPER,
    PAPER_KNOBS,
    SEQUENTIAL,
    SEQUENTIAL_KNOBS,
    STREAM_KEPT,
    VARIANTS,
    batch_norm_variant,
    fusion_knobs,
)
from heterogui.datasets.images import Split, load_split, sample, task_subset
from heterogui.datasets.refs import make_batches
from heterogui.errors import MatcherError
from heterogui.fusion.renormalize import renormalizes
from heterogui.models.family import Network
from heterogui.models.graph import INPUT, LOGITS, ModelGraph
from heterogui.pipeline import Prepared, ZipSettings, prepare, realign, zip_prepared
from heterogui.ready import BN_STAGES
from heterogui.tasks.classification import Metrics, evaluate_merged, evaluate_models
from heterogui.zip.plan import family_settings, head_group_firsts, override_spaces
from heterogui.zoo.pairs import ZooPair, load_pair

log = logging.getLogger(__name__)

MODES = ("sma", "lma", "lma_first", "lma_similar", "uniform", "head")
MODE_LABEL = {
    "sma": "SMA",
    "lma": "LMA",
    "lma_first": "LMA first",
    "lma_similar": "LMA similar",
    "uniform": "uniform",
    "head": "head",
}
# (alpha, beta): the paper's code (0.5, 1), ZipIt's CIFAR ResNet setting (1e-4, 0.075), beta = 0
# (cross-model merges only), and a few alphas around the default.
KNOBS = ((0.5, 1.0), (0.1, 1.0), (0.9, 1.0), (1.0, 1.0), (1e-4, 0.075), (0.5, 0.0))


@dataclass(frozen=True)
class QualityConfig:
    """What the benchmark runs.

    calib_size: calibration inputs of the main table; calib_sizes: the sweep (None: the whole
    calibration split).
    """

    pairs: tuple[str, ...]
    seeds: tuple[int, ...] = (0, 1, 2)
    calib_size: int = 200
    calib_sizes: tuple[int | None, ...] = (10, 25, 50, 100, 200, None)
    rhos: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
    knobs: tuple[tuple[float, float], ...] = KNOBS
    batch_size: int = 50
    eval_batch_size: int = 500
    device: str = "cpu"
    tiny: bool = False
    command: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def parameter_count(model: torch.nn.Module) -> int:
    """Return the number of parameters of a module."""
    return sum(p.numel() for p in model.parameters())


def _row(metrics: Metrics, params: int, seconds: float | None = None) -> dict[str, Any]:
    two_tasks = {k: getattr(metrics, k) for k in ("joint", "task_a", "task_b", "avg")}
    counts = {"count_a": metrics.count_a, "count_b": metrics.count_b}
    return {**two_tasks, **counts, "params": params, "seconds": seconds}


def depths_differ(net_a: Network, net_b: Network) -> bool:
    """Return whether some stage has a different number of blocks in A and in B."""
    sa, sb = net_a.graph().stages, net_b.graph().stages
    return [len(s) for s in sa] != [len(s) for s in sb]


def calibration_batches(dataset: str, size: int | None, seed: int, batch_size: int) -> list:
    """Return the calibration batches of a seed: ``size`` inputs of the calibration split.

    Returns a list of (b, ...) tensors drawn in a seeded order (both tasks' classes).
    """
    split = sample(load_split(dataset, "calibration", 0), size, seed)
    return make_batches(split.inputs, batch_size)


def _zip(prep: Prepared, settings: ZipSettings, test: Split, zoo: ZooPair, cfg: QualityConfig):
    """Return (merge result, metrics, zip seconds)."""
    start = time.perf_counter()
    result = zip_prepared(prep, settings)
    seconds = time.perf_counter() - start
    metrics = evaluate_merged(
        result.model, test, result.spec.heads, cfg.eval_batch_size, prep.device
    )
    return result, metrics, seconds


def _prepare(zoo: ZooPair, batches: list, cfg: QualityConfig, **kw: Any) -> tuple[Prepared, float]:
    start = time.perf_counter()
    prep = prepare(zoo.net_a, zoo.net_b, batches, device=cfg.device, **kw)
    return prep, time.perf_counter() - start


def sweep_mode(zoo: ZooPair) -> str:
    """Return the alignment the sweeps use: LMA when the depths differ (see the docs), else SMA.

    Across the depth-different zoo pairs LMA is the best or tied-best alignment, and SMA picks
    the "head" mapping there (CKA falls with depth, so the earliest deep blocks win).
    """
    return "lma" if depths_differ(zoo.net_a, zoo.net_b) else "sma"


def _alignment_rows(zoo: ZooPair, prep: Prepared, t_prep: float, test: Split, cfg) -> tuple:
    """Return the zip rows of every alignment mode (SMA only when the depths are equal).

    Returns (rows, {mode: (prepared, prepare seconds)}).
    """
    rows, preps = {}, {}
    modes = MODES if depths_differ(zoo.net_a, zoo.net_b) else ("sma",)
    # the CKA's passes, which every mode shares (inside "analysis" when it came with the
    # statistics: not split out, so the other modes' times leave it out)
    shared = sum(prep.timings.get(k, 0.0) for k in (*BN_STAGES, "similarity", "probe"))
    for mode in modes:
        if mode == "sma":
            p, t = prep, t_prep
        else:
            start = time.perf_counter()
            p = realign(prep, mode)
            t = shared + time.perf_counter() - start
        preps[mode] = (p, t)
        for knobs, suffix in VARIANTS:
            if knobs.get("renormalize") and not renormalizes(p.padded_a, p.padded_b):
                continue  # nothing to renormalize: the row would repeat the plain zip
            if knobs["heads"] != "pair" and not head_group_firsts(p.padded_a.graph()):
                continue  # no attention heads to choose: the row would repeat the plain zip
            if batch_norm_variant(suffix) and not p.padded_a.graph().batch_norms:
                continue  # no BatchNorm: the row would repeat another
            result, metrics, t_zip = _zip(p, ZipSettings(**knobs), test, zoo, cfg)
            row = _row(metrics, parameter_count(result.model), t + t_zip)
            row["mapping"] = result.alignment.mapping()
            rows[f"zip ({MODE_LABEL[mode]}{suffix})"] = row
    return rows, preps


def _baseline_rows(zoo: ZooPair, prep: Prepared, t_prep: float, test: Split, cfg) -> dict:
    """Return A alone, B alone, both ensembles, weight average and permute (where possible)."""
    a, b = zoo.net_a.parameter_count(), zoo.net_b.parameter_count()
    dev, bs = cfg.device, cfg.eval_batch_size
    rows = {
        "A alone": _row(evaluate_models(zoo.net_a, zoo.net_b, "a", test, bs, dev), a),
        "B alone": _row(evaluate_models(zoo.net_a, zoo.net_b, "b", test, bs, dev), b),
        "ensemble": _row(evaluate_models(zoo.net_a, zoo.net_b, "ensemble", test, bs, dev), a + b),
        "ensemble (BN re-estimated)": _row(
            evaluate_models(prep.net_a, prep.net_b, "ensemble", test, bs, dev),
            a + b,
            prep.timings.get("bn_inputs", prep.timings.get("bn_similarity", 0.0)),  # with CKA
        ),
    }
    for matcher, label in (("average", "weight average"), ("permute", "permute")):
        try:
            result, metrics, t_zip = _zip(
                prep, ZipSettings(matcher=matcher, **PAPER_KNOBS), test, zoo, cfg
            )
        except MatcherError as exc:
            log.info("%s: no %s row (%s)", zoo.name, label, exc)
            continue
        rows[label] = _row(metrics, parameter_count(result.model), t_prep + t_zip)
    return rows


def kept_rows(
    zoo: ZooPair, prep: Prepared, t_prep: float, test: Split, cfg: QualityConfig
) -> dict[str, Any]:
    """Return the zips that keep one part of a transformer unmerged (rho 0 there, 1 elsewhere).

    For models with attention (none for the others), at the alignment of ``prep``:
    "heads kept (MODE)" and "heads kept (MODE, sequential least squares)" keep every attention
    head (heads paired where merged); "stream kept (MODE, sequential least squares, HEADS)" the
    residual stream (the merge points captured in more than one block) and "MLPs kept (...)" the
    MLPs' hidden features (those of one block), each with the family's heads (HEADS: ", heads
    split" for ViT). Wider than the paper's width: they show how much of a transformer merge's
    loss each part's merge costs, not what rho = 1 reaches.
    """
    graph = prep.padded_a.graph()
    takers = set(override_spaces(graph, [prep.padded_b.graph()]))  # those both models use
    heads = [n for n in head_group_firsts(graph) if n in takers]
    if not heads:
        return {}
    mode = MODE_LABEL[prep.alignment.mode]
    runs = [(HEADS_KEPT, heads, fusion_knobs(f), f"{mode}{s})") for f, s in _HEADS_KEPT_FUSIONS]
    refit = ZipSettings(fusion="least_squares_sequential")
    split = family_settings(refit, zoo.net_a.family, graph=graph).heads == "split"
    detail = f"{mode}{SEQUENTIAL}{HEADS_SPLIT if split else ''})"
    streams, mlps = _unheaded_spaces(graph)
    runs += [(STREAM_KEPT, streams, {"fusion": refit.fusion}, detail)]
    runs += [(MLPS_KEPT, mlps, {"fusion": refit.fusion}, detail)]
    rows = {}
    for prefix, spaces, knobs, label in runs:
        spaces = [n for n in spaces if n in takers]
        if not spaces:
            continue
        settings = ZipSettings(overrides={space: {"rho": 0.0} for space in spaces}, **knobs)
        result, metrics, t_zip = _zip(prep, settings, test, zoo, cfg)
        rows[prefix + label] = _row(metrics, parameter_count(result.model), t_prep + t_zip)
    return rows


_HEADS_KEPT_FUSIONS = ((PAPER, ""), ("least_squares_sequential", SEQUENTIAL))


def _unheaded_spaces(graph: ModelGraph) -> tuple[list[str], list[str]]:
    """Return the merge points without heads: (those captured in several blocks: the residual
    stream; those captured in one block: the MLPs' hidden features)."""
    streams, mlps = [], []
    for name, space in graph.spaces.items():
        if name in (INPUT, LOGITS) or space.head_dim or not space.captures:
            continue
        blocks = {c.block for c in space.captures}
        (streams if len(blocks) > 1 else mlps).append(name)
    return streams, mlps


def _padding_control(zoo: ZooPair, prep: Prepared, batches: list, test: Split, cfg) -> dict:
    """Return the zips of A with the homogeneous B identity-padded to this pair's depth.

    The padded B computes exactly the homogeneous B's function; A keeps the slots ``prep``
    gave it and B's real blocks take the first slots of each stage, so identity blocks meet
    real ones as in a depth-heterogeneous merge. Its gap to the homogeneous zip is the cost of
    padding alone; the rest of a depth pair's gap comes from B's own deeper representations.
    Returns {label: row}: "padding control" (the paper's fusion) and the same with sequential
    least squares (the best fusion: ``PADDING_CONTROL + SEQUENTIAL``).
    """
    ref = load_pair(zoo.spec.reference, cfg.device)
    alignment = prep.alignment
    head = tuple(tuple(range(len(p))) for p in ref.net_b.graph().stages)
    padded = pad_network(ref.net_b, head, alignment.depths)
    manual = {
        "a": [list(p) for p in alignment.positions_a],
        "b": [list(range(d)) for d in alignment.depths],
    }
    start = time.perf_counter()
    p = prepare(zoo.net_a, padded, batches, mode="manual", manual=manual, device=cfg.device)
    t_prep = time.perf_counter() - start
    rows = {}
    for knobs, label in (
        (PAPER_KNOBS, PADDING_CONTROL),
        (SEQUENTIAL_KNOBS, PADDING_CONTROL + SEQUENTIAL),
    ):
        result, metrics, t_zip = _zip(p, ZipSettings(**knobs), test, zoo, cfg)
        rows[label] = _row(metrics, parameter_count(result.model), t_prep + t_zip)
    return rows


@torch.no_grad()
def _max_logit_gap(model: torch.nn.Module, prep: Prepared, test: Split) -> float:
    """Return max |merged logits - ensemble logits| over both heads on the test inputs."""
    x = test.inputs.to(prep.device)
    merged = model(x)
    gaps = [
        (merged[m] - net.module(x)).abs().max().item()
        for m, net in enumerate((prep.net_a, prep.net_b))
    ]
    return max(gaps)


def _sweeps(zoo: ZooPair, prep: Prepared, main: dict, test: Split, cfg) -> dict[str, Any]:
    """Return the rho and alpha/beta sweeps of the zip on ``prep`` (statistics reused).

    main: the row of the default zip on ``prep`` (rho 1, alpha 0.5, beta 1), reused.
    """
    rho, knobs = {}, {}
    for r in cfg.rhos:
        if r == 1.0:
            rho[str(r)] = {k: v for k, v in main.items() if k != "mapping"}
            continue
        result, metrics, _ = _zip(prep, ZipSettings(rho=r, **PAPER_KNOBS), test, zoo, cfg)
        rho[str(r)] = _row(metrics, parameter_count(result.model))
        if r == 0.0:
            rho[str(r)]["max_logit_gap"] = _max_logit_gap(result.model, prep, test)
    for alpha, beta in cfg.knobs:
        if (alpha, beta) == (0.5, 1.0):
            metrics_row = main
        else:
            result, metrics, _ = _zip(
                prep, ZipSettings(alpha=alpha, beta=beta, **PAPER_KNOBS), test, zoo, cfg
            )
            metrics_row = _row(metrics, parameter_count(result.model))
        knobs[f"alpha={alpha:g}, beta={beta:g}"] = {k: metrics_row[k] for k in (*METRICS, "params")}
    return {"rho": rho, "knobs": knobs}


def _bn_kept(zoo: ZooPair, batches: list, test: Split, cfg: QualityConfig) -> dict[str, Any]:
    """Return the zip and its rho = 0 when A's and B's BatchNorm statistics are kept."""
    prep, t_prep = _prepare(zoo, batches, cfg, mode=sweep_mode(zoo), reset_input_bn=False)
    out = {}
    for r, label in ((1.0, "zip"), (0.0, "rho=0")):
        result, metrics, t_zip = _zip(prep, ZipSettings(rho=r, **PAPER_KNOBS), test, zoo, cfg)
        out[label] = _row(metrics, parameter_count(result.model), t_prep + t_zip)
    return out


def _calib_sweep(zoo: ZooPair, seed: int, main: dict, test: Split, cfg) -> dict[str, Any]:
    """Return the zip for every calibration size of the sweep (``main`` at cfg.calib_size)."""
    out = {}
    for size in cfg.calib_sizes:
        batches = calibration_batches(zoo.dataset, size, seed, cfg.batch_size)
        n = sum(len(b) for b in batches)
        label = str(n) if size is not None else f"all ({n})"
        if n == cfg.calib_size:
            out[label] = {k: v for k, v in main.items() if k != "mapping"}
            continue
        prep, t_prep = _prepare(zoo, batches, cfg, mode=sweep_mode(zoo))
        result, metrics, t_zip = _zip(prep, ZipSettings(**PAPER_KNOBS), test, zoo, cfg)
        out[label] = _row(metrics, parameter_count(result.model), t_prep + t_zip)
    return out


def run_seed(zoo: ZooPair, seed: int, cfg: QualityConfig) -> dict[str, Any]:
    """Return every measurement of one pair for one calibration seed."""
    test = task_subset(load_split(zoo.dataset, "test", 0), (*zoo.classes_a, *zoo.classes_b))
    batches = calibration_batches(zoo.dataset, cfg.calib_size, seed, cfg.batch_size)
    prep, t_prep = _prepare(zoo, batches, cfg, mode="sma")
    rows = _baseline_rows(zoo, prep, t_prep, test, cfg)
    zips, preps = _alignment_rows(zoo, prep, t_prep, test, cfg)
    rows.update(zips)
    mode = sweep_mode(zoo)
    main = rows[f"zip ({MODE_LABEL[mode]})"]
    if zoo.spec.reference is not None and depths_differ(zoo.net_a, zoo.net_b):
        rows.update(_padding_control(zoo, preps[mode][0], batches, test, cfg))
    rows.update(kept_rows(zoo, *preps[mode], test, cfg))
    return {
        "rows": rows,
        **_sweeps(zoo, preps[mode][0], main, test, cfg),
        "bn_kept": _bn_kept(zoo, batches, test, cfg),
        "calibration": _calib_sweep(zoo, seed, main, test, cfg),
    }
