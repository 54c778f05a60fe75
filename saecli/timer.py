"""Seconds per stage of the analysis (tokenize, forward, sae, geometry, metrics, write), with no
torch import unless a timer is asked to wait for the accelerator: the Ray driver times its own
stages without loading torch."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field


@dataclass
class StageTimer:
    """Seconds spent per stage; with ``sync``, each stage ends when CUDA's queued work is done (so
    asynchronous kernels count in the stage that launched them)."""

    sync: bool = False
    seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            if self.sync:
                import torch

                if torch.cuda.is_available():
                    torch.cuda.synchronize()
            self.seconds[stage] += time.perf_counter() - started
