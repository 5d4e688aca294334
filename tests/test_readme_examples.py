"""The documented examples run as written: the recipes of the README and docs/ parse, the
README's Python API block (which merges, re-merges and exports the digits recipe) runs in a
fresh folder, and every Python block of the README and docs/ imports names that exist."""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest
import yaml

from heterogui.models.io import state_sha256
from heterogui.recipe_parse import recipe_from_dict
from heterogui.sources.folder import load_merged

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCUMENTS = [README, *sorted((ROOT / "docs").glob("*.md"))]


def fenced_blocks(language: str, document: Path = README) -> list[str]:
    """Return a document's fenced blocks of ``language``, in order."""
    text = document.read_text("utf-8")
    return re.findall(rf"^```{language}\n(.*?)^```$", text, flags=re.S | re.M)


def block_starting(language: str, first_line: str) -> str:
    """Return the one block of ``language`` whose first line starts with ``first_line``."""
    found = [b for b in fenced_blocks(language) if b.startswith(first_line)]
    assert len(found) == 1, f"README: {len(found)} {language} blocks start with {first_line!r}"
    return found[0]


def test_every_documented_recipe_parses():
    recipes = [
        block
        for document in DOCUMENTS
        for block in fenced_blocks("yaml", document)
        if "model_a:" in block or "models:" in block
    ]
    assert len(recipes) >= 5
    for block in recipes:
        recipe = recipe_from_dict(yaml.safe_load(block))
        assert recipe.models[0].path and recipe.calibration.source


def importable(module: str, name: str) -> bool:
    """Return whether ``from module import name`` works (a name or a submodule)."""
    if hasattr(importlib.import_module(module), name):
        return True
    try:
        importlib.import_module(f"{module}.{name}")
    except ModuleNotFoundError:
        return False
    return True


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: p.name)
def test_every_documented_import_exists(document):
    for block in fenced_blocks("python", document):
        for node in ast.walk(ast.parse(block)):
            if isinstance(node, ast.ImportFrom):
                missing = [a.name for a in node.names if not importable(node.module, a.name)]
                assert not missing, f"{document.name}: {node.module} has no {missing}"
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    importlib.import_module(alias.name)


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
