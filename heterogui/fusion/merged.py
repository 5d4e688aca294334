"""The merged model: a merged trunk, then one tail and head per model (method.md B.4).

Blocks ``[0, stop)`` are merged. At the stop point the merged features are unmerged into each
model's own space (x_m = U_m x*) and each model runs its own remaining blocks and head, so the
merged model returns one output per model. ``stop`` = number of non-head blocks is the full
zip (only the heads are separate); ``stop`` = 0 runs the two models side by side.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from heterogui.fusion.fuse import apply_along
from heterogui.models.family import config_from_dict, config_to_dict, family_of

CHANNEL_DIM = {"flat": 1, "channels": 1, "tokens": -1}


@dataclass(frozen=True)
class MergedSpec:
    """What is needed to rebuild a merged model's modules before loading its weights.

    trunk_config: the family config with merged widths (only blocks before ``stop`` are used).
    tail_configs: the (padded) configs of A and B, whose blocks from ``stop`` on are the tails.
    layout: the feature layout at the stop point (None when stop is 0).
    classes: the global class ids of each head's outputs.
    """

    trunk_config: Any
    tail_configs: tuple[Any, Any]
    stop: int
    layout: str | None
    classes: tuple[tuple[int, ...], tuple[int, ...]]

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return {
            "trunk_config": config_to_dict(self.trunk_config),
            "tail_configs": [config_to_dict(c) for c in self.tail_configs],
            "stop": self.stop,
            "layout": self.layout,
            "classes": [list(c) for c in self.classes],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MergedSpec:
        """Rebuild from ``to_dict`` output."""
        return cls(
            config_from_dict(data["trunk_config"]),
            tuple(config_from_dict(c) for c in data["tail_configs"]),
            int(data["stop"]),
            data["layout"],
            tuple(tuple(int(i) for i in c) for c in data["classes"]),
        )


class MergedModel(nn.Module):
    """Run the merged trunk, unmerge at the stop point, run each model's tail.

    forward returns a tuple (output of A's head, output of B's head).
    """

    def __init__(
        self,
        spec: MergedSpec,
        trunk: list[nn.Module],
        tails: tuple[list[nn.Module], list[nn.Module]],
        unmerge: tuple[torch.Tensor, torch.Tensor] | None,
    ):
        super().__init__()
        self.spec = spec
        self.trunk = nn.ModuleList(trunk)
        self.tails = nn.ModuleList([nn.ModuleList(t) for t in tails])
        if unmerge is not None:
            self.register_buffer("unmerge_a", unmerge[0].clone())
            self.register_buffer("unmerge_b", unmerge[1].clone())

    def features(self, x: Any = None, **inputs: torch.Tensor) -> Any:
        """Return the merged state at the stop point.

        x: an input tensor; or keyword inputs (a tokenizer's dict), passed to the first block
        as one dict. The state is a tensor, or a tuple whose first item holds the features
        (transformers: (hidden (B, T, r), attention_mask (B, T))).
        """
        x = inputs if x is None else x
        for block in self.trunk:
            x = block(x)
        return x

    def forward(self, x: Any = None, **inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.features(x, **inputs)
        outs = []
        for m, tail in enumerate(self.tails):
            y = h if self.spec.layout is None else self.unmerge(h, m)
            for block in tail:
                y = block(y)
            outs.append(y)
        return outs[0], outs[1]

    def unmerge(self, state: Any, model: int) -> Any:
        """Map a merged state into model ``model``'s own space (x_m = U_m x*).

        Only the features are mapped: the first item of a tuple state.
        """
        u = self.unmerge_a if model == 0 else self.unmerge_b
        dim = CHANNEL_DIM[self.spec.layout]
        if isinstance(state, tuple):
            return (apply_along(u.to(state[0].dtype), state[0], dim), *state[1:])
        return apply_along(u.to(state.dtype), state, dim)


def build_merged(spec: MergedSpec) -> MergedModel:
    """Return a MergedModel with freshly built modules for ``spec`` (weights to be loaded)."""
    with torch.random.fork_rng(devices=[]):
        trunk = list(family_of(spec.trunk_config).build(spec.trunk_config).blocks)[: spec.stop]
        tails = tuple(list(family_of(c).build(c).blocks)[spec.stop :] for c in spec.tail_configs)
    unmerge = None
    if spec.layout is not None:
        graph = family_of(spec.trunk_config).graph(spec.trunk_config)
        space = graph.block_out[spec.stop - 1]
        r = graph.spaces[space].width
        widths = [family_of(c).graph(c).spaces[space].width for c in spec.tail_configs]
        unmerge = (torch.zeros(widths[0], r), torch.zeros(widths[1], r))
    return MergedModel(spec, trunk, tails, unmerge)
