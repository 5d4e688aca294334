"""What the workbench's buttons do, without gradio: load, analyse, align, zip, merge.

Every function takes the session (and the shared ``Resources``) and does one step through the
one merge path (``heterogui.run``: sources, tasks, engine); a step that fails raises a
HeteroguiError before it changes the session, so the previous state survives a bad input.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from fnmatch import fnmatchcase
from typing import Any

import torch

from heterogui import run
from heterogui.align.alignment import align
from heterogui.align.editing import read_mapping
from heterogui.config import (
    DEFAULT_FUSION,
    DEFAULT_HEADS,
    DEFAULT_RIDGE,
    DataRef,
    check_fusion,
    check_heads,
)
from heterogui.errors import ConfigError
from heterogui.pipeline import (
    MergeResult,
    Prepared,
    ZipSettings,
    check_pair,
    realign,
    resolve_device,
    with_measure,
    zip_prepared,
)
from heterogui.progress import Progress
from heterogui.progress import guarded as guarded_progress
from heterogui.sizes import merge_size, reference_sizes
from heterogui.sources.base import Loaded, Pair
from heterogui.tasks import Calibration, Evaluation, task_of
from heterogui.ui.history import commit_merge
from heterogui.ui.loading import refuse_unmergeable
from heterogui.ui.placements import remember, same_placement
from heterogui.ui.resources import Resources
from heterogui.ui.session import Session
from heterogui.zip.plan import is_pattern, override_spaces

log = logging.getLogger(__name__)


def guarded(session: Session, progress: Progress | None) -> Progress:
    """Return a progress callback that stops the step when the user pressed Cancel."""
    kept = session.prepared is not None or session.result is not None
    outcome = "the previous result is kept" if kept else "nothing was changed"
    return guarded_progress(progress, lambda: _cancelled(session), outcome=outcome)


def _cancelled(session: Session) -> bool:
    if session.cancel_requested:
        session.cancel_requested = False
        return True
    return False


def open_pair(
    session: Session, res: Resources, name: str, progress: Progress | None = None
) -> Session:
    """Load demo pair ``name`` as A and B and analyse it (built on first use).

    Raises:
        ConfigError: unknown pair; HeteroguiError from the analysis (the session is unchanged).
    """
    report = guarded(session, progress)
    demo = res.pair(name, lambda stage, frac: report(f"build {stage}", frac))
    analysed = analysis(demo.a, demo.b, None, session.device, res, report, cache_key=name)
    session.a, session.b, session.demo, session.data = demo.a, demo.b, name, None
    _commit_analysis(session, *analysed)
    return session


def _commit_analysis(
    session: Session,
    calibration: Calibration,
    evaluation: Evaluation | None,
    prepared: Prepared,
    baseline: dict[str, Any],
) -> None:
    """Adopt a new analysis; the stop point and overrides (they name blocks) start afresh."""
    session.clear_results()
    session.settings = dataclasses.replace(session.settings, stop=None, overrides={})
    session.calibration, session.evaluation = calibration, evaluation
    session.prepared, session.baseline = prepared, baseline
    session.reference_sizes = reference_sizes(prepared)


def set_model(session: Session, which: str, loaded: Loaded) -> Session:
    """Put ``loaded`` in place of model A or B; results of the old pair are dropped.

    The chosen calibration data is kept only while the task stays the same.
    """
    old_task = session.task
    setattr(session, which, loaded)
    session.demo = None
    if session.task is not old_task:
        session.data = None
    session.clear_results()
    return session


def analysis(
    a: Loaded,
    b: Loaded,
    data: DataRef | None,
    device: str,
    res: Resources,
    report: Progress,
    cache_key: str | None = None,
) -> tuple[Calibration, Evaluation | None, Prepared, dict[str, Any]]:
    """Return the calibration, evaluation, prepared statistics (SMA) and baseline scores.

    cache_key: a demo pair's name; its data, statistics and baseline scores are then shared
    between sessions (read only).

    Raises:
        HeteroguiError: incompatible models, bad data, or Cancelled.
    """
    pair = Pair(a, b)
    check_pair(a.net, b.net)
    device = str(resolve_device(device))

    def calibrate() -> Calibration:
        return run.calibrate(pair, data)

    calibration = res.calibration((cache_key, data), calibrate) if cache_key else calibrate()

    def build() -> Prepared:
        return run.analyse(pair, calibration, device=device, progress=report)

    prepared = res.prepared((cache_key, data, device), build) if cache_key else build()
    evaluation, baseline = None, {}
    task = task_of(pair.task)
    ref = task.default_evaluation(pair)
    if ref is not None:
        report("evaluate", 0.0)
        evaluation = res.evaluation((cache_key, ref), lambda: run.evaluation_data(pair, ref))

        def score() -> dict[str, Any]:
            return run.evaluate_models(pair, prepared, evaluation, report)

        # a demo pair's A, B and ensemble are scored once (the decoder pair's take 16 s)
        baseline = res.baseline((cache_key, ref, device), score) if cache_key else score()
    return calibration, evaluation, prepared, baseline


def unscored(session: Session) -> str:
    """Return why the session's pair has no evaluation data (its task's words)."""
    return session.task.unscored_reason(Pair(session.a, session.b))


def analyse(
    session: Session, res: Resources, data: DataRef | None, progress: Progress | None = None
) -> Session:
    """Run steps 1-4 for the loaded pair (CKA, SMA alignment, statistics) and the baselines.

    data: the calibration data (None: the task's default; a demo pair's is shared). It becomes
    the session's only when the analysis succeeds: bad data, an error or Cancel keep the
    previous analysis, alignment and merges. Models chosen one by one pass the header
    pre-flight first (a demo pair always does).

    Raises:
        HeteroguiError: models missing or incompatible, data of another kind than the task
            takes, bad data, or Cancelled.
    """
    if not session.both_loaded():
        raise ConfigError("load model A and model B first")
    if data is not None:
        session.task.check(data, "calibration")
    if not session.demo:
        refuse_unmergeable(session.a, session.b)
    key = session.demo if session.demo and data is None else None
    report = guarded(session, progress)
    analysed = analysis(session.a, session.b, data, session.device, res, report, cache_key=key)
    session.data = data
    _commit_analysis(session, *analysed)
    return session


def metrics_of(session: Session, result: MergeResult, progress: Progress | None = None) -> Any:
    """Return the merged model's scores on the pair's evaluation data (None: no such data)."""
    if session.evaluation is None:
        return None
    return run.evaluate_merge(session.pair, result, session.evaluation, progress)


def set_alignment(
    session: Session,
    mode: str,
    mapping_text: str | None = None,
    progress: Progress | None = None,
    measure: str | None = None,
) -> str:
    """Realign the pair with ``mode`` (or a manual mapping); redo the feature pass if needed.

    measure: read the CKA of this measure from now on (``analysis.with_measure``: one
    similarity pass the first time); None keeps the current one.

    Returns "same" when the new alignment places every layer where it already is (only its
    mode and score change), "reused" when this analysis already collected the statistics of
    that placement (an alignment visited before, a kept merge's, or one the app collected
    while idle: ``ui.prefetch``), else "recomputed".

    Raises:
        AlignmentError: unknown mode or an invalid manual mapping (the old one is kept).
        ConfigError: an unknown measure.
    """
    prepared = require_prepared(session)
    if measure is not None:
        prepared = with_measure(prepared, measure, guarded(session, progress))
    ga, gb = prepared.net_a.graph(), prepared.net_b.graph()
    manual = read_mapping(mapping_text, prepared.alignment, ga, gb) if mode == "manual" else None
    new_alignment = align(ga, gb, prepared.similarity, mode, manual)
    earlier = same_placement(session, prepared, new_alignment)
    if earlier is prepared:
        how = "same"
    elif earlier is not None:
        how = "reused"
    else:
        how = "recomputed"
        earlier = realign(prepared, mode, manual, guarded(session, progress))
    if earlier is not prepared:
        session.visited = [p for p in session.visited if p is not earlier]
        remember(session, [prepared])
    # the same object when nothing changes: what is derived from it (correlations) is kept
    same = earlier.alignment == new_alignment and earlier.measure == prepared.measure
    session.prepared = (
        earlier
        if same
        else dataclasses.replace(earlier, alignment=new_alignment, measure=prepared.measure)
    )
    # a merge whose layers sit where they sit now stays the current one (another mode or
    # measure that places them alike gives the same model; its recipe records its own)
    result = session.result
    if result is not None and result.alignment.placement != session.prepared.alignment.placement:
        session.result, session.merged_metrics, session.sweep = None, None, []
    _drop_unshared_overrides(session)
    return how


def _drop_unshared_overrides(session: Session) -> None:
    """Remove the overrides of merge points that only one model uses under the new alignment
    (an identity block meets them now), and the patterns that match none of the others: a
    merge would refuse them, and the override menu does not offer them to remove."""
    prep = session.prepared
    takers = override_spaces(prep.padded_a.graph(), [prep.padded_b.graph()])
    overrides = session.settings.overrides
    kept = {
        k: v
        for k, v in overrides.items()
        if (any(fnmatchcase(n, k) for n in takers) if is_pattern(k) else k in takers)
    }
    if len(kept) != len(overrides):
        session.settings = dataclasses.replace(session.settings, overrides=kept)


def stop_blocks(session: Session) -> int:
    """Return the stop slider's largest value: the padded topology's blocks before the head."""
    prep = session.prepared
    return prep.padded_a.graph().num_blocks - 1 if prep is not None else 10


def require_prepared(session: Session) -> Prepared:
    """Return the session's prepared statistics.

    Raises:
        ConfigError: the pair has not been analysed yet.
    """
    if session.prepared is None:
        raise ConfigError("load and analyse a pair first (Models tab)")
    return session.prepared


def no_merge(session: Session, to: str, first: str) -> str:
    """Return why there is no current merge ``to`` act on: the last merge was made before the
    models, the analysis or the alignment changed (merge again), else ``first``."""
    if session.history and session.pair is not None:  # merged, then realigned or reanalysed
        return (
            f"merge #{session.merge_count} was made before the models, the analysis or the "
            f"alignment changed: merge again (Zip tab) to {to}"
        )
    return first


def whole(value: float, what: str) -> int:
    """Return a slider's or number box's ``value`` as an int (a script may send NaN or inf,
    which the page's own controls never do: ``int`` failed with an unexpected ValueError).

    Raises:
        ConfigError: naming ``what``.
    """
    if not math.isfinite(value):
        raise ConfigError(f"{what} = {value} is not a finite number: give a whole number")
    return int(value)


def make_settings(
    matcher: str,
    alpha: float,
    beta: float,
    rho: float,
    stop: int | None,
    overrides: dict[str, dict[str, Any]] | None = None,
    n_blocks: int | None = None,
    fusion: str = DEFAULT_FUSION,
    ridge: float = DEFAULT_RIDGE,
    renormalize: bool = False,
    heads: str = DEFAULT_HEADS,
    bn_units: bool = True,
    norm_weights: bool = True,
) -> ZipSettings:
    """Return ZipSettings from the Zip tab's controls (stop = n_blocks means a full zip).

    fusion: "auto" (the family's default), "average" (the paper's), "least_squares",
    "least_squares_heads" or "least_squares_sequential"; ridge: the least-squares ridge;
    renormalize: rescale the merged features to their groups' average statistics after fusion;
    heads: "auto" (the family's), "pair" (the paper's), "select" (``zip.select``), "search"
        (``head_search``) or "split" (``fusion.split_heads``);
    bn_units: fuse BatchNorm models in BatchNorm units (``fusion.bn_units``; the recipe's).
    norm_weights: weigh the merged stream's RMSNorms (``fusion.norm_weights``; the recipe's).

    Raises:
        ConfigError: a knob out of range, an unknown fusion or heads, or a bad ridge.
    """
    if not 0 < alpha <= 1:
        raise ConfigError(f"alpha = {alpha} is out of range: use 0 < alpha <= 1")
    if not 0 <= beta <= 1 or not 0 <= rho <= 1:
        raise ConfigError("beta and rho must lie in [0, 1]")
    check_fusion(fusion, ridge)
    check_heads("heads", heads)
    stop_value = None if stop is None else whole(stop, "stop")
    if stop_value is not None and n_blocks is not None and stop_value >= n_blocks:
        stop_value = None  # at or past the last block: no stop
    return ZipSettings(
        matcher,
        float(alpha),
        float(beta),
        float(rho),
        dict(overrides or {}),
        stop_value,
        fusion=fusion,
        ridge=float(ridge),
        renormalize=bool(renormalize),
        heads=heads,
        bn_units=bool(bn_units),
        norm_weights=bool(norm_weights),
    )


def merge(
    session: Session,
    res: Resources,
    settings: ZipSettings,
    progress: Progress | None = None,
    evaluate: bool = True,
) -> MergeResult:
    """Re-merge from the cached statistics with ``settings``; evaluate; record in the history.

    Never re-runs the feature pass. The result is kept only if the user did not cancel.
    evaluate: False leaves the scores to ``evaluate_pending`` (a slider release shows the merge
    first and its scores right after).

    Raises:
        HeteroguiError: settings a matcher cannot use, or Cancelled.
    """
    prepared = require_prepared(session)
    report = guarded(session, progress)
    start = time.perf_counter()
    result = zip_prepared(prepared, settings, progress=report)
    metrics = None
    if evaluate:
        metrics = metrics_of(session, result, report)
    size = merge_size(result)
    seconds = time.perf_counter() - start
    session.check_cancel()
    commit_merge(session, result, metrics, size, seconds, settings)
    return result


def evaluate_pending(session: Session, res: Resources, progress: Progress | None = None) -> bool:
    """Score the current merge if its scores are missing; return whether it did.

    The history row of that merge gets the scores too.
    """
    result = session.result
    if result is None or session.merged_metrics is not None or session.evaluation is None:
        return False
    metrics = metrics_of(session, result, guarded(session, progress))
    if session.result is not result or metrics is None:  # a newer merge came in meanwhile
        return False
    session.merged_metrics = metrics
    for row in session.history:
        if row["merge"] == session.merge_count:
            row.update(session.task.columns(metrics), score=session.task.headline(metrics))
    return True


def device_choices() -> list[str]:
    """Return the devices a merge may run on here (GPU first when present)."""
    return ["cuda", "cpu"] if torch.cuda.is_available() else ["cpu"]


def generate(
    session: Session,
    prompts: list[str],
    sample: bool,
    seed: int,
    max_new_tokens: int,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Continue ``prompts`` with A, B and the current merge; keep the texts in the session.

    progress: the share of tokens generated; Cancel stops it (the last texts are kept).

    Raises:
        ConfigError: no pair analysed, a task without generations, or bad prompts.
    """
    prepared = require_prepared(session)
    task = session.task
    if not hasattr(task, "generations"):
        raise ConfigError(f"{task.title} models do not generate text; load two language models")
    texts = task.generations(
        prepared,
        session.result,
        session.pair,
        prompts,
        sample=sample,
        seed=seed,
        max_new_tokens=max_new_tokens,
        progress=guarded(session, progress),
    )
    session.generations = {
        "prompts": [p for p in prompts if p.strip()],
        "sample": sample,
        "seed": seed,
        "merge": session.merge_count if session.result is not None else None,
        "texts": texts,
    }
    return session.generations
