"""A Ray cluster as saecli uses it: how to run there (:class:`RayOptions`), joining or starting
one, its alive nodes, and how many workers fit where (:func:`plan`). The workers themselves, the
pool that hands them chunks and the Ray backend are :mod:`saecli.workers`.

An address is checked before Ray gets it (:func:`connect`): where it came from, that something
listens there, that it answers as a Ray cluster, and with which authentication token. Ray itself
retries a bad address for minutes and says why only in its log lines.

Ray is optional (``pip install 'saecli[ray]'``) and imported only through :func:`import_ray`, only
when asked for.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from saecli.errors import SaecliError

log = logging.getLogger(__name__)

DEFAULT_WORKER_CPUS = 1
"""CPUs (and torch threads) per worker on a cluster without GPUs: one thread per worker keeps
workers on one machine from spinning against each other (two PyTorch processes that each use every
core were measured 40x slower than one)."""
CONNECT_TIMEOUT = 5.0
"""Seconds to wait for a cluster's port to accept a connection."""
GCS_TIMEOUT = 10.0
"""Seconds to wait for a cluster's GCS to answer (a healthy one answers in milliseconds)."""
DOCTOR_CHECKS = "`saecli doctor --ray ADDRESS` checks a cluster"
"""Ends the hints of errors met while joining; ``doctor --ray`` leaves it out of its own."""
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


@dataclass(frozen=True)
class Target:
    """The cluster to join, and where its address came from (for the one-line errors)."""

    address: str | None
    """``HOST:PORT`` or ``ray://HOST:PORT``; None starts a local instance."""
    source: str
    """``--ray``, ``RAY_ADDRESS``, Ray's address file, or the processes ``--ray auto`` found."""

    @property
    def where(self) -> str:
        return f"{self.address}" if self.source == "--ray" else f"{self.address} (from {self.source})"


def ray_address_file() -> Path:
    """Where ``ray start`` leaves the address of the cluster it started (Ray's own rule, which Ray
    keeps in private modules that have moved between versions)."""
    base = os.environ.get("RAY_TMPDIR")
    if base is None:
        base = os.environ.get("TMPDIR") if sys.platform.startswith("linux") and "TMPDIR" in os.environ else "/tmp"
    return Path(base) / "ray" / "ray_current_cluster"


def resolve(options: RayOptions) -> Target:
    """The address to join. ``--ray`` alone uses ``RAY_ADDRESS`` or starts a local instance, and never
    Ray's address file: a ``ray start`` killed long ago leaves its address there, and Ray would wait
    on it for minutes. ``--ray auto`` finds the cluster as Ray does (that file, or the one cluster
    running on this machine), so that the address can be checked before Ray gets it."""
    if options.address not in (None, "auto"):
        return Target(options.address, "--ray")
    env = os.environ.get("RAY_ADDRESS", "").strip()
    if env not in ("", "auto", "local"):
        return Target(env, "RAY_ADDRESS")
    if env == "local" or (options.address is None and env != "auto"):
        return Target(None, "local")
    file = ray_address_file()
    try:
        written = file.read_text().strip()
    except OSError:
        written = ""
    try:
        from ray._private.services import canonicalize_bootstrap_address as canonical
    except ImportError:  # a Ray that moved it: the file alone

        def canonical(address: str) -> str | None:
            return (written or None) if address == "auto" else address

    try:
        found = canonical("auto")
        from_file = bool(written) and found == canonical(written)  # Ray writes this machine's address for 127.0.0.1
    except (ConnectionError, ValueError):
        found, from_file = None, False
    if not found:
        raise SaecliError("--ray auto found no Ray cluster on this machine",
                          hint="start one with `ray start --head`, or give its address: --ray HOST:6379")  # fmt: skip
    if from_file:
        return Target(found, f"{file}, written by an earlier `ray start` on this machine")
    return Target(found, "the Ray processes running on this machine")


def _doctor_hint(hint: str) -> str:
    return f"{hint}; {DOCTOR_CHECKS}"


def _reachable(target: Target) -> None:
    """A fast, one-line refusal for a HOST:PORT nothing listens on (Ray itself retries for minutes)."""
    address = target.address or ""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise SaecliError(f"--ray {target.where!r} is not an address", hint="give auto, HOST:6379 or ray://HOST:10001")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT):
            pass
    except OSError as exc:
        if target.source.endswith("`ray start` on this machine"):
            hint = "that cluster is gone: start it again (`ray start --head`), give --ray HOST:PORT, or --ray alone for a local instance"
        else:
            hint = _doctor_hint("check that `ray start --head` runs there and that its port is open")
        raise SaecliError(f"cannot reach the Ray cluster at {target.where} ({exc.strerror or exc})", hint=hint) from None


