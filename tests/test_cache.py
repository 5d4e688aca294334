"""The heterogui cache: where it is, and whether an entry's weights are whole."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from heterogui.cache import cache_dir, weights_intact


def test_a_cut_replaced_or_resized_weights_file_is_not_intact(tmp_path: Path) -> None:
    save_file({"w": torch.zeros(64, 64), "b": torch.ones(64)}, str(tmp_path / "model.safetensors"))
    weights = tmp_path / "model.safetensors"
    size = weights.stat().st_size
    assert weights_intact(tmp_path, None) and weights_intact(tmp_path, size)
    assert not weights_intact(tmp_path, size + 1)  # the build recorded another size
    data = weights.read_bytes()
    weights.write_bytes(data[:-10])  # cut short: shorter than its own header says
    assert not weights_intact(tmp_path, None)
    weights.write_bytes(data + b"\0")
    assert not weights_intact(tmp_path, None)
    for junk in (b"", b"short", b"\xff" * 64):
        weights.write_bytes(junk)
        assert not weights_intact(tmp_path, None)
    weights.unlink()
    assert not weights_intact(tmp_path, None)


def test_a_tilde_in_the_cache_variable_is_the_home_folder(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("HETEROGUI_CACHE", "~/hg-cache")
    monkeypatch.chdir(tmp_path)
    assert cache_dir("zoo") == tmp_path / "hg-cache" / "zoo"
    assert not (tmp_path / "~").exists()
