"""The progress of a report: its steps counted for a callback. Nothing here prints: the command line
draws the callback's calls as a bar on stderr."""

from __future__ import annotations

from collections.abc import Callable

ReportProgress = Callable[[str, int, int], None]
"""Called as ``progress(step, done, total)`` when a step starts (``step`` says which, e.g. ``probe_sae_l2:
repeat 1/3, fold 2/5``; ``done`` steps of ``total`` are finished), and once more at the end with
``done == total``."""


class Steps:
    """The steps of one report. Each part of the work adds its steps to the total (:meth:`plan`)
    before the first step of the report starts, so that the total never changes under a bar, and
    names each step as it starts (:meth:`start`)."""

    def __init__(self, progress: ReportProgress | None = None) -> None:
        self.progress = progress
        self.total = 0
        self.done = 0

    def plan(self, steps: int) -> None:
        self.total += steps

    def start(self, step: str) -> None:
        if self.progress is not None:
            self.progress(step, self.done, max(self.total, self.done + 1))
        self.done += 1

    def finish(self, step: str = "done") -> None:
        self.done = self.total = max(self.total, self.done)
        if self.progress is not None:
            self.progress(step, self.done, self.total)
