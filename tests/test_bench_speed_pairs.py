"""The speed benchmark's BERT-base-sized pair built from config, at its smallest."""

from __future__ import annotations

import pytest
import torch

from heterogui.bench.speed import format_pair
from heterogui.bench.speed_pair import run_pair, token_id_batches


def test_the_bert_base_pair_reports_every_figure_at_its_smallest():
    figures = run_pair("bert_base", {"quick": True, "device": "cpu"})
    assert figures["pair"] == "BERT 2L + 1L, hidden 64 (random weights)"
    assert figures["inputs"] == "64 texts (1024 tokens)"
    assert not figures["batch_norm"] and figures["floor"] > 0 and figures["total"] > 0
    assert {"prepare.to_device", "prepare.features", "zip.match"} <= set(figures["stages"])
    precision = figures["precision"]
    assert precision["max_corr_diff"] < 1e-4
    assert precision["same_matching"] == precision["merge_points"] > 0
    assert figures["statistics_mib"] > 0 and figures["weights_mib"] > 0
    assert "(slowest point)" in format_pair(figures)
    text = format_pair(figures | {"neurons_point_s": None})  # gradio or plotly not installed
    assert "Neurons tab: not measured (the workbench's gradio and plotly are not installed)" in text


def test_token_id_batches_are_seeded_and_split():
    one, two = token_id_batches(10, 6, 4), token_id_batches(10, 6, 4)
    # the last 2 join the batch before them: CKA compares at least 4 inputs at once
    assert [b["input_ids"].shape for b in one] == [(4, 6), (6, 6)]
    assert all(torch.equal(x["input_ids"], y["input_ids"]) for x, y in zip(one, two, strict=True))
    assert all(int(b["attention_mask"].min()) == 1 for b in one)
    assert [b["input_ids"].shape for b in token_id_batches(12, 6, 4)] == [(4, 6)] * 3


def test_any_number_of_inputs_from_4_measures_and_a_refusal_is_one_line(capsys):
    # --inputs 65 left a batch of 1 and stopped with a traceback; a measuring process's
    # refusal reached the terminal as a RuntimeError's traceback
    from heterogui.bench.isolated import in_fresh_process
    from heterogui.cli import main
    from heterogui.datasets.refs import make_batches
    from heterogui.errors import ConfigError

    assert [len(b) for b in make_batches(torch.zeros(65, 2), 64)] == [65]  # the benchmark's
    with pytest.raises(SystemExit):
        main(["bench", "speed", "--inputs", "3"])
    err = capsys.readouterr().err
    assert "'3' is not a number of inputs: give a whole number of 4 or more" in err
    with pytest.raises(ConfigError, match="^CKA needs at least 4 inputs per batch, got 2"):
        in_fresh_process("heterogui.bench.speed_pair:measured", {"pair": "resnet", "inputs": 2})


def test_the_library_code_counted_in_the_start_imports():
    import importlib

    from heterogui.bench.speed_pair import LIBRARY_CODE, PAIRS

    assert set(LIBRARY_CODE) <= set(PAIRS)
    for module in {m for modules in LIBRARY_CODE.values() for m in modules}:
        importlib.import_module(module)  # ModuleNotFoundError once a library moves its code
