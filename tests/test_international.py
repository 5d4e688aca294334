"""Names, text and files from outside the happy path: byte-order marks, Unicode digits and line
separators, non-ASCII names in exports and uploads, a terminal that prints ASCII only."""

from __future__ import annotations

import io
import json
import sys
import unicodedata
import zipfile
from pathlib import Path

import pytest
import yaml

from heterogui import cli
from heterogui.config import DataRef, typed_value
from heterogui.datasets.refs import parse_lines
from heterogui.datasets.sentence_pairs import load_pairs
from heterogui.datasets.text_tasks import OTHER_LABELS, label_id
from heterogui.errors import ConfigError, ModelLoadError
from heterogui.export.card import cell_text
from heterogui.export.json_text import readable_json
from heterogui.recipe_parse import parse_recipe
from heterogui.sources.upload import _safe_name, receive
from heterogui.sources.vocab import vocab_tokens
from heterogui.tasks.text_classes import read_labelled
from heterogui.text_input import read_text
from heterogui.ui.figstyle import plain
from heterogui.ui.labels import literal
from heterogui.zoo.registry import pair_spec

BOM = b"\xef\xbb\xbf"


def test_a_byte_order_mark_is_not_text(tmp_path):
    pairs = tmp_path / "pairs.tsv"  # Excel's "CSV UTF-8" and Notepad start with one
    pairs.write_bytes(BOM + b"score\ts1\ts2\r\n5\ta cat\ta cat\r\n0\ta cat\tthe rain\r\n")
    assert [(p.score, p.first) for p in load_pairs(pairs)] == [(5.0, "a cat"), (0.0, "a cat")]
    labelled = tmp_path / "labels.tsv"
    labelled.write_bytes(BOM + b"sports\tthe match\nfood\tthe soup\n")
    data = read_labelled(labelled)  # the first row's label was "\ufeffsports": a new class
    assert data.sentences == ("the match", "the soup")
    assert data.labels.tolist() == [label_id("sports"), label_id("food")]
    empty = tmp_path / "empty.txt"
    empty.write_bytes(BOM + b"\n\n")
    assert parse_lines(read_text(empty, "sentence file")) == []


def test_latin1_is_refused_as_text_in_another_encoding(tmp_path):
    latin = tmp_path / "latin.txt"
    latin.write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="is not UTF-8 text.*Latin-1 or UTF-16.*save it as UTF-8"):
        read_text(latin, "sentence file")


def test_lines_end_at_line_feeds_and_carriage_returns_only(tmp_path):
    # U+2028 and a form feed belong to a sentence: str.splitlines made one line two sentences
    assert parse_lines("a\u2028b\r\nc\x0cd\n\n e \n") == ["a\u2028b", "c\x0cd", "e"]
    # a lone carriage return ends a line (classic Mac, Excel for Mac's tab-delimited text)
    assert parse_lines("one\rtwo\r\rthree\r") == ["one", "two", "three"]
    labelled = tmp_path / "mac.tsv"
    labelled.write_bytes(b"sports\tthe match\rfood\tthe soup\r")
    assert read_labelled(labelled).sentences == ("the match", "the soup")
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("3\tHe said\u2028hello\tHe greeted\n1\ta\tb\n", encoding="utf-8")
    assert [p.first for p in load_pairs(pairs)] == ["He said\u2028hello", "a"]


def test_a_vocabulary_has_one_token_a_line(tmp_path):
    # as transformers reads vocab.txt: a token holding U+2028 or a form feed is one token (ids
    # after it shifted by one, and the pre-flight named tokens the tokenizer never had)
    (tmp_path / "vocab.txt").write_text("[PAD]\na\u2028b\n\x0c\nz\n", encoding="utf-8")
    assert vocab_tokens(tmp_path) == ["[PAD]", "a\u2028b", "\x0c", "z"]


def test_unicode_digits_are_names_not_numbers():
    assert label_id("7") == 7
    for name in ("①", "²", "٣"):  # isdigit() said yes to all three; int() failed on two
        assert label_id(name) >= OTHER_LABELS
    with pytest.raises(ConfigError, match="unknown zoo pair"):
        pair_spec("digits-resnet-depth@²")


def test_status_line_and_figures_show_typed_text_as_typed():
    assert literal("../*star* __init__") == "../\\*star\\* \\_\\_init\\_\\_"
    assert literal("run `pip install x`") == "run `pip install x`"  # commands stay code
    assert literal("<stream end>") == "&lt;stream end>"
    assert plain("Use the <b>bold</b> tag & more") == (
        "Use the &lt;b&gt;bold&lt;/b&gt; tag &amp; more"
    )


