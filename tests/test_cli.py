"""End to end through the CLI: recipes, result folders, reloading, errors that lose nothing."""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import save_file

import heterogui
from heterogui.cli import main
from heterogui.config import Recipe
from heterogui.errors import ConfigError
from heterogui.export.network import save_merged
from heterogui.models.io import save_network, state_sha256
from heterogui.models.resnet import cifar_resnet
from heterogui.models.vgg import VGGConfig
from heterogui.recipe_parse import load_recipe, recipe_from_dict
from heterogui.run import merge as merge_recipe
from heterogui.sources.folder import load_merged
from heterogui.sources.hf import files_sha256
from tests.conftest import make

PAIRS = {
    "depth": (VGGConfig(1, ((8, 8, 8), (16, 16)), 5), VGGConfig(1, ((8,), (16, 16, 16)), 5)),
    "width": (cifar_resnet((2, 2), 1, 5, 1, base=8), cifar_resnet((2, 2), 2, 5, 1, base=8)),
}


def write_case(tmp_path: Path, pair: str, **recipe_fields) -> Path:
    """Write two model folders, a calibration file and a recipe; return the recipe path."""
    config_a, config_b = PAIRS[pair]
    a, b = make(config_a, 0), make(config_b, 1)
    b.classes = (5, 6, 7, 8, 9)
    save_network(a, tmp_path / "a")
    save_network(b, tmp_path / "b")
    gen = torch.Generator().manual_seed(0)
    save_file(
        {"inputs": torch.randn(96, 1, 8, 8, generator=gen)}, str(tmp_path / "calib.safetensors")
    )
    recipe = {
        "model_a": {"path": str(tmp_path / "a")},
        "model_b": {"path": str(tmp_path / "b")},
        "calibration": {
            "source": str(tmp_path / "calib.safetensors"),
            "size": 64,
            "batch_size": 32,
        },
        "device": "cpu",
        **recipe_fields,
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def outputs(model, seed: int = 1):
    x = torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model(x)


@pytest.mark.parametrize("pair", list(PAIRS))
def test_merge_through_the_cli_writes_a_folder_that_reloads(tmp_path, pair, capsys):
    recipe = write_case(tmp_path, pair, zip={"rho": 0.75})
    out = tmp_path / "merged"
    assert main(["merge", str(recipe), "--out", str(out)]) == 0
    assert {p.name for p in out.iterdir()} == {
        "config.json",
        "model.safetensors",
        "recipe.yaml",
        "report.json",
        "README.md",  # the model card and its figures
        "alignment.svg",
        "widths.svg",
        ".heterogui-output",  # the marker: what a later --overwrite may replace
    }
    report = json.loads((out / "report.json").read_text())
    assert report["timings_seconds"]["total"] > 0
    assert report["torch_threads"] == torch.get_num_threads()  # what bit-for-bit repeats need
    assert report["processes"] == 1  # and the torchrun processes that split the sums
    assert "wrote" in capsys.readouterr().out

    done = load_recipe(out / "recipe.yaml")
    assert done.model_a.sha256 and done.model_b.sha256 and done.versions["torch"]
    assert done.alignment.mapping == report["alignment"]["mapping"]
    with safe_open(str(out / "model.safetensors"), "pt") as handle:
        assert Recipe and json.loads(handle.metadata()["recipe"]) == done.to_dict()

    reloaded = load_merged(out)
    assert report["parameters"]["merged"] == sum(p.numel() for p in reloaded.parameters())
    again = merge_recipe(out / "recipe.yaml")  # the recorded recipe repeats the merge
    for x, y in zip(outputs(reloaded), outputs(again.result.model), strict=True):
        assert torch.equal(x, y)
    assert state_sha256(reloaded.state_dict()) == state_sha256(again.result.model.state_dict())
    assert reloaded.spec.classes == ((0, 1, 2, 3, 4), (5, 6, 7, 8, 9))


def test_a_size_over_the_data_warns_and_the_report_counts_what_was_used(tmp_path, caplog):
    recipe = write_case(tmp_path, "depth")
    raw = yaml.safe_load(recipe.read_text())
    raw["calibration"]["size"] = 500  # the file holds 96 inputs
    gen = torch.Generator().manual_seed(1)
    test = {"inputs": torch.randn(40, 1, 8, 8, generator=gen), "labels": torch.arange(40) % 10}
    save_file(test, str(tmp_path / "test.safetensors"))
    raw["evaluation"] = {"source": str(tmp_path / "test.safetensors"), "size": 100}
    recipe.write_text(yaml.safe_dump(raw))
    out = tmp_path / "merged"
    with caplog.at_level("WARNING", logger="heterogui.run"):
        assert main(["merge", str(recipe), "--out", str(out)]) == 0
    assert "calibration: 96 inputs" in caplog.text and "not the 500 asked" in caplog.text
    assert "evaluation: 40 inputs" in caplog.text and "not the 100 asked" in caplog.text
    report = json.loads((out / "report.json").read_text())
    assert report["calibration_count"] == 96
    # how the merge ran, "auto" resolved (the fusion moves accuracy most; no card said it)
    settings = report["settings"]
    assert settings["fusion"] == "least_squares" and settings["ridge"] == 0.01
    assert settings["bn_units"] is True and "heads" not in settings  # no attention
    card = (out / "README.md").read_text()
    assert "| fusion | least_squares |" in card and "| bn_units | true |" in card
    # A's and B's scores are those of their BatchNorm-re-estimated copies: said so
    assert "Scores of A, B and the ensemble: with their BatchNorm statistics re-estimated" in card


def test_a_collapse_alarm_is_printed_and_in_the_summary(tmp_path, caplog, capsys, monkeypatch):
    from heterogui.tasks.images import ImageClassification

    recipe = write_case(tmp_path, "depth")
    raw = yaml.safe_load(recipe.read_text())
    test = {"inputs": torch.randn(40, 1, 8, 8), "labels": torch.arange(40) % 10}
    save_file(test, str(tmp_path / "test.safetensors"))
    raw["evaluation"] = {"source": str(tmp_path / "test.safetensors")}
    recipe.write_text(yaml.safe_dump(raw))
    said = "Joint 0.1 is 0.2x the worse parent's"  # what the task says of a collapsed merge
    monkeypatch.setattr(ImageClassification, "alarms", lambda self, scores: [said])
    with caplog.at_level("WARNING", logger="heterogui.cli"):
        assert main(["merge", str(recipe), "--out", str(tmp_path / "m")]) == 0
    assert f"collapse alarm: {said}" in caplog.text
    printed = capsys.readouterr().out
    assert json.loads(printed[: printed.rindex("wrote")])["alarms"] == [said]


def test_a_mapping_beside_an_automatic_mode_warns_that_it_is_not_imposed(tmp_path, caplog):
    mapping = {"a": [[0, 2, 1], [0, 1]], "b": [[0, 1, 2], [0, 1, 2]]}  # not even monotone
    recipe = write_case(tmp_path, "depth", alignment={"mode": "sma", "mapping": mapping})
    with caplog.at_level("WARNING", logger="heterogui.run_checks"):
        done = merge_recipe(recipe)
    assert done.recipe.alignment.mapping != mapping
    assert "not the recipe's mapping {'a': [[0, 2, 1], [0, 1]]" in caplog.text
    assert "mode sma aligns by itself and only records a mapping; to impose one, give " in (
        caplog.text
    )


def test_a_card_says_its_rerun_reads_relative_paths_from_where_the_merge_ran(tmp_path, monkeypatch):
    recipe = write_case(tmp_path, "depth")
    raw = yaml.safe_load(recipe.read_text())
    raw["model_a"]["path"], raw["model_b"]["path"] = "a", "b"
    raw["calibration"]["source"] = "calib.safetensors"
    recipe.write_text(yaml.safe_dump(raw))
    monkeypatch.chdir(tmp_path)
    assert main(["merge", "recipe.yaml", "--out", "merged"]) == 0
    card = (tmp_path / "merged" / "README.md").read_text()
    assert (
        f"`heterogui merge recipe.yaml --out OUT --threads {torch.get_num_threads()}` run from "
        "the folder the merge ran in (the recipe names `a`, `b`, `calib.safetensors` relative "
        "to it) repeats this merge"
    ) in card  # the thread count too: the CPU splits float sums by thread


def test_recipe_round_trips_and_rejects_unknown_keys(tmp_path):
    recipe = load_recipe(write_case(tmp_path, "depth", zip={"alpha": 0.25, "beta": 0.5}))
    assert recipe_from_dict(yaml.safe_load(recipe.to_yaml())) == recipe
    assert recipe_from_dict(json.loads(recipe.to_json())) == recipe
    bad = recipe.to_dict()
    bad["zip"]["alpah"] = 0.1
    with pytest.raises(ConfigError, match=r"recipe.zip: unknown keys \['alpah'\]"):
        recipe_from_dict(bad)
    for field, value, message in [
        ("alpha", 0.0, "alpha = 0.0 is out of range"),
        ("rho", 1.5, "rho = 1.5 is out of range"),
        ("matcher", "magic", "matcher 'magic' is unknown"),
        ("fusion", "lsq", "zip.fusion 'lsq' is unknown"),
        ("ridge", 0.0, "zip.ridge = 0.0 is out of range"),
        ("renormalize", "yes", "renormalize"),
    ]:
        data = recipe.to_dict()
        data["zip"][field] = value
        with pytest.raises(ConfigError, match=message):
            recipe_from_dict(data)


def test_a_least_squares_renormalized_recipe_is_recorded_and_repeats(tmp_path):
    zip_fields = {"rho": 0.5, "fusion": "least_squares", "ridge": 0.05, "renormalize": True}
    recipe = write_case(tmp_path, "depth", alignment={"mode": "lma_first"}, zip=zip_fields)
    out = tmp_path / "merged"
    assert main(["merge", str(recipe), "--out", str(out)]) == 0
    done = load_recipe(out / "recipe.yaml")
    assert (done.zip.fusion, done.zip.ridge, done.zip.renormalize) == ("least_squares", 0.05, True)
    assert done.alignment.mode == "lma_first"
    again = merge_recipe(out / "recipe.yaml")
    plain = merge_recipe(write_case(tmp_path / "plain", "depth", zip={"rho": 0.5}))
    reloaded = load_merged(out)
    assert state_sha256(reloaded.state_dict()) == state_sha256(again.result.model.state_dict())
    assert state_sha256(reloaded.state_dict()) != state_sha256(plain.result.model.state_dict())


def run_error(args, capsys) -> str:
    assert main(args) == 2
    return capsys.readouterr().err


def test_errors_leave_no_partial_folder(tmp_path, capsys):
    recipe = write_case(tmp_path, "width", zip={"matcher": "permute"})  # widths differ
    out = tmp_path / "merged"
    err = run_error(["merge", str(recipe), "--out", str(out)], capsys)
    assert "permute needs equal widths" in err
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "a",
        "b",
        "calib.safetensors",
        "recipe.yaml",
    ]
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    err = run_error(["merge", str(recipe), "--out", str(out)], capsys)
    assert "already holds files heterogui did not write (keep.txt)" in err
    assert (out / "keep.txt").read_text() == "precious"


