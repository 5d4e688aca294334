"""Zip settings and the width planner: what width every merge point gets (docs/method.md sec. 7).

``plan_widths`` is the one place that turns settings (rho, per-point overrides, matcher) into
merged widths; the pipeline matches to exactly these widths, and the workbench's size readout
uses them without matching a single neuron.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from fnmatch import fnmatchcase
from numbers import Integral, Real
from typing import Any

from heterogui.config import (
    DEFAULT_FUSION,
    DEFAULT_HEADS,
    DEFAULT_RIDGE,
    SPLIT_HEADS,
    ZipSpec,
    check_split_override,
)
from heterogui.errors import ConfigError, MatcherError
from heterogui.models.graph import INPUT, LOGITS, STREAM, ModelGraph, unshared_spaces
from heterogui.zip.heads import head_group_pairs
from heterogui.zip.matchers import EQUAL_WIDTHS, MATCHERS
from heterogui.zip.stream_width import fit_stream
from heterogui.zip.widths import target_width


@dataclass(frozen=True)
class ZipSettings:
    """Matcher and knobs, global and per merge point.

    overrides: space name -> {"width": int} or any of {"rho", "alpha", "beta", "matcher"}. A
        key with ``*``, ``?`` or ``[`` is a pattern (``fnmatch``: "*.qk" is every attention
        layer's query/key space): its knobs apply to every merge point it matches; patterns
        that give one merge point two values of a knob are refused (``check_override_names``),
        and a merge point's own entry replaces what patterns give it.
    stop: merge blocks before this index (None: every block but the heads).
    fusion: "average" (the paper's W* = M W U), "least_squares" (U replaced by the
        regression of the parents' features on the merged ones: ``fusion.regression``),
        "least_squares_heads" (that, then the heads' unmerge refit on the merge's own state:
        ``fusion.sequential.refit_tails``), "least_squares_sequential" (that regression refit
        block by block on the merge's own inputs, the heads' unmerge too) or "auto": the
        models' family's default (``resolved``), which a merge records.
    ridge: the least-squares ridge, relative to the merged features' mean variance.
    renormalize: after fusion, rescale the merged features that a per-feature affine module
        writes (norms, value projections) to their groups' average mean and spread
        (``fusion.renormalize``; for models without BatchNorm).
    heads: how attention layers reach their width: "auto" (the family's default, which
        ``resolved`` fills in), "pair" (the paper's: a head of A and one
        of B averaged), "select" (each merged pair's stronger head kept whole in place of
        their average: ``zip.select``), "search" (the kept heads chosen on the calibration
        data: ``head_search``) or "split" (every head of both kept, each halved after fusion:
        ``fusion.split_heads``; global only). Also an override knob of a head group's first
        space.
    kept_heads: head group (its first space) -> per unit of A's heads, 1 to keep A's head in
        its merged pair, 0 to keep B's (-1: not in a pair). Set by the search, which records
        its choice here; groups without an entry select by output energy.
    bn_units: fuse the layers that feed a BatchNorm in that BatchNorm's units
        (``fusion.bn_units``; the paper fuses them as they are).
    norm_weights: weigh each merged feature of a residual stream that RMSNorms read by the
        features of each model it stands for (``fusion.norm_weights``; the paper's norms
        weigh every merged feature alike).
    """

    matcher: str = "zip"
    alpha: float = 0.5
    beta: float = 1.0
    rho: float = 1.0
    overrides: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    stop: int | None = None
    fusion: str = DEFAULT_FUSION
    ridge: float = DEFAULT_RIDGE
    renormalize: bool = False
    heads: str = DEFAULT_HEADS
    kept_heads: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    bn_units: bool = True
    norm_weights: bool = True

    def resolved(
        self, default_fusion: str, default_heads: str = "pair", attention: Sequence[str] = ()
    ) -> ZipSettings:
        """Return these settings with fusion and heads "auto" replaced by what a merge uses.

        default_fusion, default_heads: the family's (``models.family.Family``), for the zip
        matchers; the one-to-one baselines (permute, weight average) keep the paper's: the
        average, not in BatchNorm units, and paired heads. Heads chosen per layer (a "heads"
        override) make "auto" the paper's "pair" too, which they then override. So do an
        override that sizes attention layers (a rho, width or matcher for merge points of
        ``attention``, the models' attention spaces: ``{"*.qk": {"rho": 0}}`` keeps every
        head whole, which a split would halve) and a setting that merges nothing (rho 0, no
        override that merges): every head is then kept whole, where a split would halve each.
        """
        settings = self
        if self.heads == DEFAULT_HEADS:
            per_layer = any("heads" in knobs for knobs in self.overrides.values())
            paper = self.matcher in EQUAL_WIDTHS or per_layer or self.merges_nothing
            paper = paper or self.sizes_attention(attention)
            settings = replace(settings, heads="pair" if paper else default_heads)
        if self.fusion == "auto" and self.matcher in EQUAL_WIDTHS:
            settings = replace(settings, fusion="average", bn_units=False)
        elif self.fusion == "auto":
            settings = replace(settings, fusion=default_fusion)
        return settings

    @property
    def merges_nothing(self) -> bool:
        """Return whether every merge point keeps all its features (rho 0, no override that
        sets another rho, a width or a one-to-one matcher)."""
        return self.rho == 0 and not any(
            k.get("rho") or k.get("width") is not None or k.get("matcher") in EQUAL_WIDTHS
            for k in self.overrides.values()
        )

    def sizes_attention(self, attention: Sequence[str]) -> bool:
        """Return whether an override sets a rho, width or matcher for a merge point of
        ``attention`` (names; a name's layer number aside, so that a padded model's layers
        count too)."""
        shapes = {_layer_shape(n) for n in attention}
        return any(
            {"rho", "width", "matcher"} & set(knobs)
            and (
                any(fnmatchcase(n, key) for n in attention)
                if is_pattern(key)
                else _layer_shape(key) in shapes
            )
            for key, knobs in self.overrides.items()
        )

    def for_space(self, space: str) -> dict[str, Any]:
        """Return the knobs that apply to ``space``."""
        knobs = {
            "matcher": self.matcher,
            "alpha": self.alpha,
            "beta": self.beta,
            "rho": self.rho,
            "width": None,
            "heads": self.heads,
        }
        knobs.update(self.override_for(space))
        return knobs

    def override_for(self, space: str) -> dict[str, Any]:
        """Return the override knobs of ``space``: its own entry, else its patterns' (merged)."""
        if space in self.overrides:
            return dict(self.overrides[space])
        knobs: dict[str, Any] = {}
        for key, values in self.overrides.items():
            if is_pattern(key) and fnmatchcase(space, key):
                knobs.update(values)
        return knobs


def family_settings(
    settings: ZipSettings | None, family: Any, models: int = 2, graph: ModelGraph | None = None
) -> ZipSettings:
    """Return the settings a merge of ``models`` models of ``family`` runs ("auto" resolved).

    family: a ``models.family.Family``. Merges of more than two models pair heads (the
    N-way matching's only way) when the settings leave it to the family. graph: one of the
    models' (its attention spaces: ``ZipSettings.resolved``; None: no override counts as
    sizing attention).
    """
    heads = family.default_heads if models == 2 else "pair"
    attention = [n for n, s in graph.spaces.items() if s.head_dim] if graph is not None else []
    return (settings or ZipSettings()).resolved(family.default_fusion, heads, attention)


def _layer_shape(name: str) -> str:
    """Return a merge point's name with its layer numbers made one ("layer3.qk": "layer#.qk")."""
    return re.sub(r"\d+", "#", name)


def is_pattern(key: str) -> bool:
    """Return whether an override key is a pattern of merge point names, not a name."""
    return any(c in key for c in "*?[")


def planned_width(matcher: str, n_a: int, n_b: int, rho: float, width: int | None) -> int:
    """Return the merged width a matcher gives: ``width`` when set, else from rho.

    One-to-one matchers (EQUAL_WIDTHS) always give n_A.

    Raises:
        MatcherError: an unknown matcher.
    """
    if matcher not in MATCHERS:
        raise MatcherError(f"unknown matcher {matcher!r}; use one of {sorted(MATCHERS)}")
    if width is not None:
        return int(width)
    return n_a if matcher in EQUAL_WIDTHS else target_width(n_a, n_b, rho)


def stop_point(graph: ModelGraph, settings: ZipSettings) -> int:
    """Return the block index the trunk merges up to (the settings' stop, or the full zip).

    Raises:
        ConfigError: a stop point out of range.
    """
    n_blocks = graph.num_blocks - 1
    stop = n_blocks if settings.stop is None else settings.stop
    if not 0 <= stop <= n_blocks:
        raise ConfigError(
            f"stop point {stop} is out of range: use 0..{n_blocks} "
            f"({n_blocks} = merge every block but the heads)"
        )
    return stop


def trunk_spaces(graph: ModelGraph, stop: int) -> list[str]:
    """Return the merge points a trunk of ``stop`` blocks uses (sorted; the input excluded)."""
    return sorted({a.space for t in graph.tensors if t.block < stop for a in t.axes} - {INPUT})


def head_group(graph: ModelGraph, space: str) -> list[str]:
    """Return the spaces that share ``space``'s head pairing, by name (itself alone outside a
    head group)."""
    group = graph.spaces[space].group or space
    return sorted(n for n, s in graph.spaces.items() if (s.group or n) == group)


def head_group_first(graph: ModelGraph, space: str) -> str:
    """Return the space whose knobs a head group uses: its first member by name."""
    return head_group(graph, space)[0]


def head_group_firsts(graph: ModelGraph) -> list[str]:
    """Return the space that takes the knobs of each attention layer's heads, in graph order."""
    firsts = (head_group_first(graph, n) for n, s in graph.spaces.items() if s.head_dim)
    return list(dict.fromkeys(firsts))


def override_spaces(graph: ModelGraph, others: Sequence[ModelGraph] = ()) -> list[str]:
    """Return the merge points that take an override, in graph order.

    Of an attention layer only its head group's first space does (it applies to the whole
    layer: the spaces of one layer share one head pairing). others: the other models' padded
    graphs; a merge point that only one model uses takes none (``unshared_spaces``).
    """
    alone = unshared_spaces([graph, *others]) if others else set(graph.dead)
    return [
        n
        for n, s in graph.spaces.items()
        if n not in (INPUT, LOGITS)
        and n not in alone
        and (not s.head_dim or head_group_first(graph, n) == n)
    ]


def check_override_names(
    graph: ModelGraph, settings: ZipSettings, others: Sequence[ModelGraph] = ()
) -> None:
    """Raise if the settings' overrides name merge points ``graph`` does not have, or that only
    one model uses (``others``: the other models' padded graphs).

    A pattern must match a merge point that takes overrides (of an attention layer, the head
    group's first space).

    Raises:
        ConfigError: naming the unknown merge points (or the patterns that match none) and the
            known ones.
    """
    names = [k for k in settings.overrides if not is_pattern(k)]
    takers = override_spaces(graph, others)
    # the model's input and its logits are never merged: an override there would do nothing
    unknown = {n for n in names if n not in graph.spaces or n in (INPUT, LOGITS)}
    empty = [
        k
        for k in settings.overrides
        if is_pattern(k) and not any(fnmatchcase(n, k) for n in takers)
    ]
    if unknown:
        raise ConfigError(
            f"overrides name unknown merge points {sorted(unknown)}; those that take an "
            f"override: {takers} (the logits are never merged)"
        )
    alone = sorted(set(names) & unshared_spaces([graph, *others])) if others else []
    if alone:
        raise ConfigError(
            f"overrides name merge points that only one model uses {alone} (the others have "
            "an identity block there, from depth padding): their features are kept, nothing "
            f"is zipped; remove them (merge points that take an override: {takers})"
        )
    if empty:
        raise ConfigError(
            f"override patterns {empty} match no merge point that takes an override; "
            f"known: {takers}"
        )
    for space in takers:
        if space not in settings.overrides:
            _check_patterns_agree(space, settings.overrides)


def _check_patterns_agree(space: str, overrides: Mapping[str, Mapping[str, Any]]) -> None:
    """Raise if the patterns matching ``space`` give it two values of one knob, or a rho and a
    width: which one won would hang on the order of the keys, and recipes store them sorted.

    Raises:
        ConfigError: naming the two patterns, the knob and the fix.
    """
    given: dict[str, tuple[str, Any]] = {}
    for key, values in overrides.items():
        if not (is_pattern(key) and fnmatchcase(space, key)):
            continue
        for knob, value in values.items():
            first, said = given.setdefault(knob, (key, value))
            if said != value:
                raise ConfigError(
                    f"override patterns {first!r} and {key!r} both match merge point {space} "
                    f"and set its {knob} to {said} and {value}; give {space} its own entry"
                )
    if "rho" in given and "width" in given:
        raise ConfigError(
            f"override patterns {given['rho'][0]!r} and {given['width'][0]!r} both match merge "
            f"point {space}, one with a rho and one with a width; give {space} its own entry"
        )


def check_split_knobs(graph: ModelGraph, settings: ZipSettings) -> None:
    """Raise if overrides ask an attention layer for what ``heads: split`` cannot give.

    A split merge keeps every head of both models at half its size, one head size for the
    whole merged model: heads are split everywhere or nowhere, and a split layer's width is
    set by its heads, not by a width.

    Raises:
        ConfigError: a heads override with or without a global split, or a width override
            of a split attention layer.
    """
    for first in head_group_firsts(graph):
        knobs = settings.override_for(first)
        check_split_override(first, settings.heads, knobs.get("heads"))
        if settings.heads == SPLIT_HEADS and knobs.get("width") is not None:
            raise ConfigError(
                f"{first}: a width override with heads split, which keeps every head of "
                "both models at half its size (the width follows); remove the width or use "
                "heads pair"
            )


def plan_widths(
    graph_a: ModelGraph, graph_b: ModelGraph, settings: ZipSettings, stop: int
) -> dict[str, tuple[int, int, int]]:
    """Return (n_A, n_B, merged width) of every merge point of a trunk of ``stop`` blocks.

    Dead spaces (unused inner layers of identity blocks) keep the other model's width; attention
    spaces merge whole heads with the knobs of their head group's first space, or keep every
    head with heads "split" (whose heads are halved after fusion: ``fusion.split_heads``); a
    transformer's stream gets the nearest width its transformers config holds
    (``zip.stream_width``).

    Raises:
        ConfigError: overrides of unknown merge points, a width outside 1..n_A + n_B, or
            knobs a split cannot follow (``check_split_knobs``).
        MatcherError: an unknown matcher, or an attention width that is not whole heads.
    """
    check_override_names(graph_a, settings, [graph_b])
    for space in (k for k in settings.overrides if not is_pattern(k)):
        first = head_group_first(graph_a, space) if graph_a.spaces[space].head_dim else space
        if first != space:
            raise ConfigError(
                f"{space} shares its head pairing with {first}: set the override on {first} "
                "(it applies to the whole attention layer)"
            )
    check_split_knobs(graph_a, settings)
    plan = {}
    for space in trunk_spaces(graph_a, stop):
        n_a, n_b = graph_a.spaces[space].width, graph_b.spaces[space].width
        if space in graph_a.dead or space in graph_b.dead:
            plan[space] = (n_a, n_b, n_b if space in graph_a.dead else n_a)
            continue
        unit = graph_a.spaces[space].unit
        first = head_group_first(graph_a, space) if unit else space
        knobs = settings.for_space(first)
        width = knobs["width"]
        f_a, f_b = graph_a.spaces[first].width, graph_b.spaces[first].width
        if width is not None and not (isinstance(width, int) and 1 <= width <= f_a + f_b):
            raise ConfigError(
                f"width {width} at {first} is out of range: use an integer from 1 to "
                f"{f_a + f_b} (n_A + n_B), or leave the width out to follow rho"
            )
        if unit and settings.heads == SPLIT_HEADS:  # every head kept (halved after fusion)
            r = n_a + n_b
        elif unit:
            first_unit = graph_a.spaces[first].unit
            pairs = head_group_pairs(f_a, f_b, first_unit, knobs["matcher"], knobs["rho"], width)
            r = n_a + n_b - pairs * unit
        else:
            r = planned_width(knobs["matcher"], n_a, n_b, knobs["rho"], width)
        plan[space] = (n_a, n_b, r)
    # a transformer's stream: a width its own config holds (``zip.stream_width``)
    fit_stream(plan, graph_a, settings.for_space(STREAM), settings.heads == SPLIT_HEADS)
    return plan


__all__ = ["MatcherError", "ZipSettings", "plan_widths", "stop_point", "trunk_spaces"]


def checked_settings(settings: Any) -> ZipSettings | None:
    """Return ``settings`` (None or ZipSettings) after the checks a recipe's zip gets.

    Raises:
        ConfigError: another type, or a knob a recipe would refuse (named as a recipe names it).
    """
    if settings is None:
        return None
    if not isinstance(settings, ZipSettings):
        got = type(settings).__name__
        raise ConfigError(
            f"settings must be a heterogui.pipeline.ZipSettings, got a {got}; "
            "build one: ZipSettings(rho=0.5, ...)"
        )
    for name in ("alpha", "beta", "rho", "ridge"):
        value = getattr(settings, name)
        if isinstance(value, bool) or not isinstance(value, Real):  # numpy scalars too
            raise ConfigError(f"settings.{name} = {value!r} must be a number")
    for name in ("renormalize", "bn_units", "norm_weights"):
        if not isinstance(getattr(settings, name), bool):
            raise ConfigError(
                f"settings.{name} = {getattr(settings, name)!r} must be True or False"
            )
    stop = settings.stop
    if stop is not None and (isinstance(stop, bool) or not isinstance(stop, Integral) or stop < 0):
        raise ConfigError(f"settings.stop = {stop!r} must be a whole number from 0, or None")
    ZipSpec(  # the recipe's checks: matcher, ranges, fusion, heads, every override's keys
        matcher=settings.matcher,
        alpha=settings.alpha,
        beta=settings.beta,
        rho=settings.rho,
        overrides={
            k: dict(v) if isinstance(v, Mapping) else v for k, v in settings.overrides.items()
        },
        fusion=settings.fusion,
        ridge=settings.ridge,
        renormalize=settings.renormalize,
        heads=settings.heads,
        bn_units=settings.bn_units,
        norm_weights=settings.norm_weights,
    )
    return settings
