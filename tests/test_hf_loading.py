"""What a user's Hugging Face folder loads as: its own float32 weights, and no head dropped."""

from __future__ import annotations

import json
import re

import pytest
import torch
from safetensors.torch import load_file

from heterogui.errors import ModelLoadError
from heterogui.sources import registry
from tests.test_ui_text import tiny_bert_folder


def llama_config(**fields):
    """Return a tiny Llama config over the test character vocabulary, with ``fields``."""
    from transformers import AutoConfig

    from tests.conftest import DECODER_CHARS

    shape = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2}
    heads = {"num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8}
    tokens = {"bos_token_id": 1, "eos_token_id": 2, "max_position_embeddings": 64}
    vocab = len(DECODER_CHARS) + 3
    return AutoConfig.for_model("llama", vocab_size=vocab, **shape, **heads, **tokens, **fields)


def test_a_config_dtype_of_bfloat16_does_not_round_float32_weights(tmp_path):
    folder = tiny_bert_folder(tmp_path / "a")
    config = json.loads((folder / "config.json").read_text())
    config |= {"dtype": "bfloat16", "torch_dtype": "bfloat16"}  # the weights stay float32
    (folder / "config.json").write_text(json.dumps(config))
    stored = load_file(folder / "model.safetensors")["embeddings.word_embeddings.weight"]
    assert stored.dtype == torch.float32
    net = registry.load(str(folder)).net.module
    loaded = dict(net.named_parameters())
    words = next(v for k, v in loaded.items() if k.endswith("word_embeddings.weight"))
    assert words.dtype == torch.float32 and torch.equal(words.detach(), stored)


@pytest.mark.parametrize("architectures", [["BertForTokenClassification"], None])
def test_a_classifier_the_loader_would_drop_is_refused(tmp_path, architectures):
    # a token classifier, or a sequence classifier whose config names no architecture, loaded
    # as a feature model: its classifier weights were dropped without a word
    from transformers import BertConfig, BertForTokenClassification

    from tests.conftest import VOCAB

    folder = tiny_bert_folder(tmp_path / "a")
    config = BertConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        num_labels=3,
    )
    BertForTokenClassification(config).save_pretrained(folder)
    data = json.loads((folder / "config.json").read_text())
    data["architectures"] = architectures
    (folder / "config.json").write_text(json.dumps(data))
    with pytest.raises(ModelLoadError) as refused:
        registry.load(str(folder))
    message = str(refused.value)
    assert "holds a task head (classifier.bias, classifier.weight)" in message
    assert f"architectures {architectures or []} do not load" in message
    if architectures:  # a head of another task: no architecture name would make it a class
        assert "save the model without that head (model.base_model.save_pretrained" in message
    else:
        assert "if it classifies whole inputs, name its ...ForSequenceClassification" in message
        assert "else save the model without that head" in message


def test_a_question_answering_head_is_refused_and_a_pretraining_head_is_not(tmp_path):
    from transformers import BertConfig, BertForPreTraining, BertForQuestionAnswering

    from tests.conftest import VOCAB

    shape = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4}
    config = BertConfig(vocab_size=VOCAB, intermediate_size=64, **shape)
    qa = tiny_bert_folder(tmp_path / "qa")
    BertForQuestionAnswering(config).save_pretrained(qa)
    with pytest.raises(ModelLoadError, match=r"holds a task head \(qa_outputs\.bias"):
        registry.load(str(qa))
    pretrained = tiny_bert_folder(tmp_path / "pre")  # bert-base-uncased's shape: an MLM head
    BertForPreTraining(config).save_pretrained(pretrained)
    assert registry.load(str(pretrained)).net.config.num_labels is None  # a feature model


def test_a_decoder_with_tied_embeddings_says_its_count_holds_the_matrix_twice(tmp_path):
    # the report counted SmolLM2 at 162.8 M where transformers counts 134.5 M, unsaid
    from transformers import AutoModelForCausalLM

    from tests.conftest import save_decoder

    config = llama_config(tie_word_embeddings=True)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    folder = save_decoder(model, tmp_path / "tied")
    loaded = registry.load(str(folder))
    vocab, hidden = config.vocab_size, 32
    assert loaded.net.parameter_count() == model.num_parameters() + vocab * hidden
    assert loaded.note == (
        "its folder ties the input embedding and the output head (tie_word_embeddings: one "
        f"{vocab:,} x {hidden:,} matrix); heterogui unties them, so its parameters here count "
        f"that matrix twice ({model.num_parameters():,} as its folder stores them)"
    )


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"id2label": {"0": "pos", "1": "pos"}}, "id2label names ['pos'] more than one output"),
        ({"problem_type": "regression"}, "is a regression model (problem_type: regression)"),
        (
            {"problem_type": "multi_label_classification"},
            "is a multi-label classifier (problem_type: multi_label_classification)",
        ),
    ],
)
def test_a_classifier_whose_labels_cannot_be_scored_is_refused(tmp_path, fields, words):
    # both were merged and scored: one class for two outputs, a regression as a 1-class task
    from tests.test_ui_text import classifier_folder

    folder = classifier_folder(tmp_path / "a", ("neg", "pos"), 2, 0)
    data = json.loads((folder / "config.json").read_text()) | fields
    (folder / "config.json").write_text(json.dumps(data))
    with pytest.raises(ModelLoadError, match=re.escape(words)):
        registry.load(str(folder))


def test_a_decoder_with_a_task_head_in_place_of_its_language_model_head_is_refused(tmp_path):
    # it was told to save its base model, which was then refused as a decoder without head
    from transformers import LlamaForSequenceClassification

    from tests.conftest import save_decoder

    config = llama_config(num_labels=2, pad_token_id=0)
    folder = save_decoder(LlamaForSequenceClassification(config), tmp_path / "scorer")
    with pytest.raises(ModelLoadError) as refused:
        registry.load(str(folder))
    assert "holds a task head (score.weight) in place of a language-model head" in str(
        refused.value
    )
    assert "merge the language model it was fine-tuned from" in str(refused.value)