def test_a_recorded_recipe_refuses_a_model_whose_config_changed(tmp_path, capsys):
    recipe = write_case(tmp_path, "depth")
    out = tmp_path / "merged"
    assert main(["merge", str(recipe), "--out", str(out)]) == 0
    recorded = load_recipe(out / "recipe.yaml")
    assert recorded.model_a.files_sha256 and recorded.model_b.files_sha256
    assert main(["merge", str(out / "recipe.yaml"), "--out", str(tmp_path / "again")]) == 0
    # a zoo model rebuilt (here or elsewhere) has the same weights and config but another
    # training time: its recipes still repeat, as do recipes that hashed the file as stored
    config = tmp_path / "a" / "config.json"
    data = json.loads(config.read_text())
    config.write_text(json.dumps(data | {"train_seconds": 12.5}, indent=1))
    assert main(["merge", str(out / "recipe.yaml"), "--out", str(tmp_path / "rebuilt")]) == 0
    legacy = recorded.to_dict()
    legacy["model_a"]["files_sha256"] = files_sha256(tmp_path / "a", legacy=True)
    assert legacy["model_a"]["files_sha256"] != recorded.model_a.files_sha256
    (tmp_path / "legacy.yaml").write_text(yaml.safe_dump(legacy))
    assert main(["merge", str(tmp_path / "legacy.yaml"), "--out", str(tmp_path / "old")]) == 0
    # the hash it recorded is kept, so that its rerun writes the same recipe (and weights file)
    kept = load_recipe(tmp_path / "old" / "recipe.yaml").model_a.files_sha256
    assert kept == legacy["model_a"]["files_sha256"]
    capsys.readouterr()
    # the weights stay; what they compute may not
    config.write_text(json.dumps(data | {"label": "edited"}))
    err = run_error(["merge", str(out / "recipe.yaml"), "--out", str(tmp_path / "third")], capsys)
    assert f"the config or tokenizer files of {tmp_path / 'a'} changed (config.json)" in err
    assert "restore them or remove its files_sha256" in err and not (tmp_path / "third").exists()


