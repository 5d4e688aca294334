"""The merge pipeline, stage by stage (method.md section 0).

``prepare`` runs the models (BN re-estimation, CKA pass, alignment, padding, feature pass) and
keeps everything a re-merge needs; ``zip_prepared`` re-merges from those statistics without
running A or B again, which is what the workbench calls when a slider moves.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

import torch

from heterogui.align.alignment import Alignment, align, check_stages
from heterogui.align.pad import copy_network, pad_network
from heterogui.align.similarity import layer_similarity
from heterogui.errors import ConfigError, IncompatibleModelsError
from heterogui.fusion.bn import has_batch_norm, reestimate_batch_norm
from heterogui.fusion.fuse import SpaceTransform, fuse_state
from heterogui.fusion.merged import MergedModel, MergedSpec, build_merged
from heterogui.fusion.pinning import pinned_channels
from heterogui.models.capture import Batch
from heterogui.models.family import Network
from heterogui.models.graph import INPUT
from heterogui.zip.collect import StatKey, collect_moments, pooled_moments
from heterogui.zip.heads import match_head_group
from heterogui.zip.matchers import MATCHERS, Match, keep_one_match, target_width
from heterogui.zip.stats import Moments

log = logging.getLogger(__name__)
Progress = Callable[[str, float], None]
PREPARE_ONLY_STAGES = ("bn_inputs", "similarity")


@dataclass(frozen=True)
class ZipSettings:
    """Matcher and knobs, global and per merge point.

    overrides: space name -> {"width": int} or any of {"rho", "alpha", "beta", "matcher"}.
    stop: merge blocks before this index (None: every block but the heads).
    """

    matcher: str = "zip"
    alpha: float = 0.5
    beta: float = 1.0
    rho: float = 1.0
    overrides: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    stop: int | None = None

    def for_space(self, space: str) -> dict[str, Any]:
        """Return the knobs that apply to ``space``."""
        knobs = {
            "matcher": self.matcher,
            "alpha": self.alpha,
            "beta": self.beta,
            "rho": self.rho,
            "width": None,
        }
        knobs.update(self.overrides.get(space, {}))
        return knobs


@dataclass
class Prepared:
    """What steps 1-3 produce; everything a re-merge needs."""

    net_a: Network
    net_b: Network
    similarity: torch.Tensor | None
    alignment: Alignment
    padded_a: Network
    padded_b: Network
    stats: dict[StatKey, Moments]
    batches: list[Batch]
    device: torch.device
    timings: dict[str, float] = field(default_factory=dict)


@dataclass
class MergeResult:
    """The merged model with everything that explains it."""

    model: MergedModel
    spec: MergedSpec
    alignment: Alignment
    matches: dict[str, Match]
    transforms: dict[str, SpaceTransform]
    prepared: Prepared
    settings: ZipSettings
    timings: dict[str, float] = field(default_factory=dict)

    def widths(self) -> dict[str, tuple[int, int, int]]:
        """Return (n_A, n_B, merged width) for every merge point."""
        return {s: (m.n_a, m.n_b, m.width) for s, m in self.matches.items()}


def resolve_device(device: str | torch.device) -> torch.device:
    """Return a torch device; "auto" is CUDA when present, else CPU.

    Raises:
        ConfigError: if CUDA is asked for and not available.
    """
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} asked for, but CUDA is not available: use cpu/auto")
    return dev


def check_pair(net_a: Network, net_b: Network) -> None:
    """Raise if the two networks cannot be merged.

    Raises:
        IncompatibleModelsError: different families, stages, or input widths.
    """
    if net_a.family.name != net_b.family.name:
        raise IncompatibleModelsError(
            f"model A is a {net_a.family.name} and model B a {net_b.family.name}; heterogui "
            "merges models of one family: pick two models of the same family"
        )
    ga, gb = net_a.graph(), net_b.graph()
    check_stages(ga, gb)
    family_check = net_a.family.check_pair
    reasons = family_check(net_a.config, net_b.config) if family_check else []
    if reasons:
        raise IncompatibleModelsError("; ".join(reasons))
    if ga.spaces[INPUT].width != gb.spaces[INPUT].width:
        raise IncompatibleModelsError(
            f"model A reads inputs of width {ga.spaces[INPUT].width} and model B of width "
            f"{gb.spaces[INPUT].width}; both models must take the same inputs"
        )


def _timed(timings: dict[str, float], name: str, fn: Callable[[], Any]) -> Any:
    start = time.perf_counter()
    out = fn()
    timings[name] = timings.get(name, 0.0) + time.perf_counter() - start
    return out


def prepare(
    net_a: Network,
    net_b: Network,
    batches: list[Batch],
    *,
    mode: str = "sma",
    manual: dict[str, list[list[int]]] | None = None,
    device: str | torch.device = "auto",
    reset_input_bn: bool = True,
    progress: Progress | None = None,
) -> Prepared:
    """Run steps 1-3: BN re-estimation of A and B, CKA, alignment, padding, feature pass.

    The caller's models are not modified (copies are moved to ``device``).

    Raises:
        IncompatibleModelsError, AlignmentError, ConfigError: see ``check_pair`` and ``align``.
    """
    check_pair(net_a, net_b)
    dev = resolve_device(device)
    report = progress or (lambda _stage, _frac: None)
    timings: dict[str, float] = {}
    nets = []
    for net in (net_a, net_b):
        net = copy_network(net)
        net.module.to(dev).eval()
        if reset_input_bn and has_batch_norm(net.module):
            _timed(
                timings,
                "bn_inputs",
                lambda n=net: reestimate_batch_norm(
                    n.module, batches, dev, progress=lambda f: report("bn_inputs", f)
                ),
            )
        nets.append(net)
    similarity = _timed(
        timings,
        "similarity",
        lambda: layer_similarity(
            nets[0], nets[1], batches, dev, progress=lambda f: report("similarity", f)
        ),
    )
    prepared = Prepared(nets[0], nets[1], similarity, None, None, None, {}, batches, dev, timings)
    return realign(prepared, mode, manual, progress)


def realign(
    prepared: Prepared,
    mode: str,
    manual: dict[str, list[list[int]]] | None = None,
    progress: Progress | None = None,
) -> Prepared:
    """Return ``prepared`` with a new alignment: re-pad and re-run the feature pass."""
    report = progress or (lambda _stage, _frac: None)
    # keep the timings of the passes realign does not repeat; its own stages start afresh
    timings = {k: v for k, v in prepared.timings.items() if k in PREPARE_ONLY_STAGES}
    alignment = _timed(
        timings,
        "alignment",
        lambda: align(
            prepared.net_a.graph(), prepared.net_b.graph(), prepared.similarity, mode, manual
        ),
    )
    padded_a, padded_b = (
        _timed(
            timings,
            "padding",
            partial(_pad, net, pos, alignment.depths, prepared.batches, prepared.device),
        )
        for net, pos in zip(
            (prepared.net_a, prepared.net_b),
            (alignment.positions_a, alignment.positions_b),
            strict=True,
        )
    )
    stats = _timed(
        timings,
        "features",
        lambda: collect_moments(
            padded_a,
            padded_b,
            prepared.batches,
            prepared.device,
            progress=lambda f: report("features", f),
        ),
    )
    return replace(
        prepared,
        alignment=alignment,
        padded_a=padded_a,
        padded_b=padded_b,
        stats=stats,
        timings=timings,
    )


def _pad(
    net: Network,
    positions: tuple[tuple[int, ...], ...],
    depths: tuple[int, ...],
    batches: list[Batch],
    device: torch.device,
) -> Network:
    """Pad ``net`` to ``depths``; let the family finish its new identity blocks if it needs to."""
    padded = pad_network(net, positions, depths)
    new_blocks = sorted(padded.identity_blocks - net.identity_blocks)
    if padded is not net and new_blocks and padded.family.fit_identity is not None:
        padded.family.fit_identity(padded, new_blocks, batches, device)
    return padded


def _match_head_groups(
    prepared: Prepared, settings: ZipSettings, stop: int, names: list[str]
) -> dict[str, Match]:
    """Match the attention spaces ``names`` of one head group with a shared head pairing.

    The knobs are those of the group's first space (sorted by name).
    """
    ga, gb = prepared.padded_a.graph(), prepared.padded_b.graph()
    first = ga.spaces[names[0]]
    knobs = settings.for_space(names[0])
    corrs = {n: pooled_moments(prepared.stats, ga, n, stop).corr() for n in names}
    return match_head_group(
        corrs,
        first.width,
        gb.spaces[names[0]].width,
        first.head_dim,
        matcher=knobs["matcher"],
        rho=knobs["rho"],
        width=knobs["width"],
    )


def match_spaces(prepared: Prepared, settings: ZipSettings, stop: int) -> dict[str, Match]:
    """Return the matching of every merge point that a trunk of ``stop`` blocks uses."""
    ga, gb = prepared.padded_a.graph(), prepared.padded_b.graph()
    spaces = sorted({a.space for t in ga.tensors if t.block < stop for a in t.axes} - {INPUT})
    unknown = set(settings.overrides) - set(ga.spaces)
    if unknown:
        raise ConfigError(
            f"overrides name unknown merge points {sorted(unknown)}; "
            f"known: {sorted(set(ga.spaces) - {INPUT})}"
        )
    matches = {}
    head_groups: dict[str, list[str]] = {}
    for space in spaces:
        n_a, n_b = ga.spaces[space].width, gb.spaces[space].width
        if space in ga.dead or space in gb.dead:
            matches[space] = keep_one_match(n_a, n_b, "b" if space in ga.dead else "a")
            continue
        if ga.spaces[space].head_dim:
            head_groups.setdefault(ga.spaces[space].group or space, []).append(space)
            continue
        knobs = settings.for_space(space)
        if knobs["matcher"] not in MATCHERS:
            raise ConfigError(f"unknown matcher {knobs['matcher']!r}; known: {sorted(MATCHERS)}")
        width = (
            knobs["width"] if knobs["width"] is not None else target_width(n_a, n_b, knobs["rho"])
        )
        if knobs["matcher"] in ("permute", "average"):
            width = knobs["width"]
        corr = pooled_moments(prepared.stats, ga, space, stop).corr()
        matches[space] = MATCHERS[knobs["matcher"]](
            corr, n_a, n_b, width=width, alpha=knobs["alpha"], beta=knobs["beta"]
        )
    for names in head_groups.values():
        matches.update(_match_head_groups(prepared, settings, stop, names))
    return matches


def zip_prepared(
    prepared: Prepared,
    settings: ZipSettings = ZipSettings(),
    dtype: torch.dtype = torch.float32,
    progress: Progress | None = None,
) -> MergeResult:
    """Run steps 4-6 from cached statistics: match, fuse, build, re-estimate BatchNorm.

    Raises:
        ConfigError: stop point out of range, unknown matcher or override.
        MatcherError: widths or knobs a matcher cannot handle.
    """
    report = progress or (lambda _stage, _frac: None)
    timings: dict[str, float] = {}
    pa, pb = prepared.padded_a, prepared.padded_b
    ga = pa.graph()
    n_blocks = ga.num_blocks - 1
    stop = n_blocks if settings.stop is None else settings.stop
    if not 0 <= stop <= n_blocks:
        raise ConfigError(
            f"stop point {stop} is out of range: use 0..{n_blocks} "
            f"({n_blocks} = merge every block but the heads)"
        )
    matches = _timed(timings, "match", lambda: match_spaces(prepared, settings, stop))
    report("match", 1.0)
    dev = prepared.device
    transforms = {s: SpaceTransform.from_match(m, dtype, dev) for s, m in matches.items()}
    model, spec = _timed(
        timings, "fuse", lambda: assemble(pa, pb, matches, transforms, stop, dtype)
    )
    pinned = pinned_channels(model, pa, pb, matches, stop)
    _timed(
        timings,
        "bn_merged",
        lambda: reestimate_batch_norm(
            model, prepared.batches, dev, pinned, progress=lambda f: report("bn_merged", f)
        ),
    )
    model.eval()
    return MergeResult(
        model, spec, prepared.alignment, matches, transforms, prepared, settings, timings
    )


def assemble(
    pa: Network,
    pb: Network,
    matches: dict[str, Match],
    transforms: dict[str, SpaceTransform],
    stop: int,
    dtype: torch.dtype,
) -> tuple[MergedModel, MergedSpec]:
    """Return the merged model: fused trunk weights, the tails, the unmerge at the stop point."""
    ga = pa.graph()
    widths = {s: m.width for s, m in matches.items()}
    trunk_config = pa.family.resize(pa.config, widths)
    boundary = ga.block_out[stop - 1] if stop > 0 else None
    layout = ga.spaces[boundary].captures[0].layout if boundary else None
    spec = MergedSpec(
        trunk_config, (pa.config, pb.config), stop, layout, (pa.head_classes(), pb.head_classes())
    )
    model = build_merged(spec).to(device=transforms_device(transforms, pa), dtype=dtype)
    state_a, state_b = pa.module.state_dict(), pb.module.state_dict()
    fused = fuse_state(ga.tensors, state_a, state_b, transforms, stop)
    state = {f"trunk.{k[len('blocks.') :]}": v for k, v in fused.items()}
    for m, st in enumerate((state_a, state_b)):
        for key, value in st.items():
            block, rest = key.split(".", 2)[1:]
            if int(block) >= stop:
                state[f"tails.{m}.{int(block) - stop}.{rest}"] = value
    if boundary:
        state["unmerge_a"], state["unmerge_b"] = transforms[boundary].unmerge
    missing, unexpected = model.load_state_dict(state, strict=False)
    stray = [k for k in missing if not k.endswith("num_batches_tracked")]
    if stray or unexpected:
        raise AssertionError(f"merged state mismatch: missing {stray}, unexpected {unexpected}")
    return model, spec


def transforms_device(transforms: dict[str, SpaceTransform], net: Network) -> torch.device:
    """Return the device the merged model is built on (that of the inputs)."""
    return next(net.module.parameters()).device
