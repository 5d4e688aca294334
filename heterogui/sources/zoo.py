"""Zoo models: ``zoo:PAIR/a`` and ``zoo:PAIR/b``, the built-in demo models (built on first use)."""

from __future__ import annotations

import dataclasses

from heterogui.errors import ConfigError
from heterogui.models.family import family_of
from heterogui.models.io import WEIGHTS_FILE, file_sha256, load_network
from heterogui.sources.base import IMAGE_CLASSIFICATION, Header, Loaded, Source
from heterogui.zoo.pairs import pair_folder
from heterogui.zoo.registry import pair_spec

PREFIX = "zoo:"


def zoo_ref(pair: str, which: str) -> str:
    """Return the reference of model ``which`` ("a"/"b") of zoo pair ``pair``."""
    return f"{PREFIX}{pair}/{which}"


def parse_zoo_ref(ref: str) -> tuple[str, str]:
    """Return (pair name, "a" or "b") of a zoo reference.

    Raises:
        ConfigError: a reference that is not ``zoo:PAIR/a`` or ``zoo:PAIR/b``, or an unknown pair.
    """
    name, _, which = ref[len(PREFIX) :].partition("/")
    if which not in ("a", "b"):
        raise ConfigError(f"zoo reference {ref!r} must look like zoo:PAIR/a or zoo:PAIR/b")
    pair_spec(name)  # raises for an unknown pair, listing the known ones
    return name, which


class ZooSource(Source):
    """The built-in demo models, trained offline and cached (``heterogui zoo build``)."""

    kind = "zoo"

    def claims(self, ref: str) -> bool:
        """Return whether ``ref`` starts with ``zoo:``."""
        return ref.startswith(PREFIX)

    def describe(self, ref: str) -> Header:
        """Return the model's family and config from the zoo registry (nothing is built)."""
        name, which = parse_zoo_ref(ref)
        config = pair_spec(name).model(which).config
        family = family_of(config).name
        return Header(ref, f"{name}/{which}", self.kind, family, IMAGE_CLASSIFICATION, config)

    def load(self, ref: str, *, pooling: str | None = None, device: str = "cpu") -> Loaded:
        """Load the zoo model (training the pair first when it is not built yet)."""
        name, which = parse_zoo_ref(ref)
        folder = pair_folder(name, which)
        net = dataclasses.replace(load_network(folder, device), label=f"{name}/{which}")
        sha = file_sha256(folder / WEIGHTS_FILE)
        return Loaded(
            net,
            ref,
            self.kind,
            f"{name}/{which}",
            sha,
            IMAGE_CLASSIFICATION,
            folder=folder,
            dataset=pair_spec(name).dataset,
        )
