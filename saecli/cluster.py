"""A Ray cluster as saecli uses it: how to run there (:class:`RayOptions`), joining or starting
one, its alive nodes, and how many workers fit where (:func:`plan`). The workers themselves, the
pool that hands them chunks and the Ray backend are :mod:`saecli.workers`.

Ray is optional (``pip install 'saecli[ray]'``) and imported only through :func:`import_ray`, only
when asked for.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass
from typing import Any

from saecli.errors import SaecliError

log = logging.getLogger(__name__)

DEFAULT_WORKER_CPUS = 1
"""CPUs (and torch threads) per worker on a cluster without GPUs: one thread per worker keeps
workers on one machine from spinning against each other (two PyTorch processes that each use every
core were measured 40x slower than one)."""
CONNECT_TIMEOUT = 5.0
INSTALL_HINT = "pip install 'saecli[ray]'"


def import_ray() -> Any:
    """Ray, or the one-line error naming the command that installs it."""
    try:
        import ray
    except ImportError:
        raise SaecliError("--ray needs Ray, which is not installed", hint=f"{INSTALL_HINT} (or `make install`)") from None
    return ray


@dataclass(frozen=True)
class RayOptions:
    """How to run on Ray. Not part of a run's identity: where the work runs never changes results."""

    address: str | None = None
    """``auto``, ``HOST:6379`` or ``ray://HOST:10001``; None joins ``RAY_ADDRESS`` or starts a local instance."""
    workers: int | None = None
    """Worker actors; None: one per GPU of the cluster, or one per ``worker_cpus`` CPUs without GPUs."""
    worker_cpus: int = DEFAULT_WORKER_CPUS
    """CPUs (and torch threads) each worker takes on a cluster without GPUs."""

    def __post_init__(self) -> None:
        if self.workers is not None and (isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 1):
            raise SaecliError(f"--workers must be a whole number >= 1, got {self.workers!r}")
        if isinstance(self.worker_cpus, bool) or not isinstance(self.worker_cpus, int) or self.worker_cpus < 1:
            raise SaecliError(f"--worker-cpus must be a whole number >= 1, got {self.worker_cpus!r}")
        if self.address is not None and (not isinstance(self.address, str) or not self.address.strip()):
            raise SaecliError(f"--ray ADDRESS must be auto, HOST:PORT or ray://HOST:PORT, got {self.address!r}")


@dataclass
class Node:
    """One alive node of the cluster."""

    node_id: str
    address: str
    cpus: float
    gpus: float
    memory_bytes: float


@dataclass
class Plan:
    """How many workers, with what resources each."""

    workers: int
    gpus_per_worker: int
    cpus_per_worker: int
    reason: str


@dataclass
class ClusterInfo:
    """The cluster as the driver found it."""

    ray_version: str
    address: str
    started_here: bool
    nodes: list[Node]

    @property
    def gpus(self) -> float:
        return sum(n.gpus for n in self.nodes)

    @property
    def cpus(self) -> float:
        return sum(n.cpus for n in self.nodes)


def _reachable(address: str) -> None:
    """A fast, one-line refusal for a HOST:PORT nothing listens on (Ray itself retries for a minute)."""
    target = address.removeprefix("ray://")
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise SaecliError(f"--ray {address!r} is not an address", hint="give auto, HOST:6379 or ray://HOST:10001")
    try:
        with socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT):
            pass
    except OSError as exc:
        raise SaecliError(
            f"cannot reach the Ray cluster at {address} ({exc.strerror or exc})",
            hint="is `ray start --head` running there, and is the port open? `saecli doctor --ray ADDRESS` checks",
        ) from None


def connect(options: RayOptions) -> ClusterInfo:
    """Join the cluster ``options.address`` (or ``RAY_ADDRESS``), or start a local Ray instance; a
    process that already called ``ray.init`` keeps its cluster."""
    ray = import_ray()
    started_here = False
    address = options.address or os.environ.get("RAY_ADDRESS")
    if not ray.is_initialized():
        if address and address != "auto":
            _reachable(address)
        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
        try:
            if address:
                ray.init(address=address, **kwargs)
            else:
                # A local instance on loopback: nothing of it is reachable from outside this machine.
                ray.init(_node_ip_address="127.0.0.1", **kwargs)
                started_here = True
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise SaecliError(
                f"cannot connect to the Ray cluster {address or '(local)'}: {str(exc).splitlines()[0]}",
                hint="start one with `ray start --head`, or check `saecli doctor --ray`",
            ) from None
    return ClusterInfo(ray_version=ray.__version__, address=address or "local", started_here=started_here, nodes=alive_nodes())


def alive_nodes() -> list[Node]:
    ray = import_ray()
    nodes = []
    for n in ray.nodes():
        if not n.get("Alive"):
            continue
        res = n.get("Resources", {})
        nodes.append(
            Node(n["NodeID"], n.get("NodeManagerAddress", "?"), res.get("CPU", 0.0), res.get("GPU", 0.0), res.get("memory", 0.0))
        )
    return nodes


def plan(info: ClusterInfo, options: RayOptions) -> Plan:
    """One worker per GPU (``num_gpus=1``), or per ``worker_cpus`` CPUs on a cluster without GPUs;
    refuse a number of workers the cluster cannot place (Ray would wait for them forever)."""
    if not info.nodes:
        raise SaecliError(
            f"the Ray cluster at {info.address} has no alive node to run workers on",
            hint="`ray status` on its head node shows what happened to them; a node joins with `ray start --address HEAD:PORT`",
        )
    if info.gpus >= 1:
        capacity = sum(int(n.gpus) for n in info.nodes)
        workers = options.workers or capacity
        kind, gpus, cpus = "GPU", 1, 1
    else:
        capacity = sum(int(n.cpus // options.worker_cpus) for n in info.nodes)
        workers = options.workers or capacity
        kind, gpus, cpus = f"{options.worker_cpus}-CPU share", 0, options.worker_cpus
    if capacity < 1 or workers > capacity:
        have = (
            f"{info.gpus:g} GPUs"
            if gpus
            else f"{info.cpus:g} CPUs in all, at most {max(n.cpus for n in info.nodes):g} on one node"
        )
        raise SaecliError(
            f"the Ray cluster has room for {capacity} worker(s) of one {kind} each, not {workers} ({have})",
            hint="fewer --workers, a smaller --worker-cpus, or more nodes",
        )
    why = f"one per {kind}" if options.workers is None else "--workers"
    return Plan(workers=workers, gpus_per_worker=gpus, cpus_per_worker=cpus, reason=f"{workers} worker(s), {why}")
