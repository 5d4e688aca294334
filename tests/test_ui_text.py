"""Transformer (BERT) pairs in the workbench: handlers on tiny random BERT folders (fast)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import table_cells

from heterogui import run
from heterogui.config import DataRef
from heterogui.errors import ConfigError, ExportError
from heterogui.sources.base import Pair
from heterogui.ui import (
    compare_grid,
    tab_evaluate,
    tab_export,
    tab_models,
    tab_neurons,
    tab_zip,
    work,
)
from heterogui.ui.resources import Resources, ZooPairs
from heterogui.ui.session import Session

pytestmark = pytest.mark.ui
WORDS = [
    "the",
    "a",
    "cat",
    "dog",
    "man",
    "plays",
    "guitar",
    "music",
    "food",
    "sun",
    "rain",
    "team",
    "game",
    "is",
    "on",
    "in",
    "and",
]


def tiny_bert_folder(path: Path, hidden=32, heads=4, inter=64, layers=3, seed=0) -> Path:
    """Write a random BERT with a small word-piece tokenizer as a save_pretrained folder."""
    from transformers import BertTokenizer

    from tests.conftest import VOCAB, tiny_hf

    path.mkdir(parents=True)
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = specials + WORDS + [f"w{i}" for i in range(VOCAB - len(specials) - len(WORDS))]
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizer(str(path / "vocab.txt")).save_pretrained(path)
    tiny_hf(hidden=hidden, heads=heads, inter=inter, layers=layers, seed=seed).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("bert")
    a = tiny_bert_folder(root / "a", layers=3, seed=0)
    b = tiny_bert_folder(root / "b", hidden=48, heads=6, inter=96, layers=2, seed=1)
    return a, b


@pytest.fixture(scope="module")
def res(tmp_path_factory) -> Resources:
    exports = tmp_path_factory.getbasetemp()  # every test's tmp_path lies below it
    return Resources(ZooPairs(tiny=True), device="cpu", export_root=exports)


def load(session: Session, res: Resources, which: str, folder: Path) -> str:
    return tab_models.on_load_model(session, res, which, "hf", None, None, None, str(folder))


@pytest.fixture()
def analysed(folders, res) -> Session:
    session = Session(device="cpu")
    load(session, res, "a", folders[0])
    load(session, res, "b", folders[1])
    assert session.task.kind == "sentence_similarity" and session.data is None
    tab_models.on_analyse(session, res, "sentences", None, 32)
    assert session.calibration.count == 32 and session.calibration.ref.source == "sentences"
    return session


def test_bert_pair_shows_the_preflight_verdict(folders, res):
    session = Session(device="cpu")
    load(session, res, "a", folders[0])
    load(session, res, "b", folders[1])
    page = tab_models.render(session, res)
    verdict = page["verdict"]
    assert "✓ Compatible" in verdict and "depths differ (3 vs 2)" in verdict
    assert page["dataset"]["value"] == "sentences"  # what Analyse reads (the box was blank)
    assert session.a.tokenizer is not None


def test_one_pass_per_model_scores_as_a_pass_per_embedding(analysed, res):
    """A, B and the ensemble come from one pass of each model, and a merge's three embeddings
    from one trunk pass: the same scores as a pass per embedding."""
    from heterogui.tasks import sentences as sts

    session = analysed
    n_blocks = session.prepared.padded_a.graph().num_blocks - 1
    tab_zip.on_merge(session, res, "zip", 0.5, 1.0, 0.7, n_blocks - 1, "cpu")  # a tail runs
    model, a, b = session.result.model, session.prepared.net_a.module, session.prepared.net_b.module
    pairs, tok = session.evaluation.data, session.pair.a.tokenizer

    def ensemble(batch):  # the concatenated normalised embeddings, each model run again
        parts = [torch.nn.functional.normalize(m(**batch), dim=-1) for m in (a, b)]
        return torch.cat(parts, dim=-1)

    separate = {
        "a": sts.network_embedder(a),
        "b": sts.network_embedder(b),
        "ensemble": ensemble,
        "merged": sts.merged_embedder(model),
        "head A": lambda batch: model(**batch)[0],
        "head B": lambda batch: model(**batch)[1],
    }
    expected = {k: sts.sts_spearman(e, tok, pairs) for k, e in separate.items()}
    models = session.task.score_models(session.prepared, session.evaluation, session.pair)
    merged = session.task.score_merged(session.result, session.evaluation, session.pair)
    assert set(models) == {"a", "b", "ensemble"} and set(merged) == {"merged", "head A", "head B"}
    for name, value in (models | merged).items():  # all to 4 places, as report.json shows
        assert value == round(expected[name], 4), name
    assert len({round(v, 4) for v in expected.values()}) > 3  # the embeddings differ


def test_bert_flow_analyse_align_neurons_zip_evaluate_export(analysed, res, tmp_path):
    session = analysed
    prep = session.prepared
    assert prep.padded_b.identity_blocks and set(session.baseline) == {"a", "b", "ensemble"}
    view = tab_evaluate.render(session, res)
    assert view["text_scores"]
    shown = {k: v["visible"] for k, v in view.items() if k.startswith("panel_")}
    assert shown == {
        "panel_metrics": False,  # a sentence pair: Spearman and similarity, no accuracy panels
        "panel_samples": False,
        "panel_sweep": True,  # rho against Spearman, re-merged from the statistics
        "panel_spearman": True,
        "panel_similarity": True,
        "panel_perplexity": False,
        "panel_generations": False,
    }
    spaces = [n for _, n in tab_neurons.merge_points(prep)]
    assert "layer0.qk" in spaces and "stream" in spaces
    tab_neurons.on_space(session, res, "layer0.vo")
    views = tab_neurons.render(session, res)
    assert views["neuron_map"] is not None
    n_blocks = prep.padded_a.graph().num_blocks - 1
    tab_zip.on_merge(session, res, "zip", 0.5, 1.0, 0.5, n_blocks, "cpu")
    match = session.result.matches["layer0.qk"]
    assert match.width % 8 == 0  # whole heads of size 8
    assert session.result.matches["layer0.vo"].width == match.width  # Q/K and V/O paired
    work.evaluate_pending(session, res)
    assert set(session.merged_metrics) == {"merged", "head A", "head B"}
    rows = tab_evaluate.spearman_rows(session)
    assert rows[-1][0].startswith("merged, head B") and rows[-1][1] is not None
    # the table keeps each Spearman as a number and shows it with four decimals
    shown = tab_evaluate.render(session, res)["text_scores"]
    assert [r[1] for r in table_cells(shown)] == [r[1] for r in rows]
    assert [r[1] for r in table_cells(shown, shown=True)] == [f"{r[1]:.4f}" for r in rows]
    message = tab_evaluate.on_similarity(session, res, "the cat\nthe dog\nrain and sun")
    assert "head A" in message
    sims = session.task.similarity(
        session.prepared, session.result, session.pair, ["the cat", "the dog", "rain"]
    )
    assert set(sims) >= {"A", "B", "merged (head A: A's space)"}
    assert sims["A"].shape == (3, 3)
    out = tmp_path / "merged"
    tab_export.on_export(session, res, str(out), False)
    assert (out / "config.json").is_file() and (out / "recipe.yaml").is_file()
    # the folder the Export tab suggests names the models loaded (a demo pair: the pair)
    names = f"{session.a.name}+{session.b.name}".replace(" ", "_")
    suggested = tab_export.default_folder(session)
    rho, count = session.result.settings.rho, session.merge_count
    assert suggested == f"{names}-rho{rho:.2f}-m{count}-{session.sid}"
    tab_evaluate.on_sweep(session, res)
    assert [p["rho"] for p in session.sweep] == list(tab_evaluate.SWEEP_RHOS)
    assert all(isinstance(p["score"], float) for p in session.sweep)
    assert tab_evaluate.render(session, res)["sweep_plot"] is not None
    compare_grid.on_grid(session, res, "alpha")  # the Compare tab's 2-D sweep too
    assert len(session.grid) == len(compare_grid.GRID_RHOS) * len(compare_grid.GRID_VALUES["alpha"])
    assert all(isinstance(p["score"], float) for p in session.grid)
    with pytest.raises(ExportError, match="already exists"):
        tab_export.on_export(session, res, str(out), False)
    other = Session(device="cpu")  # the exported recipe repeats the Hugging Face merge
    tab_export.on_import(other, res, str(out / "recipe.yaml"), None)
    assert other.task.kind == "sentence_similarity" and other.pair.a.source == "hf"
    mine, again = session.result.model.state_dict(), other.result.model.state_dict()
    assert mine.keys() == again.keys() and all(torch.equal(mine[k], again[k]) for k in mine)
    assert other.merged_metrics == session.merged_metrics


def test_pasted_sentences_calibrate_and_bad_data_is_refused(folders, res):
    session = Session(device="cpu")
    load(session, res, "a", folders[0])
    load(session, res, "b", folders[1])
    with pytest.raises(ConfigError, match="'digits' is no data for sentence similarity"):
        work.analyse(session, res, DataRef("digits"))
    message, chosen = tab_models.on_sentences(
        session, res, "\n".join(f"the cat {w}" for w in WORDS)
    )
    # the page's controls now name the saved file: Analyse pair sends what they show
    assert chosen["dataset"]["value"] == "file" and chosen["cal_file"].endswith(".txt")
    assert "Press **Analyse pair**" in message and session.prepared is None
    tab_models.on_analyse(session, res, "file", chosen["cal_file"], 64)
    assert session.calibration.count == len(WORDS) and len(session.calibration.batches) == 1
    assert session.data.source == chosen["cal_file"]
    # the file outlives the session: an exported recipe that names it repeats the merge later
    from heterogui.ui.app import end_session

    end_session(session)
    assert Path(chosen["cal_file"]).read_text().splitlines() == [f"the cat {w}" for w in WORDS]
    with pytest.raises(ConfigError, match="at least 16"):
        tab_models.on_sentences(session, res, "one\ntwo")
    with pytest.raises(ConfigError, match="20 sentences but 1 different; paste at least 16"):
        tab_models.on_sentences(session, res, "\n".join(["the same sentence"] * 20))


def test_bert_flow_over_the_api(folders, tmp_path):
    from gradio_client import Client

    from heterogui.ui.app import build_app, launch

    demo = build_app(
        Resources(ZooPairs(tiny=True), device="cpu", default_pair=None, export_root=tmp_path)
    )
    url = launch(demo, "127.0.0.1", None, block=False)
    try:
        client = Client(url, verbose=False)

        def call(api: str, *args):
            out = client.predict(*args, api_name=api)
            return out[0], out[1]

        for which, folder in zip("ab", folders, strict=True):
            status, _ = call(f"/load_model_{which}", "hf", None, None, None, str(folder))
            assert "Loaded model" in status
        status, summary = call("/analyse", "sentences", None, 32)
        assert "32 calibration inputs" in status and summary["analysed"]
        status, summary = call("/merge", "zip", 0.5, 1.0, 0.5, summary["blocks"], "cpu")
        assert "Merge #1" in status
        status, _ = call("/similarity", "the cat\nthe dog")
        assert "head A (in A's space)" in status
        status, _ = call("/export", str(tmp_path / "hf"), False)
        assert "Exported to" in status and (tmp_path / "hf" / "config.json").is_file()
    finally:
        demo.close()


def classifier_folder(path: Path, labels: tuple[str, ...], layers: int, seed: int) -> Path:
    """Write a tiny BERT classifier whose id2label names the built-in text tasks' labels."""
    from transformers import BertTokenizer

    from tests.conftest import VOCAB, tiny_hf

    path.mkdir(parents=True)
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = specials + WORDS + [f"w{i}" for i in range(VOCAB - len(specials) - len(WORDS))]
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizer(str(path / "vocab.txt")).save_pretrained(path)
    model = tiny_hf(layers=layers, seed=seed, labels=len(labels))
    model.config.id2label = dict(enumerate(labels))
    model.config.label2id = {name: k for k, name in enumerate(labels)}
    model.save_pretrained(path)
    return path


