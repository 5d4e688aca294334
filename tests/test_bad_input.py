"""Bad input over the CLI, the Python API and the workbench: every refusal is clean.

Each case checks the message (one line: the problem with the offending value, and the fix),
that no input changed, and that nothing was left behind; the CLI exits with 2 and prints no
traceback.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import save_file

from heterogui import folders
from heterogui.cli import main
from heterogui.errors import (
    AlignmentError,
    Cancelled,
    ConfigError,
    HeteroguiError,
    ModelLoadError,
)
from heterogui.models.io import save_network
from heterogui.models.vgg import VGGConfig
from tests.conftest import make

CONFIGS = (VGGConfig(1, ((8, 8, 8), (16, 16)), 5), VGGConfig(1, ((8,), (16, 16, 16)), 5))


def snapshot(root: Path) -> dict[str, str]:
    """Return every file below ``root`` with the sha256 of its bytes (links by their target)."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            out[rel] = f"-> {os.readlink(path)}"
        elif path.is_file():
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            out[rel] = "dir"
    return out


@pytest.fixture()
def ws(tmp_path: Path) -> Path:
    """Two model folders, calibration and evaluation data, and a recipe that merges them."""
    a, b = make(CONFIGS[0], 0, "a", (0, 1, 2, 3, 4)), make(CONFIGS[1], 1, "b", (5, 6, 7, 8, 9))
    save_network(a, tmp_path / "a")
    save_network(b, tmp_path / "b")
    gen = torch.Generator().manual_seed(0)
    save_file({"inputs": torch.randn(64, 1, 8, 8, generator=gen)}, str(tmp_path / "calib.st"))
    (tmp_path / "calib.st").rename(tmp_path / "calib.safetensors")
    recipe = {
        "model_a": {"path": str(tmp_path / "a")},
        "model_b": {"path": str(tmp_path / "b")},
        "calibration": {"source": str(tmp_path / "calib.safetensors"), "batch_size": 32},
        "device": "cpu",
    }
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    return tmp_path


def recipe(ws: Path) -> dict:
    return yaml.safe_load((ws / "recipe.yaml").read_text())


def write_recipe(ws: Path, data: dict, name: str = "bad.yaml") -> Path:
    (ws / name).write_text(yaml.safe_dump(data))
    return ws / name


def cli_refuses(ws: Path, args: list[str], words: str, capsys) -> str:
    """Run the CLI; assert exit 2, one clean line naming ``words``, nothing changed or left."""
    before = snapshot(ws)
    capsys.readouterr()
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2, err
    assert words in err, err
    assert "Traceback" not in err and err.count("\n") == 1, err
    assert snapshot(ws) == before  # no input changed, nothing left behind
    return err


# --- The CLI: unsafe output folders ----------------------------------------------------------


def test_an_input_folder_is_never_the_output_even_with_overwrite(ws, capsys):
    rec = str(ws / "recipe.yaml")
    cli_refuses(ws, ["merge", rec, "--out", str(ws / "a"), "--overwrite"], "an input", capsys)
    inside = str(ws / "a" / "merged")
    cli_refuses(ws, ["merge", rec, "--out", inside, "--overwrite"], "an input", capsys)


def test_a_folder_holding_an_input_is_never_the_output(ws, capsys):
    (ws / "x" / "y").mkdir(parents=True)
    shutil.copytree(ws / "a", ws / "x" / "y" / "a")
    data = recipe(ws)
    data["model_a"] = {"path": str(ws / "x" / "y" / "a")}
    path = write_recipe(ws, data)
    cli_refuses(ws, ["merge", str(path), "--out", str(ws / "x"), "--overwrite"], "an input", capsys)


def test_the_current_folder_is_never_the_output(ws, capsys, monkeypatch):
    monkeypatch.chdir(ws)
    rec = str(ws / "recipe.yaml")
    cli_refuses(ws, ["merge", rec, "--out", ".", "--overwrite"], "current folder", capsys)


def test_an_output_under_a_file_or_that_is_a_file_is_refused(ws, capsys):
    rec = str(ws / "recipe.yaml")
    (ws / "notes.txt").write_text("mine")
    cli_refuses(ws, ["merge", rec, "--out", str(ws / "notes.txt" / "m")], "under the file", capsys)
    cli_refuses(
        ws, ["merge", rec, "--out", str(ws / "notes.txt"), "--overwrite"], "is a file", capsys
    )


def test_an_output_inside_an_earlier_export_is_refused(ws, capsys):
    rec = str(ws / "recipe.yaml")
    assert main(["merge", rec, "--out", str(ws / "first")]) == 0
    capsys.readouterr()
    inner = ws / "first" / "second"
    cli_refuses(ws, ["merge", rec, "--out", str(inner)], "lies inside the earlier export", capsys)
    assert not inner.exists()


def test_overwrite_replaces_only_what_heterogui_wrote(ws, capsys):
    rec = str(ws / "recipe.yaml")
    (ws / "mine").mkdir()
    (ws / "mine" / "thesis.tex").write_text("years of work")
    for overwrite in ([], ["--overwrite"]):  # named, and no --overwrite offered: it cannot help
        said = "did not write (thesis.tex); choose another folder"
        cli_refuses(ws, ["merge", rec, "--out", str(ws / "mine"), *overwrite], said, capsys)
    (ws / "hidden").mkdir()
    (ws / "hidden" / ".notes").write_text("mine")  # a folder that looks empty
    cli_refuses(ws, ["merge", rec, "--out", str(ws / "hidden")], "did not write (.notes)", capsys)
    assert main(["merge", rec, "--out", str(ws / "m")]) == 0
    first = (ws / "m" / "model.safetensors").read_bytes()
    assert main(["merge", rec, "--out", str(ws / "m"), "--overwrite"]) == 0  # an earlier export
    assert (ws / "m" / "model.safetensors").read_bytes() == first
    assert [p.name for p in ws.iterdir() if p.name.startswith(".m.")] == []
    (ws / "m" / "notes.txt").write_text("what I found")  # the user's, added to the export
    (ws / "m" / "plots").mkdir()
    (ws / "m" / "plots" / "a.png").write_bytes(b"png")
    err = cli_refuses(
        ws, ["merge", rec, "--out", str(ws / "m"), "--overwrite"], "with files added", capsys
    )
    assert "(notes.txt, plots/a.png)" in err and "move them out" in err
    (ws / "m" / "notes.txt").unlink()
    shutil.rmtree(ws / "m" / "plots")
    assert main(["merge", rec, "--out", str(ws / "m"), "--overwrite"]) == 0
    # a marker that lists none of the files (an older export's title alone, or other bytes):
    # files an export never writes are the user's
    marker = ws / "m" / ".heterogui-output"
    listed = marker.read_text().splitlines()[1:]
    assert listed and all(folders.is_export_file_name(name) for name in listed)
    (ws / "m" / "notes.txt").write_text("what I found")
    for text in ("heterogui export\n", "\x7f\x00garbage\n\x01\n"):
        marker.write_text(text)
        err = cli_refuses(
            ws, ["merge", rec, "--out", str(ws / "m"), "--overwrite"], "with files added", capsys
        )
        assert "(notes.txt)" in err and (ws / "m" / "notes.txt").is_file()
    (ws / "m" / "notes.txt").unlink()
    assert main(["merge", rec, "--out", str(ws / "m"), "--overwrite"]) == 0


