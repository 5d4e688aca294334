"""One pair of ``heterogui bench speed``, measured in a process of its own.

``heterogui bench speed`` measures each pair in a fresh process (``isolated``: ``measured``),
so that each pair's peak memory is its own and not the largest of the run;
``heterogui bench speed-pair OPTIONS`` (OPTIONS: a JSON object) measures one in this process
and prints its figures as one JSON line. The pairs:

- resnet: two randomly initialised CIFAR ResNets of different depth (speed does not depend on
  training) on random 32x32 images;
- minilm: all-MiniLM-L6-v2 + paraphrase-MiniLM-L3-v2 on calibration sentences;
- smollm: SmolLM2-135M-Instruct (dequantized from its 4-bit GGUF) + a shallower copy of itself
  (its middle layers removed) on Python documentation and source texts;
- resnet_width, minilm_permuted (``--same-depth``): pairs of equal depth, whose CKA and feature
  statistics come from one pass (docs/method.md sec. 6): the ResNet pair's deeper model at two
  widths, and all-MiniLM-L6-v2 with a copy of itself whose neurons are permuted (the shape of
  two fine-tunes of one model; speed does not depend on the weights).
- bert_base (``--bert-base``): a BERT-base-sized pair built from config (hidden 768, 12 heads,
  MLP 3,072; A with 12 layers, B with 6; seeded random weights, nothing downloaded) on
  ``bert_inputs`` (1,024) random token sequences of 128 tokens: the GPU-scale pair (about a
  minute per pass over the data on one CPU thread; ``quick``: 2 + 1 layers of width 64).
"""

from __future__ import annotations

import importlib
from dataclasses import replace
from typing import Any

import torch

from heterogui import run
from heterogui.bench.memory import rss_mib
from heterogui.bench.merge_speed import measure_pair
from heterogui.bench.scale import random_token_batches
from heterogui.config import DataRef
from heterogui.datasets.refs import make_batches
from heterogui.models.bert import BertNetConfig
from heterogui.models.family import Network, build_network
from heterogui.models.permute import permute_network, random_permutations
from heterogui.models.resnet import cifar_resnet
from heterogui.pipeline import resolve_device
from heterogui.sources import minilm

PAIRS = ("resnet", "minilm", "smollm", "resnet_width", "minilm_permuted", "bert_base")
# the library code each pair's models are loaded with (imported before the start is measured)
_BERT_CODE = (
    "transformers.models.bert.modeling_bert",
    "transformers.models.bert.tokenization_bert",
)
LIBRARY_CODE = {
    "minilm": _BERT_CODE,
    "minilm_permuted": _BERT_CODE,
    "smollm": ("transformers.models.llama.modeling_llama", "gguf"),
}
BERT_VOCAB = 30522  # BERT-base's (uncased) vocabulary
BERT_TOKENS = 128  # tokens per calibration sequence of the bert_base pair


def resnet_pair(width: int, depths_a, depths_b, seed: int = 0) -> tuple[Network, Network]:
    """Return two randomly initialised CIFAR ResNets."""
    torch.manual_seed(seed)
    a = build_network(cifar_resnet(depths_a, width, 5, 3), label="A")
    b = build_network(cifar_resnet(depths_b, width, 5, 3), label="B")
    return a, b