def test_a_recipe_recorded_with_other_versions_says_so(tmp_path, capsys, caplog):
    import logging

    recipe = write_case(tmp_path, "depth")
    out = tmp_path / "merged"
    assert main(["merge", str(recipe), "--out", str(out)]) == 0
    data = yaml.safe_load((out / "recipe.yaml").read_text())
    torch_now = data["versions"]["torch"]
    data["versions"]["torch"] = "1.0"  # as if recorded on another machine
    (tmp_path / "old.yaml").write_text(yaml.safe_dump(data))
    with caplog.at_level(logging.WARNING, logger="heterogui.run_checks"):
        assert main(["merge", str(tmp_path / "old.yaml"), "--out", str(tmp_path / "again")]) == 0
    assert (
        f"this recipe was recorded with torch 1.0, this run has torch {torch_now}: its merge "
        "may differ from the recorded one" in caplog.text
    )
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="heterogui.run_checks"):  # the same: no word
        assert main(["merge", str(out / "recipe.yaml"), "--out", str(tmp_path / "third")]) == 0
    assert "recorded with" not in caplog.text
    capsys.readouterr()


def test_bad_inputs_get_clear_messages(tmp_path, capsys):
    recipe = write_case(tmp_path, "depth")
    data = yaml.safe_load(recipe.read_text())
    cases = [
        ({"model_b": {"path": str(tmp_path / "nowhere")}}, "does not exist"),
        ({"model_a": {"path": str(tmp_path / "a"), "sha256": "0" * 64}}, "changed"),
        ({"calibration": {"source": "no-such-dataset"}}, "unknown dataset"),
        (
            {
                "alignment": {
                    "mode": "manual",
                    "mapping": {"a": [[0, 1, 2], [0, 1]], "b": [[0], [0, 2, 1]]},
                }
            },
            "must keep every slot",
        ),
        ({"stop": 42}, "out of range"),
        ({"calibration": {**data["calibration"], "sha256": "0" * 64}}, "inputs drawn from"),
        ({"colour": "blue"}, "unknown keys ['colour']"),
    ]
    for change, message in cases:
        path = tmp_path / "bad.yaml"
        path.write_text(yaml.safe_dump({**data, **change}))
        err = run_error(["merge", str(path), "--out", str(tmp_path / "o")], capsys)
        assert message in err, (change, err)
        assert not (tmp_path / "o").exists()
    (tmp_path / "b" / "model.safetensors").write_bytes(b"not a safetensors file")
    err = run_error(["merge", str(recipe), "--out", str(tmp_path / "o")], capsys)
    assert "not a valid safetensors file" in err
    assert "does not exist" in run_error(["merge", str(tmp_path / "x.yaml"), "--out", "o"], capsys)


