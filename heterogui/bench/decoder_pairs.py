"""Build and score the pairs of the decoder benchmark (``bench.decoders``): SmolLM2 pairs, rows.

Layer-dropped copies of a causal LM (``dropped_network``); SmolLM2 paired with a copy of itself,
shallower (``smollm2_shallow_pair``: its SHALLOW_DROP middle layers removed) or neuron-permuted
(``smollm2_self_merge``, run in a process of its own through ``self_merge_measurement``); and the
table rows of parents, ensembles, baselines and merges that the tables of docs/decoders.md hold.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import torch

from heterogui import run
from heterogui.bench.decoders_report import NEW_TOKENS, PAPER_NORMS, Row, layer_list
from heterogui.bench.memory import peak_rss_mib
from heterogui.bench.quality_report import (
    LEAST_SQUARES,
    PAPER,
    SEQUENTIAL,
    transformer_variants,
)
from heterogui.config import DataRef
from heterogui.datasets.text_domains import DOMAINS
from heterogui.errors import MatcherError, excerpt
from heterogui.models.family import Network
from heterogui.models.hf.decoder_io import network_from_hf
from heterogui.models.permute import permute_network, random_permutations
from heterogui.pipeline import MergeResult, Prepared, ZipSettings, zip_prepared
from heterogui.sources import registry
from heterogui.sources.base import Loaded, Pair
from heterogui.tasks.language import (
    ALL_DOMAINS,
    BATCH,
    LANGUAGE,
    MAX_TOKENS,
    merged_logits,
    network_logits,
    repetition,
    score_domains,
)
from heterogui.tasks.lm_metrics import generate, token_batches

log = logging.getLogger(__name__)
SMOLLM2 = "smollm2:135m-instruct"
PROMPTS = (
    "The Python tutorial explains",
    "def read_config(path):",
    "A list comprehension is",
)
# the merges with weighted RMSNorms (the default) also scored with the paper's norms: these
# variants' rows (``bench.quality_report`` suffixes: the paper's average, least squares and
# its sequential refit)
NORM_TWINS = ("", LEAST_SQUARES, SEQUENTIAL)
SHALLOW_DROP = 6  # middle layers SmolLM2's shallower copy drops (every other layer breaks it)


def params_m(module: torch.nn.Module) -> float:
    """Return the parameter count in millions."""
    return sum(p.numel() for p in module.parameters()) / 1e6


def evenly(depth: int, keep: int) -> tuple[int, ...]:
    """Return ``keep`` layer indices spread evenly over ``depth`` layers (first and last kept)."""
    if keep >= depth:
        return tuple(range(depth))
    if keep == 1:
        return (depth - 1,)
    return tuple(round(i * (depth - 1) / (keep - 1)) for i in range(keep))


def drop_hf_layers(model: Any, keep: tuple[int, ...]) -> Any:
    """Return a copy of a transformers causal LM that keeps only the decoder layers ``keep``."""
    out = copy.deepcopy(model)
    out.model.layers = torch.nn.ModuleList([out.model.layers[i] for i in keep])
    for new, layer in enumerate(out.model.layers):
        layer.self_attn.layer_idx = new
    out.config.num_hidden_layers = len(keep)
    layer_types = getattr(out.config, "layer_types", None)
    if layer_types:
        out.config.layer_types = [layer_types[i] for i in keep]
    return out


def dropped_network(folder: Path, keep: tuple[int, ...], label: str) -> Network:
    """Return the decoder network of a causal-LM folder with only the layers ``keep``."""
    from transformers import AutoModelForCausalLM

    with torch.random.fork_rng(devices=[]):
        model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    net = network_from_hf(drop_hf_layers(model, keep), label)
    del model
    return net


def score_row(name: str, scores: dict[str, Any], **facts: Any) -> Row:
    row: Row = {"model": name, **facts}
    for domain in DOMAINS:
        s = scores.get(domain)
        row[f"{domain} ppl"] = s["perplexity"] if s else None
        row[f"{domain} bpb"] = s["bits_per_byte"] if s else None
    return row


def _merge_row(
    name: str, pair: Pair, result: MergeResult, evaluation: Any, parents: dict[str, Any]
) -> Row:
    merged = run.evaluate_merge(pair, result, evaluation)
    alarms = LANGUAGE.alarms({**parents, "merged": merged})
    config = result.spec.trunk_config
    row = score_row(
        name,
        merged,
        layers=config.num_layers,
        width=config.hidden,
        params_M=params_m(result.model),
        slots_b=list(result.alignment.positions_b[0]),
    )
    row["repetition"] = merged["repetition"]
    row["alarms"] = alarms
    return row


def net_facts(net: Network) -> dict[str, Any]:
    return {
        "layers": net.config.num_layers,
        "width": net.config.hidden,
        "params_M": params_m(net.module),
    }


def _parent_row(
    name: str, scores: dict[str, Any], net: Network, pair: Pair, device: torch.device
) -> Row:
    """Return a parent's row, with the repetition of its own greedy continuations."""
    row = score_row(name, scores, **net_facts(net))
    if "repetition" not in scores:
        scores["repetition"] = round(
            repetition(network_logits(net.module, last=True), pair.a.tokenizer, device), 4
        )
    row["repetition"] = scores["repetition"]
    return row


