"""The built-in text domains for language models (Python docs and standard library source)."""

from __future__ import annotations

import pytest

from heterogui.config import DataRef
from heterogui.datasets.refs import text_sha256
from heterogui.datasets.text_domains import (
    DOMAINS,
    MAX_CHARS,
    MIN_CHARS,
    SPLITS,
    chunk_text,
    domain_texts,
    load_texts,
    split_of,
)
from heterogui.errors import ConfigError, ModelLoadError


@pytest.mark.parametrize("name", DOMAINS)
def test_domains_fill_every_split_with_disjoint_bounded_texts(name):
    splits = {split: domain_texts(name, split) for split in SPLITS}
    counts = {split: len(texts) for split, texts in splits.items()}
    assert min(counts.values()) >= 50, counts
    assert counts["train"] > 4 * max(counts["calibration"], counts["test"]), counts
    seen = [text for texts in splits.values() for text in texts]
    assert len(set(seen)) == len(seen)  # every text once, in one split only
    assert all(MIN_CHARS <= len(text) <= MAX_CHARS for text in seen)
    assert all(split_of(text) == split for split, texts in splits.items() for text in texts)
    code = sum("def " in text or "import " in text for text in seen) / len(seen)
    assert code > 0.3 if name == "python-source" else code < 0.1


def test_domain_texts_are_fixed_and_returned_as_copies():
    first = domain_texts("python-docs", "test")
    first.clear()
    again = domain_texts("python-docs", "test")
    assert again and again == domain_texts("python-docs", "test")
    assert split_of("x = 1") == split_of("x = 1") in SPLITS


def test_chunks_respect_the_bounds_and_keep_the_text():
    document = "\n\n".join(
        [f"Paragraph {i} " + "word " * (i * 17 % 90) for i in range(40)]
        + ["x" * 1500, "class A:", "    pass", "short"]
    )
    texts = chunk_text(document)
    assert texts == chunk_text(document)
    assert all(MIN_CHARS <= len(text) <= MAX_CHARS for text in texts)
    kept = "".join("".join(text.split()) for text in texts)
    assert "x" * 1500 in kept and "Paragraph39" in kept
    assert not any(text.endswith("class A:") for text in texts)  # a header joins its block


def test_load_texts_draws_size_texts_with_the_seed():
    every = domain_texts("python-source", "calibration")
    drawn = load_texts(DataRef(source="python-source", split="calibration", size=8, seed=0))
    assert len(drawn) == 8 and drawn == sorted(drawn, key=every.index)
    assert drawn == load_texts(DataRef(source="python-source", split="calibration", size=8))
    other = load_texts(DataRef(source="python-source", split="calibration", size=8, seed=1))
    assert other != drawn and set(other) <= set(every)
    assert load_texts(DataRef(source="python-source", split="calibration", size=None)) == every
    digest = text_sha256(drawn)
    ref = DataRef(source="python-source", split="calibration", size=8, sha256=digest)
    assert load_texts(ref) == drawn


def test_load_texts_reads_a_txt_file_and_checks_its_hash(tmp_path):
    path = tmp_path / "texts.txt"
    path.write_text("first text\n\n  second text  \nthird\n\n")
    texts = load_texts(DataRef(source=str(path), size=None))
    assert texts == ["first text", "second text", "third"]
    assert load_texts(DataRef(source=str(path), sha256=text_sha256(texts))) == texts
    with pytest.raises(ConfigError, match="changed.*remove sha256"):
        load_texts(DataRef(source=str(path), sha256="0" * 64))
    path.write_text("\n  \n")
    with pytest.raises(ConfigError, match="holds no text"):
        load_texts(DataRef(source=str(path)))
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_texts(DataRef(source=str(tmp_path / "missing.txt")))


def test_unknown_sources_and_splits_are_refused():
    with pytest.raises(ConfigError, match=r"python-docs.*\.txt file"):
        load_texts(DataRef(source="wikitext"))
    with pytest.raises(ConfigError, match="unknown split"):
        load_texts(DataRef(source="python-docs", split="validation"))
    with pytest.raises(ConfigError, match="unknown text domain"):
        domain_texts("digits", "test")
