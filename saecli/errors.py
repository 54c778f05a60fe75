"""The domain exceptions. The CLI catches them at a single boundary and prints one line."""

from __future__ import annotations

from typing import Any


class SaecliError(Exception):
    """A problem the user can act on: a clear message and, where possible, what to do about it.

    ``exit_code`` is 2 for bad input (the default) and 1 for failures of the run itself.
    """

    def __init__(self, message: str, hint: str | None = None, exit_code: int = 2):
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.exit_code = exit_code

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message} ({self.hint})"


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during a run that has written its folder: what was finished is kept."""

    def __init__(self, run_dir: Any, resume_command: str):
        super().__init__(str(run_dir))
        self.run_dir = run_dir
        self.resume_command = resume_command
