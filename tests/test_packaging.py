"""The install/test contract: README commands, what CI runs, the torch pin, the CLI entry."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
CI_RUN = ROOT / ".ci" / "run"

FENCED_AFTER_MARKER = r"^<!-- {name} -->[ \t]*\n```bash[ \t]*\n(.*?)\n```[ \t]*$"


def readme_blocks(name: str) -> list[str]:
    """Return the bash blocks that directly follow each `<!-- name -->` marker in README.md."""
    pattern = FENCED_AFTER_MARKER.format(name=re.escape(name))
    return re.findall(pattern, README.read_text(encoding="utf-8"), flags=re.M | re.S)


@pytest.mark.parametrize("name", ["run-command", "test-command"])
def test_readme_has_exactly_one_single_line_block_per_marker(name: str) -> None:
    text = README.read_text(encoding="utf-8")
    assert text.count(f"<!-- {name} -->") == 1
    blocks = readme_blocks(name)
    assert len(blocks) == 1, f"marker {name} must be followed directly by one ```bash block"
    command = blocks[0]
    assert "\n" not in command.strip(), f"{name} must be a single line: {command!r}"
    assert "python3.11 -m venv .venv" in command
    assert "-c constraints.txt" in command, "installs must use the torch pin"


def test_readme_commands_start_the_app_and_run_the_tests() -> None:
    assert readme_blocks("run-command")[0].rstrip().endswith(".venv/bin/python launch.py")
    test_command = readme_blocks("test-command")[0]
    assert '-e ".[test]"' in test_command
    assert test_command.rstrip().endswith(".venv/bin/python -m pytest")


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")
def test_ci_runs_exactly_the_readme_test_command() -> None:
    result = subprocess.run(
        ["bash", str(CI_RUN), "--print-test-command"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    assert result.stdout.strip() == readme_blocks("test-command")[0].strip()


def test_ci_script_is_executable_and_strict() -> None:
    text = CI_RUN.read_text(encoding="utf-8")
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "set -euo pipefail" in text
    assert CI_RUN.stat().st_mode & 0o111, ".ci/run must be executable (chmod +x)"


def test_constraints_pin_torch() -> None:
    lines = (ROOT / "constraints.txt").read_text(encoding="utf-8").splitlines()
    pins = [line.split("#")[0].strip() for line in lines]
    assert "torch==2.13.0" in [pin for pin in pins if pin]


def test_launch_py_exits_cleanly_on_help() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "launch.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    for option in ("--host", "--port", "--auth", "--threads", "--pair", "--export-root"):
        assert option in result.stdout


def test_launch_py_refuses_an_unknown_pair_in_one_line() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "launch.py"), "--pair", "no-such-pair", "--threads", "1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "error: unknown demo pair 'no-such-pair': use one of" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.skipif(
    not (ROOT / "heterogui" / "cli.py").exists(), reason="heterogui/cli.py does not exist yet"
)
def test_python_m_heterogui_help() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "heterogui", "--help"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "usage" in result.stdout.lower()


def test_every_document_the_code_cites_is_in_the_repository():
    import re

    root = Path(__file__).resolve().parents[1]
    texts = {p: p.read_text("utf-8") for p in (root / "heterogui").rglob("*.py")}
    texts[root / "README.md"] = (root / "README.md").read_text("utf-8")
    cited = {m for text in texts.values() for m in re.findall(r"docs/[\w.-]+\.md", text)}
    assert {"docs/method.md", "docs/architecture.md"} <= cited
    assert all((root / doc).is_file() for doc in cited), sorted(cited)
    sections = {
        int(n) for text in texts.values() for n in re.findall(r"docs/method.md secs?\. (\d+)", text)
    }
    headings = set(
        map(int, re.findall(r"^## (\d+)\.", (root / "docs/method.md").read_text(), re.M))
    )
    assert sections <= headings
    for path, text in texts.items():  # documents outside the repository are never cited
        bare = re.findall(r"(?<!docs/)\b(?:method|design)\.md", text)
        assert not bare, (path, bare)
