"""Model references: one source reads each kind, and a wrong reference says what is wrong."""

from __future__ import annotations

import json

import pytest
import torch

from heterogui.errors import ConfigError, IncompatibleModelsError, ModelLoadError
from heterogui.models.io import save_network
from heterogui.models.mlp import MLPConfig
from heterogui.models.vgg import VGGConfig
from heterogui.run import load_pair
from heterogui.sources.registry import describe, find_source, load, preflight
from heterogui.sources.upload import receive
from tests.conftest import make


def test_each_kind_of_reference_has_its_source(tmp_path):
    save_network(make(MLPConfig(64, (8,), 5), 0), tmp_path / "mlp")
    assert find_source("zoo:tiny-digits-vgg-depth/a").kind == "zoo"
    assert find_source("minilm:all-MiniLM-L6-v2").kind == "minilm"
    assert find_source(str(tmp_path / "mlp")).kind == "folder"
    loaded = load(str(tmp_path / "mlp"))
    assert loaded.name == "mlp" and loaded.sha256 and loaded.task == "image_classification"


@pytest.mark.parametrize(
    "setup, words",
    [
        (lambda p: p, "does not exist"),
        (lambda p: (p.write_text("x"), p)[1], "is a file"),
        (lambda p: (p.mkdir(), p)[1], "has no config.json"),
        (lambda p: (p.mkdir(), (p / "config.json").write_text("{}"), p)[2], "neither"),
    ],
)
def test_a_wrong_reference_says_what_is_wrong(tmp_path, setup, words):
    path = setup(tmp_path / "model")
    with pytest.raises(ModelLoadError, match=words):
        find_source(str(path))
    with pytest.raises(ConfigError, match="give a model"):
        find_source("  ")


def test_a_hub_id_offline_says_so():
    with pytest.raises(ModelLoadError, match="HF_HUB_OFFLINE"):
        describe("someone/some-model")


def test_the_preflight_reads_headers_only_and_names_every_reason(tmp_path):
    save_network(make(MLPConfig(64, (8,), 5), 0), tmp_path / "mlp")
    save_network(make(VGGConfig(1, ((8,), (8,)), 5), 0), tmp_path / "vgg")
    (tmp_path / "vgg" / "model.safetensors").write_bytes(b"not read by the pre-flight")
    verdict = preflight(str(tmp_path / "mlp"), str(tmp_path / "vgg"))
    assert not verdict.ok and "same family" in verdict.reasons[0]
    with pytest.raises(IncompatibleModelsError, match="same family"):
        load_pair(str(tmp_path / "mlp"), str(tmp_path / "vgg"))
    assert preflight("zoo:tiny-digits-vgg-depth/a", "zoo:tiny-digits-vgg-width/b").ok


def test_an_upload_becomes_a_folder_of_its_own(tmp_path):
    save_network(make(MLPConfig(64, (8,), 5), 0), tmp_path / "mlp")
    files = [str(tmp_path / "mlp" / n) for n in ("config.json", "model.safetensors")]
    folder = receive(files, tmp_path)
    assert folder.parent.parent == tmp_path and (folder / "config.json").is_file()
    assert torch.equal(
        load(str(folder)).net.module.blocks[0].linear.weight,
        load(str(tmp_path / "mlp")).net.module.blocks[0].linear.weight,
    )
    import zipfile

    bad = tmp_path / "evil.zip"
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("../escape.txt", "x")
        zf.writestr("config.json", json.dumps({}))
    with pytest.raises(ModelLoadError, match="outside the archive"):
        receive([str(bad)], tmp_path)
    assert not (tmp_path / "escape.txt").exists()
    left = sorted(p.name for p in tmp_path.iterdir())  # the refused upload left nothing behind
    assert left == sorted(["evil.zip", "mlp", folder.parent.name])
