"""Re-merge a pair at a grid of knob values and score every point (docs/method.md sec. 11).

The workbench's sweep plot (one knob) and the Compare tab's grid (two knobs) both come from
``sweep_grid``: every point is ``pipeline.zip_prepared`` from the analysed pair's statistics,
scored by the pair's task (``run.evaluate_merge``).
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
from collections.abc import Sequence
from typing import Any

from heterogui.errors import ConfigError, MatcherError
from heterogui.pipeline import Prepared, ZipSettings, zip_prepared
from heterogui.progress import Progress
from heterogui.run import evaluate_merge
from heterogui.sizes import merge_size
from heterogui.sources.base import Pair
from heterogui.tasks import Evaluation, task_of

log = logging.getLogger(__name__)

SWEEP_KNOBS = ("rho", "alpha", "beta", "stop")


def sweep(
    pair: Pair,
    prepared: Prepared,
    settings: ZipSettings,
    evaluation: Evaluation | None,
    rhos: list[float],
    progress: Progress | None = None,
) -> list[dict[str, Any]]:
    """Re-merge at every zip ratio in ``rhos`` (other settings kept); see ``sweep_grid``."""
    return sweep_grid(pair, prepared, settings, evaluation, {"rho": rhos}, progress)


def sweep_grid(
    pair: Pair,
    prepared: Prepared,
    settings: ZipSettings,
    evaluation: Evaluation | None,
    axes: dict[str, Sequence[float]],
    progress: Progress | None = None,
) -> list[dict[str, Any]]:
    """Re-merge at every combination of the knob values in ``axes``; return sizes and scores.

    axes: knob ("rho", "alpha", "beta", "stop") -> its values; the other settings are kept.
    Every point holds its knob values, the merge's sizes (``merge_size``), the task's columns
    and "score" (its headline). A point the settings cannot reach (a matcher error) is skipped.

    Raises:
        ConfigError: an unknown knob or no values.
        Cancelled: through ``progress``.
    """
    unknown = sorted(set(axes) - set(SWEEP_KNOBS))
    if unknown or not axes or not all(axes.values()):
        raise ConfigError(
            f"a sweep takes values for one or two of {list(SWEEP_KNOBS)}, got {unknown or axes}"
        )
    task = task_of(pair.task)
    combos = list(itertools.product(*axes.values()))
    points = []
    for k, values in enumerate(combos):
        if progress is not None:
            progress("sweep", k / len(combos))
        knobs = {
            name: int(v) if name == "stop" else float(v)
            for name, v in zip(axes, values, strict=True)
        }
        try:
            result = zip_prepared(prepared, dataclasses.replace(settings, **knobs))
        except (ConfigError, MatcherError) as exc:
            log.info("sweep point %s skipped: %s", knobs, exc)
            continue
        scores = evaluate_merge(pair, result, evaluation) if evaluation is not None else None
        point = {**knobs, **merge_size(result)}
        point.update(task.columns(scores))
        point["score"] = task.headline(scores)
        points.append(point)
    if progress is not None:
        progress("sweep", 1.0)
    return points