@contextmanager
def _quiet_stderr() -> Iterator[None]:
    """File descriptor 2 pointed at /dev/null: Ray's C++ logging writes there directly."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _gcs_answer(address: str, timeout: float) -> BaseException | None:
    """Ask the cluster's GCS for its id: None when it answers, else why not. Ray's own connection
    retries for minutes and hides the cause (a missing token, say) in its log lines."""
    try:
        from ray._raylet import GcsClient
    except ImportError:  # a Ray without it: ray.init alone then decides
        return None
    found: dict[str, BaseException | None] = {}

    def ask() -> None:
        try:
            GcsClient(address=address)
            found["error"] = None
        except Exception as exc:  # noqa: BLE001 - any failure is the answer, reported by the caller
            found["error"] = exc

    # A thread, so that an address which accepts connections but never answers cannot hold us.
    thread = threading.Thread(target=ask, name="saecli-ray-probe", daemon=True)
    with _quiet_stderr():  # Ray's C++ client logs each failure there; the caller says it in one line
        thread.start()
        thread.join(timeout)
    return found["error"] if "error" in found else TimeoutError(f"no answer within {timeout:g} s")


def token_source() -> str | None:
    """Where Ray would read an authentication token from (its documented order), or None."""
    if os.environ.get("RAY_AUTH_TOKEN", "").strip():
        return "RAY_AUTH_TOKEN"
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if path:
        # Ray aborts the process on a token path it cannot read: refuse it first, in one line.
        try:
            if Path(path).read_text().strip():
                return path
        except OSError:
            pass
        raise SaecliError(
            f"RAY_AUTH_TOKEN_PATH is {path}, which cannot be read or is empty", hint="point it at the cluster's token file"
        )
    default = Path.home() / ".ray" / "auth_token"
    try:
        return str(default) if default.read_text().strip() else None
    except OSError:
        return None


def _use_token() -> None:
    """Token authentication for this process and the Ray processes it starts, as Ray's documentation
    says (``RAY_AUTH_MODE=token``); Ray caches its settings, so they are read again."""
    import ray._raylet as raylet

    os.environ["RAY_AUTH_MODE"] = "token"
    raylet.Config.initialize("")
    raylet.AuthenticationTokenLoader.instance().reset_cache()


def _authenticate(target: Target) -> None:
    """Make sure the GCS at ``target`` answers, with a token when the cluster wants one. Ray uses a
    token it finds by itself only for ``auto``; for an address it needs ``RAY_AUTH_MODE=token``,
    which is set here when the cluster wants a token and this machine has one."""
    import ray

    address = target.address or ""
    denied = getattr(ray.exceptions, "AuthenticationError", ())
    error = _gcs_answer(address, GCS_TIMEOUT)
    if isinstance(error, denied) and "RAY_AUTH_MODE" not in os.environ and token_source() is not None:
        _use_token()
        error = _gcs_answer(address, GCS_TIMEOUT)
    if error is None:
        return
    if isinstance(error, denied):
        raise _token_error(target)
    hint = _doctor_hint("check that this is the address `ray start --head` printed")
    if isinstance(error, TimeoutError):
        raise SaecliError(f"no Ray cluster answered at {target.where} within {GCS_TIMEOUT:g} s", hint=hint)
    raise SaecliError(f"{target.where} does not answer as a Ray cluster: {_first_line(error)}", hint=hint)


def _token_error(target: Target) -> SaecliError:
    """What is missing when the cluster refused us: the token, the right token, or token mode."""
    mode = os.environ.get("RAY_AUTH_MODE", "token")
    if mode.lower() != "token":
        return SaecliError(f"the Ray cluster at {target.where} wants an authentication token, and RAY_AUTH_MODE={mode} here turns tokens off",
                           hint="unset RAY_AUTH_MODE: saecli then uses the token in ~/.ray/auth_token, RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH")  # fmt: skip
    token = "its head node's token (`ray get-auth-token` there prints it)"
    source = token_source()
    if source == "RAY_AUTH_TOKEN":
        hint = f"set RAY_AUTH_TOKEN to {token}"
    elif source is not None:
        hint = f"copy {token} into {source}"
    else:
        return SaecliError(f"the Ray cluster at {target.where} wants an authentication token, and there is none on this machine",
                           hint=f"copy {token} into ~/.ray/auth_token here, or set RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH to a file with it)")  # fmt: skip
    return SaecliError(f"the Ray cluster at {target.where} refused the authentication token from {source}", hint=hint)


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0][:200] if lines else type(exc).__name__


def connect(options: RayOptions) -> ClusterInfo:
    """Join the cluster ``options.address`` (or ``RAY_ADDRESS``), or start a local Ray instance; a
    process that already called ``ray.init`` keeps its cluster. An address is checked before Ray
    gets it (listening, answering, token), so that each way of failing is one line within seconds."""
    ray = import_ray()
    if ray.is_initialized():
        address = options.address or os.environ.get("RAY_ADDRESS") or "local"
        return ClusterInfo(ray_version=ray.__version__, address=address, started_here=False, nodes=alive_nodes())
    target = resolve(options)
    if target.address is not None:
        _reachable(target)
        if not target.address.startswith("ray://"):  # Ray Client: a different protocol, Ray checks it
            _authenticate(target)
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
    try:
        if target.address is not None:
            ray.init(address=target.address, **kwargs)
        else:
            # A local instance on loopback: nothing of it is reachable from outside this machine.
            ray.init(address="local", _node_ip_address="127.0.0.1", **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        what = f"connect to the Ray cluster at {target.where}" if target.address else "start a local Ray instance"
        raise SaecliError(f"cannot {what}: {_first_line(exc)}", hint=_doctor_hint("Ray's own messages above say more")) from None
    return ClusterInfo(ray_version=ray.__version__, address=target.address or "local", started_here=target.address is None,
                       nodes=alive_nodes())  # fmt: skip


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