def test_a_read_only_place_is_refused_before_the_merge(ws, capsys, monkeypatch):
    # Tests may run as root, who can write anywhere: the permission answer is what is faked.
    real = os.access
    monkeypatch.setattr(
        "heterogui.folders.os.access",
        lambda p, mode: False if Path(p) == ws / "ro" else real(p, mode),
    )
    (ws / "ro").mkdir()
    args = ["merge", str(ws / "recipe.yaml"), "--out", str(ws / "ro" / "m")]
    cli_refuses(ws, args, "cannot write in", capsys)
    # an existing empty folder that cannot be written: refused up front, not after the merge
    args = ["merge", str(ws / "recipe.yaml"), "--out", str(ws / "ro")]
    cli_refuses(ws, args, f"cannot write in {ws / 'ro'} (no permission)", capsys)
    # on a file system mounted read-only, permissions are not what to look at
    real_statvfs = os.statvfs

    class ReadOnly:
        f_flag = os.ST_RDONLY

    monkeypatch.setattr(
        "heterogui.folders.os.statvfs",
        lambda p: ReadOnly() if Path(p) == ws / "ro" else real_statvfs(p),
    )
    cli_refuses(ws, args, f"cannot write in {ws / 'ro'} (read-only file system)", capsys)


def test_a_place_that_refuses_writes_is_refused_before_the_merge(ws, capsys, monkeypatch):
    # as root, os.access says yes to /sys; the real write is what fails there
    import errno
    import tempfile

    real = tempfile.mkdtemp

    def mkdtemp(*args, dir=None, **kwargs):
        if dir is not None and Path(dir) == ws / "sysfs":
            raise PermissionError(errno.EPERM, "Operation not permitted")
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr("heterogui.folders.tempfile.mkdtemp", mkdtemp)
    (ws / "sysfs").mkdir()
    args = ["merge", str(ws / "recipe.yaml"), "--out", str(ws / "sysfs" / "m")]
    cli_refuses(ws, args, "cannot write in", capsys)
    # /proc says "No such file or directory" of itself (where one may write there: as root)
    if Path("/proc/self").is_dir() and os.access("/proc", os.W_OK | os.X_OK):
        args = ["merge", str(ws / "recipe.yaml"), "--out", "/proc/heterogui-merge"]
        cli_refuses(ws, args, "cannot write in /proc (it takes no new folders)", capsys)


def test_a_path_too_long_for_the_system_is_refused(ws, capsys):
    long = str(ws / ("d/" * 2100 + "x"))
    cli_refuses(
        ws, ["merge", str(ws / "recipe.yaml"), "--out", long], "choose a shorter path", capsys
    )


def test_files_the_user_cannot_read_get_one_line(ws, capsys, monkeypatch):
    from heterogui.models import io

    recipe = ws / "recipe.yaml"
    real = Path.read_bytes

    def denied(path):  # what an unreadable file does (the tests run as root, who reads all)
        if path == recipe:
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(Path, "read_bytes", denied)
    assert main(["merge", str(recipe), "--out", str(ws / "o1")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot read recipe" in err and "permission denied" in err
    monkeypatch.setattr(Path, "read_bytes", real)
    monkeypatch.setattr(io.os, "access", lambda path, mode: False)  # unreadable weights
    with pytest.raises(ModelLoadError, match="permission denied; make it readable"):
        io.load_state(ws / "a" / "model.safetensors")

    def anywhere(tiny):  # any other unreadable path: the command line's last guard
        raise PermissionError(13, "Permission denied", "/some/where")

    monkeypatch.setattr("heterogui.zoo.pairs.list_zoo", anywhere)
    assert main(["zoo", "list"]) == 2
    err = capsys.readouterr().err
    assert err == (
        "error: permission denied on '/some/where': make it readable (and the output folder's "
        "parent writable) or choose another path\n"
    )
    assert not (ws / "o1").exists()


def test_an_empty_model_path_is_no_model_not_the_current_folder(ws, capsys, monkeypatch):
    recipe = yaml.safe_load((ws / "recipe.yaml").read_text())
    recipe["model_a"] = {"path": ""}
    (ws / "empty.yaml").write_text(yaml.safe_dump(recipe))
    monkeypatch.chdir(ws)  # a relative output: it read as a folder inside that "input"
    cli_refuses(ws, ["merge", "empty.yaml", "--out", "om"], "error: give a model: zoo:", capsys)


def test_the_python_api_refuses_bad_input_with_its_own_errors(ws):
    import heterogui
    from heterogui import run

    pair = run.load_pair(str(ws / "a"), str(ws / "b"))
    with pytest.raises(ConfigError, match=r"calibration inputs have shape \(8, 3, 8, 8\) but"):
        heterogui.merge(pair.a.net, pair.b.net, [torch.randn(8, 3, 8, 8)])
    result = heterogui.merge(pair.a.net, pair.b.net, [torch.randn(8, 1, 8, 8)] * 2)
    with pytest.raises(ConfigError, match="run.export writes what run.merge returns"):
        run.export(result, ws / "x")
    done = run.merge(ws / "recipe.yaml")
    with pytest.raises(ConfigError, match="unknown output format 'bogus'"):
        run.export(done, ws / "x", fmt="bogus")
    assert not (ws / "x").exists()


def test_a_recipe_merge_keeps_the_callers_random_state_and_takes_no_engine_options(ws):
    import heterogui
    from heterogui import run

    torch.manual_seed(123)
    expected = torch.rand(4)
    torch.manual_seed(123)
    heterogui.merge(ws / "recipe.yaml")  # seeds torch with the recipe's seed, on a fork
    pair = run.load_pair(str(ws / "a"), str(ws / "b"))
    assert torch.equal(torch.rand(4), expected)
    with pytest.raises(ConfigError, match="size 0 is too small"):  # not the default size
        run.calibrate(pair, size=0)
    # heterogui.merge returns the engine result only, so it scores nothing; run.merge scores
    inputs = torch.randn(40, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    save_file({"inputs": inputs, "labels": torch.arange(40) % 10}, str(ws / "eval.safetensors"))
    data = recipe(ws)
    data["evaluation"] = {"source": str(ws / "eval.safetensors")}
    scored = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(run, "_scores", lambda *args: scored.append(1) or {})
        heterogui.merge(write_recipe(ws, data))
        assert scored == []
        assert run.merge(write_recipe(ws, data)).scores == {} and scored == [1]
    # a recipe holds the settings: options beside it would be ignored, so they are refused
    with pytest.raises(ConfigError, match=r"merge\(recipe\) takes no options \['device', 'mode'\]"):
        heterogui.merge(ws / "recipe.yaml", mode="lma", device="cuda")
    # a cancel from Python says what the caller has: no merge (the workbench keeps its last)
    with pytest.raises(Cancelled, match=r"^stopped during [a-z].+; nothing was merged or written$"):
        run.merge(ws / "recipe.yaml", cancel=lambda: True)


def test_leftovers_of_killed_writes_are_cleaned(ws):
    dead = 2**22 + 12345  # above the usual pid_max: no such process
    (ws / f".m.tmp-{dead}-abc").mkdir()
    (ws / f".m.tmp-{dead}-abc" / "model.safetensors").write_bytes(b"half")
    (ws / f".m.old-{dead}-def").symlink_to(ws / "a")
    (ws / f".m.tmp-{os.getpid()}-live").mkdir()  # a live process's write is left alone
    assert main(["merge", str(ws / "recipe.yaml"), "--out", str(ws / "m")]) == 0
    left = sorted(p.name for p in ws.iterdir() if p.name.startswith(".m."))
    assert left == [f".m.tmp-{os.getpid()}-live"]
    assert (ws / "a" / "config.json").is_file()  # a stale link is removed, not its target
    # An --overwrite killed between its two renames had set the earlier export aside: it was
    # removed as a leftover, so neither export was there. Now it is put back.
    before = snapshot(ws / "m")
    (ws / "m").rename(ws / f".m.old-{dead}-0123abcd")
    (ws / f".m.tmp-{dead}-xyz").mkdir()  # the new write, unfinished
    code = main(["merge", str(ws / "recipe.yaml"), "--out", str(ws / "m")])
    assert code == 2  # the earlier export is back: this write needs --overwrite again
    assert snapshot(ws / "m") == before
    assert sorted(p.name for p in ws.iterdir() if p.name.startswith(".m.")) == left


def test_running_out_of_memory_is_one_line_and_a_bug_is_not(ws, capsys, monkeypatch):
    from heterogui import run
    from heterogui.ui import events

    said = "[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory"
    # torch's allocator, torch's mmap of a weights file (ENOMEM: it printed a traceback) and
    # Python's
    mapped = "unable to mmap 538090408 bytes from file <x>: Cannot allocate memory (12)"
    for error in (RuntimeError(said), RuntimeError(mapped), MemoryError()):

        def short(*args, error=error, **kwargs):
            raise error

        monkeypatch.setattr(run, "merge", short)
        words = "out of memory: this step needs more than is free here; free memory, use less"
        cli_refuses(ws, ["merge", str(ws / "recipe.yaml"), "--out", str(ws / "o")], words, capsys)
        with pytest.warns(UserWarning, match="out of memory"):  # the page's toast, off a page
            line = events.failure_message(error, short)
        assert line.startswith("**Error:** out of memory")
    monkeypatch.setattr(run, "merge", lambda *a, **k: [][1])  # any other error: a traceback
    with pytest.raises(IndexError):
        main(["merge", str(ws / "recipe.yaml"), "--out", str(ws / "o")])


@pytest.mark.parametrize("kind", ["gguf", "folder", "zip"])
def test_an_upload_a_full_disk_cannot_hold_says_so_and_leaves_nothing(tmp_path, monkeypatch, kind):
    # A .gguf's partial copy stayed (the disk stayed full for the session's hour); every
    # kind said "Unexpected error (OSError)" with the server's paths, or blamed the archive.
    import errno
    import zipfile

    from heterogui.sources import upload

    if kind == "gguf":
        files = [tmp_path / "m.gguf"]
        files[0].write_bytes(b"GGUF" + bytes(64))
    elif kind == "folder":
        files = [tmp_path / "config.json", tmp_path / "model.safetensors"]
        for f in files:
            f.write_bytes(b"{}")
    else:
        files = [tmp_path / "export.zip"]
        with zipfile.ZipFile(files[0], "w") as zf:
            zf.writestr("export/config.json", "{}")

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "work" / "x"))

    monkeypatch.setattr(upload.shutil, "copyfile", full)
    monkeypatch.setattr(upload.shutil, "copyfileobj", full)
    (tmp_path / "work").mkdir()
    with pytest.raises(ModelLoadError) as err:
        upload.receive([str(f) for f in files], tmp_path / "work")
    assert str(err.value) == (
        "could not keep the upload: No space left on device: free some space, or write elsewhere"
    )
    assert list((tmp_path / "work").iterdir()) == []


def test_the_workbench_start_removes_killed_exports_of_any_name(tmp_path):
    # A killed export (a MiniLM's 54 MB, a decoder's 500 MB) went only when its own name was
    # exported again; the app now sweeps its export root as it starts.
    dead = 2**22 + 12345
    for name in (f".one.tmp-{dead}-ab_cd123", f".two.old-{dead}-0123abcd"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "model.safetensors").write_bytes(b"half")
    kept = [f".three.tmp-{os.getpid()}-live1234", f".four.tmp-{dead}-short", ".profile", "five"]
    for name in kept:
        (tmp_path / name).mkdir()
    folders.clean_stale_in(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(kept)


def _mount_tmpfs(folder: Path) -> bool:
    import subprocess

    folder.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(folder)],
        check=False,
        capture_output=True,
    )
    return done.returncode == 0


