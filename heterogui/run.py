"""The one path from a recipe to a merged model and its files (docs/architecture.md).

``merge(recipe)`` loads models A and B through their sources, draws the task's calibration
(and evaluation) data, runs the engine (``pipeline.prepare`` / ``zip_prepared``), completes the
recipe and writes the report; ``run_export.export`` writes the result in an output format. A
recipe with three or more models takes the same steps, with the N-way engine and scores of
``heterogui.run_group`` where they differ. The CLI, the Python API (``heterogui.merge``), the
workbench and the benchmarks all go through the steps defined here: ``load_pair``,
``calibrate``, ``analyse``, ``evaluate_models`` / ``evaluate_merge``, ``complete_recipe``. No
other module builds recipes or checks model hashes.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from heterogui import distributed, host_memory, run_group
from heterogui.config import (
    AlignmentSpec,
    DataRef,
    ModelRef,
    Recipe,
    TransformerSpec,
    ZipSpec,
)
from heterogui.errors import ConfigError, IncompatibleModelsError
from heterogui.nway import GroupMergeResult
from heterogui.pipeline import (
    MergeResult,
    Prepared,
    ZipSettings,
    check_pair,
    prepare,
    zip_prepared,
)
from heterogui.progress import Progress, guarded, within
from heterogui.recipe_parse import load_recipe
from heterogui.report import add_pair_notes, merge_report
from heterogui.report_group import group_report
from heterogui.run_checks import (
    ENCODER_FAMILIES,
    check_transformer_options,
    reads_calibration,
    recorded_heads,
    warn_if_other_versions,
    warn_if_realigned,
    warn_of_idle_knobs,
)
from heterogui.run_export import export as export  # the Python API: run.export(done, DIR)
from heterogui.sources import registry as sources
from heterogui.sources.base import Loaded, Pair
from heterogui.sources.hf import MODEL_FILES, files_sha256
from heterogui.tasks import Calibration, Evaluation, Task, task_of
from heterogui.versions import versions

log = logging.getLogger(__name__)
DTYPES = {"float32": torch.float32, "float64": torch.float64}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}


@dataclass
class RunResult:
    """A finished merge: the engine's result, the completed recipe, the report, the inputs.

    scores: the task's scores of "a", "b", "ensemble" and "merged" (None: not evaluated); of
    "a", "b", "c", ..., "ensemble" and "merged" for a merge of three or more models, whose
    result is a ``nway.GroupMergeResult``.
    """

    result: MergeResult | GroupMergeResult
    recipe: Recipe
    report: dict[str, Any]
    pair: Pair
    calibration: Calibration
    evaluation: Evaluation | None = None
    scores: dict[str, Any] | None = None

    @property
    def task(self) -> Task:
        """Return the pair's task."""
        return task_of(self.pair.task)


def settings_of(recipe: Recipe) -> ZipSettings:
    """Return the ZipSettings a recipe asks for."""
    z = recipe.zip
    return ZipSettings(
        z.matcher,
        z.alpha,
        z.beta,
        z.rho,
        z.overrides,
        recipe.stop,
        z.fusion,
        z.ridge,
        z.renormalize,
        z.heads,
        bn_units=z.bn_units,
        norm_weights=z.norm_weights,
    )


