"""Quality of BERT merges on real models: the tables of docs/transformers.md.

    heterogui bench transformers --threads 1 [--calibration 256] [--seeds 3]
        [--skip-identity] [--skip-classification]

1. Sentence similarity (MiniLM-L6 + MiniLM-L3, 168 built-in pairs, Spearman of cosines): A, B,
   the ensemble, the naive baselines (A with layers dropped to B's depth; weight average of A and
   the padded B) and merges under several alignments and zip ratios.
2. Identity layers: how well the padded L3 reproduces L3 under each construction, and what it
   does to the merge.
3. Classification: the fine-tuned pair of ``heterogui.zoo.text_pair`` (L6 on topics, L3 on
   sentiment), per task and jointly (docs/method.md sec. 11).

With ``--seeds N`` tables 1 and 3 are run on N calibration draws (seeds 0 .. N-1; the models
do not change) and show mean ± std (``bench.seeds``); table 2 uses the first draw.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import time
from collections.abc import Callable
from typing import Any

import torch

from heterogui import run
from heterogui.align.pad import pad_network
from heterogui.bench.quality_report import PAPER, transformer_variants
from heterogui.bench.seeds import cell, columns, over_seeds
from heterogui.config import DataRef
from heterogui.datasets.refs import tokenize
from heterogui.datasets.sentence_pairs import load_pairs
from heterogui.datasets.text_tasks import calibration_sentences
from heterogui.models.bert import BertNetConfig
from heterogui.models.capture import to_device
from heterogui.models.family import Network
from heterogui.pipeline import (
    Prepared,
    ZipSettings,
    prepare,
    realign,
    resolve_device,
    zip_prepared,
)
from heterogui.sources import minilm
from heterogui.tasks import sentences as sts
from heterogui.tasks.text_classes import BUILT_IN, TEXT_CLASSES
from heterogui.zoo.text_pair import text_pair_folders

log = logging.getLogger(__name__)
Row = dict[str, Any]


def drop_layers(net: Network, keep: tuple[int, ...]) -> Network:
    """Return a copy of a bert-family net that keeps only the encoder layers ``keep`` (0-based)."""
    c: BertNetConfig = net.config
    config = dataclasses.replace(
        c,
        heads=tuple(c.heads[i] for i in keep),
        intermediate=tuple(c.intermediate[i] for i in keep),
    )
    blocks = [0, *(i + 1 for i in keep), c.num_layers + 1]
    mapping = {old: new for new, old in enumerate(blocks)}
    state = {}
    for key, value in net.module.state_dict().items():
        _, block, rest = key.split(".", 2)
        if int(block) in mapping:
            state[f"blocks.{mapping[int(block)]}.{rest}"] = value
    module = net.family.build(config)
    module.load_state_dict(state)
    module.to(next(net.module.parameters()).device)
    return Network(config, module.eval(), net.classes, frozenset(), f"{net.label}-dropped")


def params(module: torch.nn.Module) -> float:
    """Return the parameter count in millions."""
    return sum(p.numel() for p in module.parameters()) / 1e6


def _with_identity(net: Network, mode: str) -> Network:
    return dataclasses.replace(net, config=dataclasses.replace(net.config, identity=mode))


def _merged_rows(prep: Prepared, label: str, settings: ZipSettings, tok: Any, pairs) -> list[Row]:
    result = zip_prepared(prep, settings)
    row = {
        "model": label,
        "B slots": list(result.alignment.positions_b[0]),
        "params_M": params(result.model),
    }
    scores = sts.sts_spearmans(sts.merged_embeddings(result.model), tok, pairs, prep.device)
    for name, value in scores.items():
        row["spearman" if name == "merged" else f"spearman {name}"] = value
    return [row]


def sts_rows(n_calibration: int = 256, device: str = "cpu", seed: int = 0) -> list[Row]:
    """Return the sentence-similarity table rows (module docstring, item 1).

    seed: the calibration draw (``calibration_sentences``).
    """
    pairs = load_pairs()
    a, b, tok = minilm_pair(device)
    batches = tokenize(tok, calibration_sentences(n_calibration, seed), 32)
    score = lambda fn: sts.sts_spearman(fn, tok, pairs, device)  # noqa: E731
    scores = sts.sts_spearmans(sts.ensemble_embeddings(a.module, b.module), tok, pairs, device)
    rows = [
        {"model": "A: all-MiniLM-L6-v2", "params_M": params(a.module), "spearman": scores["a"]},
        {
            "model": "B: paraphrase-MiniLM-L3-v2",
            "params_M": params(b.module),
            "spearman": scores["b"],
        },
        {
            "model": "ensemble (A and B embeddings concatenated)",
            "params_M": params(a.module) + params(b.module),
            "spearman": scores["ensemble"],
        },
    ]
    prep = prepare(a, b, batches, device=device)
    keep = prep.alignment.positions_b[0]
    dropped = drop_layers(prep.net_a, keep)
    rows.append(
        {
            "model": f"baseline: A with layers {list(keep)} only",
            "B slots": list(keep),
            "params_M": params(dropped.module),
            "spearman": score(sts.network_embedder(dropped.module)),
        }
    )
    rows += _merged_rows(
        prep,
        "baseline: weight average of A and padded B",
        ZipSettings(matcher="average", fusion=PAPER),
        tok,
        pairs,
    )
    for mode in ("sma", "lma", "lma_first", "lma_similar", "uniform", "head_tail"):
        p = prep if mode == "sma" else realign(prep, mode)
        for rho in (1.0, 0.5) if mode == "sma" else (1.0,):
            for knobs, suffix in transformer_variants(mode):
                label = f"merge {mode} rho={rho}{suffix}"
                rows += _merged_rows(p, label, ZipSettings(rho=rho, **knobs), tok, pairs)
    return rows


@torch.no_grad()
def identity_rows(n_calibration: int = 256, device: str = "cpu") -> list[Row]:
    """Return the identity-construction rows (module docstring, item 2)."""
    pairs = load_pairs()
    a, b, tok = minilm_pair(device)
    batches = tokenize(tok, calibration_sentences(n_calibration), 32)
    probe = tokenize(tok, sorted({s for p in pairs for s in (p.first, p.second)}), 64)
    rows = []
    for mode in ("plain", "ls", "exact"):
        bm = _with_identity(b, mode)
        prep = prepare(a, bm, batches, device=device)
        interleaved = pad_network(bm, ((0, 2, 4),), (6,))
        bm.family.fit_identity(interleaved, sorted(interleaved.identity_blocks), batches, device)
        row: Row = {"identity": mode}
        sma = f"SMA slots {list(prep.alignment.positions_b[0])}"
        for name, padded in ((sma, prep.padded_b), ("slots [0, 2, 4]", interleaved)):
            hid, emb = _deviation(b, padded, probe)
            row[f"{name}: hidden rel. error"] = hid
            row[f"{name}: min cosine"] = emb
            row[f"{name}: padded B spearman"] = sts.sts_spearman(
                sts.network_embedder(padded.module), tok, pairs, device
            )
        merged = zip_prepared(prep, ZipSettings(fusion=PAPER))
        embed = sts.merged_embedder(merged.model)
        row["merge SMA rho=1 spearman"] = sts.sts_spearman(embed, tok, pairs, device)
        rows.append(row)
    return rows


def _deviation(ref: Network, padded: Network, probe: list[dict]) -> tuple[float, float]:
    """Return (relative L2 error of last token states, min cosine of embeddings) on ``probe``."""
    num = den = 0.0
    cos = 1.0
    dev = next(ref.module.parameters()).device
    for batch in probe:
        batch = to_device(batch, dev)
        mask = batch["attention_mask"].bool()
        want = ref.module.hidden_states(**batch)[mask]
        got = padded.module.hidden_states(**batch)[mask]
        num += float((got - want).pow(2).sum())
        den += float(want.pow(2).sum())
        sim = torch.nn.functional.cosine_similarity(ref.module(**batch), padded.module(**batch))
        cos = min(cos, float(sim.min()))
    return (num / den) ** 0.5, cos


def minilm_pair(device: str) -> tuple[Network, Network, Any]:
    """Return MiniLM-L6 (A), MiniLM-L3 (B) and their shared tokenizer, through the sources."""
    pair = run.load_pair(f"minilm:{minilm.L6_NAME}", f"minilm:{minilm.L3_NAME}", device=device)
    return pair.a.net, pair.b.net, pair.a.tokenizer


def classification_rows(n_calibration: int = 256, device: str = "cpu", seed: int = 0) -> list[Row]:
    """Return the classification table rows (module docstring, item 3); seed: the draw."""
    folder_a, folder_b = text_pair_folders()
    pair = run.load_pair(str(folder_a), str(folder_b), device=device)
    ref = DataRef("sentences", size=n_calibration, batch_size=32, seed=seed)
    calibration = run.calibrate(pair, ref)
    test = TEXT_CLASSES.evaluation(DataRef(BUILT_IN, "test", None, 64), pair)
    a, b = pair.a.net.module, pair.b.net.module

    def row(name: str, m: Any, params_m: float | None, slots=None) -> Row:
        return {
            "model": name,
            "B slots": slots,
            "params_M": params_m,
            "joint": m.joint,
            "task A (topics)": m.task_a,
            "task B (sentiment)": m.task_b,
            "avg": m.avg,
        }

    prep = run.analyse(pair, calibration, device=device)
    scores = TEXT_CLASSES.score_models(prep, test, pair)
    rows = [
        row("A: L6 fine-tuned on topics", scores["a"], params(a)),
        row("B: L3 fine-tuned on sentiment", scores["b"], params(b)),
        row("ensemble (both models)", scores["ensemble"], params(a) + params(b)),
    ]
    for mode in ("sma", "lma", "lma_first", "lma_similar", "uniform", "head_tail"):
        p = prep if mode == "sma" else realign(prep, mode)
        slots = list(p.alignment.positions_b[0])
        variants = [
            (f"merge {mode} rho={rho}{suffix}", ZipSettings(rho=rho, **knobs))
            for rho in (1.0, 0.5)
            for knobs, suffix in transformer_variants(mode)
        ]
        if mode == "sma":
            variants.insert(
                0, ("baseline: weight average (SMA padding)", ZipSettings("average", fusion=PAPER))
            )
        for name, settings in variants:
            result = zip_prepared(p, settings)
            merged = TEXT_CLASSES.score_merged(result, test, pair)
            rows.append(row(name, merged, params(result.model), slots))
    return rows


def markdown(rows: list[Row]) -> str:
    """Return rows as a markdown table (floats with 3 decimals, None as an em dash).

    A mean over seeds shows its standard deviation ("0.847 ± 0.004", ``bench.seeds``).
    """
    names = columns(rows)

    def value(v: Any) -> str:
        if v is None:
            return "—"
        if isinstance(v, float):
            return f"{v:.1e}" if 0 < abs(v) < 1e-3 else f"{v:.3f}"
        return str(v)

    lines = ["| " + " | ".join(names) + " |", "|" + "---|" * len(names)]
    lines += ["| " + " | ".join(cell(r, c, value) for c in names) + " |" for r in rows]
    return "\n".join(lines)


def _timed(name: str, fn: Callable[[], list[Row]]) -> str:
    start = time.perf_counter()
    rows = fn()
    log.info("%s took %.1f s", name, time.perf_counter() - start)
    return f"## {name}\n\n{markdown(rows)}\n"


def transformer_tables(args: argparse.Namespace) -> str:
    """Return the tables of docs/transformers.md as markdown (runs the MiniLM merges)."""
    dev = str(resolve_device(args.device))
    seeds = range(args.seeds)
    draws = f" ({args.seeds} calibration draws, mean ± std)" if args.seeds > 1 else ""
    sts = lambda seed: sts_rows(args.calibration, dev, seed)  # noqa: E731
    parts = [_timed(f"Sentence similarity{draws}", lambda: over_seeds(sts, seeds))]
    if not args.skip_identity:
        parts.append(_timed("Identity layers", lambda: identity_rows(args.calibration, dev)))
    if not args.skip_classification:
        classes = lambda seed: classification_rows(args.calibration, dev, seed)  # noqa: E731
        parts.append(_timed(f"Classification{draws}", lambda: over_seeds(classes, seeds)))
    return "\n".join(parts)
