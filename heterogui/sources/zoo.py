"""Zoo models: ``zoo:PAIR/a`` and ``zoo:PAIR/b`` (``zoo:GROUP/c`` too), the built-in demo models.

Built on first use.

Also ``decoder-pair:a`` and ``decoder-pair:b``: the trained decoder language models of
``heterogui.zoo.decoder_pair`` (Hugging Face causal-LM folders in the cache, built on first use).
"""

from __future__ import annotations

import dataclasses

from heterogui.errors import ConfigError
from heterogui.models.family import family_of
from heterogui.models.io import WEIGHTS_FILE, file_sha256, load_network
from heterogui.sources.base import IMAGE_CLASSIFICATION, Header, Loaded, Source
from heterogui.sources.hf import HFSource
from heterogui.zoo.pairs import outdated_weights_sha256, pair_folder
from heterogui.zoo.registry import ZOO_VERSION, pair_spec

PREFIX = "zoo:"
DECODER_PAIR = "decoder-pair"  # the trained decoder pair's name (workbench, heterogui zoo)
DECODER_PREFIX = f"{DECODER_PAIR}:"


def zoo_ref(pair: str, which: str) -> str:
    """Return the reference of model ``which`` ("a", "b", ...) of zoo pair or group ``pair``."""
    return f"{PREFIX}{pair}/{which}"


def parse_zoo_ref(ref: str) -> tuple[str, str]:
    """Return (pair name, "a", "b", ...) of a zoo reference.

    Raises:
        ConfigError: a reference that is not ``zoo:PAIR/a``, ``zoo:PAIR/b`` (``zoo:GROUP/c``,
            ... for a group), or an unknown pair.
    """
    name, _, which = ref[len(PREFIX) :].partition("/")
    if len(which) != 1 or not which.isalpha():
        raise ConfigError(
            f"zoo reference {ref!r} must look like zoo:PAIR/a or zoo:PAIR/b (a group of three: "
            "zoo:GROUP/a, /b or /c)"
        )
    pair_spec(name).model(which)  # raises for an unknown pair or model, listing the known
    return name, which


class ZooSource(Source):
    """The built-in demo models, trained offline and cached (``heterogui zoo build``)."""

    kind = "zoo"

    def claims(self, ref: str) -> bool:
        """Return whether ``ref`` starts with ``zoo:``."""
        return ref.startswith(PREFIX)

    def check_recorded(self, ref: str, sha256: str) -> None:
        """Refuse a recipe's zoo model that the cache holds from an older zoo build, before the
        load retrains it over the very weights the recipe records.

        Raises:
            ConfigError: the cached model is the recorded one, and this heterogui trains it
                otherwise.
        """
        name, which = parse_zoo_ref(ref)
        if outdated_weights_sha256(name, which) == sha256:
            raise ConfigError(
                f"{ref} in this cache is the model the recipe records, trained by an older "
                f"heterogui (this one trains zoo version {ZOO_VERSION} and would replace it): "
                "run the recipe with the heterogui that recorded it, or remove its sha256 to "
                "merge the zoo model this heterogui trains"
            )

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


class DecoderPairSource(Source):
    """The trained decoder pair: ``decoder-pair:a`` (prose) and ``decoder-pair:b`` (code).

    Both read as the Hugging Face folders they are; describing or loading one builds the pair
    first when it is not built yet (a few minutes per model, once).
    """

    kind = "hf"

    def claims(self, ref: str) -> bool:
        """Return whether ``ref`` starts with ``decoder-pair:``."""
        return ref.startswith(DECODER_PREFIX)

    def folder(self, ref: str) -> tuple[str, str]:
        """Return (folder, display name) of a pair reference, building the pair if needed.

        Raises:
            ConfigError: a reference other than decoder-pair:a or decoder-pair:b.
        """
        from heterogui.zoo.decoder_pair import DOMAIN
        from heterogui.zoo.decoder_training import decoder_pair_folders

        which = ref[len(DECODER_PREFIX) :]
        if which not in DOMAIN:
            raise ConfigError(
                f"unknown decoder pair model {ref!r}; use {DECODER_PREFIX}a (trained on "
                f"{DOMAIN['a']}) or {DECODER_PREFIX}b (trained on {DOMAIN['b']})"
            )
        folder = decoder_pair_folders()[0 if which == "a" else 1]
        return str(folder), f"decoder pair {which.upper()} ({DOMAIN[which]})"

    def describe(self, ref: str) -> Header:
        """Return the header card of the model's folder (building the pair first if needed)."""
        folder, name = self.folder(ref)
        return dataclasses.replace(HFSource().describe(folder), ref=ref, name=name)

    def load(self, ref: str, *, pooling: str | None = None, device: str = "cpu") -> Loaded:
        """Load the model's folder as a Hugging Face causal LM (building the pair if needed)."""
        folder, name = self.folder(ref)
        loaded = HFSource().load(folder, device=device)
        net = dataclasses.replace(loaded.net, label=name)
        return dataclasses.replace(loaded, net=net, ref=ref, name=name)