def check_hash(ref: ModelRef, loaded: Loaded) -> None:
    """Raise if a recorded weights hash differs from the loaded model's.

    Raises:
        ConfigError: the weights, or the config and tokenizer files beside them, changed since
            the recipe was written.
    """
    built = loaded.source == "zoo"  # heterogui trains it: its weights are the model
    if ref.sha256 and ref.sha256 != loaded.sha256:
        found, recorded = (loaded.sha256 or "none")[:12], ref.sha256[:12]
        raise ConfigError(
            f"{ref.path} as this heterogui trains it is not the model the recipe records "
            f"(sha256 {found}... against {recorded}...: another version trained it): run the "
            "recipe with the heterogui that recorded it, or remove its sha256 to merge this one"
            if built
            else f"the weights of {ref.path} changed: sha256 {found}... but the recipe records "
            f"{recorded}...; restore the model or remove its sha256"
        )
    folder = loaded.folder
    if ref.files_sha256 and ref.files_sha256 not in (
        (files_sha256(folder), files_sha256(folder, legacy=True)) if folder is not None else ()
    ):
        if built and ref.sha256:
            # heterogui writes a zoo model's config.json from the zoo's registry, and older
            # versions hashed its training time with it: the same weights are the same model
            log.warning(
                "%s: the recipe's files_sha256 was recorded by an older heterogui, which "
                "hashed the zoo's training time; the weights are the recorded ones",
                ref.path,
            )
            return
        present = [name for name in MODEL_FILES if folder is not None and (folder / name).is_file()]
        raise ConfigError(
            f"the config or tokenizer files of {ref.path} changed ({', '.join(present)}): the "
            "merge would differ from the recorded one; restore them or remove its files_sha256"
        )


