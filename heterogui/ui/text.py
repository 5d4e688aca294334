"""Transformer (BERT) pairs in the workbench: sources, pre-flight, sentences, metrics, export.

A BERT pair calibrates on *sentences* (the built-in template sentences, or sentences the user
pastes), tokenised with model A's tokenizer into dict batches for ``prepare``; it is scored by
sentence similarity (Spearman on the built-in graded pairs, ``heterogui.evaluate.sentences``)
and exported as a Hugging Face folder (``heterogui.models.hf.pair.export_merge``).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import torch

from heterogui.errors import ConfigError, HeteroguiError
from heterogui.pipeline import MergeResult, Prepared
from heterogui.ui.session import ModelSlot, Session

TEXT = "sentences"  # the "dataset" of a text pair
DEFAULT_SENTENCES = 64  # the feature pass of MiniLM takes ~20 s on 256 sentences on 2 cores
MAX_SENTENCES = 1024
BATCH = 32
MINILM = {
    "minilm:all-MiniLM-L6-v2": "minilm_l6_path",
    "minilm:paraphrase-MiniLM-L3-v2": "minilm_l3_path",
}
IDENTITY = "exact"  # the config default: how padded layers of the shallower model are built


def is_text(session: Session) -> bool:
    """Return True when the session's models are transformer (BERT) models."""
    slot = session.a or session.b
    return slot is not None and slot.net.family.name == "bert"


def resolve(name: str) -> str:
    """Return the folder or hub id behind a source name ("minilm:..." names the offline pair)."""
    if name in MINILM:
        from heterogui.models.hf import minilm

        return str(getattr(minilm, MINILM[name])())
    return name


def load_slot(name: str) -> ModelSlot:
    """Load a Hugging Face BERT (folder, hub id or "minilm:NAME") with its tokenizer.

    Raises:
        ModelLoadError: the model cannot be loaded (the reason is in the message).
    """
    from heterogui.models.hf.bert_io import load_bert

    ref = resolve(name)
    net, tokenizer = load_bert(ref)
    weights = Path(ref) / "model.safetensors"
    from heterogui.models.io import file_sha256

    sha = file_sha256(weights) if weights.is_file() else None
    return ModelSlot(net, ref, "hf", sha, tokenizer=tokenizer)


def preflight_text(a: ModelSlot, b: ModelSlot) -> str | None:
    """Return the header-only pre-flight verdict of two local folders (None: not folders)."""
    if not (Path(a.ref).is_dir() and Path(b.ref).is_dir()):
        return None
    from heterogui.models.hf.preflight import check_pair, inspect_model

    try:
        verdict = check_pair(inspect_model(a.ref), inspect_model(b.ref))
    except HeteroguiError as exc:
        return f"**✗ Pre-flight failed**: {exc}"
    head = "**✓ Pre-flight: compatible**" if verdict.ok else "**✗ Pre-flight: cannot merge**"
    lines = [head] + [f"- ✗ {r}" for r in verdict.reasons] + [f"- {n}" for n in verdict.notes]
    return "\n".join(lines)


def parse_sentences(text: str | None) -> list[str]:
    """Return the non-empty lines of ``text`` (one sentence per line)."""
    return [line.strip() for line in (text or "").splitlines() if line.strip()]


def calibration(session: Session) -> list[str]:
    """Return the session's calibration sentences: pasted ones, else the built-in ones.

    Raises:
        ConfigError: fewer than 16 sentences.
    """
    if session.sentences:
        sentences = list(session.sentences)
    else:
        from heterogui.zoo.text_tasks import calibration_sentences

        sentences = calibration_sentences(session.calibration.size or DEFAULT_SENTENCES)
    if len(sentences) < 16:
        raise ConfigError(f"{len(sentences)} calibration sentences: paste at least 16")
    return sentences


def batches(session: Session) -> list[dict[str, torch.Tensor]]:
    """Return the calibration sentences tokenised by model A's tokenizer (dict batches)."""
    from heterogui.evaluate.sentences import tokenize

    return tokenize(session.a.tokenizer, calibration(session), BATCH)


@functools.lru_cache(maxsize=1)
def sts_pairs() -> tuple:
    """Return the built-in graded sentence pairs (read once)."""
    from heterogui.evaluate.sentences import load_pairs

    return tuple(load_pairs())


def _spearman(embedder: Any, tokenizer: Any, device: Any) -> float:
    from heterogui.evaluate.sentences import sts_spearman

    return round(sts_spearman(embedder, tokenizer, list(sts_pairs()), device), 4)


def baseline(prepared: Prepared, tokenizer: Any) -> dict[str, float]:
    """Return the Spearman of A, B and their ensemble on the built-in pairs."""
    from heterogui.evaluate.sentences import ensemble_embedder, network_embedder

    a, b, dev = prepared.net_a.module, prepared.net_b.module, prepared.device
    return {
        "a": _spearman(network_embedder(a), tokenizer, dev),
        "b": _spearman(network_embedder(b), tokenizer, dev),
        "ensemble": _spearman(ensemble_embedder(a, b), tokenizer, dev),
    }