def test_python_dash_m_runs_the_cli():
    done = subprocess.run(
        [sys.executable, "-m", "heterogui", "--help"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0
    for command in ("merge", "zoo", "bench", "app"):
        assert command in done.stdout
    assert "``" not in done.stdout  # plain text, not the module's docstring markup


def test_a_reader_that_goes_away_ends_the_output_without_a_traceback():
    command = [sys.executable, "-m", "heterogui", "zoo", "list", "--tiny"]
    listing = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    listing.stdout.close()  # before it prints its first line: the pipe is broken
    err = listing.stderr.read()
    assert listing.wait(timeout=120) == 1 and "Traceback" not in err and "Broken" not in err


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux)")
def test_output_that_cannot_be_written_is_one_line():
    command = [sys.executable, "-m", "heterogui", "zoo", "list", "--tiny"]
    with open("/dev/full", "w") as full:
        done = subprocess.run(command, stdout=full, stderr=subprocess.PIPE, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr == "error: No space left on device: free some space, or write elsewhere\n"


@pytest.mark.parametrize("error", ["os", "safetensors"])
def test_a_disk_that_fills_up_during_a_merge_leaves_nothing(tmp_path, capsys, monkeypatch, error):
    from safetensors import SafetensorError

    import heterogui.export.network as network

    recipe = write_case(tmp_path, "width")
    before = sorted(p.name for p in tmp_path.iterdir())

    def full(state, path, metadata=None):
        Path(path).write_bytes(b"\0" * 64)  # part of the file made it
        if error == "os":
            raise OSError(errno.ENOSPC, "No space left on device", path)
        # what safetensors raises for the same (not an OSError)
        raise SafetensorError("Error while serializing: I/O error: File too large (os error 27)")

    monkeypatch.setattr(network, "save_file", full)
    out = tmp_path / "new" / "deeper" / "merged"  # parents the merge creates
    err = run_error(["merge", str(recipe), "--out", str(out)], capsys)
    said = (
        f"No space left on device on '{out / 'model.safetensors'}'"
        if error == "os"
        else "Error while serializing: I/O error: File too large (os error 27)"
    )
    assert err == (
        f"error: could not write {out}, nothing was written: {said}: free some space, or "
        "write elsewhere\n"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no folder, no hidden one


def test_an_empty_folder_is_written_into(tmp_path, capsys):
    recipe = write_case(tmp_path, "width")
    for overwrite in ([], ["--overwrite"]):
        out = tmp_path / f"empty{len(overwrite)}"
        out.mkdir()  # made beforehand, say: nothing in it to lose
        out.chmod(0o750)
        assert main(["merge", str(recipe), "--out", str(out), *overwrite]) == 0
        assert (out / "model.safetensors").is_file()
        assert out.stat().st_mode & 0o777 == 0o750  # written into: the folder itself is kept
    capsys.readouterr()


def test_listing_the_zoo_writes_nothing_to_the_cache(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HETEROGUI_CACHE", str(tmp_path / "cache"))
    assert main(["zoo", "list"]) == 0
    assert "digits-resnet-depth" in capsys.readouterr().out
    assert not (tmp_path / "cache").exists()  # a read-only cache can be listed too


def test_the_version_is_the_package_s(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"heterogui {heterogui.__version__}"


@pytest.mark.parametrize(
    ("host", "auth", "warned"),
    [
        ("0.0.0.0", None, True),
        ("192.168.1.20", None, True),
        ("my-host", None, True),
        ("0.0.0.0", "me:secret", False),
        ("127.0.0.1", None, False),
        ("localhost", None, False),
        ("127.1", None, False),  # IPv4's short form of 127.0.0.1
        ("::1", None, False),
    ],
)
def test_serving_beyond_this_machine_without_a_login_is_warned_about(
    tmp_path, monkeypatch, caplog, host, auth, warned
):
    import logging

    from heterogui.ui import app

    served = []
    monkeypatch.setattr(app, "check_address", lambda host, port: None)  # any host here
    monkeypatch.setattr(app, "build_app", lambda res: SimpleNamespace(close=lambda **_: None))
    monkeypatch.setattr(app, "launch", lambda *args: served.append(args))
    monkeypatch.setattr(app, "exit_on_terminate", lambda: None)  # not in the test process
    threads = torch.get_num_threads()  # the app sets torch's threads: keep them
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))  # restored afterwards
    with caplog.at_level(logging.WARNING, logger="heterogui.ui.app"):
        app.main(host=host, auth=auth, threads=threads, export_root=str(tmp_path))
    assert served and served[0][1] == host
    assert ("without a login: anyone who can reach" in caplog.text) == warned


def test_the_app_keeps_uploads_and_downloads_in_a_folder_of_its_user(tmp_path, monkeypatch):
    from heterogui.ui import app

    monkeypatch.setenv("HETEROGUI_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("GRADIO_TEMP_DIR", "")  # restored afterwards, whatever the app sets
    # not Gradio's /tmp/gradio, which belongs to whoever ran a Gradio app there first, but a
    # folder of this app's own: what a killed app served goes as the next one starts
    gradio = tmp_path / "cache" / "gradio"
    dead = gradio / f".served.tmp-{2**22 + 12345}-abcd1234"
    (dead / "f00d").mkdir(parents=True)
    (dead / "f00d" / "export.zip").write_bytes(b"80 MB of an export")
    live = gradio / f".served.tmp-{os.getpid()}-livelive"  # another app of this process id
    live.mkdir()
    folder = app.use_own_upload_folder()
    assert folder.parent == gradio and folder.name.startswith(f".served.tmp-{os.getpid()}-")
    assert os.environ["GRADIO_TEMP_DIR"] == str(folder) and folder.is_dir()
    assert sorted(p.name for p in gradio.iterdir()) == sorted([live.name, folder.name])
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "mine"))  # the user's choice stands
    assert app.use_own_upload_folder() == tmp_path / "mine"
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "file"))
    with pytest.raises(ConfigError, match=r"GRADIO_TEMP_DIR .*file is a file, not a folder"):
        app.use_own_upload_folder()


