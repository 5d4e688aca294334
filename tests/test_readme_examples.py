"""The README's examples run as written: its digits recipe through the CLI's path, and its
Python API block (which merges, re-merges and exports that recipe) in a fresh folder."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from heterogui.models.io import state_sha256
from heterogui.recipe_parse import recipe_from_dict
from heterogui.sources.folder import load_merged

README = Path(__file__).resolve().parents[1] / "README.md"


def fenced_blocks(language: str) -> list[str]:
    """Return the README's fenced blocks of ``language``, in order."""
    text = README.read_text("utf-8")
    return re.findall(rf"^```{language}\n(.*?)^```$", text, flags=re.S | re.M)


def block_starting(language: str, first_line: str) -> str:
    """Return the one block of ``language`` whose first line starts with ``first_line``."""
    found = [b for b in fenced_blocks(language) if b.startswith(first_line)]
    assert len(found) == 1, f"README: {len(found)} {language} blocks start with {first_line!r}"
    return found[0]


def test_every_recipe_in_the_readme_parses():
    recipes = [b for b in fenced_blocks("yaml") if "model_a:" in b or "models:" in b]
    assert len(recipes) >= 4
    for block in recipes:
        recipe = recipe_from_dict(yaml.safe_load(block))
        assert recipe.models[0].path and recipe.calibration.source


@pytest.mark.slow
def test_the_python_api_block_runs_as_written(tmp_path, monkeypatch):
    (tmp_path / "digits.yaml").write_text(block_starting("yaml", "# digits.yaml"))
    code = block_starting("python", "import heterogui")
    monkeypatch.chdir(tmp_path)
    scope: dict = {"__name__": "readme"}
    exec(compile(code, str(README), "exec"), scope)  # noqa: S102 - the README's own example
    result, done = scope["result"], scope["done"]
    assert [tuple(x.shape) for x in (scope["logits_a"], scope["logits_b"])] == [(8, 5), (8, 5)]
    assert result.alignment.mode == "lma" and done.recipe.alignment.mode == "lma"
    written = load_merged(tmp_path / "merged-digits")  # the export, as the CLI writes it
    assert state_sha256(written.state_dict()) == state_sha256(done.result.model.state_dict())