@pytest.mark.parametrize("real", [True, False])
def test_a_mount_point_is_written_into_and_overwritten(ws, monkeypatch, real):
    # A rename cannot cross file systems, nor replace a mount point: an export into an empty
    # volume failed after the whole merge ("Invalid cross-device link"), an overwrite with
    # "Device or resource busy". real: a tmpfs (needs the right to mount); else a folder the
    # check takes for a mount point, for the same steps on one file system.
    out = ws / "volume"
    if real:
        if not _mount_tmpfs(out):
            pytest.skip("no permission to mount a tmpfs here")
    else:
        out.mkdir()
        monkeypatch.setattr(folders, "is_mount", lambda p: Path(p) == out)
    try:
        assert folders.is_mount(out)
        assert main(["merge", str(ws / "recipe.yaml"), "--out", str(out)]) == 0
        first = snapshot(out)
        assert "model.safetensors" in first and (out / folders.MARKER).is_file()
        dead = 2**22 + 12345  # a killed write's leftover inside the volume goes too
        (out / f".volume.tmp-{dead}-abc").mkdir()
        assert main(["merge", str(ws / "recipe.yaml"), "--out", str(out), "--overwrite"]) == 0
        again = snapshot(out)
        assert sorted(again) == sorted(first)
        assert again["model.safetensors"] == first["model.safetensors"]
    finally:
        if real:
            import subprocess

            subprocess.run(["umount", str(out)], check=False)


def test_replacing_a_linked_output_leaves_no_old_link(ws):
    assert main(["merge", str(ws / "recipe.yaml"), "--out", str(ws / "real")]) == 0
    (ws / "link").symlink_to(ws / "real")
    assert main(["merge", str(ws / "recipe.yaml"), "--out", str(ws / "link"), "--overwrite"]) == 0
    # The link is followed: the earlier export it points to is replaced, the link kept.
    assert (ws / "link").is_symlink() and (ws / "real" / "model.safetensors").is_file()
    assert [p.name for p in ws.iterdir() if p.name.startswith((".link.", ".real."))] == []


# --- The CLI: recipes ---------------------------------------------------------------------------

BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"


