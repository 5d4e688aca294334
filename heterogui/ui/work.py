"""What the workbench's buttons do, without gradio: load, analyse, align, zip, merge.

Every function takes the session (and the shared ``Resources``), does one step through the core
pipeline and stores the outcome in the session. A step that fails raises a HeteroguiError before
it changes the session, so the previous state survives a bad input.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from typing import Any

import torch
import yaml

from heterogui.align.alignment import align
from heterogui.config import DataRef
from heterogui.errors import AlignmentError, ConfigError
from heterogui.pipeline import (
    MergeResult,
    Prepared,
    ZipSettings,
    check_pair,
    prepare,
    realign,
    resolve_device,
    zip_prepared,
)
from heterogui.ui import evaluation, text
from heterogui.ui.resources import Resources
from heterogui.ui.session import ModelSlot, Session
from heterogui.ui.sizes import parameters_and_flops, reference_sizes
from heterogui.ui.sources import guess_dataset, zoo_slot

log = logging.getLogger(__name__)
Progress = Callable[[str, float], None]
CALIBRATION_SIZE = 256
CALIBRATION_BATCH = 64


def guarded(session: Session, progress: Progress | None) -> Progress:
    """Return a progress callback that stops the step when the user pressed Cancel."""

    def report(stage: str, frac: float) -> None:
        session.check_cancel()
        if progress is not None:
            progress(stage, frac)

    return report


def calibration_ref(dataset: str, size: int = CALIBRATION_SIZE) -> DataRef:
    """Return the calibration data a pair on ``dataset`` uses (what the recipe records)."""
    return DataRef(source=dataset, split="calibration", size=size, batch_size=CALIBRATION_BATCH)


def open_pair(
    session: Session, res: Resources, name: str, progress: Progress | None = None
) -> Session:
    """Load demo pair ``name`` as A and B and analyse it (built on first use).

    Raises:
        ConfigError: unknown pair; HeteroguiError from the analysis (the session is unchanged).
    """
    report = guarded(session, progress)
    pair = res.pair(name, lambda stage, frac: report(f"build {stage}", frac))
    a, b = zoo_slot(pair.net_a, name, "a"), zoo_slot(pair.net_b, name, "b")
    ref = calibration_ref(pair.dataset, session.calibration.size or CALIBRATION_SIZE)
    device = str(resolve_device(session.device))
    prepared, baseline = analysed(a, b, pair.dataset, ref, device, res, report, cache_key=name)
    session.a, session.b, session.pair, session.dataset = a, b, name, pair.dataset
    session.calibration = ref
    _commit_analysis(session, prepared, baseline)
    return session


def _commit_analysis(session: Session, prepared: Prepared, baseline: dict[str, Any]) -> None:
    """Adopt a new analysis; the stop point and overrides (they name blocks) start afresh."""
    session.clear_results()
    session.settings = dataclasses.replace(session.settings, stop=None, overrides={})
    session.prepared, session.baseline = prepared, baseline
    session.reference_sizes = reference_sizes(prepared)


def set_model(session: Session, which: str, slot: ModelSlot) -> Session:
    """Put ``slot`` in place of model A or B; results of the old pair are dropped."""
    setattr(session, which, slot)
    session.pair = None
    if slot.net.family.name == "bert":
        if session.dataset != text.TEXT:
            session.dataset = text.TEXT
            session.calibration = calibration_ref(text.TEXT, text.DEFAULT_SENTENCES)
        session.clear_results()
        return session
    if session.dataset == text.TEXT:
        session.dataset = None
    guess = guess_dataset(slot.net)
    if guess is not None and session.dataset is None:
        session.dataset = guess
    if session.dataset:
        session.calibration = calibration_ref(session.dataset, session.calibration.size or 256)
    session.clear_results()
    return session


def set_data(session: Session, dataset: str, size: int) -> Session:
    """Choose the calibration/test dataset and the number of calibration inputs.

    Raises:
        ConfigError: a size under 16.
    """
    if size < 16:
        raise ConfigError(f"calibration size {size} is too small: use at least 16 inputs")
    if (dataset == text.TEXT) != text.is_text(session) and session.both_loaded():
        raise ConfigError(
            f"calibration data {dataset!r} does not fit these models: transformer pairs "
            f"calibrate on {text.TEXT!r}, the other families on their image or signal data"
        )
    session.dataset = dataset
    session.calibration = calibration_ref(dataset, int(size))
    session.clear_results()
    return session


def analysed(
    a: ModelSlot,
    b: ModelSlot,
    dataset: str,
    ref: DataRef,
    device: str,
    res: Resources,
    report: Progress,
    cache_key: str | None = None,
) -> tuple[Prepared, dict[str, Any]]:
    """Return the prepared statistics (CKA, SMA alignment, moments) and the baseline metrics.

    cache_key: a demo pair's name; its statistics are then shared between sessions.

    Raises:
        HeteroguiError: incompatible models, bad data, or Cancelled.
    """
    check_pair(a.net, b.net)
    batches = res.batches(ref)

    def build() -> Prepared:
        return prepare(a.net, b.net, batches, mode="sma", device=device, progress=report)

    prepared = res.prepared((cache_key, ref, device), build) if cache_key else build()
    return prepared, evaluation.baseline_metrics(prepared, res, dataset)


def analyse(session: Session, res: Resources, progress: Progress | None = None) -> Session:
    """Run steps 1-3 for the loaded pair (CKA, SMA alignment, statistics) and the baselines.

    Raises:
        HeteroguiError: models missing or incompatible, bad data, or Cancelled.
    """
    if not session.both_loaded():
        raise ConfigError("load model A and model B first")
    if not session.dataset:
        raise ConfigError("choose the calibration data set (the models' inputs)")
    device = str(resolve_device(session.device))
    if text.is_text(session):
        return analyse_text(session, device, guarded(session, progress))
    key = session.pair if session.pair and session.a.source == "zoo" else None
    prepared, baseline = analysed(
        session.a,
        session.b,
        session.dataset,
        session.calibration,
        device,
        res,
        guarded(session, progress),
        cache_key=key,
    )
    _commit_analysis(session, prepared, baseline)
    return session


def analyse_text(session: Session, device: str, report: Progress) -> Session:
    """Analyse a transformer pair on tokenised calibration sentences; score A, B, ensemble.

    Raises:
        HeteroguiError: incompatible models, too few sentences, or Cancelled.
    """
    check_pair(session.a.net, session.b.net)
    batches = text.batches(session)
    prepared = prepare(
        session.a.net, session.b.net, batches, mode="sma", device=device, progress=report
    )
    report("evaluate", 0.0)
    _commit_analysis(session, prepared, text.baseline(prepared, session.a.tokenizer))
    return session


def metrics_of(session: Session, res: Resources, result: MergeResult) -> Any:
    """Return the merged model's metrics: Spearman scores (text) or test-split Metrics."""
    if session.dataset == text.TEXT and session.a is not None and session.a.tokenizer:
        return text.merged_scores(result, session.a.tokenizer)
    return evaluation.merged_metrics(result, res, session.dataset)


