"""``doctor --ray``: can the Ray cluster be reached, and can each of its nodes run the preset.

One tiny Ray task per alive node, pinned to it (``NodeAffinitySchedulingStrategy``, no CPU taken),
reads what a run's worker would need there: saecli and its version, free memory, the GPUs
(``nvidia-smi``: a task that takes no GPU does not see them through torch), and the preset's files
and Hugging Face cache entries (:func:`saecli.doctor.preset.gather_preset`, whose files check is
:func:`saecli.models.check_preset_files`, the one a worker makes before loading).

Belongs here: :func:`gather_cluster` (the only function that touches Ray) filling a
:class:`ClusterFacts`, and :func:`check_cluster`, a pure function of it. Ray stays optional:
:mod:`saecli.cluster` imports it only inside its functions.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, field
from typing import Any

from saecli.cluster import DOCTOR_CHECKS
from saecli.doctor.checks import Check, Status
from saecli.errors import SaecliError
from saecli.memory import GiB, gib

NODE_TIMEOUT = 120.0
"""Seconds a node's probe may take (it imports torch and reads the preset's files)."""
INSTALL_SAECLI = "install saecli on that node, the same version as here (pip install saecli, or `make install` in a checkout)"


@dataclass
class NodeFacts:
    """What the probe task found on one node (``error`` set when the task itself could not run)."""

    node_id: str
    address: str
    cpus: float = 0.0
    gpus: float = 0.0
    host: str | None = None
    error: str | None = None
    saecli_missing: bool = False
    saecli_version: str | None = None
    python: str | None = None
    memory_available: int | None = None
    memory_total: int | None = None
    gpu_list: list[dict[str, Any]] = field(default_factory=list)
    """``nvidia-smi``'s GPUs: name, total and free bytes."""
    preset_status: Status | None = None
    preset_detail: str | None = None
    preset_hint: str | None = None


@dataclass
class ClusterFacts:
    """The cluster as ``doctor --ray`` found it; ``connect_error`` set when it could not be joined."""

    address: str
    ray_version: str | None = None
    started_here: bool = False
    connect_error: str | None = None
    connect_hint: str | None = None
    nodes: list[NodeFacts] = field(default_factory=list)