def bert_pair(layers: tuple[int, int], hidden: int, seed: int = 0) -> tuple[Network, Network]:
    """Return two randomly initialised BERT encoders of ``layers`` layers and one width.

    Head size 64 and MLP 4 x hidden, as in BERT-base (hidden 768: 12 heads, MLP 3,072).
    """
    torch.manual_seed(seed)
    nets = []
    for label, depth in zip("AB", layers, strict=True):
        config = BertNetConfig(
            vocab_size=BERT_VOCAB,
            max_positions=512,
            type_vocab_size=2,
            hidden=hidden,
            head_dim=64,
            heads=(hidden // 64,) * depth,
            intermediate=(4 * hidden,) * depth,
        )
        nets.append(build_network(config, label=label))
    return nets[0], nets[1]


def token_id_batches(count: int, tokens: int, batch: int, seed: int = 0) -> list[dict]:
    """Return ``count`` random sequences of ``tokens`` BERT ids (no padding id), ``batch`` each
    (a last batch under CKA's minimum joins the one before it)."""
    return random_token_batches(count, tokens, batch, BERT_VOCAB, seed, low=1)


def _depth(depths) -> int:
    return 2 + 2 * sum(depths)


def run_pair(name: str, options: dict[str, Any]) -> dict[str, Any]:
    """Measure pair ``name`` (one of PAIRS) in this process.

    Raises:
        ValueError: an unknown pair name.
    """
    quick, dev = options.get("quick", False), resolve_device(options.get("device", "auto"))
    inputs = options.get("inputs", 256)
    if name in ("resnet", "resnet_width"):
        width = 1 if quick else options.get("width", 2)
        deep, shallow = ((2, 2, 2), (1, 1, 1)) if quick else ((3, 3, 3), (2, 2, 2))
        if name == "resnet":  # depth: ResNet-20 and ResNet-14 of one width
            (a, b), shapes = resnet_pair(width, deep, shallow), ((deep, width), (shallow, width))
        else:  # equal depth, two widths (analysed in one pass)
            a, b = resnet_pair(width, deep, deep)[0], resnet_pair(width + 1, deep, deep, seed=1)[1]
            shapes = ((deep, width), (deep, width + 1))
        n = 64 if quick else inputs
        gen = torch.Generator().manual_seed(0)
        batches = make_batches(torch.randn(n, 3, 32, 32, generator=gen), 32 if quick else 64)
        label = " + ".join(f"ResNet{_depth(d)}x{w}" for d, w in shapes)
        return measure_pair(label, a, b, batches, dev) | {"inputs": f"{n} images"}
    if name == "minilm_permuted":
        pair = run.load_pair(f"minilm:{minilm.L6_NAME}", f"minilm:{minilm.L6_NAME}")
        perms = random_permutations(pair.b.net.graph(), torch.Generator().manual_seed(0))
        pair = replace(pair, b=replace(pair.b, net=permute_network(pair.b.net, perms)))
        ref = DataRef("sentences", size=64 if quick else inputs, batch_size=32)
        return _measure_loaded("all-MiniLM-L6-v2 + a permuted copy", pair, ref, dev)
    if name == "minilm":
        pair = run.load_pair(f"minilm:{minilm.L6_NAME}", f"minilm:{minilm.L3_NAME}")
        ref = DataRef("sentences", size=64 if quick else inputs, batch_size=32)
        return _measure_loaded("all-MiniLM-L6-v2 + paraphrase-MiniLM-L3-v2", pair, ref, dev)
    if name == "smollm":
        from heterogui.bench.decoder_pairs import smollm2_shallow_pair
        from heterogui.tasks.language import ALL_DOMAINS, BATCH

        pair = smollm2_shallow_pair(dev)
        ref = DataRef(ALL_DOMAINS, "calibration", 8 if quick else options.get("texts", 32), BATCH)
        return _measure_loaded(f"SmolLM2-135M + {pair.b.name}", pair, ref, dev)
    if name == "bert_base":
        hidden, layers = (64, (2, 1)) if quick else (768, (12, 6))
        a, b = bert_pair(layers, hidden)
        n = 64 if quick else options.get("bert_inputs", 1024)
        batches = token_id_batches(n, 16 if quick else BERT_TOKENS, 32 if quick else 64)
        label = f"BERT {layers[0]}L + {layers[1]}L, hidden {hidden} (random weights)"
        tokens = sum(int(x["attention_mask"].sum()) for x in batches)
        return measure_pair(label, a, b, batches, dev) | {"inputs": f"{n} texts ({tokens} tokens)"}
    raise ValueError(f"unknown speed pair {name!r}; known: {list(PAIRS)}")


def measured(options: dict[str, Any]) -> dict[str, Any]:
    """Measure ``options["pair"]`` with the options' threads (``isolated.in_fresh_process``).

    start_rss_mib: this process's memory before any model is loaded (Python, torch and, for the
    pairs loaded through transformers, the code that loads them: ``LIBRARY_CODE``): what the
    merge's memory is counted from. Before 2026-12-04 only ``transformers`` itself was
    imported, which defers its model code: that code (and torch._dynamo, which it imports)
    then counted as the merge's memory, about 90 MiB of the MiniLM pair's.
    """
    if options.get("threads"):
        torch.set_num_threads(int(options["threads"]))
    for module in LIBRARY_CODE.get(options["pair"], ()):
        importlib.import_module(module)
    start = rss_mib()
    return run_pair(options["pair"], options) | {"start_rss_mib": start}


def _measure_loaded(label: str, pair: Any, ref: DataRef, dev: torch.device) -> dict[str, Any]:
    """Measure a loaded pair on the calibration data ``ref`` draws."""
    calibration = run.calibrate(pair, ref)
    batches = calibration.batches
    figures = measure_pair(label, pair.a.net, pair.b.net, batches, dev)
    tokens = sum(int(x["attention_mask"].sum()) for x in batches)
    return figures | {"inputs": f"{calibration.count} texts ({tokens} tokens)"}
