"""``doctor`` end to end: gather the facts, run every check (and the probe when asked), and collect
them with the memory estimate and the out-of-memory hints into a :class:`Report`.

Belongs here: the order of the checks and what the report holds. Does not belong here: any check's
logic (:mod:`checks`, :mod:`estimate`, :mod:`probe`) or reading the machine (:mod:`facts`,
:mod:`preset`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from saecli.config import DEFAULT_PRESET, RunConfig, find_preset, resolve_run_config, run_preset
from saecli.doctor.checks import (
    Check,
    check_cpu,
    check_cuda,
    check_device,
    check_hub,
    check_mps,
    check_platform,
    check_preset,
    check_torch,
    check_versions,
    device_choice,
)
from saecli.doctor.estimate import MemoryEstimate, check_memory, oom_hints
from saecli.doctor.facts import Environment, gather_environment
from saecli.doctor.nodes import ClusterFacts, check_cluster, gather_cluster
from saecli.doctor.preset import PresetFacts, gather_preset
from saecli.doctor.probe import ProbeResult, check_probe, run_probe


@dataclass
class Report:
    """Everything ``doctor`` found; ``ok`` is False when any check failed."""

    preset: str
    device: str | None
    device_reason: str
    dtype: str
    checks: list[Check]
    estimate: MemoryEstimate | None
    probe: ProbeResult | None
    oom_hints: list[str]
    environment: Environment
    cluster: ClusterFacts | None = None
    """``doctor --ray``: the Ray cluster and what each node has."""
    config: dict[str, Any] | None = None
    """The resolved run configuration checked (what ``run`` with the same options would record)."""

    @property
    def ok(self) -> bool:
        return all(c.status != "fail" for c in self.checks)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["ok"] = self.ok
        if self.estimate is not None:
            out["estimate"]["per_batch"] = {str(k): v for k, v in self.estimate.per_batch.items()}
        return out


def diagnose(
    config: RunConfig | str | None = None,
    *,
    probe: bool = False,
    env: Environment | None = None,
    facts: PresetFacts | None = None,
    ray: str | None = None,
    cluster: ClusterFacts | None = None,
) -> Report:
    """Check the run ``config`` describes (a preset name stands for that preset's defaults): every
    check (and the probe when asked, and the Ray cluster's with ``ray``: an address,
    or ``local`` for RAY_ADDRESS or a local instance). ``env``, ``facts`` and ``cluster`` replace
    what would be gathered, for tests."""
    if not isinstance(config, RunConfig):
        name = config or DEFAULT_PRESET
        config = resolve_run_config(find_preset(name), preset=name)
    name, device = config.preset, config.device
    chosen = run_preset(config)
    env = env or gather_environment()
    facts = facts or gather_preset(chosen, config)
    dtype = config.dtype or chosen.model.dtype
    picked, reason = device_choice(env, device)
    checks = [
        check_platform(env),
        check_versions(env),
        check_torch(env),
        check_cuda(env, device),
        check_mps(env, device),
        check_cpu(env),
        check_device(env, device, dtype),
        check_preset(facts),
    ]
    hub = check_hub(facts)
    if hub is not None:
        checks.append(hub)
    memory, estimate = check_memory(env, facts, picked, dtype)
    checks.append(memory)
    probed = None
    if probe:
        if env.torch_error:
            probed = ProbeResult(ok=False, error="not run: torch does not import")
        else:
            probed = run_probe(config)
        checks.append(check_probe(probed, facts.default_batch))
    if ray is not None or cluster is not None:
        if cluster is None:
            cluster = gather_cluster(None if ray == "local" else ray, chosen)
        checks += check_cluster(cluster, _own_version())
    return Report(
        preset=chosen.name,
        device=picked,
        device_reason=reason,
        dtype=dtype,
        checks=checks,
        estimate=estimate,
        probe=probed,
        oom_hints=oom_hints(env, name, picked, dtype, estimate),
        environment=env,
        cluster=cluster,
        config=asdict(config),
    )


def _own_version() -> str:
    import saecli

    return saecli.__version__