def _gpus() -> list[dict[str, Any]]:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    try:
        out = subprocess.run([exe, "--query-gpu=name,memory.total,memory.free", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=20, check=True).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return []
    gpus = []
    for line in out.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
            gpus.append({"name": parts[0], "total_bytes": int(parts[1]) * 2**20, "free_bytes": int(parts[2]) * 2**20})
    return gpus


def probe_node(preset: Any) -> dict[str, Any]:
    """Runs on a node (as a Ray task): saecli's version, memory, GPUs and the preset's files there."""
    import platform
    import socket

    import saecli
    from saecli.doctor.checks import check_preset
    from saecli.doctor.preset import gather_preset
    from saecli.memory import system_memory

    memory = system_memory()
    out: dict[str, Any] = {
        "host": socket.gethostname(), "saecli_version": saecli.__version__, "python": platform.python_version(),
        "memory_available": memory.get("MemAvailable"), "memory_total": memory.get("MemTotal"), "gpu_list": _gpus(),
    }  # fmt: skip
    try:
        found = check_preset(gather_preset(preset, None, check_hub=False))
        out.update(preset_status=found.status, preset_detail=found.detail, preset_hint=found.hint)
    except SaecliError as exc:
        out.update(preset_status="fail", preset_detail=f"{preset.name}: {exc.message}",
                   preset_hint=exc.hint or "copy the preset's files to this node, at the same paths as on the driver")  # fmt: skip
    except Exception as exc:  # noqa: BLE001 - whatever breaks here is this node's problem, reported as such
        out.update(preset_status="fail", preset_detail=f"{preset.name}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
                   preset_hint="run `saecli doctor` on that node")  # fmt: skip
    return out


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    # A RayTaskError's text is a traceback; its last line is the exception itself.
    return (lines[-1] if lines else type(exc).__name__)[:300]


def gather_cluster(address: str | None, preset: Any, *, timeout: float = NODE_TIMEOUT) -> ClusterFacts:
    """Join the cluster (or start a local instance), probe every alive node, and shut Ray down again
    if it was started here. A cluster that cannot be joined is a ``connect_error``, not an exception;
    a missing Ray is (the one-line error naming ``pip install 'saecli[ray]'``)."""
    from saecli.cluster import RayOptions, connect, import_ray

    ray = import_ray()
    facts = ClusterFacts(address=address or "local")
    try:
        info = connect(RayOptions(address=address))
    except SaecliError as exc:
        facts.connect_error, facts.connect_hint = exc.message, exc.hint
        return facts
    facts.ray_version, facts.address, facts.started_here = info.ray_version, info.address, info.started_here
    try:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        task = ray.remote(num_cpus=0, max_retries=0)(probe_node)
        refs = []
        for node in info.nodes:
            facts.nodes.append(NodeFacts(node_id=node.node_id, address=node.address, cpus=node.cpus, gpus=node.gpus))
            strategy = NodeAffinitySchedulingStrategy(node.node_id, soft=False)
            refs.append(task.options(scheduling_strategy=strategy).remote(preset))
        for node, ref in zip(facts.nodes, refs, strict=True):
            try:
                found = ray.get(ref, timeout=timeout)
            except Exception as exc:  # noqa: BLE001 - a node that cannot run the probe is a failed row
                text = _first_line(exc)
                node.saecli_missing = "No module named 'saecli'" in str(exc)
                node.error = text
                if type(exc).__name__ == "GetTimeoutError":
                    node.error = f"no answer within {timeout:g} s"
                    ray.cancel(ref, force=True)
                continue
            for key, value in found.items():
                setattr(node, key, value)
    finally:
        if info.started_here and ray.is_initialized():
            ray.shutdown()
    return facts


def check_cluster(facts: ClusterFacts, local_version: str | None = None) -> list[Check]:
    """The ``ray`` row (reached or not), then per node its resources, its saecli and the preset's files."""
    if facts.connect_error is not None:
        # The connection's hint may point at this very check: leave that part out here.
        hint = (facts.connect_hint or "").removesuffix(f"; {DOCTOR_CHECKS}").strip()
        return [
            Check(
                "ray",
                "fail",
                facts.connect_error,
                hint or "start one with `ray start --head`, or give its address: --ray HOST:6379",
            )
        ]
    cpus, gpus = sum(n.cpus for n in facts.nodes), sum(n.gpus for n in facts.nodes)
    how = "started a local instance for this check (stopped again)" if facts.started_here else f"joined {facts.address}"
    checks = [Check("ray", "ok" if facts.nodes else "fail",
                    f"Ray {facts.ray_version}: {how}; {len(facts.nodes)} alive node(s), {cpus:g} CPUs, {gpus:g} GPUs",
                    None if facts.nodes else "no alive node: see `ray status`")]  # fmt: skip
    for node in facts.nodes:
        label = f"{node.host or node.address}"
        if node.error is not None:
            if node.saecli_missing:
                checks.append(Check(f"saecli @ {label}", "fail", f"saecli is not installed on node {node.address} (Python cannot import it)",
                                    INSTALL_SAECLI))  # fmt: skip
            else:
                checks.append(Check(f"node {label}", "fail", f"the check task could not run on node {node.address}: {node.error}",
                                    "see `ray status` and the node's logs (`ray logs`)"))  # fmt: skip
            continue
        gpu_text = "; ".join(f"{g['name']}: {gib(g['free_bytes'])} free of {gib(g['total_bytes'])}" for g in node.gpu_list)
        detail = (f"{node.address}: {node.cpus:g} CPUs, {node.gpus:g} GPUs{f' ({gpu_text})' if gpu_text else ''}; "
                  f"memory {gib(node.memory_available)} available of {gib(node.memory_total)}; Python {node.python}")  # fmt: skip
        status: Status = "ok"
        hint = None
        if node.memory_available is not None and node.memory_available < 2 * GiB:
            status, hint = (
                "warn",
                "less than 2 GiB free on this node: a worker there may run out of memory; free memory or leave the node out",
            )
        elif node.cpus < 1 and node.gpus < 1:
            status, hint = "warn", "no CPU or GPU for Ray on this node: no worker can run there (`ray start --num-cpus N`)"
        checks.append(Check(f"node {label}", status, detail, hint))
        if local_version is not None and node.saecli_version != local_version:
            checks.append(Check(f"saecli @ {label}", "warn", f"saecli {node.saecli_version} on the node, {local_version} here",
                                "install the same saecli version on every node: results are only comparable then"))  # fmt: skip
        else:
            checks.append(Check(f"saecli @ {label}", "ok", f"saecli {node.saecli_version}"))
        checks.append(
            Check(f"preset @ {label}", node.preset_status or "fail", node.preset_detail or "not checked", node.preset_hint)
        )
    return checks