@pytest.mark.parametrize(
    "text, words",
    [
        (BOMB, "alias *a (aliases are refused)"),
        ("[" * 5000, "nests lists or mappings too deeply"),
        (
            "model_a: {path: x}\nmodel_b: {path: y}\nzip: {rho: 0.5}\nzip: {rho: 0.0}\n",
            "does not parse at line 4, column 1: key 'zip' is given twice",
        ),
        ("model_a: {path: x, path: y}\n", "key 'path' is given twice; give each key once"),
        # the fix fits the problem (each ended in "aliases such as *name are refused")
        ("model_a:\n\tpath: x\n", "cannot start any token; indent with spaces, not tabs"),
        ("model_a: path: x\n", "mapping values are not allowed here; check the indentation"),
        ("model_a: " + "[" * 600 + "]" * 600 + "\n", "nests lists or mappings too deeply"),
        ("- just\n- a list\n", "is a list, not a mapping"),
        ("model_a: {path: x\n", "does not parse at line"),
        ("model_a: {path: x}\nmodel_b: {path: y}\nzip: {rho: high}\n", "recipe.zip.rho must be"),
        (
            "model_a: {path: x}\nmodel_b: {path: y}\ncalibration: {size: '10'}\n",
            "recipe.calibration.size must be an integer",
        ),
        ("model_a: {path: 3}\nmodel_b: {path: y}\n", "recipe.model_a.path must be text"),
        (  # a hash typed wrong was blamed on "another version" of the model
            "model_a: {path: x, sha256: abc}\nmodel_b: {path: y}\n",
            "recipe.model_a.sha256 must be 64 lowercase hexadecimal digits (the sha256 a "
            "recorded recipe holds), got 'abc'; copy it again from the recorded recipe or "
            "remove it",
        ),
        (
            "model_a: {path: x}\nmodel_b: {path: y, files_sha256: '" + "g" * 64 + "'}\n",
            "recipe.model_b.files_sha256 must be 64 lowercase hexadecimal digits",
        ),
        (
            "model_a: {path: x}\nmodel_b: {path: y}\ncalibration: {sha256: '12ab'}\n",
            "recipe.calibration.sha256 must be 64 lowercase hexadecimal digits",
        ),
        (  # compared as written: an uppercase hash was blamed on another version
            "model_a: {path: x, sha256: '" + "AB" * 32 + "'}\nmodel_b: {path: y}\n",
            "recipe.model_a.sha256 must be 64 lowercase hexadecimal digits",
        ),
        (  # a key's name does not pick the fix ("alias" was read as an alias)
            "alias: 1\nalias: 2\n",
            "key 'alias' is given twice; give each key once",
        ),
        (
            "model_a: {path: x}\nmodel_b: {path: y}\nzip: {overrides: {block0: 5}}\n",
            "zip.overrides.block0 must be a mapping",
        ),
        (
            "model_a: {path: x}\nmodel_b: {path: y}\nzip: {overrides: {block0: {width: wide}}}\n",
            "zip.overrides.block0.width must be an integer",
        ),
        ("model_a: {path: x}\nmodel_b: {path: y}\nzip: {matcher: magic}\n", "unknown"),
        ("model_a: {path: x}\nmodel_b: {path: y}\nstop: -1\n", "must be >= 0"),
        (
            "model_a: {path: x}\nmodel_b: {path: y}\nseed: 99999999999999999999\n",
            "recipe.seed = 99999999999999999999 is out of range: use a whole number from 0",
        ),
        (
            "model_a: {path: x}\nmodel_b: {path: y}\ncalibration: {seed: -1}\n",
            "recipe.calibration.seed = -1 is out of range",
        ),
        (
            "model_a: {path: x}\nmodel_b: {path: y}\nevaluation: {source: digits, size: 2}\n",
            "recipe.evaluation.size 2 is too small: use at least 4 inputs",
        ),
        ("model_a: {path: x}\n", "model_b is missing"),
        (
            "model_a: {path: x}\nmodel_b: {path: y}\nalignment: {mode: manual, mapping: "
            "{a: [0, 1, 2], b: [0, 1]}}\n",
            "alignment.mapping.a is [0, 1, 2]; it must look like {a: [[0, 1, 2], [0, 1]]",
        ),
        (
            "model_a: {path: x}\nmodel_b: {path: y}\nalignment: {mode: manual, mapping: "
            "{a: x, b: 3}}\n",
            "alignment.mapping.a is x; it must look like",
        ),
        # these gave tracebacks
        ("model_a: {path: x}\nstop: " + "9" * 5000 + "\n", "a number of more than 4,300 digits"),
        ("zip: {overrides: {[a]: {rho: 0.5}}}\n", "a key is a list or a mapping"),
        (
            "model_a: {path: x}\nmodel_b: {path: y}\nzip: {overrides: {3: {rho: 0.5}}}\n",
            "zip.overrides has the key 3: name a merge point",
        ),
        (
            "model_a: {path: x}\nmodel_b: {path: y}\ndevice: 'cuda:99999999999999999999'\n",
            "is unknown; use auto, cpu, cuda or cuda:N (N < 128)",
        ),
        (  # quoted whole, the fix fell past the 2,000 characters a message keeps
            "model_a: {path: x}\nmodel_b: {path: y}\nalignment: {mode: " + "x" * 5000 + "}\n",
            "is unknown; use one of ('sma'",
        ),
        (
            "model_a: {path: x}\nmodel_b: {path: y}\nalignment: {mode: manual, mapping: "
            "{a: [[0]], b: [[0]], c: 1}}\n",
            "alignment.mapping must look like {a: [[0, 1, 2], [0, 1]], b: [[0, 2], [0, 1]]}: one "
            "list of slots per stage (it has the keys ['a', 'b', 'c'])",
        ),
    ],
)
def test_a_bad_recipe_says_which_field(ws, capsys, text, words):
    (ws / "bad.yaml").write_text(text)
    err = cli_refuses(ws, ["merge", str(ws / "bad.yaml"), "--out", str(ws / "o")], words, capsys)
    assert len(err) < 700  # never the expanded alias or a whole parser dump


def test_transformer_options_for_models_without_them_are_refused(ws, capsys):
    data = recipe(ws)
    data["transformer"] = {"pooling": "cls"}
    path = write_recipe(ws, data)
    words = "these models are vgg models, which have none: remove transformer from the recipe"
    cli_refuses(ws, ["merge", str(path), "--out", str(ws / "o")], words, capsys)


def test_a_binary_or_huge_recipe_is_refused(ws, capsys):
    (ws / "bin.yaml").write_bytes(b"model_a: \xff\xfe\x00\x01")
    cli_refuses(
        ws, ["merge", str(ws / "bin.yaml"), "--out", str(ws / "o")], "is not UTF-8 text", capsys
    )
    (ws / "big.yaml").write_text("# " + "x" * (2 << 20))
    cli_refuses(ws, ["merge", str(ws / "big.yaml"), "--out", str(ws / "o")], "bytes, over", capsys)
    cli_refuses(ws, ["merge", str(ws / "a"), "--out", str(ws / "o")], "is a folder", capsys)
    # a .json recipe is read as JSON: YAML would take its trailing comma
    data = json.dumps(recipe(ws))
    (ws / "comma.json").write_text(data[:-1] + ",}")
    words = "recipe " + str(ws / "comma.json") + " is not valid JSON (Expecting property name"
    cli_refuses(ws, ["merge", str(ws / "comma.json"), "--out", str(ws / "o")], words, capsys)
    (ws / "deep.json").write_text('{"model_a": ' + "[" * 5000 + "]" * 5000 + "}")
    words = "nests lists or mappings too deeply to read"  # a RecursionError's traceback before
    cli_refuses(ws, ["merge", str(ws / "deep.json"), "--out", str(ws / "o")], words, capsys)
    # a key twice: JSON keeps the last without a word (and YAML is refused for it already)
    (ws / "twice.json").write_text(json.dumps(recipe(ws))[:-1] + ', "seed": 1, "seed": 2}')
    words = "does not parse: key 'seed' is given twice; give each key once"
    cli_refuses(ws, ["merge", str(ws / "twice.json"), "--out", str(ws / "o")], words, capsys)
    (ws / "digits.json").write_text(json.dumps(recipe(ws))[:-1] + ', "seed": ' + "9" * 5000 + "}")
    words = "does not parse: it holds a number of more than 4,300 digits"
    cli_refuses(ws, ["merge", str(ws / "digits.json"), "--out", str(ws / "o")], words, capsys)
    (ws / "good.json").write_text(json.dumps(recipe(ws), indent="\t"))  # tabs: JSON, not YAML
    assert main(["merge", str(ws / "good.json"), "--out", str(ws / "o")]) == 0


# --- The CLI: models ----------------------------------------------------------------------------


def edit_config(folder: Path, change: Callable[[dict], object]) -> None:
    data = json.loads((folder / "config.json").read_text())
    out = change(data)
    (folder / "config.json").write_text(json.dumps(data if out is None else out))


