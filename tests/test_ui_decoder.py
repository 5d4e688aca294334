"""Decoder language-model pairs in the workbench: handlers on two tiny causal-LM folders (fast).

Load and verdict, analyse, the neuron views, merge, the perplexity table (with the collapse
alarm), generations, the rho sweep's axes, and the hf-causal-lm export; a pair with another
tokenizer is refused with the pre-flight's reason.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import char_tokenizer, save_decoder, table_cells, tiny_decoder

from heterogui.errors import Cancelled, ConfigError, ExportError
from heterogui.tasks.language import LanguageModeling, merged_logits
from heterogui.tasks.lm_metrics import token_batches
from heterogui.ui import (
    compare_grid,
    evaluate_language,
    events,
    labels,
    tab_compare,
    tab_evaluate,
    tab_export,
    tab_models,
    tab_neurons,
    tab_zip,
    views,
)
from heterogui.ui.resources import Resources, ZooPairs
from heterogui.ui.session import Session
from heterogui.ui.summary import session_summary

pytestmark = pytest.mark.ui
TEXTS = ["def add(a, b):\n    return a + b", "The tutorial explains how to read files."]
ALARM = "python-docs: perplexity 999.0 is 4.0x the worse parent's 250.0"


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("decoders")
    a = save_decoder(tiny_decoder(hidden=32, layers=3, heads=4, kv=2, seed=1), root / "a")
    b = save_decoder(tiny_decoder(hidden=48, layers=2, heads=6, kv=3, seed=2), root / "b")
    return a, b


@pytest.fixture(scope="module")
def res(tmp_path_factory) -> Resources:
    exports = tmp_path_factory.getbasetemp()  # every test's tmp_path lies below it
    return Resources(ZooPairs(tiny=True), device="cpu", export_root=exports)


def load(session: Session, res: Resources, which: str, folder: Path, source="hf") -> str:
    path = str(folder)
    if source == "folder":
        return tab_models.on_load_model(session, res, which, "folder", None, path, None, None)
    return tab_models.on_load_model(session, res, which, "hf", None, None, None, path)


@pytest.fixture()
def analysed(folders, res) -> Session:
    session = Session(device="cpu")
    load(session, res, "a", folders[0], "folder")
    load(session, res, "b", folders[1])
    tab_models.on_analyse(session, res, "domains", None, 16)
    return session


def merge(session: Session, res: Resources, rho=0.5, stop=None) -> str:
    n = session.prepared.padded_a.graph().num_blocks - 1
    return tab_zip.on_merge(session, res, "zip", 0.5, 1.0, rho, n if stop is None else stop, "cpu")


def test_two_causal_lm_folders_load_with_cards_and_a_verdict(folders, res):
    session = Session(device="cpu")
    message, _ = load(session, res, "a", folders[0], "folder")
    assert "Loaded model A" in message and session.task.kind == "language_modeling"
    message, pickers = load(session, res, "b", folders[1])
    assert "Press **Analyse pair**" in message and pickers["source_b"]["value"] == "hf"
    page = tab_models.render(session, res)
    assert "family **decoder** (llama), **3 layers**" in page["card_a"]
    assert "vocabulary of 100 tokens" in page["card_b"] and "classes [" not in page["card_b"]
    assert "✓ Compatible" in page["verdict"] and "classes overlap" not in page["verdict"]
    assert page["dataset"]["choices"] == ["domains", "python-docs", "python-source", "file"]
    tab_models.on_analyse(session, res, "python-docs", None, 16)
    assert session.calibration.ref.source == "python-docs" and session.calibration.count == 16
    assert tab_models.render(session, res)["dataset"]["value"] == "python-docs"


def test_a_dequantized_model_shows_its_note_in_the_card_verdict_and_summary(folders, res):
    session = Session(device="cpu")
    load(session, res, "a", folders[0])
    load(session, res, "b", folders[1])
    note = "dequantized from a Q4_1 GGUF file: these weights are a dequantized 4-bit model"
    session.a.note = note  # what a GGUF source sets (heterogui.sources.gguf)
    page = tab_models.render(session, res)
    assert note in page["card_a"] and note not in page["card_b"]
    assert f"model A ({session.a.name})**: {note}" in page["verdict"]
    assert session_summary(session)["notes"] == {"a": note}


def test_neuron_views_skip_the_derived_attention_outputs(analysed, res):
    prep = analysed.prepared
    points = [n for _, n in tab_neurons.merge_points(prep)]
    assert {"stream", "layer0.q", "layer0.v", "layer0.mlp"} <= set(points)
    assert not any(p.endswith(".o") for p in points)
    slots = prep.alignment.positions_b[0]  # B's layers; its identity layers have no .o point
    assert len(slots) == 2 and tab_neurons.derived(prep) == [f"layer{s}.o" for s in slots]
    for space in ("stream", f"layer{slots[1]}.q", "layer0.mlp"):
        tab_neurons.on_space(analysed, res, space)
        page = tab_neurons.render(analysed, res)
        assert page["neuron_map"] is not None and page["neuron_hist"] is not None
        assert "layer0.o" in page["neuron_info"] and "no statistics" in page["neuron_info"]
    with pytest.raises(ConfigError, match="no statistics of its own"):
        tab_neurons.on_space(analysed, res, "layer0.o")
    choices = [v for _, v in tab_zip.render(analysed, res)["override_space"]["choices"]]
    assert "layer0.k" in choices and "layer0.q" not in choices and "layer0.o" not in choices


def test_merge_shows_perplexity_tables_equal_to_the_task_scores(analysed, res):
    session, task = analysed, analysed.task
    page = views.render(session, res, views.SCOPES)
    shown = {k: v["visible"] for k, v in page.items() if k.startswith("panel_")}
    assert shown == {
        "panel_metrics": False,
        "panel_samples": False,
        "panel_sweep": True,
        "panel_spearman": False,
        "panel_similarity": False,
        "panel_perplexity": True,
        "panel_generations": True,
    }
    assert "| mean perplexity (lower is better) |" in page["readout"]
    assert "estimate" in page["readout"]
    message = merge(session, res)
    assert "Merge #1" in message and "mean perplexity (lower is better)" in message
    page = views.render(session, res, views.SCOPES)
    table = page["lm_scores"]
    assert table["headers"] == [
        "model",
        "python-docs perplexity",
        "python-docs bits/byte",
        "python-source perplexity",
        "python-source bits/byte",
        "parameters",
    ]
    assert not any("%" in h for h in table["headers"])
    rows = {r[0]: r[1:] for r in table_cells(table, shown=True)}
    assert list(rows) == ["A", "B", "ensemble", "merged"]
    scores = task.score_models(session.prepared, session.evaluation, session.pair)
    scores["merged"] = task.score_merged(session.result, session.evaluation, session.pair)
    for label, key in (("A", "a"), ("B", "b"), ("ensemble", "ensemble"), ("merged", "merged")):
        want = []
        for domain in ("python-docs", "python-source"):
            one = scores[key][domain]
            want += [f"{one['perplexity']:.3f}", f"{one['bits_per_byte']:.4f}"]
        assert rows[label][:-1] == want
    assert rows["merged"][-1] == f"{session.merged_size['parameters']:,}"  # as the readout
    a_size = sum(p.numel() for p in session.prepared.net_a.module.parameters())
    assert rows["A"][-1] == f"{a_size:,}"
    assert page["lm_alarm"]["visible"] is False  # a healthy merge raises no alarm
    assert "merged" in page["lm_info"] and "Repetition" in page["lm_info"]
    assert page["lm_info"].startswith("**Mean perplexity (lower is better)**: A ")
    assert page["history_plot"].layout.yaxis.title.text == "mean perplexity (lower is better)"
    summary = session_summary(session)
    assert summary["merged"]["alarms"] == [] and summary["history"][0]["score"] is not None


def test_the_collapse_alarm_shows_in_red_and_in_the_status(analysed, res, monkeypatch):
    monkeypatch.setattr(LanguageModeling, "alarms", lambda self, scores: [ALARM])
    session = analysed
    assert tab_evaluate.render(session, res)["lm_alarm"]["visible"] is False  # no merge yet
    message = merge(session, res)
    assert "Collapse alarm" in message and ALARM in message
    alarm = tab_evaluate.render(session, res)["lm_alarm"]
    assert alarm["visible"] is True and "⚠ **Collapse alarm**" in alarm["value"]
    assert ALARM in alarm["value"]
    assert "Collapse alarm" in tab_evaluate.on_evaluate(session, res)
    assert session_summary(session)["merged"]["alarms"] == [ALARM]


def test_generations_side_by_side_greedy_and_sampled(analysed, res):
    session = analysed
    message = evaluate_language.on_generate(session, res, "def f(x):\n\nThe tutorial", "greedy", 0)
    assert "2 prompts." in message and "Merge to add" in message
    view = tab_evaluate.render(session, res)["gen_view"]
    assert view["headers"] == ["prompt", "A", "B", "merged"]
    assert [r[0] for r in view["value"]] == ["def f(x):", "The tutorial"]
    assert all(r[3] == "—" for r in view["value"])  # nothing merged yet
    seen: list = []  # the page's progress bar: the share of the tokens generated
    evaluate_language.on_generate(session, res, "def f(x):", "greedy", 0, lambda *a: seen.append(a))
    shares = [share for stage, share in seen]
    assert {stage for stage, _ in seen} == {"generate"} and len(seen) > 2
    assert shares == sorted(shares) and shares[0] > 0 and shares[-1] == 1.0
    kept, session.running = session.generations, True

    def press_cancel(stage, frac):  # the user presses Cancel while the texts are generated
        tab_zip.on_cancel(session, res)

    with pytest.raises(Cancelled, match="the previous result is kept"):
        evaluate_language.on_generate(session, res, "The tutorial", "greedy", 0, press_cancel)
    session.running = False
    assert session.generations is kept
    merge(session, res)
    assert "merge #1" not in tab_evaluate.render(session, res)["gen_info"]
    evaluate_language.on_generate(session, res, "def f(x):\nThe tutorial", "greedy", 0)
    page = tab_evaluate.render(session, res)
    rows = page["gen_view"]["value"]
    want = session.task.generations(
        session.prepared,
        session.result,
        session.pair,
        ["def f(x):", "The tutorial"],
        max_new_tokens=evaluate_language.GEN_TOKENS,
    )
    assert [r[1:] for r in rows] == [
        [want["A"][k], want["B"][k], want["merged"][k]] for k in range(2)
    ]
    assert all(isinstance(t, str) for r in rows for t in r)
    assert "greedy" in page["gen_info"] and "merge #1" in page["gen_info"]
    evaluate_language.on_generate(session, res, "def f(x):", "sampled", 7)
    first = session.generations["texts"]
    evaluate_language.on_generate(session, res, "def f(x):", "sampled", 7)
    assert session.generations["texts"] == first  # a seed repeats its samples
    assert "sampled with seed 7" in tab_evaluate.render(session, res)["gen_info"]
    merge(session, res, rho=1.0)  # a newer merge: the shown texts are marked as older
    assert "press Generate again" in tab_evaluate.render(session, res)["gen_info"]
    for typed, mode, seed, words in (
        ("a\nb\nc\nd\ne", "greedy", 0, "1 to 4 prompts"),
        ("", "greedy", 0, "1 to 4 prompts"),
        ("x", "beam", 0, "decoding 'beam' is unknown"),
        ("x", "sampled", -1, "whole number"),
        ("x", "sampled", 2.5, "whole number"),
        ("x", "sampled", float("inf"), "whole number from 0 to 2"),
        ("x", "sampled", float("nan"), "whole number from 0 to 2"),
        ("x", "sampled", 1e30, "whole number from 0 to 2"),
    ):
        with pytest.raises(ConfigError, match=words):
            evaluate_language.on_generate(session, res, typed, mode, seed)


def test_generate_errors_become_one_line_messages_in_the_page(analysed, res):
    fn = events.event_function(evaluate_language.on_generate, res, ("evaluate",), ["gen_view"], 3)
    session = analysed
    with pytest.warns(UserWarning, match="1 to 4 prompts"):
        out = fn(session, "1\n2\n3\n4\n5", "greedy", 0, None)
    assert out[0] is session and out[1].startswith("**Error:**") and "\n" not in out[1]
    # the page sends the seed as typed (a number box with precision 0 rounded 1.5 to 2)
    import gradio as gr

    ui: dict = {}
    with gr.Blocks():
        evaluate_language.build_language_panels(ui)
    assert ui["gen_seed"].precision is None
    with pytest.raises(ConfigError, match="seed 1.5 is not a whole number"):
        evaluate_language.on_generate(session, res, "def f(x):", "sampled", 1.5)


def test_sweep_and_grid_treat_lower_perplexity_as_better(analysed, res):
    session = analysed
    merge(session, res)
    tab_evaluate.on_sweep(session, res)
    assert [p["rho"] for p in session.sweep] == list(tab_evaluate.SWEEP_RHOS)
    fig = tab_evaluate.render(session, res)["sweep_plot"]
    assert fig.layout.yaxis.title.text == "mean perplexity (lower is better)"
    assert not any("%" in (t.name or "") for t in fig.data)
    merge(session, res, rho=1.0)
    tab_compare.on_compare(session, res, 1, 2)
    table = tab_compare.render(session, res)["compare_table"]
    assert "| python-docs perplexity |" in table and "| mean perplexity |" in table
    assert "%" not in table
    session.grid = [
        {"rho": 0.0, "beta": 1.0, "score": 50.0, "parameters": 10},
        {"rho": 0.5, "beta": 1.0, "score": 20.0, "parameters": 8},
        {"rho": 1.0, "beta": 1.0, "score": None, "parameters": 6},
    ]
    session.grid_knob = "beta"
    assert [k for _, k in compare_grid.grid_cells(session)] == [1, 0, 2]  # lowest first
    grid = tab_compare.render(session, res)["grid_plot"]
    assert grid.data[0].reversescale is True
    assert grid.data[0].colorbar.title.text == "mean perplexity (lower is better)"


def test_export_writes_a_folder_automodelforcausallm_loads(analysed, res, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    session = analysed
    merge(session, res)
    page = tab_export.render(session, res)
    assert page["export_format"]["value"] == "auto"
    assert [v for _, v in page["export_format"]["choices"]] == [
        "auto",
        "hf-causal-lm",
        "heterogui",
    ]
    assert "AutoModelForCausalLM" in page["export_info"]
    out = tmp_path / "lm"
    message, extra = tab_export.on_export(session, res, str(out), False, "auto")
    assert "(hf-causal-lm format)" in message and extra["export_file"].endswith(".zip")
    model = AutoModelForCausalLM.from_pretrained(out)
    batch = token_batches(AutoTokenizer.from_pretrained(out), TEXTS, 2, 48)[0]
    with torch.no_grad():
        exported = model(**batch).logits
        want = merged_logits(session.result.model)(batch)
    real = batch["attention_mask"].bool()
    assert (exported - want)[real].abs().max() < 1e-4
    with pytest.raises(ConfigError, match="does not fit these models"):
        tab_export.on_export(session, res, str(tmp_path / "bert"), False, "hf-bert")


def test_a_partial_zip_exports_in_the_heterogui_format(analysed, res, tmp_path):
    session = analysed
    merge(session, res, stop=2)
    page = tab_export.render(session, res)
    assert page["export_format"]["choices"][0] == ("auto (heterogui)", "auto")
    assert "Not hf-causal-lm" in page["export_info"] and "stops at block 2" in page["export_info"]
    with pytest.raises(ExportError, match="stops at block 2"):
        tab_export.on_export(session, res, str(tmp_path / "lm"), False, "hf-causal-lm")
    message, _ = tab_export.on_export(session, res, str(tmp_path / "partial"), False, None)
    assert "(heterogui format)" in message and (tmp_path / "partial" / "config.json").is_file()


def test_a_pair_with_another_tokenizer_is_refused_with_the_reason(folders, res, tmp_path):
    other = "".join(reversed([chr(c) for c in range(32, 127)])) + "\n\t"
    b = save_decoder(tiny_decoder(seed=2), tmp_path / "other", char_tokenizer(other))
    session = Session(device="cpu")
    load(session, res, "a", folders[0])
    message, _ = load(session, res, "b", b)
    assert "With model A (**" in message and "cannot be merged" in message
    verdict = tab_models.render(session, res)["verdict"]
    assert "✗ Cannot merge this pair" in verdict
    assert "first differing tokens id 3: ' ' vs '~'" in verdict
    fn = events.event_function(tab_models.on_analyse, res, views.SCOPES, ["verdict"], 3)
    with pytest.warns(UserWarning, match="vocabularies differ"):
        out = fn(session, "domains", None, 16, None)
    assert out[1].startswith("**Error:** cannot merge this pair: vocabularies differ")
    assert session.prepared is None  # nothing was analysed
    page = views.render(session, res, views.SCOPES)  # every tab still renders
    assert "Load and analyse" in page["readout"]
    assert labels.merge_alarms(session) == []


def test_the_similarity_measure_switches_the_map_and_realigns(analysed, res, monkeypatch):
    """A decoder pair reads layer updates; outputs are one switch away, and back is free."""
    from heterogui.align.alignment import align
    from heterogui.align.similarity import layer_similarity
    from heterogui.ui import tab_align

    prep = analysed.prepared
    assert (
        prep.measure == "updates" and tab_align.render(analysed, res)["align_measure"] == "updates"
    )
    message = tab_align.on_measure(analysed, res, "outputs")
    now = analysed.prepared
    assert "CKA of the layer outputs" in message and now.measure == "outputs"
    ga, gb = now.net_a.graph(), now.net_b.graph()
    torch.testing.assert_close(now.similarity, layer_similarity(now.net_a, now.net_b, now.batches))
    assert now.alignment == align(ga, gb, now.similarity, prep.alignment.mode)
    page = tab_align.render(analysed, res)
    assert page["align_measure"] == "outputs" and "layer outputs" in page["align_score"]

    def forbidden(*args, **kwargs):
        raise AssertionError("no similarity pass for a measure computed before")

    monkeypatch.setattr("heterogui.analysis.layer_similarity", forbidden)
    tab_align.on_measure(analysed, res, "updates")
    assert analysed.prepared.similarity is prep.similarity
    assert analysed.prepared.alignment.positions_b == prep.alignment.positions_b
    with pytest.raises(ConfigError, match="unknown"):
        tab_align.on_measure(analysed, res, "weights")
    assert analysed.prepared.measure == "updates"
    merge(analysed, res)  # a merge after switching reads the statistics of the placement
    assert analysed.result.alignment == analysed.prepared.alignment


def test_a_continuation_of_only_whitespace_says_so_in_its_cell():
    shown = evaluate_language.shown
    assert shown("\n  \n  \n") == "(whitespace only: 3 line breaks, 4 blanks)"
    assert shown("\n") == "(whitespace only: 1 line break)"
    assert shown(" \t") == "(whitespace only: 2 blanks)"
    assert shown("") == "(nothing: it ended at once)"
    assert shown(" return x\n") == " return x\n"  # text: as it is
