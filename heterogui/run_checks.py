"""What a recipe's run checks and warns about around the engine (``run.merge``).

Options the models do not have (refused), knobs that change nothing for them and an alignment
that differs from the one a recipe recorded (warned about), and whether an evaluation reads the
calibration data (``run`` warns: its scores would be optimistic).
"""

from __future__ import annotations

import logging
from pathlib import Path

from heterogui.config import DEFAULT_HEADS, DataRef, Recipe, ZipSpec
from heterogui.errors import ConfigError
from heterogui.sources.base import Pair
from heterogui.zip.plan import head_group_firsts

log = logging.getLogger(__name__)
# encoder families: their recipes record the pooling and identity construction (TransformerSpec)
ENCODER_FAMILIES = ("bert", "vit")


def check_transformer_options(family: str) -> None:
    """Refuse transformer options (pooling, identity) for models that have none to set.

    Raises:
        ConfigError: models of another family than a BERT or ViT encoder.
    """
    if family not in ENCODER_FAMILIES:
        raise ConfigError(
            f"recipe.transformer (pooling, identity) sets options of BERT and ViT encoders; "
            f"these models are {family} models, which have none: remove transformer from the "
            "recipe"
        )


def recorded_heads(heads: str, pair: Pair) -> str:
    """Return the heads setting a completed recipe records: the merge's own, or "auto" for
    models without attention heads (where it changes nothing, and re-running the recipe should
    not warn that it does)."""
    return heads if head_group_firsts(pair.a.net.graph()) else DEFAULT_HEADS


def warn_of_idle_knobs(spec: ZipSpec, pair: Pair) -> None:
    """Log a warning when a recipe chooses how attention heads merge for models without any."""
    if spec.heads != DEFAULT_HEADS and not head_group_firsts(pair.a.net.graph()):
        log.warning(
            "zip.heads %r: these %s models have no attention heads, so it changes nothing here",
            spec.heads,
            pair.a.net.family.name,
        )


def warn_if_realigned(recipe: Recipe, done: Recipe, pair: Pair) -> None:
    """Log a warning when a pair's alignment differs from the mapping its recipe recorded."""
    recorded = recipe.alignment.mapping
    if recorded and not pair.more and recorded != done.alignment.mapping:
        log.warning(
            "alignment %s gave %s, not the recipe's mapping %s: mode %s aligns by itself and "
            "only records a mapping; to impose one, give alignment.mode: manual",
            recipe.alignment.mode,
            done.alignment.mapping,
            recipe.alignment.mapping,
            recipe.alignment.mode,
        )


def warn_if_other_versions(recipe: Recipe, done: Recipe) -> None:
    """Warn when a recorded recipe names other library versions than this run's (``done``'s):
    its merge may then differ from the recorded one, in the last digits or more."""
    recorded, now = recipe.versions, done.versions
    differ = sorted(k for k in recorded.keys() & now.keys() if str(recorded[k]) != now[k])
    if differ:
        log.warning(
            "this recipe was recorded with %s, this run has %s: its merge may differ from the "
            "recorded one; install the recorded versions to repeat it exactly",
            ", ".join(f"{k} {recorded[k]}" for k in differ),
            ", ".join(f"{k} {now[k]}" for k in differ),
        )


def reads_calibration(evaluation: DataRef, calibration: DataRef) -> bool:
    """Return whether an evaluation reads the calibration's data (a file has no splits)."""
    if evaluation.source != calibration.source:
        return False
    return evaluation.split == calibration.split or Path(evaluation.source).expanduser().is_file()