def test_a_stopping_app_lets_running_steps_finish_and_removes_what_it_served(tmp_path):
    # A Ctrl-C or SIGTERM mid-export aborted the process (exit 134) now and then, and the
    # export's .zip, served after the server had cleaned up, stayed behind.
    from heterogui.ui import app
    from heterogui.ui.resources import Resources

    res = Resources(device="cpu", export_root=tmp_path / "exports")
    served = tmp_path / f".served.tmp-{os.getpid()}-abcd1234"
    (served / "f00d").mkdir(parents=True)
    started, finished = threading.Event(), threading.Event()

    def export_step() -> None:
        with res.in_flight.track():
            started.set()
            time.sleep(0.3)
            (served / "f00d" / "export.zip").write_bytes(b"served after the server stopped")
            finished.set()

    step = threading.Thread(target=export_step)
    step.start()
    started.wait()
    app.finish_in_flight(res, served)
    assert finished.is_set() and not served.exists()
    step.join()
    assert res.in_flight.running == 0
    mine = tmp_path / "mine"  # a folder $GRADIO_TEMP_DIR names is the user's: it stays
    mine.mkdir()
    app.finish_in_flight(res, mine)
    assert mine.is_dir()


def test_the_app_refuses_a_taken_port_or_a_foreign_address_in_one_line(capsys):
    threads = str(torch.get_num_threads())  # the app sets torch's threads: keep them
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        assert main(["app", "--port", port, "--threads", threads]) == 2
    err = capsys.readouterr().err
    assert f"port {port} on 127.0.0.1 is in use; pick another --port" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert main(["app", "--host", "192.0.2.1", "--threads", threads]) == 2  # TEST-NET-1
    err = capsys.readouterr().err
    assert "cannot serve on 192.0.2.1 (" in err and "give --host an address of this" in err
    for host, words in (
        ("::1", "cannot serve on the IPv6 address ::1: the web server takes IPv4"),
        ("", "--host is empty; give an address"),
    ):  # gradio failed on ::1 with a traceback; "" warned of serving publicly
        assert main(["app", "--host", host, "--threads", threads]) == 2
        err = capsys.readouterr().err
        assert words in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_the_app_refuses_an_unknown_pair_or_a_bad_login_before_serving(tmp_path, capsys):
    threads = str(torch.get_num_threads())  # the app sets torch's threads: keep them
    assert main(["app", "--pair", "digits-resnet-dpeth", "--threads", threads]) == 2
    err = capsys.readouterr().err
    assert "unknown demo pair 'digits-resnet-dpeth'" in err and "digits-resnet-depth," in err
    assert "decoder-pair" in err and len(err.strip().splitlines()) == 1
    assert main(["app", "--auth", "secret-without-user", "--threads", threads]) == 2
    err = capsys.readouterr().err
    assert "--auth takes USER:PASSWORD" in err and "secret-without-user" not in err
    (tmp_path / "file").write_text("")
    assert main(["app", "--export-root", str(tmp_path / "file"), "--threads", threads]) == 2
    err = capsys.readouterr().err
    assert "is a file; name a folder" in err and len(err.strip().splitlines()) == 1