def merged_scores(result: MergeResult, tokenizer: Any) -> dict[str, float]:
    """Return the merged model's Spearman: exported trunk ("merged"), "head A", "head B"."""
    from heterogui.evaluate.sentences import merged_embedders

    dev = result.prepared.device
    return {k: _spearman(e, tokenizer, dev) for k, e in merged_embedders(result.model).items()}


def score_rows(session: Session) -> list[list[Any]]:
    """Return the Spearman table: model, spearman, parameters (merged: trunk, head A, head B)."""
    sizes = session.reference_sizes or {}
    rows = []
    for label, key in (("A", "a"), ("B", "b"), ("ensemble (A and B concatenated)", "ensemble")):
        size = sizes.get(label.split(" ")[0], {}).get("parameters")
        rows.append([label, session.baseline.get(key), size])
    scores = session.merged_metrics if isinstance(session.merged_metrics, dict) else {}
    size = (session.merged_size or {}).get("parameters")
    for key, label in (
        ("merged", "merged (exported trunk, mean-pooled)"),
        ("head A", "merged, head A (A's space)"),
        ("head B", "merged, head B (B's space)"),
    ):
        if session.result is not None:
            rows.append([label, scores.get(key), size])
    return rows


@torch.no_grad()
def similarity(session: Session, sentences: list[str]) -> dict[str, torch.Tensor]:
    """Return the cosine similarity matrix (N, N) of ``sentences`` per model.

    Keys: "A", "B", and with a merge "merged (head A: A's space)", "merged (head B: B's space)".

    Raises:
        ConfigError: fewer than 2 or more than 16 sentences, or nothing analysed.
    """
    from heterogui.evaluate.sentences import embed, merged_embedders, network_embedder

    if not 2 <= len(sentences) <= 16:
        raise ConfigError(f"type 2 to 16 sentences, one per line (got {len(sentences)})")
    prep = session.prepared
    if prep is None:
        raise ConfigError("load and analyse a pair first (Models tab)")
    tok, dev = session.a.tokenizer, prep.device
    embedders = {
        "A": network_embedder(prep.net_a.module),
        "B": network_embedder(prep.net_b.module),
    }
    if session.result is not None:
        heads = merged_embedders(session.result.model)
        embedders["merged (head A: A's space)"] = heads["head A"]
        embedders["merged (head B: B's space)"] = heads["head B"]
    out = {}
    for name, embedder in embedders.items():
        emb = embed(embedder, tok, sentences, device=dev)
        out[name] = emb @ emb.T
    return out


def bert_merge(session: Session) -> Any:
    """Return the session's merge as a ``BertMerge`` (recipe included) for export and preview."""
    from heterogui.models.hf.pair import BertMerge, bert_recipe

    result = session.result
    paths = (Path(session.a.ref), Path(session.b.ref))
    recipe = bert_recipe(
        paths,
        calibration(session),
        result,
        identity=result.prepared.padded_a.config.identity,
        batch_size=BATCH,
        pooling=result.prepared.net_a.config.pooling,
    )
    return BertMerge(result, session.a.tokenizer, recipe, paths)


def scores_of(session: Session) -> dict[str, float] | None:
    """Return the merged model's Spearman scores (None when not evaluated)."""
    return session.merged_metrics if isinstance(session.merged_metrics, dict) else None


def similarity_figure(matrices: dict[str, torch.Tensor], sentences: list[str]) -> Any:
    """Return one cosine-similarity heatmap per model, side by side."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    names = list(matrices)
    fig = make_subplots(rows=1, cols=len(names), subplot_titles=names, horizontal_spacing=0.03)
    labels = [f"{i}: {s[:24]}" for i, s in enumerate(sentences)]
    for k, name in enumerate(names):
        fig.add_trace(
            go.Heatmap(
                z=matrices[name].numpy().round(3),
                x=list(range(len(sentences))),
                y=labels,
                zmin=-1,
                zmax=1,
                colorscale="RdBu",
                reversescale=True,
                showscale=k == 0,
            ),
            row=1,
            col=k + 1,
        )
        fig.update_yaxes(autorange="reversed", showticklabels=k == 0, row=1, col=k + 1)
    fig.update_layout(height=320, margin={"l": 10, "r": 10, "t": 40, "b": 10})
    return fig


def export(session: Session, out: str, overwrite: bool = False) -> Path:
    """Write the merged BERT as a save_pretrained folder (atomic; refuses an existing one).

    Raises:
        ExportError: the folder exists (without overwrite), a partial zip, or writing failed.
    """
    from heterogui.errors import ExportError
    from heterogui.models.hf.pair import export_merge

    text = (out or "").strip()
    if not text:
        raise ExportError("type an output folder for the export")
    path = Path(text).expanduser()
    if path.exists() and not overwrite:
        raise ExportError(
            f"output folder {str(path)!r} already exists; choose another folder or tick 'overwrite'"
        )
    export_merge(bert_merge(session), path, metrics=scores_of(session), overwrite=overwrite)
    session.last_export = str(path)
    return path
