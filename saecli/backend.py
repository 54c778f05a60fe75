"""Where a run's analysis happens: the one :class:`Backend` interface the runner drives, and its
local implementation (this process, one engine). The Ray implementation is
:class:`saecli.cluster.RayBackend`; both yield the engine's own :class:`BatchResult` per piece of
work, so the runner writes every run the same way.

Belongs here: the interface and the local backend. Does not belong here: writing results
(:mod:`saecli.runner`), the analysis itself (:mod:`saecli.engine`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from saecli.config import RunConfig
from saecli.device import ThreadShare, automatic_threads, set_torch_threads
from saecli.memory import peak_memory
from saecli.models import LoadedPreset, PresetInfo

if TYPE_CHECKING:
    from saecli.autobatch import AutoBatch
    from saecli.data import Sample
    from saecli.engine import BatchResult
    from saecli.timer import StageTimer

log = logging.getLogger(__name__)

Progress = Callable[..., None]
"""Called with (samples done, samples total) after each batch; on Ray also with ``busy=(workers
busy, workers)`` whenever work is handed out."""


class Backend(Protocol):
    """What the runner needs from wherever the analysis runs."""

    info: PresetInfo
    """The loaded preset's manifest fields."""
    timer: StageTimer
    """Seconds per stage of the work done in this process (the driver's, on Ray)."""
    backoffs: list[dict[str, Any]]
    """Out-of-memory backoffs so far (failed size, new size, where)."""

    def tokenize(self, samples: Sequence[Sample]) -> list[Any]: ...

    def auto_batch_size(self, samples: Sequence[Sample]) -> AutoBatch: ...

    def batches(
        self, samples: Sequence[Sample], toks: Sequence[Any], batch_size: int, progress: Progress | None
    ) -> Iterator[BatchResult]:
        """The analysis of ``samples``, as results whose ``indices`` are positions in ``samples``,
        in the order they finish."""
        ...

    def stages(self) -> dict[str, float]: ...

    def peak(self) -> dict[str, Any]: ...

    def record(self) -> dict[str, Any]:
        """What the manifest adds for this backend (threads; the cluster)."""
        ...

    def close(self) -> None: ...


class LocalBackend:
    """The analysis in this process: the preset loaded here, one engine."""

    def __init__(self, loaded: LoadedPreset, config: RunConfig):
        from saecli.engine import Engine  # torch is imported only when there is work to do

        self.loaded = loaded
        self.info = loaded.info
        self.config = config
        self.threads = set_torch_threads(config.threads) if loaded.device == "cpu" else None
        if self.threads:
            log.info("%d CPU thread(s): %s", self.threads["used"], self.threads["reason"])
        # Chosen again between plan windows as other processes come and go (automatic threads only).
        self.share = ThreadShare(self.threads["used"]) if self.threads and automatic_threads(config.threads) else None
        self.handed = 0
        self.engine = Engine(loaded, config)
        self.timer = self.engine.timer

    @property
    def backoffs(self) -> list[dict[str, Any]]:
        return self.engine.backoffs

    def tokenize(self, samples: Sequence[Sample]) -> list[Any]:
        return self.engine.tokenize(samples)

    def auto_batch_size(self, samples: Sequence[Sample]) -> AutoBatch:
        from saecli.autobatch import find_batch_size

        return find_batch_size(self.loaded, list(samples), self.config)

    def batches(
        self, samples: Sequence[Sample], toks: Sequence[Any], batch_size: int, progress: Progress | None
    ) -> Iterator[BatchResult]:
        if self.share is not None:
            self.share.update(self.handed)
        self.handed += len(samples)
        return self.engine.run(samples, batch_size=batch_size, toks=toks)

    def stages(self) -> dict[str, float]:
        return dict(self.timer.seconds)

    def peak(self) -> dict[str, Any]:
        return peak_memory(self.info.device)

    def record(self) -> dict[str, Any]:
        if not self.threads:
            return {}
        if self.share is None or not self.share.count:
            return {"threads": self.threads}
        return {"threads": {**self.threads, "changed": self.share.count, "changes": self.share.changes}}

    def close(self) -> None:
        pass