def test_heterogui_app_says_where_it_serves(tmp_path):
    with socket.socket() as probe:  # a free port
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "heterogui", "app", "--port", str(port), "--threads", "1"]
    command += ["--export-root", str(tmp_path / "exports")]
    stale = tmp_path / "cache" / "sessions" / ".session.tmp-999999999-0123abcd-x"  # a killed app's
    stale.mkdir(parents=True)
    older = stale.parent / ".tmp-999999999-0123abcd-x"  # as apps before 2026-12-06 named them
    older.mkdir()
    env = os.environ | {"HETEROGUI_CACHE": str(tmp_path / "cache")}
    app = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    watchdog = threading.Timer(120, app.kill)  # a silent, hung app ends the read below
    watchdog.start()
    try:
        lines = []
        for line in app.stdout:  # until the address (the server is up then)
            lines.append(line)
            if "running on" in line or len(lines) > 50:
                break
        app.terminate()  # SIGTERM: ends as Ctrl-C does (the sessions' files removed)
        assert app.wait(timeout=60) == 128 + signal.SIGTERM
    finally:
        watchdog.cancel()
        app.kill()
        app.wait(timeout=30)
    assert f"heterogui workbench running on http://127.0.0.1:{port}/" in "".join(lines), lines
    assert (tmp_path / "exports").is_dir() and not stale.exists() and not older.exists()


def test_report_has_metrics_when_the_recipe_names_labelled_data(tmp_path):
    recipe = write_case(tmp_path, "width")
    gen = torch.Generator().manual_seed(3)
    labels = torch.randint(0, 10, (40,), generator=gen)
    save_file(
        {"inputs": torch.randn(40, 1, 8, 8, generator=gen), "labels": labels},
        str(tmp_path / "test.safetensors"),
    )
    data = yaml.safe_load(recipe.read_text())
    data["evaluation"] = {
        "source": str(tmp_path / "test.safetensors"),
        "size": None,
        "batch_size": 16,
    }
    data["zip"] = {"rho": 0.0}  # the ensemble, exactly
    recipe.write_text(yaml.safe_dump(data))
    metrics = merge_recipe(recipe).report["metrics"]
    assert set(metrics) == {"a", "b", "ensemble", "merged"}
    assert metrics["a"]["task_b"] is None and metrics["b"]["task_a"] is None
    assert metrics["merged"]["count_a"] + metrics["merged"]["count_b"] == 40
    for key in ("joint", "task_a", "task_b", "avg"):
        assert metrics["merged"][key] == pytest.approx(metrics["ensemble"][key])


def test_a_zoo_merge_merges_again_with_a_third_model(tmp_path, capsys):
    from heterogui.sources.registry import load

    first = {
        "model_a": {"path": "zoo:tiny-digits-vgg-depth/a"},
        "model_b": {"path": "zoo:tiny-digits-vgg-depth/b"},
        "calibration": {"source": "digits", "size": 64, "batch_size": 32},
        "evaluation": {"source": "digits", "split": "test"},
        "device": "cpu",
    }
    (tmp_path / "one.yaml").write_text(yaml.safe_dump(first))
    assert main(["merge", str(tmp_path / "one.yaml"), "--out", str(tmp_path / "one")]) == 0
    second = {**first, "model_a": {"path": str(tmp_path / "one")}}
    second["model_b"] = {"path": "zoo:tiny-digits-vgg-width/b"}  # a third model
    (tmp_path / "two.yaml").write_text(yaml.safe_dump(second))
    err = run_error(["merge", str(tmp_path / "two.yaml"), "--out", str(tmp_path / "x")], capsys)
    assert "share classes" in err and "leave out evaluation" in err  # B's task is there twice
    second["evaluation"] = None
    (tmp_path / "two.yaml").write_text(yaml.safe_dump(second))
    assert main(["merge", str(tmp_path / "two.yaml"), "--out", str(tmp_path / "two")]) == 0
    report = json.loads((tmp_path / "two" / "report.json").read_text())
    names = [h["name"] for h in report["heads"]]
    assert names == [
        "tiny-digits-vgg-depth/a",
        "tiny-digits-vgg-depth/b",
        "tiny-digits-vgg-width/b",
    ]
    assert [h["model"] for h in report["heads"]] == ["A", "A", "B"]
    three = load(str(tmp_path / "two"))  # and the second merge is a model again
    assert [h.name for h in three.net.task_heads()] == names
    with torch.no_grad():
        assert three.net.module(torch.randn(4, 1, 8, 8)).shape == (4, 15)


def test_the_weights_file_is_byte_identical_whatever_the_run(tmp_path):
    # safetensors writes metadata keys in a random order: one key keeps the file reproducible.
    recipe = write_case(tmp_path, "depth")
    files = []
    for k in range(4):
        assert main(["merge", str(recipe), "--out", str(tmp_path / f"m{k}")]) == 0
        files.append((tmp_path / f"m{k}" / "model.safetensors").read_bytes())
    assert all(f == files[0] for f in files)


