"""Language model scores on a tiny random Llama with a character tokenizer (no download)."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import char_tokenizer
from transformers import LlamaConfig, LlamaForCausalLM

from heterogui.errors import ConfigError
from heterogui.tasks.lm_metrics import (
    LMScore,
    bits_per_byte,
    collapse_alarm,
    ensemble_logits,
    generate,
    nll_sums,
    perplexity,
    repeated_ngram_rate,
    score_texts,
    token_batches,
)

CHARS = "abcdefghijklmnopqrstuvwxyz0123456789 .,:;'!?()=+-*_\n"
TEXTS = ["the cat sat on the mat.", "a dog ran in the park!", "one two three, four five six"]


@pytest.fixture
def tokenizer():
    """A character tokenizer: <unk>, <s> (added in front of every text), </s>, then CHARS."""
    return char_tokenizer(CHARS)


def tiny_llama(seed: int) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=1,
        eos_token_id=2,
        initializer_range=0.2,  # peaked next-token distributions: no near-ties in argmax
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module")
def model():
    return tiny_llama(0)


def logits_of(model):
    return lambda batch: model(**batch).logits


def test_nll_sums_equal_the_models_own_loss(model, tokenizer):
    texts = ["the cat sat on the mat.", "a dog ran in the park!!"]  # same length: no padding
    assert tokenizer.pad_token is None
    (batch,) = token_batches(tokenizer, texts, batch_size=2)
    assert tokenizer.pad_token == "</s>" and set(batch) == {"input_ids", "attention_mask"}
    assert bool(batch["attention_mask"].all()) and batch["input_ids"].shape == (2, 24)
    nll, tokens = nll_sums(logits_of(model), [batch])
    assert tokens == 2 * 23
    with torch.no_grad():
        loss = model(**batch, labels=batch["input_ids"]).loss
    assert nll == pytest.approx(float(loss) * tokens, rel=1e-5)
    assert nll / tokens > 1.0  # a random model is far from certain


def test_the_sums_match_float64_log_softmax_on_long_rows():
    gen = torch.Generator().manual_seed(0)
    table = 12 * torch.randn(64, 8192, generator=gen)  # the logits after each of 64 tokens
    ids = torch.randint(0, 64, (3, 1100), generator=gen)  # rows longer than one chunk
    mask = torch.ones(3, 1100, dtype=torch.long)
    mask[1, 500:] = 0  # a padded row
    mask[2, 1:] = 0  # a row of one token: nothing to score
    nll, tokens = nll_sums(
        lambda batch: table[batch["input_ids"]], [{"input_ids": ids, "attention_mask": mask}]
    )
    keep = (mask[:, 1:] & mask[:, :-1]).bool()
    logp = torch.log_softmax(table[ids][:, :-1][keep].double(), -1)
    want = -float(logp.gather(1, ids[:, 1:][keep][:, None]).sum())
    assert tokens == 1099 + 499
    assert nll == pytest.approx(want, rel=1e-7)  # float32 logsumexp: ~3e-7 nats a token


def test_padding_does_not_change_the_sums(model, tokenizer):
    short, long = "hi there.", "a much longer text that pads the short one."
    batch = token_batches(tokenizer, [short, long], batch_size=2)
    mask = batch[0]["attention_mask"]
    assert mask[0, -1] == 0 and mask[0, 0] == 1 and bool(mask[1].all())  # right padding
    together = nll_sums(logits_of(model), batch)
    alone = [nll_sums(logits_of(model), token_batches(tokenizer, [t], 1)) for t in (short, long)]
    assert together[1] == alone[0][1] + alone[1][1] == len(short) + len(long)
    assert together[0] == pytest.approx(alone[0][0] + alone[1][0], rel=1e-5)


def test_a_tokenizer_naming_no_special_tokens_pads_with_id_0(model, tokenizer):
    # tokenizer.json without tokenizer_config.json: no pad and no eos token; padding is
    # masked, so any token pads (it was refused with "set tokenizer.pad_token")
    tokenizer.pad_token = tokenizer.eos_token = None
    short, long = "hi there.", "a much longer text that pads the short one."
    (batch,) = token_batches(tokenizer, [short, long], batch_size=2)
    assert tokenizer.pad_token_id == 0 and batch["input_ids"][0, -1] == 0
    alone = [nll_sums(logits_of(model), token_batches(tokenizer, [t], 1)) for t in (short, long)]
    together = nll_sums(logits_of(model), [batch])
    assert together[0] == pytest.approx(alone[0][0] + alone[1][0], rel=1e-5)


def test_the_sums_run_texts_of_like_length_together(model, tokenizer):
    texts = ["hi.", "a much longer text that pads the short one.", "ok", "another long text here!"]
    seen = []

    def logits(batch):
        seen.append(batch["input_ids"].numel())
        return model(**batch).logits

    given = token_batches(tokenizer, texts, batch_size=2)  # a short and a long text in each
    together = nll_sums(logits, given)
    assert sum(seen) < sum(b["input_ids"].numel() for b in given)  # regrouped: less padding
    alone = [nll_sums(logits_of(model), token_batches(tokenizer, [t], 1)) for t in texts]
    assert together[1] == sum(a[1] for a in alone)
    assert together[0] == pytest.approx(sum(a[0] for a in alone), rel=1e-5)


def test_scores_per_token_and_per_byte_agree_for_characters(model, tokenizer):
    score = score_texts(logits_of(model), tokenizer, TEXTS, batch_size=2)
    # One character = one token = one byte, and <s> makes every character a target.
    assert score.tokens == score.bytes == sum(len(t) for t in TEXTS)
    assert score.bits_per_byte == pytest.approx(math.log2(score.perplexity))
    assert score.perplexity == pytest.approx(math.exp(score.nll / score.tokens))
    assert set(score.to_dict()) == {"nll", "tokens", "bytes", "perplexity", "bits_per_byte"}
    cut = score_texts(logits_of(model), tokenizer, [TEXTS[2]], max_tokens=16)
    assert cut.tokens == cut.bytes == 15  # <s> and 15 characters; the rest is not scored
    assert bits_per_byte(math.log(2) * 10, 5) == pytest.approx(2.0)
    assert LMScore(0.0, 4, 4).perplexity == 1.0
    with pytest.raises(ConfigError, match="no tokens"):
        perplexity(0.0, 0)


def test_ensemble_is_the_mean_of_the_probabilities(model, tokenizer):
    other = tiny_llama(1)
    (batch,) = token_batches(tokenizer, TEXTS, batch_size=3)
    with torch.no_grad():
        first, second = model(**batch).logits, other(**batch).logits
    same = ensemble_logits(first, first)
    assert torch.allclose(same, torch.log_softmax(first, -1), atol=1e-5)
    both = ensemble_logits(first, second)
    mean = (torch.softmax(first, -1) + torch.softmax(second, -1)) / 2
    assert torch.allclose(both.exp(), mean, atol=1e-6)
    # Jensen: the ensemble's NLL is at most the mean of the two models' NLLs.
    scores = [nll_sums(lambda b, x=x: x, [batch])[0] for x in (first, second, both)]
    assert scores[2] <= (scores[0] + scores[1]) / 2
    with pytest.raises(ConfigError, match="share a"):
        ensemble_logits(first, first[..., :10])


def test_greedy_generation_matches_hugging_face(model, tokenizer):
    prompt = "the cat"
    ours = generate(logits_of(model), tokenizer, prompt, max_new_tokens=12)
    ids = tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, do_sample=False, max_new_tokens=12, pad_token_id=2)
    theirs = tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
    assert ours == theirs and len(ours) > 0


def test_sampled_generation_repeats_with_its_seed(model, tokenizer):
    def draw(seed: int) -> str:
        return generate(
            logits_of(model), tokenizer, "the cat", 16, sample=True, seed=seed, stop_at_eos=False
        )

    assert draw(0) == draw(0)
    assert draw(0) != draw(1)
    assert len(draw(3)) == 16  # no eos stop: one character per new token (no special tokens)
    with pytest.raises(ConfigError, match="temperature"):
        generate(logits_of(model), tokenizer, "x", sample=True, temperature=0.0)


def test_repeated_ngram_rate():
    assert repeated_ngram_rate([1, 2, 3] * 3, n=3) == pytest.approx(4 / 7)
    assert repeated_ngram_rate([1, 2, 3] * 3, n=4) == pytest.approx(3 / 6)
    assert repeated_ngram_rate([7] * 10, n=4) == pytest.approx(6 / 7)
    assert repeated_ngram_rate(list(range(20))) == 0.0
    assert repeated_ngram_rate([1, 1, 1], n=4) == 0.0


def test_collapse_alarm_fires_only_on_collapse():
    parents = [{"python-docs": 80.0, "python-source": 20.0}, {"python-docs": 86.1}]
    healthy = {"python-docs": 120.0, "python-source": 30.0}
    assert collapse_alarm(healthy, parents, repetition=0.2) == []
    reasons = collapse_alarm({"python-docs": 812.3, "python-source": 30.0}, parents)
    assert reasons == ["python-docs: perplexity 812.3 is 9.4x the worse parent's 86.1"]
    assert len(collapse_alarm({"python-docs": float("nan")}, parents)) == 1
    assert collapse_alarm({"other": 1e9}, parents) == []  # no parent to compare with
    (looping,) = collapse_alarm(healthy, parents, repetition=0.9)
    assert "repeat" in looping and "90%" in looping
    assert collapse_alarm(healthy, parents, factor=1.2) == [
        "python-docs: perplexity 120.0 is 1.4x the worse parent's 86.1",
        "python-source: perplexity 30.0 is 1.5x the worse parent's 20.0",
    ]


def test_the_repetition_alarm_is_relative_to_the_parents():
    ppl = {"python-docs": 50.0}
    # small parents that repeat themselves make merges that do too: no collapse
    assert collapse_alarm(ppl, [ppl, ppl], 0.8, parent_repetition=[0.75, 0.6]) == []
    [reason] = collapse_alarm(ppl, [ppl, ppl], 0.99, parent_repetition=[0.75, 0.1])
    assert reason == (
        "generations repeat themselves: 99% of their n-grams occurred before "
        "(limit 50%; the parents' 75%, 10%)"
    )
    assert collapse_alarm(ppl, [ppl], 0.4, parent_repetition=[0.0]) == []


def test_one_pass_of_each_model_scores_a_b_and_the_ensemble_as_separate_passes(tokenizer):
    from heterogui.tasks.language import score_domains, score_domains_each, with_ensemble

    first, second = tiny_llama(0), tiny_llama(1)
    a = lambda **batch: first(**batch).logits  # noqa: E731
    b = lambda **batch: second(**batch).logits  # noqa: E731
    texts = {"prose": TEXTS, "more": [t.upper().lower()[::-1] for t in TEXTS]}
    calls = []

    def counted(fn):
        return lambda **batch: calls.append(1) or fn(**batch)

    together = score_domains_each(with_ensemble(counted(a), counted(b)), tokenizer, texts, "cpu")
    passes = len(calls)
    a, b = counted(a), counted(b)
    separate = {
        "a": score_domains(lambda batch: a(**batch), tokenizer, texts, "cpu"),
        "b": score_domains(lambda batch: b(**batch), tokenizer, texts, "cpu"),
        "ensemble": score_domains(
            lambda batch: ensemble_logits(a(**batch), b(**batch)), tokenizer, texts, "cpu"
        ),
    }
    assert set(together) == set(separate)
    for name, domains in separate.items():
        for domain, score in domains.items():
            got = together[name][domain]
            assert got.tokens == score.tokens and got.bytes == score.bytes
            assert got.nll == pytest.approx(score.nll, rel=1e-12), (name, domain)
    assert together["ensemble"]["prose"].nll != together["a"]["prose"].nll
    assert 2 * passes == len(calls) - passes  # each model once, not once per score
