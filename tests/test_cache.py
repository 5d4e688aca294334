"""The heterogui cache: where it is, and whether an entry's weights are whole."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors.torch import save_file

from heterogui.cache import build_folder, cache_dir, entry_intact, entry_record
from heterogui.models.io import file_sha256


def test_a_cut_replaced_resized_or_corrupted_weights_file_is_not_intact(tmp_path: Path) -> None:
    save_file({"w": torch.zeros(64, 64), "b": torch.ones(64)}, str(tmp_path / "model.safetensors"))
    weights = tmp_path / "model.safetensors"
    size = weights.stat().st_size
    (tmp_path / "config.json").write_text('{"hidden_size": 64}')
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "config.json").write_text("{}")
    record = entry_record(tmp_path)
    assert record == {
        "weights_bytes": size,
        "weights_sha256": file_sha256(weights),
        "files_sha256": {
            "config.json": file_sha256(tmp_path / "config.json"),
            "sub/config.json": file_sha256(tmp_path / "sub" / "config.json"),
        },
    }
    # a config or tokenizer file changed or gone: the entry is rebuilt, not read
    (tmp_path / "config.json").write_text("{garbage")
    assert not entry_intact(tmp_path, record)
    (tmp_path / "config.json").write_text('{"hidden_size": 64}')
    (tmp_path / "sub" / "config.json").unlink()
    assert not entry_intact(tmp_path, record)
    (tmp_path / "sub" / "config.json").write_text("{}")
    assert entry_intact(tmp_path, {}) and entry_intact(tmp_path, {"weights_bytes": size})
    assert entry_intact(tmp_path, record)
    assert not entry_intact(tmp_path, {"weights_bytes": size + 1})  # another size recorded
    data = weights.read_bytes()
    # flipped bytes inside a tensor: the same size and header, another model; the sha256 its
    # build recorded tells (older entries, without one, are checked by size only)
    weights.write_bytes(data[:-8] + b"\x7f" * 8)
    assert entry_intact(tmp_path, {"weights_bytes": size})
    assert not entry_intact(tmp_path, record)
    weights.write_bytes(data[:-10])  # cut short: shorter than its own header says
    assert not entry_intact(tmp_path, {})
    weights.write_bytes(data + b"\0")
    assert not entry_intact(tmp_path, {})
    for junk in (b"", b"short", b"\xff" * 64):
        weights.write_bytes(junk)
        assert not entry_intact(tmp_path, {})
    weights.unlink()
    assert not entry_intact(tmp_path, {})


def test_a_big_files_hash_is_remembered_until_it_changes(tmp_path: Path, monkeypatch) -> None:
    from heterogui.models import io

    monkeypatch.setattr(io, "REMEMBERED_HASH_BYTES", 1000)
    path = tmp_path / "big.bin"
    path.write_bytes(b"a" * 2000)
    first = io.file_sha256(path)
    reads = []
    real_open = open
    monkeypatch.setattr(
        io, "open", lambda *a, **k: reads.append(a) or real_open(*a, **k), raising=False
    )
    assert io.file_sha256(path) == first and reads == []  # remembered
    path.write_bytes(b"b" * 2000)  # the same size, rewritten: another modification time
    assert io.file_sha256(path) != first and len(reads) == 1
    second = io.file_sha256(path)
    info = path.stat()
    with path.open("r+b") as fh:  # rewritten in place, its modification time set back
        fh.write(b"c")
    os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns))
    assert io.file_sha256(path) != second  # the change time moved


def test_a_tilde_in_the_cache_variable_is_the_home_folder(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("HETEROGUI_CACHE", "~/hg-cache")
    monkeypatch.chdir(tmp_path)
    assert cache_dir("zoo") == tmp_path / "hg-cache" / "zoo"
    assert not (tmp_path / "~").exists()


def test_a_build_removes_what_a_killed_build_left_beside_it(tmp_path: Path) -> None:
    entry = tmp_path / "hf" / "model"
    entry.parent.mkdir()
    dead = entry.parent / ".model.tmp-999999999-abcd1234"  # no such process
    (dead / "half").mkdir(parents=True)
    alive = entry.parent / f".model.tmp-{os.getpid()}-live"  # a build running now
    alive.mkdir()
    tmp = build_folder(entry)
    assert tmp.parent == entry.parent and tmp.name.startswith(f".model.tmp-{os.getpid()}-")
    assert not dead.exists() and alive.is_dir() and tmp.is_dir()
