"""The checks of ``doctor``: each a pure function of the gathered facts (:class:`Environment`,
:class:`PresetFacts`) that returns a :class:`Check` with a status (ok, warn, fail), a detail and a
hint that says what to type.

Belongs here: versions, torch, CUDA, MPS, CPU, the device a run picks (through
:func:`saecli.device.resolve_device`, the rule the loader uses), the preset's files and cache
entries, the hub. Does not belong here: reading the machine or the preset (:mod:`facts`,
:mod:`preset`), the memory estimate and its check (:mod:`estimate`), the probe (:mod:`probe`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from saecli.device import dtype_problem, resolve_device, sae_dtype_for
from saecli.doctor.facts import MPS_OPT_IN, Environment
from saecli.doctor.preset import PresetFacts, missing_fetch_commands
from saecli.errors import SaecliError
from saecli.hub import is_gated
from saecli.memory import GiB, gib

Status = Literal["ok", "warn", "fail"]


@dataclass
class Check:
    """One finding: what was checked, how it stands, and what to do about it."""

    name: str
    status: Status
    detail: str
    hint: str | None = None


def _vt(text: str | None) -> tuple[int, ...]:
    """``2.13.0+cpu`` → (2, 13, 0); ``4.0.0rc1`` → (4, 0, 0)."""
    match = re.match(r"(\d+(?:\.\d+)*)", text or "")
    return tuple(int(p) for p in match.group(1).split(".")) if match else ()


REQUIRED = ("torch", "transformer_lens", "sae_lens", "numpy", "polars")


def version_problems(versions: dict[str, str | None], python: str) -> list[tuple[Status, str, str]]:
    """Known-bad versions and combinations: (status, what is wrong, what to type)."""
    out: list[tuple[Status, str, str]] = []
    v = {k: _vt(text) for k, text in versions.items()}
    for name in REQUIRED:
        if versions.get(name) is None:
            out.append(("fail", f"{name} is not installed", "make install (or pip install -e .)"))
    tl, sl, torch_v, np_v = v.get("transformer_lens", ()), v.get("sae_lens", ()), v.get("torch", ()), v.get("numpy", ())
    if tl and tl >= (4,):
        out.append(
            (
                "fail",
                f"transformer_lens {versions['transformer_lens']}: 4.0 removed HookedTransformer, which SAELens needs",
                "pip install 'transformer-lens>=3.9,<4'",
            )
        )
    elif tl and tl < (3, 9):
        out.append(
            (
                "warn",
                f"transformer_lens {versions['transformer_lens']} is older than 3.9, the version saecli is tested with",
                "pip install 'transformer-lens>=3.9,<4'",
            )
        )
    if sl and sl < (6, 5):
        out.append(
            (
                "fail",
                f"sae_lens {versions['sae_lens']}: saecli needs 6.5 or later (SAE configs with metadata)",
                "pip install 'sae-lens>=6.5'",
            )
        )
    elif sl and sl >= (7,):
        out.append(
            (
                "warn",
                f"sae_lens {versions['sae_lens']}: a major version saecli is not tested with",
                "pip install 'sae-lens>=6.5,<7'",
            )
        )
    if torch_v and torch_v < (2, 2):
        out.append(("fail", f"torch {versions['torch']}: saecli needs 2.2 or later", "install a newer PyTorch (README, Install)"))
    if torch_v and torch_v < (2, 3) and np_v and np_v >= (2,):
        out.append(
            (
                "fail",
                f"torch {versions['torch']} was built against NumPy 1 and breaks with numpy {versions['numpy']}",
                "pip install 'numpy<2', or a PyTorch of 2.3 or later",
            )
        )
    if versions.get("polars") and v["polars"] < (1,):
        out.append(("fail", f"polars {versions['polars']}: saecli needs 1.0 or later", "pip install 'polars>=1'"))
    if _vt(python) < (3, 11):
        out.append(("fail", f"Python {python}: saecli needs 3.11 or later", "use Python 3.11+"))
    return out


def _worst(statuses: list[Status]) -> Status:
    return "fail" if "fail" in statuses else "warn" if "warn" in statuses else "ok"


def check_platform(env: Environment) -> Check:
    return Check("platform", "ok", f"{env.platform} ({env.machine}), Python {env.python}")


def check_versions(env: Environment) -> Check:
    listed = ", ".join(f"{k} {v or 'not installed'}" for k, v in env.versions.items())
    problems = version_problems(env.versions, env.python)
    if not problems:
        return Check("versions", "ok", listed)
    detail = "; ".join(text for _, text, _ in problems) + f" ({listed})"
    return Check("versions", _worst([s for s, _, _ in problems]), detail, "; ".join(dict.fromkeys(h for _, _, h in problems)))


def check_torch(env: Environment) -> Check:
    if env.torch_error:
        return Check(
            "torch",
            "fail",
            f"import torch failed: {env.torch_error}",
            "reinstall PyTorch for this machine: pip install --force-reinstall torch (README, Install)",
        )
    build = f"CUDA {env.torch_cuda_build} build" if env.torch_cuda_build else "CPU-only build"
    return Check("torch", "ok", f"torch {env.versions.get('torch')} imports ({build}, {env.torch_threads} CPU threads)")


CUDA_WHEEL_HINT = (
    "install the CUDA build of PyTorch (pytorch.org's selector gives the `pip install torch --index-url ...` line), "
    "then `make install TORCH=`"
)


def check_cuda(env: Environment, requested: str = "auto") -> Check:
    """CUDA devices, or why there are none although an NVIDIA driver is installed."""
    if env.torch_error:
        return Check("cuda", "fail" if requested == "cuda" else "warn", "unknown: torch does not import")
    fail: Status = "fail" if requested == "cuda" else "warn"
    if not env.cuda_available:
        if env.nvidia_present and not env.torch_cuda_build:
            return Check(
                "cuda",
                fail,
                f"an NVIDIA driver is installed ({env.driver_version or 'version unknown'}) but torch is a CPU-only build: runs use the CPU",
                CUDA_WHEEL_HINT,
            )
        if env.nvidia_present or env.torch_cuda_build:
            why = env.cuda_warning or "torch.cuda.is_available() is False"
            driver = (
                f"; driver {env.driver_version} supports CUDA {env.driver_cuda}" if env.driver_version and env.driver_cuda else ""
            )
            return Check(
                "cuda",
                fail,
                f"torch built for CUDA {env.torch_cuda_build} but no CUDA device is usable: {why}{driver}",
                "check `nvidia-smi` and CUDA_VISIBLE_DEVICES; the driver must support the CUDA version torch was built for "
                "(update the driver or install a torch built for an older CUDA)",
            )
        return Check(
            "cuda",
            "fail" if requested == "cuda" else "ok",
            "not available (no NVIDIA driver, CPU-only torch)",
            "use --device auto or cpu" if requested == "cuda" else None,
        )
    parts = []
    for g in env.gpus:
        parts.append(
            f"GPU {g.index}: {g.name}, compute {g.capability}, {gib(g.total_bytes)} total, {gib(g.free_bytes)} free, "
            f"bf16 {'yes' if g.bf16 else 'no'}"
        )
    driver = f"driver {env.driver_version or '?'} (supports CUDA {env.driver_cuda or '?'}), torch built for CUDA {env.torch_cuda_build}"
    status: Status = "ok"
    hint = None
    first = env.gpus[0] if env.gpus else None
    if first and first.free_bytes is not None and first.total_bytes and first.free_bytes < 0.5 * first.total_bytes:
        status = "warn"
        hint = f"another process holds {gib(first.total_bytes - first.free_bytes)} of GPU 0: see `nvidia-smi`, or pick a GPU with CUDA_VISIBLE_DEVICES"
    return Check("cuda", status, "; ".join(parts + [driver]), hint)


def check_mps(env: Environment, requested: str = "auto") -> Check:
    if env.torch_error:
        return Check("mps", "fail" if requested == "mps" else "warn", "unknown: torch does not import")
    opt_in = env.env.get(MPS_OPT_IN) == "1"
    if env.mps_available:
        detail = f"available (built: yes, recommended max {gib(env.mps_max_bytes)}); {MPS_OPT_IN}={'1' if opt_in else 'unset'}"
        if opt_in:
            return Check("mps", "ok", detail)
        return Check(
            "mps",
            "warn",
            detail + ": TransformerLens warns that MPS may give wrong results, saecli uses MPS anyway",
            f"compare against the CPU (`saecli compare` on --device mps and cpu runs), then export {MPS_OPT_IN}=1 to accept MPS",
        )
    if env.apple_silicon:
        why = "torch was built without MPS" if not env.mps_built else "built, but not available (macOS 12.3 or later is needed)"
        return Check(
            "mps",
            "fail" if requested == "mps" else "warn",
            f"Apple silicon, {why}: runs use the CPU",
            "install the default macOS wheel: make install TORCH=torch",
        )
    return Check(
        "mps",
        "fail" if requested == "mps" else "ok",
        f"not available (built: {'yes' if env.mps_built else 'no'}; not an Apple-silicon Mac)",
        "use --device auto or cpu" if requested == "mps" else None,
    )


def check_cpu(env: Environment) -> Check:
    run = (
        f"a CPU run now takes {env.run_threads} thread(s) ({env.run_threads_reason}; --threads N decides)"
        if env.run_threads
        else ""
    )
    bf16 = f"native bf16 ({env.cpu_bf16})" if env.cpu_bf16 else "no native bf16"
    detail = (
        f"{env.cpu_usable} usable of {env.cpu_count} cores; {run}; {bf16}; "
        f"memory {gib(env.memory_available)} available of {gib(env.memory_total)}"
    )
    if env.memory_available is not None and env.memory_available < 2 * GiB:
        return Check("cpu", "warn", detail, "less than 2 GiB free: the libraries alone take ~0.6 GB; close other programs")
    if env.cpu_bf16:
        return Check(
            "cpu", "ok", detail, "this CPU computes bfloat16 natively: --dtype bfloat16 runs the model faster on the CPU"
        )
    return Check("cpu", "ok", detail)


def device_choice(env: Environment, requested: str = "auto") -> tuple[str | None, str]:
    """The device a run would use on this machine and why: :func:`saecli.device.resolve_device` on
    the gathered facts. None (and why) when torch does not import or the device asked for is not
    there."""
    if env.torch_error:
        return None, "torch does not import"
    try:
        return resolve_device(requested, env.device_facts())
    except SaecliError as exc:
        return None, exc.message


def check_device(env: Environment, requested: str, dtype: str) -> Check:
    """Which device a run picks and why, and whether the dtype works there."""
    device, why = device_choice(env, requested)
    if device is None:
        return Check("device", "fail", why, "use --device auto or --device cpu; see the cuda and mps rows")
    detail = f"{why}; dtype {dtype} (SAEs {sae_dtype_for(dtype)}, geometry float64)"
    problem = dtype_problem(device, dtype)
    if problem is not None:
        return Check("device", "fail", f"{detail}: {problem[0]}", problem[1])
    if device == "cuda" and dtype == "bfloat16" and env.gpus and not env.gpus[0].bf16:
        return Check(
            "device", "warn", detail + f": GPU 0 (compute {env.gpus[0].capability}) has no native bfloat16", "use --dtype float16"
        )
    if device == "cpu" and dtype in ("bfloat16", "float16"):
        return Check("device", "warn", detail + ": 16-bit matmuls are slow on most CPUs", "use --dtype float32 on a CPU")
    if device == "cpu" and requested == "auto" and (env.nvidia_present or env.apple_silicon):
        return Check(
            "device",
            "warn",
            detail + ": there is a GPU, but torch cannot use it (see the cuda and mps rows)",
            CUDA_WHEEL_HINT if env.nvidia_present else "make install TORCH=torch",
        )
    return Check("device", "ok", detail)


def check_preset(facts: PresetFacts) -> Check:
    """Every file and cache entry the preset needs; for each missing one, the command that fetches it.
    A local file that ``run`` refuses fails with ``run``'s own message."""
    label = f"{facts.name} ({facts.kind}{', random weights: benchmarking only' if facts.synthetic else ''})"
    if facts.files_error is not None:
        return Check("preset", "fail", f"{label}: {facts.files_error}", facts.files_hint)
    if facts.problems:
        return Check(
            "preset",
            "fail",
            f"{label}: " + "; ".join(facts.problems),
            "check the release and id against SAELens's pretrained_saes.yaml",
        )
    missing = facts.missing
    if not missing:
        where = "in the Hugging Face cache" if facts.kind == "hub" else "present"
        n = len(facts.artifacts)
        return Check("preset", "ok", f"{label}: {'all ' if n > 1 else ''}{n} file{'s' if n != 1 else ''} {where}")
    names = ", ".join(a.what for a in missing)
    local = [a for a in missing if a.repo is None]
    if local:
        return Check(
            "preset",
            "fail",
            f"{label}: missing {', '.join(a.location for a in local)}",
            "reinstall saecli (pip install -e .), or fix the paths in the preset file",
        )
    hint = "; ".join(missing_fetch_commands(missing))
    if any(is_gated(a.repo) for a in missing if a.repo):
        hint += " (gated: accept the licence on the model's Hugging Face page and `hf auth login` first)"
    hub = facts.hub
    if hub is not None and (hub.offline_env or hub.reachable is False):
        return Check(
            "preset",
            "fail",
            f"{label}: not in the Hugging Face cache and the hub cannot be reached: {names}",
            "fetch on a connected machine: " + hint,
        )
    return Check(
        "preset",
        "warn",
        f"{label}: not in the Hugging Face cache, will be downloaded on the first run: {names}",
        "or fetch now: " + hint,
    )


def check_hub(facts: PresetFacts) -> Check | None:
    hub = facts.hub
    if hub is None:
        return None
    if hub.offline_env:
        state, status = "offline mode set (HF_HUB_OFFLINE)", "ok"
    elif hub.reachable:
        state, status = f"reachable ({hub.endpoint})", "ok"
    else:
        state, status = f"cannot reach {hub.endpoint}", "ok" if not facts.missing else "warn"
    hint = "unset HF_HUB_OFFLINE to download" if hub.offline_env and facts.missing else None
    return Check("hub", status, f"{state}; cache {hub.cache}", hint)