def model_rows(
    pair: Pair, prep: Prepared, evaluation: Any, names: tuple[str, str]
) -> tuple[list[Row], dict[str, Any]]:
    scores = run.evaluate_models(pair, prep, evaluation)
    a, b = prep.net_a, prep.net_b
    rows = [
        _parent_row(names[0], scores["a"], a, pair, prep.device),
        _parent_row(names[1], scores["b"], b, pair, prep.device),
        score_row(
            "ensemble (mean of A's and B's probabilities)",
            scores["ensemble"],
            params_M=params_m(a.module) + params_m(b.module),
        ),
    ]
    return rows, {"a": scores["a"], "b": scores["b"]}


def merge_rows(
    pair: Pair,
    prep: Prepared,
    evaluation: Any,
    parents: dict[str, Any],
    label: str,
    heads_split: bool = False,
) -> list[Row]:
    """Return the rows of merges at rho 1 and 0.5 under ``prep``'s alignment, every variant.

    heads_split: include the heads-split rows (GPT-2; rotary heads do not split).
    """
    rows = []
    rms_stream = prep.padded_a.graph().rms_stream is not None
    for rho in (1.0, 0.5):
        for knobs, suffix in transformer_variants(label, heads_split=heads_split):
            result = zip_prepared(prep, ZipSettings(rho=rho, **knobs))
            name = f"merge {label} rho={rho:g}{suffix}"
            rows.append(_merge_row(name, pair, result, evaluation, parents))
            log.info("%s", rows[-1])
            if rms_stream and suffix in NORM_TWINS:
                rows.append(_paper_norms_row(rows[-1], pair, result, evaluation, parents))
                log.info("%s", rows[-1])
    return rows


def _paper_norms_row(
    weighted: Row, pair: Pair, result: MergeResult, evaluation: Any, parents: dict[str, Any]
) -> Row:
    """Return the row of ``result``'s merge with the paper's RMSNorms (``zip.norm_weights``
    off) after its ``weighted`` row: merged again, or the same row where weighing changed
    nothing (every stream scale 1, as at rho 1 with equal widths), so that every calibration
    draw has the same rows."""
    name = weighted["model"] + PAPER_NORMS
    if not result.norm_weighted:
        return {**weighted, "model": name, "note": "the row above: every norm scale is 1"}
    settings = dataclasses.replace(result.settings, norm_weights=False)
    return _merge_row(name, pair, zip_prepared(result.prepared, settings), evaluation, parents)


def average_row(pair: Pair, prep: Prepared, evaluation: Any, parents: dict[str, Any]) -> Row:
    """Return the weight-average baseline (SMA padding), or a row saying why it does not apply."""
    name = "baseline: weight average (SMA padding, no alignment)"
    try:
        result = zip_prepared(prep, ZipSettings("average", fusion=PAPER))
    except MatcherError as exc:
        log.info("weight average does not apply: %s", exc)
        row = score_row(f"{name}: not applicable", {})
        row["note"] = excerpt(exc)
        return row
    return _merge_row(name, pair, result, evaluation, parents)


def _smollm2_pair(loaded: Loaded, net_b: Network, name_b: str) -> Pair:
    b = dataclasses.replace(loaded, net=net_b, name=name_b, ref=f"{loaded.ref} ({name_b})")
    return Pair(loaded, b)


