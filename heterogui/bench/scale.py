"""Scale benchmark: a Llama pair of about a billion parameters merged in this machine's memory.

    heterogui bench scale --threads 2

builds two Llama decoders from config in this process (random weights, seeded; nothing is
downloaded): by default A in the shape of TinyLlama-1.1B (hidden 2048, 22 layers, MLP 5632, 32
query and 4 key/value heads, a vocabulary of 32,000, untied head: 1.10B parameters) and a
shallower B (16 layers: 0.84B). It calibrates on random token ids (seeded) and runs the engine's
own path, ``pipeline.prepare`` with the statistics budget of ``host_memory.stats_budget()`` (or
``--budget-mb``), then ``pipeline.zip_prepared`` at the default settings, and prints the
parameters of A, B and the merge, the weights' memory, the statistics one pass would need
against the budget, the statistics passes it took (parts), the time of every stage, the peak
RSS of the process and its RSS right after building the models. ``--export DIR`` then writes the
merge as a Hugging Face causal-LM folder (``AutoModelForCausalLM`` loads it) and adds the
export's time and the peak RSS after it. ``--json``: the last line is one JSON object of these
figures.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from heterogui.bench.memory import MIB, max_rss_mib, rss_mib
from heterogui.datasets.refs import batch_slices
from heterogui.errors import ConfigError
from heterogui.export.job import HF_CAUSAL_LM_FORMAT, ExportJob
from heterogui.export.registry import write_export
from heterogui.folders import check_output
from heterogui.host_memory import stats_budget
from heterogui.models.decoder import DecoderNetConfig, make_config
from heterogui.models.family import Network, build_network
from heterogui.pipeline import prepare, zip_prepared
from heterogui.prepared import MergeResult, Prepared
from heterogui.tasks.language import merged_logits
from heterogui.zip.collect import pass_bytes, shared_spaces


@dataclass(frozen=True)
class ScaleOptions:
    """The pair, the calibration data and the machine settings of one scale run.

    heads / kv_heads: query and key/value heads of every layer (head size hidden / heads).
    texts x tokens: the calibration data (random token ids), ``batch`` texts per batch.
    budget_mb: the statistics budget in MiB (None: ``host_memory.stats_budget()``).
    threads: torch CPU threads (None: torch's default).
    export: a new folder to write the merge into as a Hugging Face causal LM (None: none).
    """

    layers_a: int = 22
    layers_b: int = 16
    hidden: int = 2048
    intermediate: int = 5632
    heads: int = 32
    kv_heads: int = 4
    vocab: int = 32000
    texts: int = 8
    tokens: int = 128
    batch: int = 4
    budget_mb: float | None = None
    threads: int | None = None
    device: str = "cpu"
    seed: int = 0
    export: str | None = None


def llama_config(options: ScaleOptions, layers: int) -> DecoderNetConfig:
    """Return the decoder config of a Llama with ``layers`` layers and the options' widths.

    Built through transformers' ``LlamaConfig`` (offline), so the config carries the fields
    a Llama checkpoint's would (rotary settings, norm epsilon, token ids).

    Raises:
        ConfigError: widths that do not make a Llama (heads that do not divide the width).
    """
    from transformers import LlamaConfig

    o = options
    if o.hidden % o.heads or o.heads % o.kv_heads:
        raise ConfigError(
            f"hidden {o.hidden}, {o.heads} query heads and {o.kv_heads} key/value heads: the "
            "query heads must divide the hidden width and the key/value heads the query heads"
        )
    hf = LlamaConfig(
        vocab_size=o.vocab,
        hidden_size=o.hidden,
        intermediate_size=o.intermediate,
        num_hidden_layers=layers,
        num_attention_heads=o.heads,
        num_key_value_heads=o.kv_heads,
        max_position_embeddings=max(2048, o.tokens),
        tie_word_embeddings=False,
    )
    return make_config(hf)


def build_llama(config: DecoderNetConfig, seed: int, label: str) -> Network:
    """Return a Llama network of random weights (seeded), in eval mode, on the CPU."""
    torch.manual_seed(seed)
    net = build_network(config, label=label)
    net.module.eval()
    return net


def token_batches(options: ScaleOptions) -> list[dict[str, torch.Tensor]]:
    """Return the calibration batches: ``texts`` x ``tokens`` random token ids (seeded)."""
    return random_token_batches(
        options.texts, options.tokens, options.batch, options.vocab, options.seed + 1000
    )


def random_token_batches(
    count: int, tokens: int, batch: int, vocab: int, seed: int, low: int = 0
) -> list[dict[str, torch.Tensor]]:
    """Return ``count`` sequences of ``tokens`` random ids in [low, vocab) (seeded), ``batch``
    per batch (a last batch under CKA's minimum joins the one before it: ``batch_slices``),
    every position attended."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(low, vocab, (count, tokens), generator=gen)
    parts = (ids[s] for s in batch_slices(count, batch))
    return [{"input_ids": part, "attention_mask": torch.ones_like(part)} for part in parts]


def tensor_mib(tensors: Any) -> float:
    """Return the MiB of distinct tensors (a tensor shared by two modules counts once)."""
    seen = {}
    for t in tensors:
        seen[t.data_ptr()] = t.numel() * t.element_size()
    return sum(seen.values()) / MIB


def check_options(options: ScaleOptions) -> None:
    """Raise if an option is out of range.

    Raises:
        ConfigError: naming the option and what it must be.
    """
    for name in ("layers_a", "layers_b", "hidden", "intermediate", "heads", "kv_heads"):
        if getattr(options, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least 1")
    if options.vocab < 2 or options.texts < 1 or options.tokens < 2:
        raise ConfigError("use --vocab >= 2, --texts >= 1 and --tokens >= 2")
    if options.batch < 4 or options.texts < 4:  # a last batch under 4 joins the one before
        raise ConfigError(
            f"--texts {options.texts} in batches of {options.batch}: the layer CKA needs at "
            "least 4 texts in every batch; use --batch and --texts of at least 4"
        )
    if options.budget_mb is not None and options.budget_mb <= 0:
        raise ConfigError(f"--budget-mb must be positive, got {options.budget_mb}")
    if options.export is not None:
        if Path(options.export).exists():  # check_output's message names --overwrite
            raise ConfigError(f"--export {options.export} exists: name a new folder")
        check_output(options.export)  # refused before minutes of building and merging


@torch.no_grad()
def run_scale(options: ScaleOptions) -> dict[str, Any]:
    """Build the pair, merge it on the engine's path and return the figures (module docstring).

    Raises:
        ConfigError: see ``check_options`` and ``llama_config``.
        ExportError: the ``export`` folder is refused, or writing it failed.
    """
    check_options(options)
    threads = torch.get_num_threads()
    if options.threads:
        torch.set_num_threads(options.threads)
    try:
        budget = stats_budget() if options.budget_mb is None else options.budget_mb * MIB
        return _measure(options, int(budget))
    finally:
        torch.set_num_threads(threads)


def _measure(options: ScaleOptions, budget: int) -> dict[str, Any]:
    stages: dict[str, float] = {}
    configs = [llama_config(options, n) for n in (options.layers_a, options.layers_b)]
    start = time.perf_counter()
    a = build_llama(configs[0], options.seed, "A")
    b = build_llama(configs[1], options.seed + 1, "B")
    stages["build A and B"] = time.perf_counter() - start
    rss_models = rss_mib()
    batches = token_batches(options)
    begin = time.perf_counter()
    prepared = prepare(a, b, batches, device=options.device, stats_budget=budget)
    prepare_s = time.perf_counter() - begin
    rss_prepared = rss_mib()
    ga, gb = prepared.padded_a.graph(), prepared.padded_b.graph()
    needed = pass_bytes(ga, gb, shared_spaces((ga, gb)), len(batches))
    result, zip_s, calls = _zip_counting_calls(prepared)
    parts = 1 if prepared.stats else calls // len(batches)
    for name, sec in (*prepared.timings.items(), *result.timings.items()):
        stages[name] = stages.get(name, 0.0) + sec
    begin = time.perf_counter()
    first = {k: v.to(prepared.device) for k, v in batches[0].items()}
    finite = bool(torch.isfinite(merged_logits(result.model)(first)).all())
    stages["check: merged logits"] = time.perf_counter() - begin
    o = options
    figures = {
        "options": asdict(o),
        "threads": torch.get_num_threads(),
        "device": str(prepared.device),
        "params_a": a.parameter_count(),
        "params_b": b.parameter_count(),
        "params_merged": sum(p.numel() for p in result.model.parameters()),
        "weights_mib": _weights_mib(a, b, prepared, result),
        "identity_layers": len(prepared.padded_b.identity_blocks),
        "calibration_tokens": o.texts * o.tokens,
        "stats_one_pass_mib": needed / MIB,
        "stats_budget_mib": budget / MIB,
        "stats_passes": parts,
        "stages_s": stages,
        "prepare_s": prepare_s,
        "zip_s": zip_s,
        "total_s": prepare_s + zip_s,
        "rss_after_build_mib": rss_models,
        "rss_after_prepare_mib": rss_prepared,
        "peak_rss_mib": max_rss_mib(),  # run from a shell: its own peak
        "merged_logits_finite": finite,
    }
    if prepared.device.type == "cuda":
        figures["peak_cuda_mib"] = torch.cuda.max_memory_allocated(prepared.device) / MIB
    if options.export is not None:
        begin = time.perf_counter()
        write_export(ExportJob(result.model), options.export, HF_CAUSAL_LM_FORMAT)
        figures["export_s"] = time.perf_counter() - begin
        figures["peak_rss_after_export_mib"] = max_rss_mib()
    return figures


def _zip_counting_calls(prepared: Prepared) -> tuple[MergeResult, float, int]:
    """Zip at the default settings: return the result, its seconds and A's first block's calls."""
    passes = [0]  # forward calls of A's first block during the zip: one per batch and part
    hook = prepared.padded_a.module.blocks[0].register_forward_pre_hook(
        lambda _m, _x: passes.__setitem__(0, passes[0] + 1)
    )
    try:
        begin = time.perf_counter()
        result = zip_prepared(prepared)
        zip_s = time.perf_counter() - begin
    finally:
        hook.remove()
    return result, zip_s, passes[0]


def _weights_mib(
    a: Network, b: Network, prepared: Prepared, result: MergeResult
) -> dict[str, float]:
    """Return the MiB of the weights of A, B, the identity layers padded into B and the merge."""
    identity = [
        p
        for k in sorted(prepared.padded_b.identity_blocks - b.identity_blocks)
        for p in prepared.padded_b.module.blocks[k].parameters()
    ]
    return {
        "a": tensor_mib(a.module.parameters()),
        "b": tensor_mib(b.module.parameters()),
        "identity_layers_b": tensor_mib(identity),
        "merged": tensor_mib(result.model.parameters()),
    }


def _count(n: int) -> str:
    return f"{n / 1e9:.3f}B" if n >= 1e9 else f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n:,}"


def _mib(x: float) -> str:
    return f"{x:,.0f} MiB" if x >= 10 else f"{x:.2f} MiB"


def format_scale(m: dict[str, Any]) -> str:
    """Return the figures of ``run_scale`` as readable text."""
    o = m["options"]
    w = m["weights_mib"]
    shape = (
        f"hidden {o['hidden']}, MLP {o['intermediate']}, {o['heads']} query / {o['kv_heads']} "
        f"key-value heads, vocabulary {o['vocab']}, untied head, float32"
    )
    lines = [
        f"scale: Llama A ({o['layers_a']} layers) + Llama B ({o['layers_b']} layers), {shape}",
        f"  parameters: A {_count(m['params_a'])}, B {_count(m['params_b'])}, merge "
        f"{_count(m['params_merged'])} ({m['identity_layers']} identity layers in B)",
        f"  weights: A {_mib(w['a'])}, B {_mib(w['b'])}, B's identity layers "
        f"{_mib(w['identity_layers_b'])}, merge {_mib(w['merged'])}",
        f"  calibration: {o['texts']} x {o['tokens']} random token ids ({m['calibration_tokens']}"
        f" tokens, batches of {o['batch']}), device {m['device']}, {m['threads']} thread(s)",
        f"  statistics: one pass would need {_mib(m['stats_one_pass_mib'])}, budget "
        f"{_mib(m['stats_budget_mib'])}: {m['stats_passes']} statistics pass(es) (parts)",
    ]
    lines += [f"  {name:<24} {sec:9.1f}s" for name, sec in m["stages_s"].items()]
    lines += [
        f"  prepare {m['prepare_s']:.1f}s + zip {m['zip_s']:.1f}s = total merge time "
        f"{m['total_s']:.1f}s",
        f"  RSS after building A and B: {_mib(m['rss_after_build_mib'])}; after prepare: "
        f"{_mib(m['rss_after_prepare_mib'])}; peak RSS (ru_maxrss): {_mib(m['peak_rss_mib'])}",
        f"  merged logits finite: {m['merged_logits_finite']}",
    ]
    if "peak_cuda_mib" in m:
        lines.append(f"  peak CUDA memory: {m['peak_cuda_mib']:.0f} MiB")
    if "export_s" in m:
        lines.append(
            f"  export ({m['options']['export']}, Hugging Face causal LM, float32): "
            f"{m['export_s']:.1f}s; peak RSS after it {_mib(m['peak_rss_after_export_mib'])}"
        )
    return "\n".join(lines)


def scale_report(options: ScaleOptions, as_json: bool = False) -> str:
    """Return the printed report; with ``as_json`` its last line is the JSON object."""
    figures = run_scale(options)
    text = format_scale(figures)
    return f"{text}\n{json.dumps(figures)}" if as_json else text
