"""The merged model: a merged trunk, then one tail and head per model (docs/method.md sec. 10).

Blocks ``[0, stop)`` are merged. At the stop point the merged features are unmerged into each
model's own space (x_m = U_m x*) and each model runs its own remaining blocks and head, so the
merged model returns one output per model. ``stop`` = number of non-head blocks is the full
zip (only the heads are separate); ``stop`` = 0 runs the two models side by side.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from heterogui.errors import ModelLoadError, excerpt
from heterogui.fusion.fuse import SpaceTransform, apply_along, fuse_tensor
from heterogui.models.conv import channels_last_weights
from heterogui.models.family import (
    Head,
    Network,
    config_from_dict,
    config_to_dict,
    family_of,
)
from heterogui.models.graph import LOGITS
from heterogui.models.storage import allocate, on_meta

CHANNEL_DIM = {"flat": 1, "channels": 1, "tokens": -1}


@dataclass(frozen=True)
class MergedSpec:
    """What is needed to rebuild a merged model's modules before loading its weights.

    trunk_config: the family config with merged widths (only blocks before ``stop`` are used).
    tail_configs: the (padded) configs of A and B (and of more models: an N-way zip), whose
        blocks from ``stop`` on are the tails.
    layout: the feature layout at the stop point (None when stop is 0).
    heads: the task heads of each model's tail (each tail's outputs, cut into tasks).
    """

    trunk_config: Any
    tail_configs: tuple[Any, ...]
    stop: int
    layout: str | None
    heads: tuple[tuple[Head, ...], ...]

    @property
    def classes(self) -> tuple[tuple[int, ...], ...]:
        """Return the global class ids of each tail's outputs (all its heads, in order)."""
        return tuple(tuple(c for h in heads for c in h.classes) for heads in self.heads)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return {
            "trunk_config": config_to_dict(self.trunk_config),
            "tail_configs": [config_to_dict(c) for c in self.tail_configs],
            "stop": self.stop,
            "layout": self.layout,
            "classes": [list(c) for c in self.classes],
            "heads": [[h.to_dict() for h in heads] for heads in self.heads],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MergedSpec:
        """Rebuild from ``to_dict`` output (folders without ``heads``: one head per model)."""
        if data.get("heads"):
            heads = tuple(tuple(Head.from_dict(h) for h in hs) for hs in data["heads"])
        else:
            heads = tuple(
                (Head(name, tuple(int(i) for i in c)),)
                for name, c in zip("AB", data["classes"], strict=True)
            )
        stop, layout = data["stop"], data["layout"]
        if isinstance(stop, bool) or not isinstance(stop, int) or stop < 0:
            raise ValueError(f"stop {excerpt(repr(stop), 30)} is not a block number from 0")
        if layout is not None and layout not in CHANNEL_DIM:
            raise ValueError(f"layout {excerpt(repr(layout), 30)} is none of {sorted(CHANNEL_DIM)}")
        return cls(
            config_from_dict(data["trunk_config"]),
            tuple(config_from_dict(c) for c in data["tail_configs"]),
            stop,
            layout,
            heads,
        )


class MergedModel(nn.Module):
    """Run the merged trunk, unmerge at the stop point, run each model's tail.

    forward returns a tuple (output of A's head, output of B's head, ...): one per model.
    The unmerge matrices are the buffers ``unmerge_a``, ``unmerge_b``, ``unmerge_c``, ...
    """

    def __init__(
        self,
        spec: MergedSpec,
        trunk: list[nn.Module],
        tails: tuple[list[nn.Module], ...],
        unmerge: tuple[torch.Tensor, ...] | None,
    ):
        super().__init__()
        self.spec = spec
        self.trunk = nn.ModuleList(trunk)
        self.tails = nn.ModuleList([nn.ModuleList(t) for t in tails])
        if unmerge is not None:
            for m, u in enumerate(unmerge):
                self.register_buffer(unmerge_name(m), u.clone())

    def features(self, x: Any = None, **inputs: torch.Tensor) -> Any:
        """Return the merged state at the stop point.

        x: an input tensor; or keyword inputs (a tokenizer's dict), passed to the first block
        as one dict. The state is a tensor, or a tuple whose first item holds the features
        (transformers: (hidden (B, T, r), attention_mask (B, T))).
        """
        x = self.in_own_dtype(inputs if x is None else x)
        for block in self.trunk:
            x = block(x)
        return x

    def in_own_dtype(self, x: Any) -> Any:
        """Return inputs (a tensor or a dict of them) with floating-point tensors in the dtype
        of the merge's weights: a float64 merge reads float32 images as its parents did."""
        weight = next((p for p in self.parameters() if p.is_floating_point()), None)
        return x if weight is None else _in_dtype(x, weight.dtype)

    def forward(self, x: Any = None, **inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.heads(self.features(x, **inputs))

    def heads(self, state: Any, last_position: bool = False) -> tuple[torch.Tensor, ...]:
        """Return every model's output from the merged state at the stop point (``features``):
        unmerged into the model's space, then through its tail.

        last_position: each tail's final block (a language model's head, which reads (B, T, H))
        reads the last position only, as a generation step needs: (B, 1, vocab) logits.
        """
        outs = []
        for m, tail in enumerate(self.tails):
            y = state if self.spec.layout is None else self.unmerge(state, m)
            blocks = list(tail)
            for k, block in enumerate(blocks):
                y = block(y[:, -1:] if last_position and k == len(blocks) - 1 else y)
            outs.append(y)
        return tuple(outs)

    def shared_head(self) -> torch.Tensor | None:
        """Return the tails' heads folded into one weight, mean_m W_m U_m, (outputs, r), or None.

        For a full zip whose heads predict the same outputs with one bias-free weight each (a
        language model's head over the vocabulary): the mean of the tails' outputs is then this
        weight applied to the merged state, one product of r columns instead of one per tail
        (n_A + n_B columns, and the unmerges); the head ``as_network`` (and so the export)
        holds, to the bit. None for a partial zip, heads with more tensors, or other outputs.
        """
        if self.spec.layout is None or not family_of(self.spec.trunk_config).shared_outputs:
            return None
        if any(len(tail) != 1 for tail in self.tails):  # a partial zip: layers after the stop
            return None
        folded = head_state(self)
        return next(iter(folded.values())) if len(folded) == 1 else None

    def unmerge_matrices(self) -> tuple[torch.Tensor, ...]:
        """Return U_m of every model, (n_m, r) each (empty when the stop point is 0)."""
        if self.spec.layout is None:
            return ()
        return tuple(getattr(self, unmerge_name(m)) for m in range(len(self.tails)))

    def unmerge(self, state: Any, model: int) -> Any:
        """Map a merged state into model ``model``'s own space (x_m = U_m x*).

        Only the features are mapped: the first item of a tuple state.
        """
        u = getattr(self, unmerge_name(model))
        dim = CHANNEL_DIM[self.spec.layout]
        if isinstance(state, tuple):
            return (apply_along(u.to(state[0].dtype), state[0], dim), *state[1:])
        return apply_along(u.to(state.dtype), state, dim)


def build_merged(spec: MergedSpec, device: torch.device | str | None = None) -> MergedModel:
    """Return a MergedModel with the modules of ``spec``, its weights to be loaded.

    The modules are built on the meta device and their tensors get uninitialised storage on
    ``device`` (default: the default device; under the meta device nothing is allocated):
    every stored tensor is loaded right after, so initialising them would be wasted work (a
    fifth of a MiniLM re-merge), and the blocks past the stop point of the trunk and before it
    in the tails never take memory.
    """
    target = torch.device(device) if device is not None else torch.get_default_device()
    trunk = list(meta_network(spec.trunk_config, cached=False).blocks)[: spec.stop]
    tails = tuple(
        copy.deepcopy(list(meta_network(c).blocks)[spec.stop :]) for c in spec.tail_configs
    )
    unmerge = None
    if spec.layout is not None:
        graph = family_of(spec.trunk_config).graph(spec.trunk_config)
        space = graph.block_out[spec.stop - 1]
        r = graph.spaces[space].width
        widths = [family_of(c).graph(c).spaces[space].width for c in spec.tail_configs]
        unmerge = tuple(torch.zeros(n, r) for n in widths)
    model = MergedModel(spec, trunk, tails, unmerge)
    return model if target.type == "meta" else allocate(model, target)


def load_merged(model: MergedModel, state: dict[str, torch.Tensor], device: Any) -> MergedModel:
    """Return ``model`` (built on the meta device) holding ``state``'s tensors on ``device``.

    The tensors are taken as they are (assign: held once, not once more as the model's own
    copy); what ``state`` lacks but the model needs (BatchNorm's batch counters, rotary
    tables) gets storage on ``device``.

    Raises:
        AssertionError: the state does not fit the model's modules.
    """
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    stray = [k for k in missing if not k.endswith("num_batches_tracked")]
    if stray or unexpected:
        raise AssertionError(f"merged state mismatch: missing {stray}, unexpected {unexpected}")
    allocate(model, torch.device(device))
    channels_last_weights(model)  # as every convolution of the families is laid out
    return model


def meta_network(config: Any, cached: bool = True) -> nn.Module:
    """Return a network of ``config`` on the meta device (modules, no storage).

    cached: the network is built once per config and shared (copy the blocks you keep): the
    tails of every merge of a pair come from the same configs, A's and B's, and building a
    whole network to keep its head was most of the time a re-merge spent on modules.
    """
    try:
        hash(config)
    except TypeError:  # a config that cannot be a key is built every time
        cached = False
    return _meta_network(config) if cached else _build_meta(config)


@functools.lru_cache(maxsize=16)
def _meta_network(config: Any) -> nn.Module:
    return _build_meta(config)


def _build_meta(config: Any) -> nn.Module:
    return on_meta(lambda: family_of(config).build(config))


def _in_dtype(x: Any, dtype: torch.dtype) -> Any:
    """Return ``x`` (a tensor or a dict of them) with floating-point tensors in ``dtype`` (ids
    stay integers)."""
    if isinstance(x, dict):
        return {k: _in_dtype(v, dtype) for k, v in x.items()}
    if isinstance(x, torch.Tensor) and x.is_floating_point() and x.dtype != dtype:
        return x.to(dtype)
    return x


def unmerge_name(model: int) -> str:
    """Return the buffer name of model ``model``'s unmerge matrix: unmerge_a, unmerge_b, ..."""
    return f"unmerge_{chr(ord('a') + model)}"


def full_stop(spec: MergedSpec) -> int:
    """Return the stop point of a full zip for this spec (every block but the heads merged)."""
    return family_of(spec.trunk_config).graph(spec.trunk_config).num_blocks - 1


def network_config(spec: MergedSpec) -> Any:
    """Return the family config of a full zip held as one network (all task heads side by side).

    Raises:
        ModelLoadError: a partial zip (separate tails per model) or heads without a classifier
            layer (embedding models), which one network of the family cannot express.
    """
    full = full_stop(spec)
    if spec.stop > full:  # no merge writes that: the config was edited or cut
        raise ModelLoadError(
            f"the merge's config.json stops at block {spec.stop}, but its trunk has {full} "
            "blocks before the heads: the config does not describe the merge; re-export it"
        )
    if spec.stop != full:
        raise ModelLoadError(
            f"this merge stops at block {spec.stop} of {full}: its models keep separate tails, "
            "which one network cannot hold; merge with a full zip (a recipe's stop: null, the "
            "Zip tab's stop point at its end) to merge again"
        )
    family = family_of(spec.trunk_config)
    tails = [family.graph(c) for c in spec.tail_configs]
    head = [t for t in tails[0].tensors if t.block == full]
    written = {a.space for t in head for a in t.axes if a.role == "out"}
    if written != {LOGITS}:
        raise ModelLoadError(
            "the merged heads are not classifier layers (embedding models pool features): one "
            "network cannot hold both heads; merge the exported Hugging Face folder instead"
        )
    if family.shared_outputs:
        return spec.trunk_config
    n_logits = sum(g.spaces[LOGITS].width for g in tails)
    return family.resize(spec.trunk_config, {LOGITS: n_logits})


def head_state(model: MergedModel) -> dict[str, torch.Tensor]:
    """Return the head tensors of a fully zipped model as one network (``as_network``).

    Each model's head reads the merged features through its unmerge U_m: W_m U_m, placed
    side by side (A's outputs, then B's), or averaged for heads that predict the same outputs
    (``Family.shared_outputs``). Keyed by the network's tensor names.
    """
    spec = model.spec
    family = family_of(spec.trunk_config)
    tails = [family.graph(c) for c in spec.tail_configs]
    boundary = tails[0].block_out[spec.stop - 1]
    unmerge = model.unmerge_matrices()
    transforms = {boundary: SpaceTransform(tuple(u.T for u in unmerge), unmerge)}
    if not family.shared_outputs:
        n_logits = [g.spaces[LOGITS].width for g in tails]
        eye = torch.eye(sum(n_logits), dtype=unmerge[0].dtype, device=unmerge[0].device)
        place = tuple(torch.split(eye, n_logits, dim=1))
        transforms[LOGITS] = SpaceTransform(place, tuple(p.T for p in place))
    tail_states = [tail[0].state_dict() for tail in model.tails]
    state = {}
    for t in (t for t in tails[0].tensors if t.block == spec.stop):
        leaf = t.name.split(".", 2)[2]
        pair = [st[leaf] for st in tail_states]
        if family.shared_outputs:  # the outputs stay in place: mean of W_m U_m
            kept = dataclasses.replace(t, axes=tuple(a for a in t.axes if a.space != LOGITS))
            state[t.name] = fuse_tensor(kept, pair, transforms) / len(pair)
        else:
            state[t.name] = fuse_tensor(t, pair, transforms)
    return state


def as_network(model: MergedModel, label: str = "merged") -> Network:
    """Return a fully zipped merged model as one network of its family with every task head.

    The heads of A and B read the merged features through their unmerge matrices; folding
    those into the heads' weights (W_m U_m) and placing their outputs side by side gives one
    head layer whose outputs are A's logits then B's, exactly what the merged model computes.
    So a merge can be model A or B of the next merge (docs/method.md sec. 10). Heads that
    predict the same outputs (``Family.shared_outputs``: a language model's vocabulary) are
    averaged instead: (W_A U_A + W_B U_B) / 2 gives the mean of the two heads' logits.

    The network's blocks hold the merge's own tensors (not copies): changing one in place
    changes the other.

    Raises:
        ModelLoadError: see ``network_config``.
    """
    spec = model.spec
    config = network_config(spec)
    family = family_of(spec.trunk_config)
    module = on_meta(lambda: family.build(config))
    state = {
        f"blocks.{k[len('trunk.') :]}": v
        for k, v in model.state_dict().items()
        if k.startswith("trunk.")
    }
    state.update(head_state(model))
    # assign: a decoder's export held the weights once more here
    module.load_state_dict(state, assign=True)
    allocate(module, model.unmerge_matrices()[0].device).eval()
    if family.shared_outputs:
        return Network(config, module, None, frozenset(), label)
    heads = tuple(h for model_heads in spec.heads for h in model_heads)
    classes = tuple(c for h in heads for c in h.classes)
    return Network(config, module, classes, frozenset(), label, heads)