def keeps_random_state(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Run ``fn`` on a fork of torch's CPU random state: what it seeds or draws (a recipe's
    seed, a model's initialisation) leaves the caller's generator as it was."""

    @functools.wraps(fn)
    def forked(*args: Any, **kwargs: Any) -> Any:
        with torch.random.fork_rng(devices=[]):
            return fn(*args, **kwargs)

    return forked


@keeps_random_state
def load_pair(
    ref_a: ModelRef | str,
    ref_b: ModelRef | str,
    transformer: TransformerSpec | None = None,
    device: str = "cpu",
    more: Sequence[ModelRef | str] = (),
) -> Pair:
    """Run the header-only pre-flight, then load A and B (and ``more``) through their sources.

    transformer: pooling of text embedding models and the identity construction of BERT's
    padded layers (None: the families' defaults). more: models C, D, ... of an N-way merge
    (``run_group.check_group`` says which models may join one); every model is pre-flighted
    against A. Recorded hashes are checked.

    Raises:
        IncompatibleModelsError: the pre-flight (or the loaded models) cannot be merged.
        ConfigError: changed weights, an identity construction the family does not have, or
            models an N-way merge does not take.
        ModelLoadError: a model that cannot be read.
    """
    refs = [r if isinstance(r, ModelRef) else ModelRef(r) for r in (ref_a, ref_b, *more)]
    if transformer is not None:
        check_transformer_options(sources.describe(refs[0].path).family)
    if more:
        run_group.check_group([sources.describe(r.path) for r in refs])
    verdicts = []
    for k, ref in enumerate(refs[1:], start=1):
        verdict = sources.preflight(refs[0].path, ref.path)
        if not verdict.ok:
            letter = chr(ord("A") + k)
            reasons = "; ".join(verdict.reasons)  # the pre-flight names the second model B
            which = f"model {letter} against model A: " if k > 1 else ""
            raise IncompatibleModelsError(which + reasons.replace("model B", f"model {letter}"))
        # first: an out-of-memory kill says nothing. A two-model merge collects its statistics
        # part by part within the budget; an N-way merge holds them all
        fits = verdict.memory if more else verdict.memory_within(host_memory.stats_budget())
        host_memory.check_fits(fits)
        verdicts.append(verdict)
    for ref in refs:
        if ref.sha256:
            sources.check_recorded(ref.path, ref.sha256)
    pooling = transformer.pooling if transformer is not None else None
    loaded = [sources.load(r.path, pooling=pooling, device=device) for r in refs]
    for ref, item in zip(refs, loaded, strict=True):
        check_hash(ref, item)
    notes = [
        note
        for k, (verdict, item) in enumerate(zip(verdicts, loaded[1:], strict=True), start=1)
        for note in sources.pair_notes(verdict, loaded[0], item, chr(ord("A") + k))
    ]
    pair = Pair(loaded[0], loaded[1], tuple(loaded[2:]), tuple(notes))
    if transformer is not None and transformer.identity != "exact":
        if pair.a.net.family.name != "bert":
            raise ConfigError(
                f"transformer.identity {transformer.identity!r} is for BERT; a pre-LN "
                f'{pair.a.net.family.name} pads with exact identity layers: use "exact"'
            )
        for item in pair.models:
            config = dataclasses.replace(item.net.config, identity=transformer.identity)
            item.net = dataclasses.replace(item.net, config=config)
    for item in pair.models[1:]:
        check_pair(pair.a.net, item.net)
    return pair


def calibrate(pair: Pair, ref: DataRef | None = None, size: int | None = None) -> Calibration:
    """Return the pair's calibration data (``ref``, or its task's default of ``size`` inputs).

    Raises:
        ConfigError: data of the wrong kind or shape, or changed data.
        ModelLoadError: a missing or corrupt data file.
    """
    task = task_of(pair.task)
    calibration = task.calibration(ref or task.default_calibration(pair, size), pair)
    _warn_if_short("calibration", calibration.ref, calibration.count, calibration.why)
    return calibration


def evaluation_data(pair: Pair, ref: DataRef) -> Evaluation:
    """Return the pair's evaluation data ``ref`` names (warned about when it holds fewer inputs
    than asked for).

    Raises:
        ConfigError: data of the wrong kind or shape, or changed data.
        ModelLoadError: a missing or corrupt data file.
    """
    evaluation = task_of(pair.task).evaluation(ref, pair)
    _warn_if_short("evaluation", evaluation.ref, evaluation.count)
    return evaluation


def _warn_if_short(role: str, ref: DataRef, count: int, why: str | None = None) -> None:
    """Log a warning when data drawn for ``role`` holds other than the inputs asked
    (why: the source's reason, when it decided the count)."""
    if ref.size is not None and count != ref.size:
        log.warning(
            "%s: %d inputs from %s, not the %d asked for%s",
            role,
            count,
            ref.source,
            ref.size,
            f" ({why})" if why else "",
        )


def analyse(pair: Pair, calibration: Calibration, **options: Any) -> Prepared:
    """Run the engine's analysis (BN, CKA, alignment, padding, statistics) on a pair.

    options: ``pipeline.prepare``'s keywords (mode, manual, measure, device, reset_input_bn,
    progress, stats_budget).
    """
    return prepare(pair.a.net, pair.b.net, calibration.batches, **options)


def evaluate_models(
    pair: Pair, prepared: Prepared, evaluation: Evaluation, progress: Progress | None = None
) -> dict[str, Any]:
    """Return the task's scores of "a", "b" and "ensemble" (progress: "evaluate", share)."""
    return task_of(pair.task).score_models(prepared, evaluation, pair, progress)


def evaluate_merge(
    pair: Pair, result: MergeResult, evaluation: Evaluation, progress: Progress | None = None
) -> Any:
    """Return the task's scores of the merged model (progress: "evaluate", share done)."""
    return task_of(pair.task).score_merged(result, evaluation, pair, progress)


def transformer_spec(pair: Pair) -> TransformerSpec | None:
    """Return the transformer options a pair was loaded with (None: not a transformer)."""
    config = pair.a.net.config
    if pair.a.net.family.name not in ENCODER_FAMILIES:
        return None
    return TransformerSpec(getattr(config, "identity", "exact"), config.pooling)


def complete_recipe(
    pair: Pair,
    calibration: Calibration,
    result: MergeResult | GroupMergeResult,
    *,
    evaluation: Evaluation | None = None,
    base: Recipe | None = None,
    dtype: torch.dtype = torch.float32,
    reset_input_bn: bool = True,
) -> Recipe:
    """Return the recipe that repeats this merge bit for bit.

    It records the models with their hashes, the calibration (and evaluation) data with
    theirs, the alignment it produced (an N-way merge: its mode and measure,
    ``run_group.alignment_spec``),
    every knob, and the library versions. base: the recipe the merge ran from (its seed and
    device are kept).
    """
    s = result.settings
    device = base.device if base is not None else str(result.prepared.device)
    # a hash the base recipe recorded (checked when its models loaded: ``check_hash``) is kept,
    # in whichever scheme it was written, so that a rerun writes the very same recipe
    recorded = [r.files_sha256 for r in base.models] if base is not None else []
    refs = [
        ModelRef(
            m.ref,
            m.sha256,
            (recorded[k] if k < len(recorded) else None)
            or (files_sha256(m.folder) if m.folder is not None else None),
        )
        for k, m in enumerate(pair.models)
    ]
    base = base or Recipe(refs[0], refs[1])
    families = tuple(m.net.family.name for m in pair.models)
    if isinstance(result, GroupMergeResult):
        alignment = run_group.alignment_spec(result)
    else:
        alignment = AlignmentSpec(
            result.alignment.mode, result.alignment.mapping(), result.prepared.measure
        )
    return dataclasses.replace(
        base,
        model_a=refs[0],
        model_b=refs[1],
        more_models=tuple(refs[2:]),
        calibration=calibration.ref,
        evaluation=evaluation.ref if evaluation is not None else None,
        alignment=alignment,
        zip=ZipSpec(
            s.matcher,
            s.alpha,
            s.beta,
            s.rho,
            {k: dict(v) for k, v in s.overrides.items()},
            s.fusion,
            s.ridge,
            s.renormalize,
            recorded_heads(s.heads, pair),
            s.bn_units,
            s.norm_weights,
        ),
        stop=s.stop,
        reset_input_bn=reset_input_bn,
        transformer=transformer_spec(pair),
        dtype=DTYPE_NAMES[dtype],
        device=device,
        versions=versions(families),
    )


def as_recipe(recipe: Recipe | str | Path) -> Recipe:
    """Return ``recipe``, or the recipe file it names.

    Raises:
        ConfigError: anything else (a dict failed with a TypeError about paths).
    """
    if isinstance(recipe, Recipe):
        return recipe
    if isinstance(recipe, str | os.PathLike):
        return load_recipe(recipe)
    raise ConfigError(
        f"merge(recipe) takes a Recipe or a recipe file, not a {type(recipe).__name__}: build "
        "the Recipe of a dict with heterogui.recipe_parse.recipe_from_dict(data)"
    )


@keeps_random_state
def merge(
    recipe: Recipe | str | Path,
    progress: Progress | None = None,
    cancel: Callable[[], bool] | None = None,
    evaluate: bool = True,
) -> RunResult:
    """Run the merge a recipe describes: result, completed recipe, report and scores.

    evaluate: score A, B, their ensemble and the merge on the recipe's evaluation data (False:
    the data is still read and checked, nothing is scored, and the scores are None).

    The evaluation data (when the recipe names some) is drawn before the expensive part, so a
    bad file fails fast; the report's total time leaves evaluation out.

    A recipe with three or more models (``Recipe.more_models``) runs the N-way engine
    (``run_group``): image classifiers only, exported in the heterogui format.

    Under torchrun (a process group, ``heterogui.distributed``) every rank loads the pair
    (rank 0 first, so that a cache it builds is read by the others), runs the data passes on
    its shard of the calibration batches (their sums are all-reduced: every rank ends with the
    whole data's statistics and the same merge), and only rank 0 evaluates: the other ranks'
    results have no scores. The completed recipe and the report count the whole data.

    The run seeds torch with the recipe's seed on a forked random state: the caller's CPU
    generator is left as it was.

    Raises:
        Cancelled: ``cancel()`` became true.
        HeteroguiError: any invalid recipe field, model or data (see the subclasses).
    """
    recipe = as_recipe(recipe)
    report = guarded(progress, cancel)
    start = time.perf_counter()
    with distributed.main_first():
        pair = load_pair(
            recipe.model_a, recipe.model_b, recipe.transformer, more=recipe.more_models
        )
        calibration, evaluation = _recipe_data(pair, recipe)
    distributed.agree(
        {f"recipe.{k}": v for k, v in recipe.to_dict().items()}
        | {"calibration data": calibration.ref.sha256}
        | {"evaluation data": evaluation.ref.sha256 if evaluation else None}
    )
    # this rank's batches: all of them in one process, every N-th under torchrun
    shard = dataclasses.replace(calibration, batches=distributed.shard(calibration.batches))
    torch.manual_seed(recipe.seed)
    dtype = DTYPES[recipe.dtype]
    with distributed.peers_alive():
        result = _run_engine(pair, shard, recipe, dtype, report)
    seconds = time.perf_counter() - start
    done = complete_recipe(
        pair,
        calibration,
        result,
        evaluation=evaluation,
        base=recipe,
        dtype=dtype,
        reset_input_bn=recipe.reset_input_bn,
    )
    for note in pair.notes:  # said, not only filed in the report and the model card
        log.warning("note on the pair: %s", note)
    warn_if_realigned(recipe, done, pair)
    warn_if_other_versions(recipe, done)
    warn_of_idle_knobs(recipe.zip, pair)
    scores = None
    if evaluate and evaluation is not None and distributed.is_main():
        scores = _scores(pair, result, evaluation, report)
    task = task_of(pair.task)
    describe = group_report if isinstance(result, GroupMergeResult) else merge_report
    facts = describe(result, done, seconds, task, scores, calibration.count)
    facts["timings_seconds"]["evaluation"] = time.perf_counter() - start - seconds
    add_pair_notes(facts, pair)
    return RunResult(result, done, facts, pair, calibration, evaluation, scores)


def _recipe_data(pair: Pair, recipe: Recipe) -> tuple[Calibration, Evaluation | None]:
    """Return the calibration and evaluation data a recipe names, checked against its task.

    Raises:
        ConfigError: data of the wrong kind or shape, or changed data.
        ModelLoadError: a missing or corrupt data file.
    """
    task = task_of(pair.task)
    if recipe.calibration is not None:
        task.check(recipe.calibration, "calibration")
    if recipe.evaluation is not None:
        task.check(recipe.evaluation, "evaluation")
    calibration = calibrate(pair, recipe.calibration)
    evaluation = evaluation_data(pair, recipe.evaluation) if recipe.evaluation else None
    if recipe.evaluation is not None and reads_calibration(recipe.evaluation, calibration.ref):
        source = calibration.ref.source
        if Path(source).expanduser().is_file():  # a file has no splits
            where, fix = source, "evaluate on another file"
        else:
            where, fix = f"{source}, split {calibration.ref.split}", "evaluate on split: test"
        log.warning(
            "evaluation reads the calibration data (%s): the merge was fitted to it, so its "
            "scores are optimistic; %s",
            where,
            fix,
        )
    if recipe.evaluation is not None and recipe.evaluation.split == "train":
        log.warning(
            "evaluation reads the train split of %s: the models may have been trained on it, so "
            "the scores say little about new data; evaluate on split: test",
            recipe.evaluation.source,
        )
    return calibration, evaluation


def _run_engine(
    pair: Pair, shard: Calibration, recipe: Recipe, dtype: torch.dtype, report: Progress
) -> MergeResult | GroupMergeResult:
    """Return the engine's merge of a loaded pair (or group) on this rank's calibration."""
    device = distributed.rank_device(recipe.device)
    if pair.more:
        settings = settings_of(recipe)
        return run_group.merge_models(pair, shard, recipe, settings, dtype, device, report)
    manual = recipe.alignment.mapping if recipe.alignment.mode == "manual" else None
    prepared = analyse(
        pair,
        shard,
        mode=recipe.alignment.mode,
        manual=manual,
        measure=recipe.alignment.measure,
        device=device,
        reset_input_bn=recipe.reset_input_bn,
        progress=report,
        stats_budget=host_memory.stats_budget(),
    )
    return zip_prepared(prepared, settings_of(recipe), dtype, report)


def _scores(
    pair: Pair,
    result: MergeResult | GroupMergeResult,
    evaluation: Evaluation,
    report: Progress,
) -> dict[str, Any]:
    """Return the scores of every model, their ensemble and the merge ("merged")."""
    if isinstance(result, GroupMergeResult):
        return run_group.score(result, evaluation, report)
    baseline = within(report, 0.0, 0.75)
    scores = {**evaluate_models(pair, result.prepared, evaluation, baseline)}
    scores["merged"] = evaluate_merge(pair, result, evaluation, within(report, 0.75, 1.0))
    return scores