@pytest.mark.slow
def test_bench_speed_json_line_holds_every_pair_figure(capsys):
    """``heterogui bench speed --json``: its last line is the contract's JSON object."""
    assert main(["bench", "speed", "--quick", "--threads", "1", "--device", "cpu", "--json"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert "merge / floor" in "\n".join(out[:-1])  # the readable table comes first
    pairs = json.loads(out[-1])["pairs"]
    assert set(pairs) == {"resnet"}
    resnet = pairs["resnet"]
    keys = {"merge_s", "floor_s", "remerge_s", "peak_rss_mib", "weights_mib", "stats_mib"}
    assert keys <= set(resnet) and all(resnet[k] > 0 for k in keys)
    assert resnet["ratio_to_floor"] == pytest.approx(resnet["merge_s"] / resnet["floor_s"])
    start, merge = resnet["start_rss_mib"], resnet["merge_rss_mib"]
    assert 0 < start < resnet["peak_rss_mib"] and merge == pytest.approx(
        resnet["peak_rss_mib"] - start
    )
    goal = resnet["memory_goal_mib"]
    assert goal == pytest.approx(2 * resnet["weights_mib"] + resnet["stats_mib"])
    # a BatchNorm pair of different depth: the CKA comes with the BatchNorm pass (ready.py)
    assert {"prepare.bn_similarity", "prepare.features", "zip.match"} <= set(resnet["stages"])
    assert resnet["threads"] == 1 and resnet["device"] == "cpu"
    assert resnet["realign_s"] > 0 and resnet["neurons_point_s"] > 0
    assert resnet["products_gmac"] > 0 and resnet["forward_gmac"] > 0
    precision = resnet["precision"]
    assert 0 <= precision["max_corr_diff"] < 1e-4
    assert 0 < precision["same_matching"] <= precision["merge_points"]
    assert "bn_merged" in " ".join(resnet["stages"])  # BatchNorm: the floor has its passes


def test_zoo_build_refuses_unknown_names_before_training_any(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HETEROGUI_CACHE", str(tmp_path))
    err = run_error(
        ["zoo", "build", "--pairs", "decoder-pair", "nope", "digits-vgg-depth@x"], capsys
    )
    assert "unknown zoo pair 'nope', 'digits-vgg-depth@x'" in err and "'decoder-pair'" in err
    assert len(err.strip().splitlines()) == 1 and not any(tmp_path.iterdir())  # nothing trained
    # the tests' tiny pairs are named by where to find them, not one of their groups alone
    assert "tiny-digits-vgg-trio" not in err and "tiny pairs (heterogui zoo list --tiny)" in err


THREADS = "is not a number of threads: give a whole number from 1 to"


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["merge", "r.yaml", "--out", "o", "--threads", "-2"], THREADS),
        (["merge", "r.yaml", "--out", "o", "--threads", "0"], THREADS),
        (["app", "--threads", "0"], THREADS),
        (["merge", "r.yaml", "--out", "o", "--threads", "100000"], THREADS),  # crashed torch
        (["bench", "nway", "--threads", "many"], THREADS),
        (["bench", "quality", "--threads", "-1"], THREADS),
        (["app", "--port", "99999"], "'99999' is not a port: give a whole number from 1 to 65535"),
        (["bench", "speed", "--inputs", "-5"], "'-5' is not a number of inputs: give a whole"),
        (["bench", "nway", "--seeds", "-5"], "'-5' is not a whole number of 1 or more"),
        (["bench", "scale", "--seed", "-1"], "'-1' is not a whole number of 0 or more"),
        # a device is checked before the run (it was a traceback, after building the models)
        (["bench", "scale", "--device", "gpu"], "device 'gpu' is unknown; use auto, cpu, cuda"),
        (["bench", "quality", "--device", "tpu"], "device 'tpu' is unknown"),
        pytest.param(
            ["bench", "speed", "--device", "cuda"],
            "CUDA is not available: use cpu/auto",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is here"),
        ),
    ],
)
def test_a_number_out_of_range_is_refused_in_one_line(args, words, capsys):
    threads = torch.get_num_threads()
    with pytest.raises(SystemExit) as done:
        main(args)
    err = capsys.readouterr().err.strip().splitlines()
    assert done.value.code == 2 and torch.get_num_threads() == threads
    assert words in err[-1]


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ("notjson", "speed-pair options are not JSON"),
        ('{"pair": "nope"}', "name no known pair"),
        ("[1]", "name no known pair"),
        ('{"pair": "resnet", "inputs": -3}', "option 'inputs' must be a whole number >= 4"),
        ('{"pair": "resnet", "inputs": "x"}', "option 'inputs' must be a whole number >= 4"),
        ('{"pair": "resnet", "threads": 0}', "option 'threads' must be a whole number >= 1"),
        ('{"pair": "resnet", "threads": 100000}', "option 'threads': '100000' is not a number"),
        ('{"pair": "resnet", "quick": 1}', "option 'quick' must be true or false, got 1"),
        ('{"pair": "resnet", "bogus": 1}', "unknown keys ['bogus']; known: ['pair', 'quick'"),
        ('{"pair": "resnet", "device": "gpu"}', "option 'device': device 'gpu' is unknown"),
    ],
)
def test_bench_speed_pair_refuses_bad_options_in_one_line(options, words, capsys):
    assert main(["bench", "speed-pair", options]) == 2
    err = capsys.readouterr().err.strip()
    assert words in err and len(err.splitlines()) == 1


def test_bench_nway_refuses_a_pair_of_two_models_before_building_anything(tmp_path, capsys):
    # a two-model pair ran both N-way merges, then crashed wanting a third model
    err = run_error(["bench", "nway", "--groups", "digits-resnet-depth", "nope"], capsys)
    assert err.startswith(
        "error: --groups digits-resnet-depth nope: not a zoo group of three models; known: "
        "digits-resnet-trio, digits-resnet-trio-homogeneous"
    )
    assert len(err.splitlines()) == 1