@pytest.mark.parametrize(
    "change, words",
    [
        (lambda d: [1, 2], "holds a JSON list, not an object"),
        (lambda d: d.pop("config") and None, "has no 'config' section"),
        (lambda d: d["config"].update(stages=[[8, -8, 8], [16, 16]]), "from 1 below 2**31, got -8"),
        (lambda d: d["config"].update(stages=[[8, "abc", 8], [16, 16]]), "2**31, got 'abc'"),
        (lambda d: d["config"].update(stages=[[8, 0, 8], [16, 16]]), "from 1 below 2**31, got 0"),
        (lambda d: d["config"].update(in_channels=True), "in_channels must be an integer"),
        (lambda d: d["config"].update(stages=[[15000, 8, 8], [16, 16]]), "do not fit its config"),
        (lambda d: d["config"].update(family="transformer-xl"), "unknown model family"),
        (lambda d: d["config"].update(colour="red"), "unknown vgg config fields ['colour']"),
        (lambda d: d.update(classes=[2, 3, 4]), "lists classes [2, 3, 4] for a head of"),
        (lambda d: d.update(classes=["x"] * 5), "list one class id (an integer from 0 to 999,999)"),
        # the rest gave tracebacks, or (an id of 10**30) took all the memory there was
        (lambda d: d.update(classes=[10**30, 1, 2, 3, 4]), "lists classes [1000000000000000"),
        (lambda d: d.update(classes=-1), "lists classes [-1] for a head of 5 outputs"),
        (lambda d: d.update(classes=[]), "lists classes [] for a head of 5 outputs"),
        (lambda d: d.update(identity_blocks=0), "lists identity_blocks 0; list the numbers (0 to"),
        (lambda d: d.update(identity_blocks="bogus"), "lists identity_blocks 'bogus'"),
        (lambda d: d.update(identity_blocks=[99]), "lists identity_blocks [99]"),
        (lambda d: d.update(label=0), "has label 0: it names the model in messages"),
        (lambda d: d.update(heads=[{"name": "x"}]), "has malformed heads"),
        (lambda d: d["config"].update(family=["vgg"]), "unknown model family ['vgg']"),
        (lambda d: d["config"].update(kernel=10**30), "kernel must be an integer from 1 below"),
        (lambda d: d["config"].update(spatial_dims=3), "spatial_dims is 3: 1 (signals) or 2"),
        (lambda d: d.update(heterogui=["network"]), "is neither a heterogui config nor"),
        (lambda d: d.update(classes=[0, 1, 2, 3, 3]), "lists class [3] twice in one head of 5"),
    ],
)
def test_a_broken_config_json_is_refused_before_anything_is_built(ws, capsys, change, words):
    edit_config(ws / "a", change)
    cli_refuses(ws, ["merge", str(ws / "recipe.yaml"), "--out", str(ws / "o")], words, capsys)


@pytest.mark.parametrize(
    "change, words",
    [
        (lambda d: d["heads"][0][0].update(classes=[0, 1]), "classes [0, 1] for a head of 5"),
        (lambda d: d["heads"][1][0]["classes"].__setitem__(0, -1), "(the heads of model 2)"),
        (lambda d: d["heads"][0][0]["classes"].__setitem__(1, 0), "lists class [0] twice"),
        (lambda d: d.update(heads=[[], []]), "lists classes [] for a head of 5 outputs"),
        (lambda d: d.update(heads=d["heads"][:1]), "the heads of 1 model(s) for 2 merged"),
        (lambda d: d.update(stop=99), "stops at block 99, but its trunk has"),
        (lambda d: d.update(stop=True), "stop True is not a block number from 0"),  # was 1
        (lambda d: d.update(layout="bogus"), "layout 'bogus' is none of ['channels', 'flat'"),
    ],
)
def test_a_merge_whose_heads_do_not_fit_its_outputs_is_refused(ws, capsys, change, words):
    assert main(["merge", str(ws / "recipe.yaml"), "--out", str(ws / "m")]) == 0
    capsys.readouterr()
    edit_config(ws / "m", change)
    recipe = yaml.safe_load((ws / "recipe.yaml").read_text())
    recipe["model_a"] = {"path": str(ws / "m")}  # the merge merged again, with B
    (ws / "again.yaml").write_text(yaml.safe_dump(recipe))
    cli_refuses(ws, ["merge", str(ws / "again.yaml"), "--out", str(ws / "o")], words, capsys)


def test_nan_weights_name_the_model_and_the_tensor(ws, capsys):
    from safetensors.torch import load_file

    state = load_file(str(ws / "b" / "model.safetensors"))
    state["blocks.2.conv.weight"][0, 0, 0, 0] = float("nan")
    save_file(state, str(ws / "b" / "model.safetensors"))
    err = cli_refuses(
        ws, ["merge", str(ws / "recipe.yaml"), "--out", str(ws / "o")], "NaN or inf", capsys
    )
    assert "model b: tensor blocks.2.conv.weight" in err


@pytest.mark.parametrize(
    "setup, words",
    [
        (lambda ws: shutil.rmtree(ws / "a"), "does not exist"),
        (lambda ws: (shutil.rmtree(ws / "a"), (ws / "a").write_text("x")), "is a file"),
        (lambda ws: (ws / "a" / "config.json").unlink(), "has no config.json"),
        (lambda ws: (ws / "a" / "model.safetensors").unlink(), "has no model.safetensors"),
        (lambda ws: (ws / "a" / "model.safetensors").write_bytes(b"\x00" * 3), "not a safetensors"),
    ],
)
def test_a_missing_or_wrong_model_path_says_what_is_wrong(ws, capsys, setup, words):
    setup(ws)
    cli_refuses(ws, ["merge", str(ws / "recipe.yaml"), "--out", str(ws / "o")], words, capsys)


def test_a_partial_merge_is_refused_as_a_model(ws, capsys):
    data = {**recipe(ws), "stop": 2}
    assert main(["merge", str(write_recipe(ws, data, "p.yaml")), "--out", str(ws / "p")]) == 0
    again = {**recipe(ws), "model_a": {"path": str(ws / "p")}}
    path = write_recipe(ws, again)
    cli_refuses(ws, ["merge", str(path), "--out", str(ws / "o")], "full zip", capsys)


# --- The CLI: data --------------------------------------------------------------------------


def data_case(ws: Path, tensors: dict) -> Path:
    save_file(tensors, str(ws / "d.safetensors"))
    data = recipe(ws)
    data["calibration"]["source"] = str(ws / "d.safetensors")
    return write_recipe(ws, data)


@pytest.mark.parametrize(
    "tensors, words",
    [
        ({"inputs": torch.randn(32, 3, 8, 8)}, "have shape (32, 3, 8, 8) but model a reads (N, 1,"),
        ({"inputs": torch.randn(32)}, "one row per input"),
        ({"pixels": torch.randn(32, 1, 8, 8)}, "has no 'inputs' tensor"),
        ({"inputs": torch.randn(0, 1, 8, 8)}, "hold no inputs (shape (0, 1, 8, 8)); save at least"),
        (
            {"inputs": torch.randn(32, 1, 8, 8).index_fill_(0, torch.tensor([5]), float("nan"))},
            "NaN or inf in 1 input(s), the first at row 5",
        ),
        (
            {"inputs": torch.randn(32, 1, 8, 8), "labels": torch.zeros(31, dtype=torch.int64)},
            "one integer class id per input",
        ),
        (  # the VGG pools twice: a 1 x 1 image cannot pass (it was a torch traceback)
            {"inputs": torch.randn(32, 1, 1, 1)},
            "calibration inputs of shape (1, 1, 1) are too small for model a (",
        ),
        ({"inputs": torch.randn(32, 1, 0, 8)}, "inputs of shape (1, 0, 8) are too small"),
    ],
)
def test_bad_calibration_tensors_say_the_expected_shape(ws, capsys, tensors, words):
    path = data_case(ws, tensors)
    cli_refuses(ws, ["merge", str(path), "--out", str(ws / "o")], words, capsys)


def test_integer_images_are_read_unscaled_with_a_warning(ws, caplog):
    import logging

    pixels = (torch.rand(32, 1, 8, 8, generator=torch.Generator().manual_seed(2)) * 255).byte()
    path = data_case(ws, {"inputs": pixels})
    with caplog.at_level(logging.WARNING, logger="heterogui.datasets.refs"):
        assert main(["merge", str(path), "--out", str(ws / "o")]) == 0
    said = [r.getMessage() for r in caplog.records if "read as those numbers" in r.getMessage()]
    low, high = int(pixels.min()), int(pixels.max())
    assert said == [
        f"'inputs' in {ws / 'd.safetensors'} are uint8 ({low} to {high}), read as those numbers, "
        "not scaled: if the models read scaled values (the built-in digits are 0 to 1), save "
        "them scaled, as floats"
    ]