def test_text_classifiers_get_the_accuracy_panels(res, tmp_path, caplog):
    topics = classifier_folder(tmp_path / "a", ("sports", "food", "technology", "weather"), 3, 0)
    moods = classifier_folder(tmp_path / "b", ("negative", "positive"), 2, 1)
    session = Session(device="cpu")
    load(session, res, "a", topics)
    load(session, res, "b", moods)
    assert session.task.kind == "text_classification"
    assert session.a.net.head_classes() == (0, 1, 2, 3) and session.b.net.head_classes() == (4, 5)
    pair = Pair(session.a, session.b)  # an evaluation size draws that many labelled sentences
    every = run.evaluation_data(pair, DataRef("text-tasks", "test", None, 16))
    drawn = run.evaluation_data(pair, DataRef("text-tasks", "test", 20, 16))
    assert drawn.count == 20 and len(drawn.data.sentences) == 20 < every.count
    assert set(drawn.data.sentences) < set(every.data.sentences)
    with caplog.at_level("WARNING", logger="heterogui.run"):
        over = run.evaluation_data(pair, DataRef("text-tasks", "test", every.count + 5, 16))
    assert over.count == every.count and f"not the {every.count + 5} asked" in caplog.text
    own = tmp_path / "own.tsv"  # a user's file with a label no head has: left out, and said so
    own.write_text("sports\tThe team won.\nanimals\tThe cat slept.\npositive\tI loved it.\n")
    with caplog.at_level("WARNING", logger="heterogui.tasks.text_classes"):
        mine = run.evaluation_data(pair, DataRef(str(own), "test", None, 16))
    assert len(mine.data.sentences) == 2
    assert f"1 of 3 sentences of {own} have a label that no head has" in caplog.text
    tab_models.on_analyse(session, res, "sentences", None, 32)
    assert session.evaluation.ref.source == "text-tasks"  # the built-in topics and sentiment
    n_blocks = session.prepared.padded_a.graph().num_blocks - 1
    tab_zip.on_merge(session, res, "zip", 0.5, 1.0, 0.5, n_blocks, "cpu")
    views = tab_evaluate.render(session, res)
    shown = {k: v["visible"] for k, v in views.items() if k.startswith("panel_")}
    assert shown["panel_metrics"] and shown["panel_sweep"] and not shown["panel_samples"]
    assert not shown["panel_spearman"] and not shown["panel_similarity"]
    header, rows = tab_evaluate.metric_rows(session)
    assert header[1] == "Joint %" and [r[0] for r in rows] == ["A", "B", "ensemble", "merged"]
    assert all(0 <= v <= 100 for v in rows[3][1:5])
    with pytest.raises(ConfigError, match="no image samples"):
        tab_evaluate.on_samples(session, res, "0")
    tab_evaluate.on_sweep(session, res)
    assert len(session.sweep) == len(tab_evaluate.SWEEP_RHOS)
