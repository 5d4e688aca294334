"""The per-browser-session state of the workbench, held in a ``gr.State``.

One ``Session`` per browser tab: two users never share one. A fresh session holds only plain
values (gradio deep-copies the initial value of a State); heavy objects (networks, cached
statistics) are attached by the handlers. Objects reached through a session that came from the
shared ``Resources`` (zoo networks, prepared demo pairs) are never modified in place.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from heterogui.config import DataRef
from heterogui.errors import HeteroguiError
from heterogui.models.family import Network
from heterogui.pipeline import MergeResult, Prepared, ZipSettings


class Cancelled(HeteroguiError):
    """The user pressed Cancel while a long step ran."""


@dataclass
class ModelSlot:
    """A loaded model A or B.

    ref: what a recipe records to load it again ("zoo:PAIR/a" or a folder path).
    source: "zoo", "folder", "upload" or "hf".
    """

    net: Network
    ref: str
    source: str
    sha256: str | None = None
    tokenizer: Any = None  # a transformer model's tokenizer (None for the other families)


@dataclass
class Session:
    """Everything one browser session has loaded, computed and merged.

    prepared: cached statistics of the pair (steps 1-3); re-merges start from it.
    baseline: metrics of "a", "b" and "ensemble" on the test split (computed once per pair).
    history: one row per merge of this session (settings, sizes, metrics).
    cancel_requested: set by the Cancel button; long steps check it between stages.
    """

    sid: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    a: ModelSlot | None = None
    b: ModelSlot | None = None
    pair: str | None = None
    dataset: str | None = None
    calibration: DataRef = field(default_factory=DataRef)
    device: str = "auto"
    prepared: Prepared | None = None
    settings: ZipSettings = field(default_factory=ZipSettings)
    result: MergeResult | None = None
    merge_count: int = 0
    merged_metrics: Any = None
    reference_sizes: dict[str, Any] | None = None
    merged_size: dict[str, Any] | None = None
    baseline: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    neuron_space: str | None = None
    samples: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4, 5])
    sample_seed: int = 0
    sweep: list[dict[str, Any]] = field(default_factory=list)
    sweep_key: Any = None
    last_export: str | None = None
    cancel_requested: bool = False
    notes: list[str] = field(default_factory=list)
    sentences: list[str] = field(default_factory=list)  # pasted calibration sentences (text)
    compare: list[str] = field(default_factory=list)  # sentences of the similarity matrices

    def both_loaded(self) -> bool:
        """Return True when models A and B are loaded."""
        return self.a is not None and self.b is not None

    def clear_results(self) -> None:
        """Forget everything derived from the current pair (after loading a model)."""
        self.prepared = None
        self.result = None
        self.merged_metrics = None
        self.merged_size = None
        self.reference_sizes = None
        self.baseline = {}
        self.sweep = []

    def check_cancel(self) -> None:
        """Raise Cancelled if the user asked to stop (and reset the request).

        Raises:
            Cancelled: the Cancel button was pressed since the step began.
        """
        if self.cancel_requested:
            self.cancel_requested = False
            raise Cancelled("cancelled: the previous result is kept")