def parse_mapping(text: str) -> dict[str, list[list[int]]]:
    """Parse a mapping typed by the user: ``{"a": [[0, 1, 2]], "b": [[0, 2]]}`` (JSON or YAML).

    Raises:
        AlignmentError: the text does not parse or is not of that shape.
    """
    try:
        data = yaml.safe_load(text or "")
    except yaml.YAMLError as exc:
        raise AlignmentError(f"the mapping does not parse ({exc}); use the shown format") from exc
    ok = isinstance(data, dict) and set(data) == {"a", "b"}
    ok = ok and all(
        isinstance(v, list) and all(isinstance(s, list) for s in v) for v in data.values()
    )
    if not ok:
        raise AlignmentError(
            'a mapping looks like {"a": [[0, 1, 2]], "b": [[0, 2]]}: per model, one list per '
            "stage with the slot of each of its layers"
        )
    return data


def set_alignment(
    session: Session, mode: str, mapping_text: str | None = None, progress: Progress | None = None
) -> bool:
    """Realign the pair with ``mode`` (or a manual mapping); redo the feature pass if needed.

    Returns whether the statistics were recomputed.

    When the new alignment places every layer where it already is, only its mode and score
    change and the cached statistics are kept (they depend on the placement only).

    Raises:
        AlignmentError: unknown mode or an invalid manual mapping (the old one is kept).
    """
    prepared = require_prepared(session)
    manual = parse_mapping(mapping_text or "") if mode == "manual" else None
    ga, gb = prepared.net_a.graph(), prepared.net_b.graph()
    new_alignment = align(ga, gb, prepared.similarity, mode, manual)
    old = prepared.alignment
    recomputed = (new_alignment.positions_a, new_alignment.positions_b) != (
        old.positions_a,
        old.positions_b,
    )
    if recomputed:
        session.prepared = realign(prepared, mode, manual, guarded(session, progress))
    else:
        session.prepared = dataclasses.replace(prepared, alignment=new_alignment)
    if session.result is not None and session.result.alignment != session.prepared.alignment:
        session.result, session.merged_metrics, session.sweep = None, None, []
    return recomputed