@torch.no_grad()
def smollm2_self_merge(n_calibration: int, n_evaluation: int) -> dict[str, Any]:
    """Merge SmolLM2 with a neuron-permuted copy of itself in this process; return the figures.

    Timed: loading SmolLM2 (from its converted folder), the permuted copy, the calibration, the
    analysis and the zip at rho 1; the peak RSS is read after loading and after the merge, before
    anything is evaluated.
    """
    start = time.perf_counter()
    loaded, net, permuted, pair = _permuted_smollm2()
    load_s = time.perf_counter() - start
    rss_loaded = peak_rss_mib()
    t0 = time.perf_counter()
    calibration = run.calibrate(pair, DataRef(ALL_DOMAINS, "calibration", n_calibration, BATCH))
    prep = run.analyse(pair, calibration)
    analyse_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    result = zip_prepared(prep, ZipSettings(rho=1.0, fusion=PAPER))
    zip_s = time.perf_counter() - t0
    rss_merged = peak_rss_mib()
    evaluation = LANGUAGE.evaluation(DataRef(ALL_DOMAINS, "test", n_evaluation, BATCH), pair)
    tok = loaded.tokenizer
    merged_fn = merged_logits(result.model)
    reference = network_logits(net.module)
    diff = _max_logit_diff(merged_fn, reference, tok, evaluation)
    greedy = _greedy_continuations(merged_fn, reference, tok)
    rows = _self_merge_rows(pair, prep, result, evaluation, net, permuted, tok)
    return {
        "max_abs_logit_diff": diff,
        "greedy": greedy,
        "rows": rows,
        "timing": {
            "threads": torch.get_num_threads(),
            "calibration_texts": calibration.count,
            "max_tokens": MAX_TOKENS,
            "load_s": round(load_s, 2),
            "calibrate_and_analyse_s": round(analyse_s, 2),
            "zip_s": round(zip_s, 2),
            "merge_s": round(analyse_s + zip_s, 2),
            "peak_rss_after_loading_mib": round(rss_loaded),
            "peak_rss_after_merge_mib": round(rss_merged),
            "merged_params_M": params_m(result.model),
            "stages_s": {k: round(v, 2) for k, v in result.timings.items()},
        },
    }


def _permuted_smollm2() -> tuple[Loaded, Network, Network, Pair]:
    """Return SmolLM2 loaded, its network, a neuron-permuted copy (seed 0) and their pair."""
    loaded = registry.load(SMOLLM2)
    net = loaded.net
    permuted = permute_network(
        net, random_permutations(net.graph(), torch.Generator().manual_seed(0))
    )
    pair = _smollm2_pair(loaded, permuted, "SmolLM2 permuted")
    return loaded, net, permuted, pair


def _max_logit_diff(merged_fn: Any, reference: Any, tok: Any, evaluation: Any) -> float:
    """Return the largest absolute logit difference of merge and reference on the test texts."""
    diff = 0.0
    for texts in evaluation.data.values():
        for batch in token_batches(tok, texts, BATCH, MAX_TOKENS):
            mask = batch["attention_mask"].bool()
            gap = (merged_fn(batch) - reference(batch)).abs()[mask]
            diff = max(diff, float(gap.max()))
    return diff


def _greedy_continuations(merged_fn: Any, reference: Any, tok: Any) -> list[dict[str, Any]]:
    """Return the greedy continuations of SmolLM2 and the merge for every one of PROMPTS."""
    greedy = []
    for prompt in PROMPTS:
        want = generate(reference, tok, prompt, NEW_TOKENS)
        got = generate(merged_fn, tok, prompt, NEW_TOKENS)
        greedy.append({"prompt": prompt, "smollm2": want, "merged": got, "identical": want == got})
    return greedy


def _self_merge_rows(
    pair: Pair,
    prep: Prepared,
    result: MergeResult,
    evaluation: Any,
    net: Network,
    permuted: Network,
    tok: Any,
) -> list[Row]:
    """Return the rows of SmolLM2, its permuted copy, the merge at rho 1 and the weight average."""
    parents = {
        key: {
            d: s.to_dict()
            for d, s in score_domains(
                network_logits(m.module), tok, evaluation.data, prep.device
            ).items()
        }
        for key, m in (("a", net), ("b", permuted))
    }
    rows = [
        _parent_row("A: SmolLM2", parents["a"], net, pair, prep.device),
        _parent_row(
            "B: SmolLM2 permuted (same function)", parents["b"], permuted, pair, prep.device
        ),
        _merge_row("merge SMA rho=1", pair, result, evaluation, parents),
        average_row(pair, prep, evaluation, parents),
    ]
    return rows


def self_merge_measurement(options: dict[str, Any]) -> dict[str, Any]:
    """Entry of the measuring process (``isolated.in_fresh_process``)."""
    if options.get("threads"):
        torch.set_num_threads(int(options["threads"]))
    return smollm2_self_merge(options["calibration"], options["evaluation"])


def middle_block(depth: int, drop: int) -> tuple[int, ...]:
    """Return the layers of ``depth`` kept when the ``drop`` middle layers are removed."""
    lo = (depth - drop) // 2
    return tuple(i for i in range(depth) if not lo <= i < lo + drop)


def smollm2_shallow_pair(device: Any = "cpu", loaded: Loaded | None = None) -> Pair:
    """Return SmolLM2 (A) and its copy without the SHALLOW_DROP middle layers (B)."""
    loaded = loaded or registry.load(SMOLLM2, device=device)
    depth = loaded.net.config.num_layers
    keep = middle_block(depth, SHALLOW_DROP)
    shallow = dropped_network(loaded.folder, keep, "SmolLM2 shallower")
    shallow.module.to(device)
    return _smollm2_pair(loaded, shallow, f"SmolLM2 layers {layer_list(keep, depth)}")
