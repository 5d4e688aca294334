"""Whether two models can merge: one family, the same stages, the same inputs."""

from __future__ import annotations

from typing import Any

from heterogui.align.alignment import check_stages
from heterogui.errors import IncompatibleModelsError
from heterogui.models.family import Network, family_of
from heterogui.models.graph import INPUT


def pair_reasons(config_a: Any, config_b: Any) -> list[str]:
    """Return one reason per property that keeps two family configs from merging (none: ok).

    Reads the configs only (no weights): the pre-flight and ``check_pair`` share it.
    """
    fam_a, fam_b = family_of(config_a), family_of(config_b)
    if fam_a.name != fam_b.name:
        return [
            f"model A is a {fam_a.name} and model B a {fam_b.name}; heterogui merges models of "
            "one family: pick two models of the same family"
        ]
    ga, gb = fam_a.graph(config_a), fam_b.graph(config_b)
    bare = [name for name, g in (("A", ga), ("B", gb)) if g.num_blocks < 2]
    if bare:  # a lone head (a linear classifier): no layer whose neurons could be merged
        return [
            f"model {' and '.join(bare)} has no layer before its head, so nothing to merge; "
            "give models with at least one hidden layer"
        ]
    reasons = []
    try:
        check_stages(ga, gb)
    except IncompatibleModelsError as exc:
        reasons.append(str(exc))
    reasons += fam_a.check_pair(config_a, config_b) if fam_a.check_pair else []
    if ga.spaces[INPUT].width != gb.spaces[INPUT].width:
        reasons.append(
            f"model A reads inputs of width {ga.spaces[INPUT].width} and model B of width "
            f"{gb.spaces[INPUT].width}; both models must take the same inputs"
        )
    return reasons


def check_pair(net_a: Network, net_b: Network) -> None:
    """Raise if the two networks cannot be merged.

    Raises:
        IncompatibleModelsError: different families, stages, or input widths.
    """
    reasons = pair_reasons(net_a.config, net_b.config)
    if reasons:
        raise IncompatibleModelsError("; ".join(reasons))
