"""Shared test setup: offline, analytics-free environment; skips for missing GPU or browser.

The cache ($HETEROGUI_CACHE, else ~/.cache/heterogui) is deliberately left alone so that zoo models
built by one run are reused by the next.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

# Set before any test module imports gradio or huggingface_hub, which read them at import.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import torch  # noqa: E402

# The test models are tiny: one thread is faster than two, and with two the OpenMP pool
# collapses (100x slower) whenever anything else runs on the machine.
torch.set_num_threads(1)

CHROMIUM_PATH = Path("/usr/bin/chromium")
# Flags for Debian's chromium in containers and CI (design.md); never `playwright install`.
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def _browser_skip_reason() -> str | None:
    """Say why browser tests cannot run here, or return None when they can."""
    if not CHROMIUM_PATH.exists():
        return f"{CHROMIUM_PATH} is missing (apt-get update && apt-get install -y chromium)"
    if importlib.util.find_spec("playwright") is None:
        return "the playwright package is missing (pip install -e '.[test]')"
    return None


def _gpu_skip_reason() -> str | None:
    """Say why GPU tests cannot run here, or return None when they can."""
    import torch  # imported only when a gpu test was collected: it takes a second or two

    if not torch.cuda.is_available():
        return "CUDA is not available (torch.cuda.is_available() is False)"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip `gpu` tests without CUDA and `browser` tests without Chromium or playwright."""
    checks = {"gpu": _gpu_skip_reason, "browser": _browser_skip_reason}
    reasons: dict[str, str | None] = {}
    for item in items:
        for marker, check in checks.items():
            if item.get_closest_marker(marker) is None:
                continue
            if marker not in reasons:
                reasons[marker] = check()
            if reasons[marker] is not None:
                item.add_marker(pytest.mark.skip(reason=reasons[marker]))


@pytest.fixture(scope="session")
def chromium_browser():
    """Yield a headless playwright Chromium browser running Debian's /usr/bin/chromium."""
    reason = _browser_skip_reason()
    if reason is not None:
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM_PATH), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()