def require_prepared(session: Session) -> Prepared:
    """Return the session's prepared statistics.

    Raises:
        ConfigError: the pair has not been analysed yet.
    """
    if session.prepared is None:
        raise ConfigError("load and analyse a pair first (Models tab)")
    return session.prepared


def make_settings(
    matcher: str,
    alpha: float,
    beta: float,
    rho: float,
    stop: int | None,
    overrides: dict[str, dict[str, Any]] | None = None,
    n_blocks: int | None = None,
) -> ZipSettings:
    """Return ZipSettings from the Zip tab's controls (stop = n_blocks means a full zip).

    Raises:
        ConfigError: a knob out of range.
    """
    if not 0 < alpha <= 1:
        raise ConfigError(f"alpha = {alpha} is out of range: use 0 < alpha <= 1")
    if not 0 <= beta <= 1 or not 0 <= rho <= 1:
        raise ConfigError("beta and rho must lie in [0, 1]")
    stop_value = None if stop is None or (n_blocks is not None and stop >= n_blocks) else int(stop)
    return ZipSettings(
        matcher, float(alpha), float(beta), float(rho), dict(overrides or {}), stop_value
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
    evaluate: False leaves the test metrics to ``evaluate_pending`` (a slider release shows
    the merge first and the metrics right after).

    Raises:
        HeteroguiError: settings a matcher cannot use, or Cancelled.
    """
    prepared = require_prepared(session)
    report = guarded(session, progress)
    start = time.perf_counter()
    result = zip_prepared(prepared, settings, progress=report)
    metrics = None
    if evaluate:
        report("evaluate", 0.0)
        metrics = metrics_of(session, res, result)
    size = parameters_and_flops(result.model, prepared)
    seconds = time.perf_counter() - start
    session.check_cancel()
    commit_merge(session, result, metrics, size, seconds)
    report("done", 1.0)
    return result


def commit_merge(
    session: Session, result: MergeResult, metrics: Any, size: dict[str, Any], seconds: float
) -> None:
    """Make ``result`` the session's merge and add it to the history."""
    session.result, session.settings, session.merged_metrics = result, result.settings, metrics
    session.merged_size = size
    session.merge_count += 1
    if session.sweep_key != sweep_key(result.settings, result.alignment):
        session.sweep = []
    session.history.append(history_row(session, result, metrics, size, seconds))


def evaluate_pending(session: Session, res: Resources) -> bool:
    """Compute the test metrics of the current merge if they are missing; return if it did.

    The history row of that merge gets the metrics too.
    """
    result = session.result
    if result is None or session.merged_metrics is not None:
        return False
    metrics = metrics_of(session, res, result)
    if session.result is not result or metrics is None:  # a newer merge came in meanwhile
        return False
    session.merged_metrics = metrics
    for row in session.history:
        if row["merge"] == session.merge_count:
            row.update(metric_cols(metrics))
    return True


def metric_cols(metrics: Any) -> dict[str, Any]:
    """Return a history row's metric columns (text pairs add "Spearman": the merged trunk's)."""
    cols: dict[str, Any] = evaluation.metric_columns(metrics)
    if isinstance(metrics, dict):
        cols["Spearman"] = metrics.get("merged")
    return cols


def sweep_key(settings: ZipSettings, alignment: Any) -> tuple:
    """Return what a rho sweep depends on: every setting but rho, and the alignment."""
    return (dataclasses.replace(settings, rho=0.0), alignment.positions_a, alignment.positions_b)


def history_row(
    session: Session, result: MergeResult, metrics: Any, size: dict[str, Any], seconds: float
) -> dict[str, Any]:
    """Return the history entry of a merge: settings, size and metrics."""
    s = result.settings
    row = {
        "merge": session.merge_count,
        "pair": session.pair or "custom",
        "alignment": result.alignment.mode,
        "matcher": s.matcher,
        "alpha": s.alpha,
        "beta": s.beta,
        "rho": s.rho,
        "stop": result.spec.stop,
        "overrides": len(s.overrides),
        "parameters": size["parameters"],
        "flops": size["flops"],
        "seconds": round(seconds, 3),
    }
    row.update(metric_cols(metrics))
    return row


def device_choices() -> list[str]:
    """Return the devices a merge may run on here (GPU first when present)."""
    return ["cuda", "cpu"] if torch.cuda.is_available() else ["cpu"]
