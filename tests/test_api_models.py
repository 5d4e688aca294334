"""``heterogui.merge`` with models as Python objects: loaded Hugging Face models are converted
(by copy) and merge like the networks heterogui loads; anything else is refused in one line."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import heterogui  # noqa: E402
from heterogui.errors import ConfigError  # noqa: E402


def bert(layers: int, seed: int):
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=60,
        hidden_size=32,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=16,
    )
    return BertModel(config).eval()


def token_batches(count: int = 3) -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    out = []
    for _ in range(count):
        ids = torch.randint(5, 60, (8, 7), generator=generator)
        mask = torch.ones_like(ids)
        mask[:3, 5:] = 0  # padded rows
        out.append({"input_ids": ids, "attention_mask": mask})
    return out


def test_a_hugging_face_model_merged_with_itself_computes_the_same_states():
    model = bert(2, 0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batches = token_batches()
    result = heterogui.merge(model, model, batches)
    with torch.no_grad():
        merged, _ = result.model.features(**batches[0])
        own = model(**batches[0]).last_hidden_state
    real = batches[0]["attention_mask"].bool()
    assert torch.allclose(merged[real], own[real], atol=1e-5)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # untouched


def test_hugging_face_models_of_different_depth_merge():
    result = heterogui.merge(bert(4, 0), bert(2, 1), token_batches(), mode="lma")
    assert result.alignment.depths == (4,)
    assert list(result.widths())[:3] == ["layer0.ffn", "layer0.qk", "layer0.vo"]


@pytest.mark.parametrize(
    ("model", "words"),
    [
        (torch.nn.Sequential(torch.nn.Linear(4, 2)), "is a torch.nn.modules.container.Sequential"),
        ("llama-trunk", "is a decoder without its language-model head; load it with"),
    ],
)
def test_a_model_heterogui_cannot_take_is_refused_in_one_line(model, words):
    if model == "llama-trunk":
        from transformers import LlamaConfig, LlamaModel

        shape = {"hidden_size": 32, "num_attention_heads": 4, "intermediate_size": 64}
        model = LlamaModel(LlamaConfig(vocab_size=60, num_hidden_layers=1, **shape))
    with pytest.raises(ConfigError) as caught:
        heterogui.merge(model, bert(2, 0), token_batches(1))
    assert str(caught.value).startswith("model A ") and words in str(caught.value)
    assert "\n" not in str(caught.value)


def test_a_list_of_models_points_to_the_n_way_merge():
    with pytest.raises(ConfigError, match=r"not a list: merge three or more with heterogui\.nway"):
        heterogui.merge([bert(2, 0), bert(2, 1), bert(2, 2)], None, token_batches(1))


@pytest.mark.parametrize(
    ("batch", "words"),
    [
        (["a text", "another"], "must be tokenizer outputs (dicts with input_ids), got a list"),
        ({"input_ids": torch.rand(2, 5)}, "input_ids must be whole numbers of shape (texts,"),
        ({"input_ids": torch.full((2, 5), 60)}, "token id 60 lies outside"),
        ({"input_ids": torch.full((2, 5), -1)}, "token id -1 lies outside"),
        # a float tensor for a text model was embedded by torch: "Expected tensor for ... indices"
        (torch.randn(4, 3), "must be tokenizer outputs (dicts with input_ids), got a Tensor"),
        (  # a labelled batch: "forward() got an unexpected keyword argument 'labels'"
            {"input_ids": torch.ones(2, 5, dtype=torch.long), "labels": torch.zeros(2)},
            "calibration batches hold ['labels'], which model A does not read (it reads "
            "['input_ids'",
        ),
    ],
)
def test_batches_that_are_no_tokenizer_output_are_refused_in_one_line(batch, words):
    # texts not tokenized, float ids, ids past the vocabulary: torch's errors were tracebacks
    with pytest.raises(ConfigError) as caught:
        heterogui.merge(bert(2, 0), bert(2, 1), [batch])
    assert words in str(caught.value) and "\n" not in str(caught.value)


def test_a_tokenizer_s_batch_encoding_and_a_generator_of_batches_merge():
    from transformers import BatchEncoding

    batches = [BatchEncoding(b) for b in token_batches()]  # what a tokenizer returns
    result = heterogui.merge(bert(2, 0), bert(2, 1), (b for b in batches))  # read once
    assert result.prepared.stats and len(result.prepared.batches) == len(batches)


def test_an_image_processors_batches_merge_like_their_tensors():
    # {"pixel_values": ...} reached the model as a keyword: a torch TypeError, deep inside
    from tests.conftest import tiny_vit

    a, b = (
        tiny_vit(layers=2, seed=0, labels=5, patch=2),
        tiny_vit(layers=1, seed=1, labels=5, patch=2),
    )
    images = list(torch.rand(32, 1, 8, 8, generator=torch.Generator().manual_seed(0)).split(16))
    plain = heterogui.merge(a, b, images)
    wrapped = heterogui.merge(a, b, [{"pixel_values": x} for x in images])
    state = plain.model.state_dict()
    assert all(torch.equal(v, wrapped.model.state_dict()[k]) for k, v in state.items())
    with pytest.raises(ConfigError, match=r"got a dict with keys \['images'\]; pass the inputs"):
        heterogui.merge(a, b, [{"images": images[0]}])


def test_a_merge_is_merged_again_as_it_is_in_memory():
    # a chain's next merge: heterogui.merge's result, or its model, was refused as "a
    # MergedModel, which heterogui cannot merge"; a recipe took the merge's folder
    from heterogui.nway import GroupMergeResult, merge_group
    from heterogui.zip.plan import ZipSettings
    from tests.conftest import DEPTH_PAIRS, calibration, make

    config_a, config_b, shape = DEPTH_PAIRS["mlp"]
    a = make(config_a, 0, "A", classes=tuple(range(5)))
    b = make(config_b, 1, "B", classes=tuple(range(5, 10)))
    batches = calibration(shape, 4, 32)
    first = heterogui.merge(a, b, batches)
    before = {k: v.clone() for k, v in first.model.state_dict().items()}
    x = batches[0]
    with torch.no_grad():
        want = torch.cat([*first.model(x), a.module(x)], dim=1)
    for given in (first, first.model):
        again = heterogui.merge(given, a, batches, settings=ZipSettings(rho=0.0))
        assert [h.classes for heads in again.model.spec.heads for h in heads] == [
            tuple(range(5)),
            tuple(range(5, 10)),
            tuple(range(5)),
        ]
        with torch.no_grad():  # rho 0 keeps every feature: the first merge's outputs and A's
            got = torch.cat(again.model(x), dim=1)
        assert (got - want).abs().max().item() < 1e-5
    group = merge_group([first, a, b], batches)
    assert isinstance(group, GroupMergeResult)
    chained = heterogui.merge(group, b, batches)  # a merge of three models too
    assert len([h for heads in chained.model.spec.heads for h in heads]) == 5
    assert all(torch.equal(before[k], v) for k, v in first.model.state_dict().items())