def test_model_card_cells_escape_markdown():
    assert cell_text("sport | news, x`y*z") == "sport \\| news, x\\`y\\*z"
    assert cell_text("least_squares") == "least_squares"  # inside a word: text
    assert cell_text("__init__ [x](y) ~~old~~") == ("\\_\\_init\\_\\_ \\[x\\](y) \\~\\~old\\~\\~")
    assert cell_text("two\nlines") == "two lines"  # a line break would end the table


def test_recipe_yaml_keeps_names_as_written():
    recipe = parse_recipe(
        "model_a: zoo:digits-resnet-depth/a\nmodel_b: 'mödels 日本/B 🎉'\n"
        "calibration: {source: ' sätze.TXT '}\n"
    )
    text = recipe.to_yaml()
    assert "mödels 日本/B 🎉" in text and "\\x" not in text and "\\u" not in text
    assert parse_recipe(text) == recipe
    assert recipe.calibration.source == "sätze.TXT" and recipe.calibration.has_suffix(".txt")


def test_a_decimal_comma_gets_its_fix():
    with pytest.raises(ConfigError, match="write a decimal point: 0.5"):
        typed_value("0,5", float, "recipe.zip.rho")
    flow = "model_a: zoo:digits-resnet-depth/a\nmodel_b: zoo:digits-resnet-depth/b\n"
    with pytest.raises(ConfigError, match=r"unknown keys \[5\] \(a number as a key: a decimal"):
        parse_recipe(flow + "zip: {rho: 0,5}\n")  # in braces: keys "rho: 0" and "5"
    with pytest.raises(ConfigError, match=r"unknown keys \[5, 'x'\]"):  # no TypeError sorting
        parse_recipe(flow + "zip: {rho: 0,5, x: 1}\n")
    assert DataRef(" notes.txt ").source == "notes.txt"


def test_an_archive_from_macos_finder_uploads(tmp_path):
    archive = tmp_path / "mödel café.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("my model/config.json", "{}")
        zf.writestr("my model/model.safetensors", b"")
        zf.writestr("my model/.DS_Store", b"\0")
        zf.writestr("__MACOSX/my model/._config.json", b"\0")
    (tmp_path / "work").mkdir()
    folder = receive([str(archive)], tmp_path / "work")
    assert folder.name == "mödel_café"  # its letters kept: "caf" before
    assert _safe_name(unicodedata.normalize("NFD", "café")) == "café"  # as macOS names it
    assert _safe_name("नमस्ते") == "नमस्ते"  # marks are part of their letters
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    bare = tmp_path / "bare.zip"
    with zipfile.ZipFile(bare, "w") as zf:
        zf.writestr("__MACOSX/._x", b"\0")
    with pytest.raises(ModelLoadError, match="no config.json"):
        receive([str(bare)], tmp_path / "work")


def test_an_ascii_terminal_gets_escapes_not_a_traceback(monkeypatch, tmp_path):
    err = io.TextIOWrapper(io.BytesIO(), encoding="ascii")
    monkeypatch.setattr(sys, "stderr", err)
    missing = tmp_path / "récipe 日本.yaml"
    assert cli.main(["merge", str(missing), "--out", str(tmp_path / "out é")]) == 2
    err.flush()
    said = err.buffer.getvalue().decode("ascii")
    assert "r\\xe9cipe \\u65e5\\u672c.yaml" in said and said.count("\n") == 1, said
    assert not (tmp_path / "out é").exists()


def test_the_merge_summary_shows_names_as_written(monkeypatch):
    # the CLI's summary: "café", not "caf\\u00e9"; report.json keeps escapes, so a path with
    # bytes that are not UTF-8 (a lone surrogate) still writes to a UTF-8 file
    shown = readable_json({"heads": ["café", "日本"], "widths": [1, 2]}, ascii_only=False)
    assert "café" in shown and "日本" in shown and '"widths": [1, 2]' in shown
    assert json.loads(shown) == {"heads": ["café", "日本"], "widths": [1, 2]}
    for encoding, shown in (("utf-8", '"café"'), ("ascii", '"caf\\u00e9"')):
        terminal = io.TextIOWrapper(io.BytesIO(), encoding=encoding)
        monkeypatch.setattr(sys, "stdout", terminal)
        said = cli._terminal_json({"name": "café"})
        assert shown in said and json.loads(said) == {"name": "café"}  # JSON on any terminal
    filed = readable_json({"path": "caf\udce9"})
    assert filed.isascii() and json.loads(filed.encode("utf-8")) == {"path": "caf\udce9"}


def test_yaml_of_the_app_recipe_view_round_trips():
    # the Export tab's recipe view is YAML too: what it shows parses back to the same names
    shown = yaml.safe_dump({"path": "m\u00f6dels/\U0001f389"}, allow_unicode=True)
    assert yaml.safe_load(shown) == {"path": "mödels/🎉"} and "🎉" in shown
    assert Path(yaml.safe_load(shown)["path"]).name == "🎉"