@pytest.mark.parametrize(
    "args",
    [
        ["bench", "nway", "--seeds", "1", "--out"],
        ["bench", "measures", "--seeds", "1", "--out"],
        ["bench", "quality", "--tiny", "--seeds", "1", "--out"],
    ],
)
def test_a_bench_output_that_cannot_be_written_is_refused_before_the_run(args, tmp_path, capsys):
    (tmp_path / "file").write_text("")
    err = run_error([*args, str(tmp_path / "file" / "results")], capsys)
    assert err == (
        f"error: output folder '{tmp_path / 'file' / 'results'}' lies under the file "
        f"{tmp_path / 'file'}; name a folder\n"
    )
    err = run_error([*args, str(tmp_path / "file")], capsys)
    assert err == f"error: output folder '{tmp_path / 'file'}' is a file; name a folder\n"
    assert run_error([*args, ""], capsys) == "error: give an output folder\n"  # not the cwd


def test_a_cache_that_cannot_hold_folders_is_named_in_one_line(tmp_path, monkeypatch, capsys):
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("HETEROGUI_CACHE", str(tmp_path / "file"))
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model_a: zoo:digits-vgg-depth/a\nmodel_b: zoo:digits-vgg-depth/b\n")
    err = run_error(["merge", str(recipe), "--out", str(tmp_path / "out")], capsys)
    assert "cannot create the heterogui cache folder" in err and "set HETEROGUI_CACHE" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "out").exists()


@pytest.mark.parametrize("fmt", ["hf-bert", "hf-vit", "hf-causal-lm"])
def test_a_format_for_another_family_is_refused_before_the_merge(
    fmt, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("HETEROGUI_CACHE", str(tmp_path / "cache"))
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model_a: zoo:digits-vgg-depth/a\nmodel_b: zoo:digits-vgg-depth/b\n")
    err = run_error(["merge", str(recipe), "--out", str(tmp_path / "out"), "--format", fmt], capsys)
    assert f"the {fmt} format holds merges of" in err and "not of vgg models" in err
    assert "leave out --format" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
    assert not list((tmp_path / "cache").rglob("model.safetensors"))  # nothing built or merged


def test_a_format_for_another_family_says_to_leave_it_out():
    from heterogui.errors import ExportError
    from heterogui.export.registry import exporter

    # a BERT merge is merged again from its Hugging Face folder (not from heterogui's format,
    # which the message suggested): its models' own, which the default writes
    with pytest.raises(ExportError, match=r"leave out --format \(in Python, fmt\): a merge is"):
        exporter("hf-causal-lm").check_family("bert")


@pytest.mark.parametrize("pair", list(PAIRS))
def test_a_float64_merge_reads_float32_inputs_and_matches_the_float32_merge(tmp_path, pair):
    single = merge_recipe(write_case(tmp_path / "f32", pair)).result.model
    double = merge_recipe(write_case(tmp_path / "f64", pair, dtype="float64")).result.model
    assert {p.dtype for p in double.parameters()} == {torch.float64}
    for x, y in zip(outputs(single), outputs(double), strict=True):  # float32 images in
        assert y.dtype == torch.float64
        assert torch.allclose(x.double(), y, atol=1e-4 * float(y.abs().max()))


def test_a_float64_merged_folder_loads_back_in_float64_and_merges_again_in_float32(tmp_path):
    from heterogui.sources import registry

    double = merge_recipe(write_case(tmp_path / "f64", "depth", dtype="float64")).result.model
    save_merged(double, tmp_path / "saved")
    again = load_merged(tmp_path / "saved")
    assert {p.dtype for p in again.parameters()} == {torch.float64}  # not rounded to float32
    for x, y in zip(outputs(double), outputs(again), strict=True):
        assert torch.equal(x, y)
    net = registry.load(str(tmp_path / "saved")).net  # a merge as a model: float32 as any
    assert {p.dtype for p in net.module.parameters()} == {torch.float32}


def test_a_heads_choice_for_models_without_attention_is_warned_about(tmp_path, caplog):
    import logging

    plain = merge_recipe(write_case(tmp_path / "plain", "depth")).result.model
    with caplog.at_level(logging.WARNING, logger="heterogui.run_checks"):
        chosen = merge_recipe(write_case(tmp_path / "select", "depth", zip={"heads": "select"}))
    assert "zip.heads 'select': these vgg models have no attention heads" in caplog.text
    for x, y in zip(outputs(plain), outputs(chosen.result.model), strict=True):
        assert torch.equal(x, y)  # indeed nothing changed


def test_an_unknown_option_is_named_with_its_subcommand_s_usage(capsys):
    with pytest.raises(SystemExit) as done:
        main(["zoo", "list", "--pairs", "x"])
    err = capsys.readouterr().err.splitlines()
    assert done.value.code == 2 and err[0].startswith("usage: heterogui zoo list ")
    assert err[-1] == "heterogui zoo list: error: unrecognized arguments: --pairs x"
