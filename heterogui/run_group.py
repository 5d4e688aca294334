"""The steps of the one path that differ for three or more models (docs/architecture.md).

A recipe whose models are a list (``models: [A, B, C, ...]``) runs through ``run.merge`` as a
recipe of two does: the same loading (every model pre-flighted against A, recorded hashes
checked), the task's calibration and evaluation data, the same shard under torchrun, the same
completed recipe. ``run`` calls the N-way steps kept here: which models can be merged so
(image classifiers without attention), the engine (``nway.prepare_group`` and
``nway.zip_group_prepared``, docs/method.md sec. 12), the scores of every model, their
ensemble and the merge, and the one output format (heterogui).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

from heterogui.config import AlignmentSpec, Recipe
from heterogui.errors import ConfigError
from heterogui.export.job import HETEROGUI_FORMAT
from heterogui.nway import GroupMergeResult, check_group_settings, prepare_group, zip_group_prepared
from heterogui.pipeline import ZipSettings, resolved_settings
from heterogui.progress import Progress
from heterogui.report_group import group_mode
from heterogui.sources.base import IMAGE_CLASSIFICATION, Header, Pair
from heterogui.tasks import Calibration, Evaluation
from heterogui.tasks.classification import Metrics
from heterogui.tasks.images import IMAGES

# families whose layers attend (nway zips none of them): they merge two at a time
ATTENTION_FAMILIES = ("bert", "vit", "decoder")

log = logging.getLogger(__name__)


def check_group(headers: Sequence[Header]) -> None:
    """Raise unless every model (described from its headers) can join an N-way merge.

    Raises:
        ConfigError: a model that is not an image classifier, or one with attention layers.
    """
    refs = [header.ref for header in headers]
    twice = sorted({r for r in refs if refs.count(r) > 1})
    if twice:  # the merge runs; its ensemble then counts that model's votes more than once
        log.warning(
            "models lists %s more than once: the merge and the ensemble count that model once "
            "per entry; list each model once unless that is what you want",
            ", ".join(twice),
        )
    for header in headers:
        if header.task != IMAGE_CLASSIFICATION or header.family in ATTENTION_FAMILIES:
            raise ConfigError(
                f"{header.name} is a {header.family} scored on {header.task.replace('_', ' ')}: "
                "merging more than two models at once works for image classifiers without "
                "attention (MLP, VGG, ResNet); merge other models two at a time (a merged "
                "folder is model A of the next merge)"
            )


def check_format(fmt: str | None) -> str:
    """Return the output format of an N-way merge: heterogui (None: the default).

    Raises:
        ConfigError: any other format.
    """
    if fmt not in (None, HETEROGUI_FORMAT):
        raise ConfigError(
            f"a merge of three or more models is written in the heterogui format only, not "
            f"{fmt!r}; leave out --format (in Python, fmt) or give {HETEROGUI_FORMAT}"
        )
    return HETEROGUI_FORMAT


def merge_models(
    pair: Pair,
    calibration: Calibration,
    recipe: Recipe,
    settings: ZipSettings,
    dtype: torch.dtype,
    device: torch.device | str,
    progress: Progress,
) -> GroupMergeResult:
    """Run the N-way engine on the pair's models: align, pad, collect, zip, fuse.

    calibration: this rank's batches. The settings are checked before any data pass.

    Raises:
        ConfigError: settings or an alignment mode an N-way merge does not take (manual).
        HeteroguiError: see ``nway.prepare_group`` and ``nway.zip_group_prepared``.
    """
    settings = resolved_settings(pair.a.net, settings, len(pair.models))
    check_group_settings(settings)
    prepared = prepare_group(
        [m.net for m in pair.models],
        calibration.batches,
        mode=recipe.alignment.mode,
        device=device,
        reset_input_bn=recipe.reset_input_bn,
        progress=progress,
        measure=recipe.alignment.measure,
    )
    progress("zip", 0.0)
    result = zip_group_prepared(prepared, settings, dtype)
    progress("zip", 1.0)
    return result


def alignment_spec(result: GroupMergeResult) -> AlignmentSpec:
    """Return the alignment a completed recipe records: the mode and the measure its CKA
    compared ("auto" resolved, so that a rerun aligns alike); the report has the mappings.

    Every model is aligned to the reference by the mode, which repeats the same mappings; a
    recorded mapping is only read for "manual", which an N-way merge does not take.
    """
    return AlignmentSpec(group_mode(result), measure=result.prepared.measure)


def score(
    result: GroupMergeResult, evaluation: Evaluation, progress: Progress | None = None
) -> dict[str, Metrics]:
    """Return the scores of each model alone ("a", "b", "c", ...), "ensemble" and "merged"."""
    prep = result.prepared
    return IMAGES.score_group(prep.nets, evaluation, prep.device, progress, result.model)
