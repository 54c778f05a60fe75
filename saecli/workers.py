"""One analysis over many GPUs and machines, on Ray: plain actors, one per GPU (or per CPU share).

What belongs here: the worker actor (which loads the preset in its own constructor, never in the
driver, and takes the run's :class:`RunConfig` whole), the pool that hands chunks of samples to
idle workers (again to another, or a fresh, worker when one dies), and :class:`RayBackend`, the
runner's backend on Ray. What does not: connecting and planning (:mod:`saecli.cluster`), writing
results (the driver's runner writes every part file and the manifest through the same resume
machinery as a plain run), the analysis itself (:mod:`saecli.engine`).

Results per chunk are one :class:`saecli.engine.BatchResult`, as a local run's: rows of numbers
(kilobytes) and, with baselines on, the chunk's :class:`saecli.residuals.Residuals` (the residual
vectors each SAE read, d_model floats per sample, layer and kind, and their sparse SAE feature
activations), which travel to the driver for ``residuals.safetensors``; with ``--no-baselines``
activations never leave a worker. Chunks are cut from the same length order the plain run batches
in, at multiples of the batch size, so each worker forms exactly the batches a plain run forms:
results are identical row for row.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from saecli.cluster import (
    ClusterInfo,
    Plan,
    RayOptions,
    alive_nodes,
    connect,
    import_ray,
    plan,
)
from saecli.config import Preset, RunConfig
from saecli.errors import SaecliError
from saecli.models import PresetInfo
from saecli.plan import chunk_plan, planned_order

if TYPE_CHECKING:
    from saecli.engine import BatchResult

log = logging.getLogger(__name__)

MAX_REPLACEMENTS = 8
"""Dead workers replaced per run before giving up (a worker that dies on every chunk is a bug or a
node that cannot run the preset, not bad luck)."""
REPLACE_TIMEOUT = 300.0
"""Seconds a replacement worker may take to load the preset (a 2B model from a cold disk); the
other workers go on meanwhile."""


# -- the worker ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkerInfo:
    """A started worker: the preset it loaded (what the manifest records) and where it runs."""

    preset: PresetInfo
    node: str
    host: str
    pid: int
    gpu_ids: list[str]
    threads: int


@dataclass(frozen=True)
class WorkerProblem:
    """A user's problem on a worker's node (the preset's files missing, a bad SAE): raised on the
    driver as the one-line error it is, not as "the actor died"."""

    message: str
    hint: str | None
    exit_code: int
    host: str

    def raise_it(self) -> None:
        raise SaecliError(f"on Ray worker host {self.host}: {self.message}", hint=self.hint, exit_code=self.exit_code)


@dataclass(frozen=True)
class WorkerTotals:
    """What a worker did over its life: for the manifest's stages and peak memory."""

    samples: int
    busy_seconds: float
    stages: dict[str, float]
    peak_memory: dict[str, Any]


class Worker:
    """A Ray actor (made remote in :func:`_actor_class`): loads the preset once, then analyses
    chunks with the run's configuration, taken whole."""

    def __init__(self, preset: Preset, config: RunConfig, *, threads: int):
        import torch

        from saecli.engine import Engine
        from saecli.faults import slow_load_point
        from saecli.models import check_preset_files, load_preset

        slow_load_point()
        torch.set_num_threads(threads)
        self.threads = threads
        self.samples_done = 0
        self.busy_seconds = 0.0
        # A user's problem on this node is reported by describe(): an exception here would reach
        # the driver only as "the actor died".
        self.problem: WorkerProblem | None = None
        try:
            check_preset_files(preset)
            self.loaded = load_preset(preset, device=config.device, dtype=config.dtype)
            self.engine = Engine(self.loaded, config)
        except SaecliError as exc:
            self.problem = WorkerProblem(exc.message, exc.hint, exc.exit_code, socket.gethostname())

    def describe(self) -> WorkerInfo | WorkerProblem:
        """What the manifest records of the loaded preset, and where this worker runs."""
        import ray

        if self.problem is not None:
            return self.problem
        return WorkerInfo(preset=self.loaded.info, node=ray.get_runtime_context().get_node_id(), host=socket.gethostname(),
                          pid=os.getpid(), gpu_ids=[str(g) for g in ray.get_gpu_ids()], threads=self.threads)  # fmt: skip

    def tokenize(self, samples: Sequence[Any]) -> list[Any]:
        return self.engine.tokenize(samples)

    def auto_batch_size(self, samples: Sequence[Any]) -> Any:
        from saecli.autobatch import find_batch_size

        return find_batch_size(self.loaded, list(samples), self.engine.config)

    def analyze(self, samples: Sequence[Any], toks: Sequence[Any], batch_size: int) -> tuple[BatchResult, float]:
        """A chunk's batches (out-of-memory backoff inside, as in a plain run) as one result whose
        ``indices`` are positions in ``samples``, and the seconds it took."""
        from saecli.engine import BatchResult

        started = time.perf_counter()
        result = BatchResult.concat(list(self.engine.run(samples, batch_size=batch_size, toks=toks)))
        seconds = time.perf_counter() - started
        self.samples_done += len(samples)
        self.busy_seconds += seconds
        return result, seconds

    def totals(self) -> WorkerTotals:
        from saecli.memory import peak_memory

        return WorkerTotals(samples=self.samples_done, busy_seconds=self.busy_seconds, stages=dict(self.engine.timer.seconds),
                            peak_memory=peak_memory(self.loaded.device))  # fmt: skip

    def pid(self) -> int:
        return os.getpid()


_REMOTE: Any = None


def get(refs: Any, **kwargs: Any) -> Any:
    """``ray.get``, with an error raised inside a worker re-raised as itself (a SaecliError stays
    one line; an out-of-memory error stays recognisable), not wrapped in Ray's task error."""
    ray = import_ray()
    from ray.exceptions import RayTaskError

    try:
        return ray.get(refs, **kwargs)
    except RayTaskError as exc:
        cause = getattr(exc, "cause", None)
        if isinstance(cause, Exception):
            raise cause from None
        raise


def _started(described: WorkerInfo | WorkerProblem) -> WorkerInfo:
    if isinstance(described, WorkerProblem):
        described.raise_it()
    return described


def _actor_class() -> Any:
    global _REMOTE
    if _REMOTE is None:
        _REMOTE = import_ray().remote(max_restarts=0, max_task_retries=0)(Worker)
    return _REMOTE


@dataclass
class Pool:
    """The workers of one run, and what they did (for the manifest)."""

    plan: Plan
    preset: Preset
    config: RunConfig
    actors: list[Any] = field(default_factory=list)
    described: dict[int, WorkerInfo] = field(default_factory=dict)
    chunks_done: dict[int, int] = field(default_factory=dict)
    samples_done: dict[int, int] = field(default_factory=dict)
    busy_seconds: dict[int, float] = field(default_factory=dict)
    replaced: int = 0
    redone_chunks: int = 0
    next_id: int = 0
    ids: dict[Any, int] = field(default_factory=dict)
    starting: dict[Any, tuple[Any, float]] = field(default_factory=dict)
    """Replacement workers still loading the preset: their ``describe`` ref -> (actor, deadline)."""

    @classmethod
    def start(cls, plan: Plan, preset: Preset, config: RunConfig) -> Pool:
        """Start the workers and wait until each has loaded the preset (its errors are the run's)."""
        pool = cls(plan, preset, config)
        for _ in range(plan.workers):
            pool._spawn()
        pool._describe_all()
        return pool

    def _spawn(self, join: bool = True) -> Any:
        """A new worker actor; ``join``: one of the pool at once (else once it has loaded)."""
        options: dict[str, Any] = {"num_gpus": self.plan.gpus_per_worker, "num_cpus": self.plan.cpus_per_worker}
        env = {k: v for k, v in os.environ.items() if k.startswith("SAECLI_")}
        if env:  # the driver's saecli settings (test fault points) hold on the workers too
            options["runtime_env"] = {"env_vars": env}
        actor = _actor_class().options(**options).remote(self.preset, self.config, threads=self.plan.cpus_per_worker)
        self.ids[actor] = self.next_id
        self.next_id += 1
        if join:
            self.actors.append(actor)
        return actor

    def _describe_all(self) -> None:
        for actor, described in zip(self.actors, get([a.describe.remote() for a in self.actors]), strict=True):
            self.described[self.ids[actor]] = _started(described)

    def first(self) -> Any:
        return self.actors[0]

    def run(self, samples: Sequence[Any], toks: Sequence[Any], chunks: list[list[int]], batch_size: int,
            on_busy: Any = None) -> Iterator[BatchResult]:  # fmt: skip
        """Hand chunks (lists of positions in ``samples``) to idle workers; yield each as it finishes
        (in finishing order), its ``indices`` positions in ``samples``. A chunk whose worker dies goes
        back in the queue for another worker; a fresh worker takes the dead one's place, and joins
        in once it has loaded the preset, while the others go on working."""
        ray = import_ray()
        from ray.exceptions import RayActorError

        queue = list(range(len(chunks)))[::-1]  # popped from the end: chunk 0 first
        running: dict[Any, tuple[Any, int]] = {}  # object ref -> (actor, chunk number)
        idle = list(self.actors)

        def hand_out() -> None:
            while idle and queue:
                actor, number = idle.pop(0), queue.pop()
                idx = chunks[number]
                ref = actor.analyze.remote([samples[i] for i in idx], [toks[i] for i in idx], batch_size)
                running[ref] = (actor, number)
            if on_busy is not None:
                on_busy(len(running), len(self.actors))

        hand_out()
        while running or (queue and self.starting):
            ready, _ = ray.wait([*running, *self.starting], num_returns=1, timeout=self._until_a_start_is_overdue())
            if not ready:
                self._give_up_overdue_starts()
                continue
            ref = ready[0]
            if ref in self.starting:
                if (fresh := self._started_fresh(ref)) is not None:
                    idle.append(fresh)
                    hand_out()
                continue
            actor, number = running.pop(ref)
            try:
                result, seconds = get(ref)
            except RayActorError as exc:
                self._replace(actor, exc)
                queue.append(number)
                self.redone_chunks += 1
                hand_out()
                continue
            wid = self.ids[actor]
            self.chunks_done[wid] = self.chunks_done.get(wid, 0) + 1
            self.samples_done[wid] = self.samples_done.get(wid, 0) + len(chunks[number])
            self.busy_seconds[wid] = self.busy_seconds.get(wid, 0.0) + seconds
            idle.append(actor)
            hand_out()
            yield dataclasses.replace(result, indices=[chunks[number][i] for i in result.indices])

    def _replace(self, actor: Any, exc: BaseException) -> None:
        """Drop a dead worker; start a fresh one where the alive nodes still have room for it. The
        fresh one loads the preset while the others work: :meth:`run` takes it in when it is ready."""
        ray = import_ray()

        wid = self.ids[actor]
        log.warning("worker %d died (%s); its chunk goes to another worker", wid, str(exc).splitlines()[0][:160])
        self.actors.remove(actor)
        try:
            ray.kill(actor)
        except Exception:  # noqa: BLE001 - it is gone already, which is what we want
            pass
        if self.replaced >= MAX_REPLACEMENTS:
            raise SaecliError(
                f"{self.replaced + 1} Ray workers died in this run; giving up", hint="see the Ray logs (`ray logs`)", exit_code=1
            )
        if self._room() > len(self.actors) + len(self.starting):
            self.replaced += 1
            fresh = self._spawn(join=False)
            self.starting[fresh.describe.remote()] = (fresh, time.monotonic() + REPLACE_TIMEOUT)
        self._check_any_left()

    def _started_fresh(self, ref: Any) -> Any:
        """A fresh worker that has loaded the preset (now one of the pool), or None if it died loading."""
        from ray.exceptions import RayActorError

        fresh, _ = self.starting.pop(ref)
        try:
            self.described[self.ids[fresh]] = _started(get(ref))
        except RayActorError as exc:
            log.warning("a replacement worker died while loading (%s)", str(exc).splitlines()[0][:160])
            self._check_any_left()
            return None
        self.actors.append(fresh)
        return fresh

    def _until_a_start_is_overdue(self) -> float | None:
        if not self.starting:
            return None
        return max(0.0, min(deadline for _, deadline in self.starting.values()) - time.monotonic())

    def _give_up_overdue_starts(self) -> None:
        ray = import_ray()
        now = time.monotonic()
        for ref, (fresh, deadline) in list(self.starting.items()):
            if deadline <= now:
                log.warning("a replacement worker did not load within %g s; going on without it", REPLACE_TIMEOUT)
                del self.starting[ref]
                ray.kill(fresh)
        self._check_any_left()

    def _check_any_left(self) -> None:
        if not self.actors and not self.starting:
            raise SaecliError("every Ray worker died and none could be started again", hint="see `ray status`", exit_code=1)

    def _room(self) -> int:
        """Workers of this plan's size the alive nodes can hold in all."""
        nodes = alive_nodes()
        if self.plan.gpus_per_worker:
            return sum(int(n.gpus) for n in nodes)
        return sum(int(n.cpus // self.plan.cpus_per_worker) for n in nodes)

    def stages(self) -> dict[str, float]:
        """Seconds per stage, summed over the workers still alive."""
        total: dict[str, float] = {}
        for t in get([a.totals.remote() for a in self.actors]):
            for stage, seconds in t.stages.items():
                total[stage] = total.get(stage, 0.0) + seconds
        return total

    def peaks(self) -> list[dict[str, Any]]:
        """Each live worker's peak memory (its own process and device)."""
        return [t.peak_memory for t in get([a.totals.remote() for a in self.actors])]

    def record(self, info: ClusterInfo) -> dict[str, Any]:
        """The cluster part of the manifest."""
        workers = []
        for wid, described in sorted(self.described.items()):
            samples, busy = self.samples_done.get(wid, 0), self.busy_seconds.get(wid, 0.0)
            workers.append({
                "worker": wid, "node": described.node, "host": described.host, "device": described.preset.device,
                "gpu_ids": described.gpu_ids, "threads": described.threads, "samples": samples,
                "chunks": self.chunks_done.get(wid, 0), "busy_seconds": round(busy, 4),
                "samples_per_second": round(samples / busy, 4) if busy > 0 else None,
            })  # fmt: skip
        return {
            "ray_version": info.ray_version,
            "address": info.address,
            "nodes": [{"node": n.node_id, "address": n.address, "cpus": n.cpus, "gpus": n.gpus} for n in info.nodes],
            "workers": self.plan.workers,
            "workers_reason": self.plan.reason,
            "gpus_per_worker": self.plan.gpus_per_worker,
            "cpus_per_worker": self.plan.cpus_per_worker,
            "replaced_workers": self.replaced,
            "redone_chunks": self.redone_chunks,
            "per_worker": workers,
        }

    def stop(self) -> None:
        ray = import_ray()
        for actor in [*self.actors, *(fresh for fresh, _ in self.starting.values())]:
            try:
                ray.kill(actor)
            except Exception:  # noqa: BLE001 - stopping what may already be gone
                pass
        self.actors.clear()
        self.starting.clear()


class RayBackend:
    """The analysis on a Ray cluster (the runner's backend: the same calls as its local one)."""

    def __init__(self, options: RayOptions, preset: Preset, config: RunConfig):
        from saecli.timer import StageTimer

        self.info_cluster = connect(options)
        self.plan = plan(self.info_cluster, options)
        log.info("Ray %s at %s: %s", self.info_cluster.ray_version, self.info_cluster.address, self.plan.reason)
        self.pool: Pool | None = None
        started = time.perf_counter()
        try:
            self.pool = Pool.start(self.plan, preset, config)
        except BaseException:
            self.close()
            raise
        first = self.pool.described[0].preset
        self.info = dataclasses.replace(first, device_reason=f"{first.device_reason} (on each Ray worker)",
                                        load_seconds=time.perf_counter() - started)  # fmt: skip
        self.timer = StageTimer()
        self.backoffs: list[dict[str, Any]] = []

    def tokenize(self, samples: list[Any]) -> list[Any]:
        with self.timer("tokenize"):
            return get(self.pool.first().tokenize.remote(samples))

    def auto_batch_size(self, samples: list[Any]) -> Any:
        return get(self.pool.first().auto_batch_size.remote(samples))

    def batches(self, samples: Sequence[Any], toks: Sequence[Any], batch_size: int, progress: Any) -> Iterator[BatchResult]:
        order = planned_order(toks, batch_size)
        chunks = chunk_plan(order, batch_size, len(self.pool.actors))

        def busy(running: int, workers: int) -> None:
            if progress is not None:
                progress(busy=(running, workers))

        for chunk in self.pool.run(samples, toks, chunks, batch_size, on_busy=busy):
            self.backoffs += chunk.backoffs
            yield chunk

    def stages(self) -> dict[str, float]:
        total = self.pool.stages() if self.pool else {}
        for stage, seconds in self.timer.seconds.items():
            total[stage] = total.get(stage, 0.0) + seconds
        return total

    def peak(self) -> dict[str, Any]:
        from saecli.memory import peak_memory

        return {"driver": peak_memory("cpu"), "workers": self.pool.peaks() if self.pool else []}

    def record(self) -> dict[str, Any]:
        return {"cluster": self.pool.record(self.info_cluster)} if self.pool else {}

    def close(self) -> None:
        ray = import_ray()
        if self.pool is not None:
            self.pool.stop()
        if self.info_cluster.started_here and ray.is_initialized():
            ray.shutdown()
