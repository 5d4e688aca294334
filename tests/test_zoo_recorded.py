"""A recipe that records a zoo model by its hashes, against a cache of another zoo build.

Zoo models are trained, and a heterogui that trains them otherwise (another zoo version) gives
other weights: a recipe recorded on the older build cannot repeat here. The cache's older model
is never retrained over before the recipe is refused, and a recipe whose config hash came from
an older hashing scheme (it hashed the training time) still repeats when the weights match.
"""

from __future__ import annotations

import json
import logging

import pytest

from heterogui.config import ModelRef
from heterogui.errors import ConfigError
from heterogui.run import check_hash, load_pair
from heterogui.sources import registry

PAIR = "tiny-digits-vgg-depth"
REF_A, REF_B = f"zoo:{PAIR}/a", f"zoo:{PAIR}/b"


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HETEROGUI_CACHE", str(tmp_path / "cache"))
    pair = load_pair(REF_A, REF_B)  # built in seconds
    return tmp_path / "cache" / "zoo" / PAIR, pair


def test_an_older_zoo_build_that_the_recipe_records_is_not_retrained_over(cache):
    folder, pair = cache
    weights = (folder / "a" / "model.safetensors").read_bytes()
    meta = json.loads((folder / "pair.json").read_text())
    (folder / "pair.json").write_text(json.dumps(meta | {"fingerprint": "an older zoo"}))
    recorded = ModelRef(REF_A, sha256=pair.a.sha256)
    with pytest.raises(ConfigError, match="is the model the recipe records, trained by an older"):
        load_pair(recorded, REF_B)
    assert (folder / "a" / "model.safetensors").read_bytes() == weights  # not retrained
    # a recipe that records other weights (or none) loads the zoo this heterogui trains
    registry.check_recorded(REF_A, "0" * 64)
    assert load_pair(REF_A, REF_B).a.sha256 == pair.a.sha256  # retrained: the same weights


def test_a_zoo_model_trained_otherwise_names_the_version_not_a_restore(cache):
    _, pair = cache
    with pytest.raises(ConfigError, match="another version trained it.*remove its sha256"):
        check_hash(ModelRef(REF_A, sha256="0" * 64), pair.a)


def test_an_older_config_hash_of_the_same_zoo_weights_still_repeats(cache, caplog):
    _, pair = cache
    older = ModelRef(REF_A, sha256=pair.a.sha256, files_sha256="1" * 64)
    with caplog.at_level(logging.WARNING):
        check_hash(older, pair.a)
    assert "recorded by an older heterogui, which hashed the zoo's training time" in caplog.text
    with pytest.raises(ConfigError, match="is not the model the recipe records"):  # refused
        check_hash(ModelRef(REF_A, sha256="2" * 64, files_sha256="1" * 64), pair.a)


@pytest.mark.parametrize("damage", ["changed", "removed"])
def test_a_recorded_recipe_repeats_over_a_damaged_or_missing_zoo_model(cache, damage):
    # this build's pair with model A damaged: B read as another build's, and the recipe that
    # records both was refused as "trained by an older heterogui"
    import shutil

    folder, pair = cache
    weights = folder / "a" / "model.safetensors"
    if damage == "changed":
        data = bytearray(weights.read_bytes())
        data[-2:] = bytes(255 - b for b in data[-2:])
        weights.write_bytes(bytes(data))
    else:
        shutil.rmtree(folder / "a")
    again = load_pair(ModelRef(REF_A, sha256=pair.a.sha256), ModelRef(REF_B, sha256=pair.b.sha256))
    assert (again.a.sha256, again.b.sha256) == (pair.a.sha256, pair.b.sha256)  # A rebuilt alike