def test_evaluation_labels_the_models_do_not_predict_are_named(ws, capsys, caplog):
    import logging

    inputs = torch.randn(40, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    save_file({"inputs": inputs, "labels": torch.full((40,), 12)}, str(ws / "none.safetensors"))
    data = recipe(ws)
    data["evaluation"] = {"source": str(ws / "none.safetensors")}
    words = "none.safetensors is a class the models predict (0-9); label the inputs with"
    cli_refuses(ws, ["merge", str(write_recipe(ws, data)), "--out", str(ws / "o")], words, capsys)
    labels = torch.tensor([12] * 20 + list(range(10)) * 2)
    save_file({"inputs": inputs, "labels": labels}, str(ws / "some.safetensors"))
    data["evaluation"] = {"source": str(ws / "some.safetensors")}
    with caplog.at_level(logging.WARNING, logger="heterogui.tasks.images"):
        assert main(["merge", str(write_recipe(ws, data)), "--out", str(ws / "o")]) == 0
    assert "20 of 40 inputs of " in caplog.text
    assert "some.safetensors have a label no model predicts (classes 0-9)" in caplog.text
    metrics = json.loads((ws / "o" / "report.json").read_text())["metrics"]
    assert sum(t["count"] for t in metrics["merged"]["tasks"]) == 20  # the others left out


def test_class_ids_past_the_data_or_a_million_are_refused(ws, capsys):
    # Scoring names every class up to the largest id: 2**62 took all the memory there was.
    inputs = torch.randn(40, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([2**62] + list(range(10)) * 3 + [0] * 9)
    save_file({"inputs": inputs, "labels": labels}, str(ws / "huge.safetensors"))
    data = recipe(ws)
    data["evaluation"] = {"source": str(ws / "huge.safetensors")}
    words = f"hold class id {2**62}; use ids from 0 to 999,999"
    cli_refuses(ws, ["merge", str(write_recipe(ws, data)), "--out", str(ws / "o")], words, capsys)
    # A head's class the built-in data does not have: its own samples dropped out unsaid.
    edit_config(ws / "a", lambda d: d.update(classes=[0, 1, 2, 3, 10]))
    data["evaluation"] = {"source": "digits", "size": 100}
    words = "heads list class [10], but digits has classes 0 to 9; evaluate on data with those"
    cli_refuses(ws, ["merge", str(write_recipe(ws, data)), "--out", str(ws / "o")], words, capsys)


def test_a_data_path_that_is_a_folder_says_so(ws, capsys):
    data = recipe(ws)
    data["calibration"]["source"] = str(ws / "a.safetensors")
    (ws / "a.safetensors").mkdir()
    path = write_recipe(ws, data)
    cli_refuses(ws, ["merge", str(path), "--out", str(ws / "o")], "is a folder, not a file", capsys)


def test_text_data_that_is_not_text_is_refused(ws):
    from heterogui.config import DataRef
    from heterogui.datasets.refs import load_sentence_pairs, load_sentences

    (ws / "s.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    with pytest.raises(ConfigError, match="is not UTF-8 text: byte"):
        load_sentences(DataRef(str(ws / "s.txt")))
    (ws / "p.tsv").write_text("4.5\tA dog runs.\tA dog is running.\nhigh\tone\ttwo\n")
    with pytest.raises(ConfigError, match=r"p.tsv line 2: the score 'high' is not a number"):
        load_sentence_pairs(DataRef(str(ws / "p.tsv"), size=None))
    (ws / "q.tsv").write_text("4.5\tA dog runs.\tA dog is running.\n3 A cat sleeps. A cat naps.\n")
    with pytest.raises(ConfigError, match="q.tsv line 2: 1 tab-separated fields, expected 3; "):
        load_sentence_pairs(DataRef(str(ws / "q.tsv"), size=None))
    (ws / "two.tsv").write_text("4.5\tA dog runs.\tA dog is running.\n1\tA cat.\tA car.\n")
    with pytest.raises(ConfigError, match="two.tsv holds 2 scored pair"):
        load_sentence_pairs(DataRef(str(ws / "two.tsv"), size=None))
    (ws / "same.tsv").write_text("".join(f"3\tsentence {k}\tother {k}\n" for k in range(6)))
    with pytest.raises(ConfigError, match="every pair of same.tsv has the score 3.0, so no rank"):
        load_sentence_pairs(DataRef(str(ws / "same.tsv"), size=None))
    (ws / "r.tsv").write_text("4.5\tA dog runs.\tA dog is running.\n80\tA cat.\tA car.\n")
    with pytest.raises(ConfigError, match=r"r.tsv line 2: score 80.0 is outside \[0, 5\]; scale"):
        load_sentence_pairs(DataRef(str(ws / "r.tsv"), size=None))


def test_evaluation_of_overlapping_tasks_is_refused_with_the_reason(ws, capsys):
    save_network(make(CONFIGS[1], 2, "c", (0, 1, 2, 3, 4)), ws / "c")
    data = {**recipe(ws), "model_b": {"path": str(ws / "c")}}
    data["evaluation"] = {"source": "digits", "split": "test"}
    path = write_recipe(ws, data)
    cli_refuses(ws, ["merge", str(path), "--out", str(ws / "o")], "share classes", capsys)


# --- Hugging Face folders ---------------------------------------------------------------------


def test_a_text_model_without_its_tokenizer_is_refused(tmp_path):
    from heterogui.sources.registry import load
    from tests.conftest import tiny_hf

    tiny_hf(seed=0).save_pretrained(tmp_path / "bert")
    with pytest.raises(ModelLoadError, match="has no tokenizer"):
        load(str(tmp_path / "bert"))


def test_a_device_given_as_a_model_folder_is_not_said_to_be_missing():
    from heterogui.sources.registry import load

    with pytest.raises(ModelLoadError, match="'/dev/null' is not a folder; a model is a folder"):
        load("/dev/null")


def test_a_hub_id_when_the_hub_is_off_says_so():
    from heterogui.run import load_pair

    with pytest.raises(ModelLoadError, match="HF_HUB_OFFLINE=1"):
        load_pair("someone/a-model", "someone/b-model")


def test_a_model_path_too_long_for_the_system_is_one_short_line(tmp_path):
    from heterogui.run import load_pair

    # Path.is_dir raised a bare OSError through the Python API; the CLI quoted all 5,000 bytes
    for path in ("x" * 5000, str(tmp_path / ("y" * 300) / "model")):
        with pytest.raises(ModelLoadError, match="File name too long: use a shorter path") as err:
            load_pair(path, path)
        assert len(str(err.value)) < 200


# --- The workbench ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def res(tmp_path_factory):
    from heterogui.ui.resources import Resources, ZooPairs

    root = tmp_path_factory.mktemp("exports")
    return Resources(ZooPairs(tiny=True), device="cpu", export_root=root)


@pytest.fixture()
def session(res):
    from heterogui.ui import tab_models, tab_zip
    from heterogui.ui.session import Session

    s = Session(device="cpu")
    tab_models.on_load_pair(s, res, "tiny-digits-vgg-depth")
    n = s.prepared.padded_a.graph().num_blocks - 1
    tab_zip.on_merge(s, res, "zip", 0.5, 1.0, 1.0, n, "cpu")
    return s


@pytest.mark.parametrize(
    "out, words",
    [
        ("../../somewhere", "is not a folder below the export folder"),
        ("/tmp/elsewhere", "is not a folder below the export folder"),
        ("", "type an output folder"),
        (".", "is not a folder below"),
        ("two\nlines", "has a control character (a newline or tab?) in its name"),
        ("nul\x00byte", "has a control character (a newline or tab?) in its name"),
        ("x" * 300, "is 300 bytes long; it may have 223: choose a shorter name"),
    ],
)
def test_workbench_exports_stay_below_the_export_root(session, res, out, words):
    from heterogui.errors import ExportError
    from heterogui.ui import tab_export

    before = snapshot(res.export_root.parent)
    with pytest.raises(ExportError, match=re.escape(words)):
        tab_export.on_export(session, res, out, True)
    assert snapshot(res.export_root.parent) == before


def test_workbench_overwrite_replaces_only_an_earlier_export(session, res):
    from heterogui.errors import ExportError
    from heterogui.ui import tab_export

    theirs = res.export_root / "theirs"
    theirs.mkdir()
    (theirs / "notes.md").write_text("keep me")
    with pytest.raises(ExportError, match="did not write"):
        tab_export.on_export(session, res, "theirs", True)
    assert (theirs / "notes.md").read_text() == "keep me"
    tab_export.on_export(session, res, "mine", False)
    with pytest.raises(ExportError, match="already exists"):
        tab_export.on_export(session, res, "mine", False)
    tab_export.on_export(session, res, "mine", True)  # an earlier export: replaced
    assert (res.export_root / "mine" / "model.safetensors").is_file()


def test_an_export_never_replaces_what_another_open_session_wrote_or_reads(session, res):
    """Users share the export folder: B may not overwrite A's export while A's page is open,
    nor a folder A loaded as a model; A may, and anyone may once A's session is gone."""
    import gc

    from heterogui.errors import ExportError
    from heterogui.ui import tab_export, tab_models, tab_zip
    from heterogui.ui.session import Session

    other = Session(device="cpu")
    tab_models.on_load_pair(other, res, "tiny-digits-vgg-depth")
    tab_zip.on_merge(other, res, "zip", 0.5, 1.0, 0.5, None, "cpu")
    res.exports.seen(session)
    res.exports.seen(other)
    tab_export.on_export(session, res, "guarded", False)
    before = snapshot(res.export_root / "guarded")
    with pytest.raises(ExportError, match="'guarded' is the export of another open session"):
        tab_export.on_export(other, res, "guarded", True)
    assert snapshot(res.export_root / "guarded") == before
    tab_export.on_export(session, res, "guarded", True)  # its own: replaced
    # the other session loads that export as its model A: nobody may replace it now
    folder = str(res.export_root / "guarded")
    tab_models.on_load_model(other, res, "a", "folder", None, folder, None, None)
    with pytest.raises(ExportError, match="input"):
        tab_export.on_export(session, res, "guarded", True)
    del other  # its page closed: the guard forgets it
    gc.collect()
    tab_export.on_export(session, res, "guarded", True)


def test_two_sessions_exporting_one_folder_at_once_take_turns(session, res):
    import threading

    from heterogui.errors import ExportError
    from heterogui.ui import tab_export, tab_models, tab_zip
    from heterogui.ui.session import Session

    other = Session(device="cpu")
    tab_models.on_load_pair(other, res, "tiny-digits-vgg-depth")
    tab_zip.on_merge(other, res, "zip", 0.5, 1.0, 0.5, None, "cpu")
    for s in (session, other):
        res.exports.seen(s)
    said = []

    def export(s):
        try:
            tab_export.on_export(s, res, "race", True)
            said.append("exported")
        except ExportError as exc:
            said.append(str(exc))

    threads = [threading.Thread(target=export, args=(s,)) for s in (session, other)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(said)[0] == "exported" and "export of another open session" in sorted(said)[1]


@pytest.mark.parametrize(
    "text, words",
    [
        (BOMB, "alias *a"),
        ('{"a": [[0, 1, 2], [0, 1]]}', "a mapping looks like"),
        ("[" * 30_000, "characters long"),
        ("[" * 5000, "the mapping does not parse; write it like"),
    ],
)
def test_a_bad_mapping_is_refused_and_the_alignment_kept(session, res, text, words):
    from heterogui.ui import tab_align

    kept = session.prepared
    with pytest.raises(AlignmentError, match=re.escape(words)) as info:
        tab_align.on_mapping(session, res, text)
    assert session.prepared is kept and "\n" not in str(info.value) and len(str(info.value)) < 400


@pytest.mark.parametrize(
    "space, rho, width, words",
    [
        ("block0", None, 200_000_000, "out of range: use an integer from 1 to"),
        ("block0", None, -3, "must be a positive integer"),
        ("block0", None, "32.5", "width 32.5 must be a positive integer"),  # not cut to 32
        ("block0", "0.5", "20", "give a rho or a width, not both"),  # the width won silently
        ("block0", 1.5, None, "must lie in [0, 1]"),
        ("nowhere", 0.5, None, "choose a merge point"),
    ],
)
def test_a_bad_override_is_refused_without_building_anything(
    session, res, space, rho, width, words
):
    from heterogui.ui import zip_overrides

    settings = session.settings
    with pytest.raises(HeteroguiError, match=re.escape(words)):
        zip_overrides.on_set_override(session, res, space, rho, width)
    assert session.settings is settings


@pytest.mark.parametrize("matched_estimate", [True, False])  # False: as for a large pair
def test_an_override_width_the_zip_cannot_reach_is_refused_when_set(
    session, res, monkeypatch, matched_estimate
):
    from heterogui import sizes
    from heterogui.ui import tab_zip, zip_overrides

    if not matched_estimate:
        monkeypatch.setattr(sizes, "MATCHED_ESTIMATE_ENTRIES", 0)
    n = session.prepared.padded_a.graph().num_blocks - 1
    tab_zip.on_knobs(session, res, "zip", 0.5, 0.0, 1.0, n)  # beta 0: no within-model merges
    settings = session.settings
    n_a = session.prepared.padded_a.graph().spaces["block0"].width  # B's is the same
    with pytest.raises(HeteroguiError, match="merge point block0: cannot zip .* smallest reach"):
        zip_overrides.on_set_override(session, res, "block0", None, n_a - 2)
    assert session.settings is settings
    zip_overrides.on_set_override(session, res, "block0", None, n_a)  # A and B pairwise
    tab_zip.on_merge(session, res, "zip", 0.5, 0.0, 1.0, n, "cpu")
    assert session.result.widths()["block0"][2] == n_a
    if matched_estimate:  # a reachable override that a lower beta makes unreachable
        tab_zip.on_knobs(session, res, "zip", 0.5, 1.0, 1.0, n)
        zip_overrides.on_set_override(session, res, "block0", None, n_a - 2)
        tab_zip.on_knobs(session, res, "zip", 0.5, 0.0, 1.0, n)
        readout = tab_zip.render(session, res)["readout"]
        assert readout.startswith("**Error:** merge point block0: cannot zip")


def test_cancel_with_nothing_running_says_so(session, res):
    from heterogui.ui import tab_zip

    assert "Nothing is running" in tab_zip.on_cancel(session, res)
    assert not session.cancel_requested


def test_a_bad_upload_is_refused_and_leaves_nothing(session, res, tmp_path):
    from heterogui.ui import tab_models

    kept = session.a
    fake = tmp_path / "model.zip"
    fake.write_text("not a zip")
    with pytest.raises(ModelLoadError, match="not a valid .zip"):
        tab_models.on_load_model(session, res, "a", "upload", None, None, [str(fake)], None)
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("/etc/evil", "x")
    with pytest.raises(ModelLoadError, match="outside the archive"):
        tab_models.on_load_model(session, res, "a", "upload", None, None, [str(evil)], None)
    for order in (["x", "x/y"], ["x/y", "x"], ["x", "x"]):  # a file and a folder of one name
        clash = tmp_path / "clash.zip"
        with zipfile.ZipFile(clash, "w") as zf, warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # zipfile's "Duplicate name"
            zf.writestr("config.json", "{}")
            for name in order:
                zf.writestr(name, "x")
        with pytest.raises(ModelLoadError, match=r"holds '(x|x/y)' twice, or as a file and a"):
            tab_models.on_load_model(session, res, "a", "upload", None, None, [str(clash)], None)
    # a truncated GGUF file is named as uploaded (not "the upload", nor its temporary copy)
    from heterogui.sources.gguf_files import smollm2_gguf

    cut = tmp_path / "cut.gguf"
    with open(smollm2_gguf(), "rb") as whole:
        cut.write_bytes(whole.read(5_000_000))
    with pytest.raises(ModelLoadError, match=r"GGUF file cut\.gguf is truncated") as refused:
        tab_models.on_load_model(session, res, "a", "upload", None, None, [str(cut)], None)
    assert str(session.workdir) not in str(refused.value)
    upper = tmp_path / "EXPORT.ZIP"  # an upper-case suffix is a .zip too
    upper.write_text("not a zip")
    with pytest.raises(ModelLoadError, match="EXPORT.ZIP is not a valid .zip archive"):
        tab_models.on_load_model(session, res, "a", "upload", None, None, [str(upper)], None)
    # every file of a sentence-transformers folder: two config.json (the pooling one last)
    (tmp_path / "pool").mkdir()
    (tmp_path / "pool" / "config.json").write_text('{"pooling_mode_mean_tokens": true}')
    (tmp_path / "weights.safetensors").write_bytes(b"x")
    (tmp_path / "config.json").write_text("{}")
    files = [str(tmp_path / n) for n in ("weights.safetensors", "config.json", "pool/config.json")]
    with pytest.raises(ModelLoadError, match="two files named config.json"):
        tab_models.on_load_model(session, res, "a", "upload", None, None, files, None)
    assert session.a is kept
    assert list(Path(session.workdir).iterdir()) == []


# --- The Python API ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, error, words",
    [
        (BOMB, ConfigError, "aliases are refused"),
        (
            "model_a: {path: x}\nmodel_b: {path: y}\nalignment: {mode: diagonal}\n",
            ConfigError,
            "unknown",
        ),
        (
            "model_a: {path: /no/such/folder}\nmodel_b: {path: y}\n",
            ModelLoadError,
            "does not exist",
        ),
    ],
)
def test_the_python_api_refuses_as_the_cli_does(ws, text, error, words):
    import heterogui

    (ws / "bad.yaml").write_text(text)
    before = snapshot(ws)
    with pytest.raises(error, match=re.escape(words)) as info:
        heterogui.merge(ws / "bad.yaml")
    assert "\n" not in str(info.value) and snapshot(ws) == before


def test_the_python_api_refuses_an_output_that_is_an_input(ws):
    from heterogui import run
    from heterogui.errors import ExportError

    done = run.merge(ws / "recipe.yaml")
    before = snapshot(ws)
    for out in (ws / "a", ws / "b" / "inside", ws / "calib.safetensors"):
        with pytest.raises(ExportError, match="an input"):
            run.export(done, out, overwrite=True)
    assert snapshot(ws) == before


def test_ctrl_c_after_the_folder_is_written_says_it_is_there(ws, capsys, monkeypatch):
    import heterogui.distributed

    def interrupted(*args, **kwargs):  # Ctrl-C as the merge winds up, after the export
        raise KeyboardInterrupt

    monkeypatch.setattr(heterogui.distributed, "shutdown", interrupted)
    assert main(["merge", str(ws / "recipe.yaml"), "--out", str(ws / "o")]) == 130
    err = capsys.readouterr().err
    assert err.strip() == f"error: interrupted after {ws / 'o'} was written whole"
    assert (ws / "o" / "model.safetensors").is_file()


def test_a_manual_mapping_that_does_not_fit_the_models_says_how(ws, capsys):
    from heterogui.models.io import load_network

    stages = [len(s) for s in load_network(ws / "a").graph().stages]
    stages_b = [len(s) for s in load_network(ws / "b").graph().stages]
    data = recipe(ws)
    ok = {
        "a": [list(range(n)) for n in stages],
        "b": [list(range(n)) for n in stages_b],
    }
    data["alignment"] = {"mode": "manual", "mapping": {**ok, "a": [*ok["a"], [0]]}}
    words = f"manual mapping for A lists {len(stages) + 1} stage(s) but the models have"
    cli_refuses(ws, ["merge", str(write_recipe(ws, data)), "--out", str(ws / "o")], words, capsys)
    data["alignment"]["mapping"] = {**ok, "a": [[*ok["a"][0], 9], *ok["a"][1:]]}
    words = f"{stages[0] + 1} slot(s) for {stages[0]} layer(s); give one slot per layer"
    cli_refuses(ws, ["merge", str(write_recipe(ws, data)), "--out", str(ws / "o")], words, capsys)


def test_an_export_gets_the_modes_the_umask_allows(ws):
    old = os.umask(0o027)
    try:
        assert main(["merge", str(ws / "recipe.yaml"), "--out", str(ws / "o")]) == 0
    finally:
        os.umask(old)
    assert (ws / "o").stat().st_mode & 0o777 == 0o750  # not mkdtemp's 0700
    modes = {p.name: p.stat().st_mode & 0o777 for p in (ws / "o").iterdir()}
    assert modes["model.safetensors"] == 0o640  # not safetensors' 0600
    assert set(modes.values()) == {0o640}


def test_a_recorded_recipe_runs_again_without_warnings(ws, caplog):
    import logging

    data = recipe(ws)
    data["calibration"]["size"] = 64  # all the file holds: no warning about fewer inputs
    assert main(["merge", str(write_recipe(ws, data)), "--out", str(ws / "o")]) == 0
    recorded = yaml.safe_load((ws / "o" / "recipe.yaml").read_text())
    assert recorded["zip"]["heads"] == "auto"  # these models have no attention heads
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert main(["merge", str(ws / "o" / "recipe.yaml"), "--out", str(ws / "again")]) == 0
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    first, again = (ws / d / "model.safetensors" for d in ("o", "again"))
    assert first.read_bytes() == again.read_bytes()


def test_recipe_errors_name_the_models_and_keys_as_a_recipe_writes_them(ws, capsys):
    from heterogui.models.mlp import MLPConfig

    save_network(make(MLPConfig(64, (16, 16), 5), 2, "c"), ws / "c")
    data = recipe(ws)
    data["models"] = [data.pop("model_a"), data.pop("model_b"), {"path": str(ws / "c")}]
    err = cli_refuses(
        ws, ["merge", str(write_recipe(ws, data)), "--out", str(ws / "o")], "", capsys
    )
    assert "model C against model A: " in err and "model B" not in err, err
    data = {**recipe(ws), "colour": "blue"}
    err = cli_refuses(
        ws, ["merge", str(write_recipe(ws, data)), "--out", str(ws / "o")], "", capsys
    )
    assert "'models'" in err and "more_models" not in err


def test_an_uploaded_recipe_is_named_by_its_file_and_not_mixed_with_pasted_text(tmp_path):
    from heterogui.ui import exporting

    upload = tmp_path / "server-copy-4f2a" / "mine.yaml"
    upload.parent.mkdir()
    upload.write_text("x" * 2_000_000)  # too large: the message names the file
    with pytest.raises(ConfigError, match="mine.yaml") as info:
        exporting.read_recipe(str(upload), None)
    assert str(upload.parent) not in str(info.value)
    with pytest.raises(ConfigError, match="remove the file or clear the text"):
        exporting.read_recipe(str(upload), "model_a: x\n")
    upload.unlink()  # the server's copy deleted after an hour
    with pytest.raises(ModelLoadError, match="the upload 'mine.yaml' is no longer on the server"):
        exporting.read_recipe(str(upload), None)
    from heterogui.sources.upload import receive

    with pytest.raises(ModelLoadError, match="the upload 'model.zip' is no longer on the server"):
        receive([str(upload.parent / "model.zip")])


def test_images_of_another_size_than_the_training_data_warn(caplog):
    """A ResNet runs on 4 x 4 digits; the zoo pair was trained on 8 x 8: said, not refused."""
    import logging
    from types import SimpleNamespace

    from heterogui.tasks import images

    with caplog.at_level(logging.WARNING, logger="heterogui.tasks.images"):
        images._warn_of_another_size(
            torch.zeros(4, 1, 8, 8), SimpleNamespace(dataset="digits"), "x"
        )
        assert caplog.text == ""
        images._warn_of_another_size(
            torch.zeros(4, 1, 4, 4), SimpleNamespace(dataset="digits"), "x"
        )
    assert "x inputs have shape (1, 4, 4) but the models were trained on digits, (1, 8, 8)" in (
        caplog.text
    )
