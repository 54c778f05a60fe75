"""``saecli doctor``: every check's logic on a faked machine (no GPU here), the fetch commands from
an empty Hugging Face cache, the JSON output, and ``--probe`` on the embedded preset. (The OOM
message is tested with the rest of :mod:`saecli.memory`, the device rule in ``test_device.py``.)"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from saecli import doctor, hub
from saecli.cli import app
from saecli.config import assets_dir, find_preset
from saecli.doctor import (
    GPU,
    KNOWN_SHAPES,
    Artifact,
    Environment,
    ModelShape,
    PresetFacts,
    SAEShape,
    check_cuda,
    check_device,
    check_memory,
    check_mps,
    check_preset,
    check_torch,
    check_versions,
    device_choice,
    diagnose,
    gather_environment,
    gather_preset,
)
from saecli.doctor import facts as doctor_facts
from saecli.hub import HubStatus

runner = CliRunner()
GiB = 2**30
GOOD_VERSIONS = {
    "saecli": "0.1.0",
    "torch": "2.13.0",
    "transformer_lens": "3.9.0",
    "sae_lens": "6.54.12",
    "numpy": "2.4.6",
    "polars": "2.1.0",
    "transformers": "5.24.0",
    "huggingface_hub": "2.4.0",
}


def fake_env(**changes) -> Environment:
    """A healthy Linux machine without accelerators; ``changes`` override fields."""
    base = Environment(
        platform="Linux-fake",
        machine="x86_64",
        python="3.11.7",
        versions=dict(GOOD_VERSIONS),
        torch_threads=4,
        cpu_count=8,
        cpu_usable=8,
        memory_total=32 * GiB,
        memory_available=24 * GiB,
    )
    return dataclasses.replace(base, **changes)


def fake_cuda(free: int, total: int = 16 * GiB, bf16: bool = True, **changes) -> Environment:
    gpu = GPU(0, "Fake GPU", "8.0" if bf16 else "7.5", total, free, bf16)
    return fake_env(
        torch_cuda_build="12.4",
        cuda_available=True,
        driver_version="550.54",
        driver_cuda="12.4",
        gpus=[gpu],
        nvidia_present=True,
        **changes,
    )


def gpt2_facts(**changes) -> PresetFacts:
    """The gpt2-small preset as gather_preset sees it with everything cached, longest text 32 tokens."""
    saes = [SAEShape(layer, 768, 24576, f"blocks.{layer}.hook_resid_pre") for layer in (2, 6, 10)]
    base = PresetFacts(
        name="gpt2-small",
        source="gpt2-small",
        kind="hub",
        dtype="float32",
        default_batch=16,
        model_shape=KNOWN_SHAPES["gpt2-small"],
        saes=saes,
        longest_tokens=32,
        tokens_exact=True,
        n_samples=200,
    )
    return dataclasses.replace(base, **changes)


def by_name(checks):
    return {c.name: c for c in checks}


# -- versions and torch ---------------------------------------------------------------------------


def test_good_versions_pass():
    check = check_versions(fake_env())
    assert check.status == "ok" and "transformer_lens 3.9.0" in check.detail


def test_transformer_lens_4_fails_with_the_pin_to_type():
    check = check_versions(fake_env(versions={**GOOD_VERSIONS, "transformer_lens": "4.0.0"}))
    assert check.status == "fail"
    assert "removed HookedTransformer" in check.detail
    assert check.hint == "pip install 'transformer-lens>=3.9,<4'"


@pytest.mark.parametrize(
    "changes, status, words",
    [
        ({"transformer_lens": "4.1.0rc1"}, "fail", "4.0 removed HookedTransformer"),
        ({"transformer_lens": "3.5.0"}, "warn", "older than 3.9"),
        ({"sae_lens": "5.9.1"}, "fail", "needs 6.5"),
        ({"torch": "2.2.1", "numpy": "2.0.0"}, "fail", "built against NumPy 1"),
        ({"torch": "2.1.0"}, "fail", "needs 2.2"),
        ({"polars": None}, "fail", "polars is not installed"),
    ],
)
def test_known_bad_versions(changes, status, words):
    check = check_versions(fake_env(versions={**GOOD_VERSIONS, **changes}))
    assert check.status == status and words in check.detail and check.hint


def test_broken_torch_is_a_failed_check_not_a_traceback(monkeypatch):
    def broken():
        raise ImportError("libcudart.so.12: cannot open shared object file")

    monkeypatch.setattr(doctor_facts, "import_torch", broken)
    env = gather_environment()
    assert env.torch_error == "ImportError: libcudart.so.12: cannot open shared object file"
    report = diagnose("tiny", env=env)
    checks = by_name(report.checks)
    assert checks["torch"].status == "fail" and "libcudart" in checks["torch"].detail and "reinstall" in checks["torch"].hint
    assert checks["device"].status == "fail" and not report.ok
    assert report.device is None and checks["memory"].status == "warn"

    result = runner.invoke(app, ["doctor"])
    assert result.exit_code == 1 and "import torch failed" in result.output and "Traceback" not in result.output


# -- devices --------------------------------------------------------------------------------------


def test_cuda_device_is_described():
    env = fake_cuda(free=15 * GiB)
    check = check_cuda(env)
    assert check.status == "ok"
    assert "GPU 0: Fake GPU, compute 8.0, 16.0 GiB total, 15.0 GiB free, bf16 yes" in check.detail
    assert "driver 550.54 (supports CUDA 12.4)" in check.detail
    assert device_choice(env) == ("cuda", "auto: CUDA is available (Fake GPU)")


def test_gpu_mostly_held_by_another_process_warns():
    check = check_cuda(fake_cuda(free=2 * GiB))
    assert check.status == "warn" and "nvidia-smi" in check.hint


def test_silent_cpu_fallback_is_named():
    """An NVIDIA driver but a CPU-only torch: `auto` quietly runs on the CPU."""
    env = fake_env(nvidia_present=True, driver_version="550.54", torch_cuda_build=None)
    cuda = check_cuda(env)
    assert cuda.status == "warn" and "CPU-only build" in cuda.detail and "make install TORCH=" in cuda.hint
    device = check_device(env, "auto", "float32")
    assert device.status == "warn" and "auto: neither CUDA nor MPS" in device.detail
    assert check_cuda(env, requested="cuda").status == "fail"


def test_driver_too_old_shows_what_torch_said():
    env = fake_env(nvidia_present=True, torch_cuda_build="12.4", cuda_warning="The NVIDIA driver on your system is too old")
    check = check_cuda(env)
    assert check.status == "warn" and "too old" in check.detail


def test_no_accelerator_is_fine_unless_asked_for():
    env = fake_env()
    assert check_cuda(env).status == "ok" and check_mps(env).status == "ok"
    assert check_device(env, "auto", "float32").status == "ok"
    asked = check_device(env, "cuda", "float32")
    assert asked.status == "fail" and "CUDA is not available" in asked.detail


def test_mps_opt_in_and_float64():
    env = fake_env(
        platform="macOS-14-arm64", machine="arm64", apple_silicon=True, mps_built=True, mps_available=True, mps_max_bytes=12 * GiB
    )
    check = check_mps(env)
    assert check.status == "warn" and "TRANSFORMERLENS_ALLOW_MPS=unset" in check.detail
    assert check_mps(dataclasses.replace(env, env={"TRANSFORMERLENS_ALLOW_MPS": "1"})).status == "ok"
    assert device_choice(env)[0] == "mps"
    assert check_device(env, "auto", "float64").status == "fail"
    no_build = dataclasses.replace(env, mps_built=False, mps_available=False)
    assert check_mps(no_build).status == "warn" and "built without MPS" in check_mps(no_build).detail


def test_torch_check_names_the_build():
    assert "CUDA 12.4 build" in check_torch(fake_cuda(free=GiB)).detail


# -- the preset -----------------------------------------------------------------------------------


def test_missing_sae_offline_gives_the_fetch_command():
    facts = gpt2_facts(
        artifacts=[
            Artifact("model gpt2-small", "gpt2", True, repo="gpt2"),
            Artifact(
                "SAE gpt2-small-res-jb/blocks.6.hook_resid_pre",
                "x",
                False,
                repo="jbloom/GPT2-Small-SAEs-Reformatted",
                include="blocks.6.hook_resid_pre",
            ),
        ],
        hub=HubStatus(offline_env=True, reachable=None, endpoint="https://huggingface.co", cache="/c"),
    )
    check = check_preset(facts)
    assert check.status == "fail" and "blocks.6.hook_resid_pre" in check.detail and "model gpt2-small" not in check.detail
    assert (
        check.hint
        == "fetch on a connected machine: hf download jbloom/GPT2-Small-SAEs-Reformatted --include 'blocks.6.hook_resid_pre/*'"
    )
    online = dataclasses.replace(facts, hub=HubStatus(False, True, "https://huggingface.co", "/c"))
    assert check_preset(online).status == "warn"  # downloaded on the first run


def _cache_model(cache, repo_id: str) -> None:
    """A cache entry in the hub client's layout (refs/main → snapshot with config.json)."""
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "snapshots" / commit / "config.json").write_text("{}")


def test_gather_from_an_empty_cache_names_everything_missing(tmp_path, monkeypatch):
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    _cache_model(cache, "gpt2")  # the model is there; the SAEs are not

    facts = gather_preset(find_preset("gpt2-small"))
    assert facts.kind == "hub" and facts.hub.offline_env and facts.problems == []
    assert [a.present for a in facts.artifacts] == [True, False, False, False]
    check = check_preset(facts)
    assert check.status == "fail"
    assert check.hint == (
        "fetch on a connected machine: hf download jbloom/GPT2-Small-SAEs-Reformatted --include 'blocks.2.hook_resid_pre/*' "
        "--include 'blocks.6.hook_resid_pre/*' --include 'blocks.10.hook_resid_pre/*'"
    )
    assert [s.d_sae for s in facts.saes] == [24576] * 3 and facts.model_shape == KNOWN_SHAPES["gpt2-small"]

    gemma = check_preset(gather_preset(find_preset("gemma-2-2b")))
    assert "hf download google/gemma-2-2b;" in gemma.hint and "'layer_5/width_16k/average_l0_68/*'" in gemma.hint
    assert "gated" in gemma.hint


def test_tiny_preset_is_complete_and_tokenized():
    facts = gather_preset(find_preset("tiny"))
    assert facts.kind == "local" and not facts.missing and facts.hub is None
    assert facts.tokens_exact and 10 < facts.longest_tokens < 128
    assert [s.layer for s in facts.saes] == [0, 2, 3] and facts.model_shape.d_model == 128
    assert check_preset(facts).status == "ok"


def test_a_missing_local_file_fails(tmp_path):
    facts = PresetFacts(
        name="mine",
        source="x.toml",
        kind="local",
        dtype="float32",
        default_batch=16,
        artifacts=[Artifact("model config.json", str(tmp_path / "config.json"), False)],
    )
    check = check_preset(facts)
    assert check.status == "fail" and str(tmp_path / "config.json") in check.detail


def test_a_preset_run_refuses_fails_with_runs_own_message(tmp_path):
    # One check of a preset's files for both (saecli.models.check_preset_files): doctor passed a
    # preset with truncated weights that run refused.
    shutil.copytree(assets_dir() / "tiny", tmp_path / "tiny")
    weights = tmp_path / "tiny" / "saes" / "layer_2" / "sae_weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    config = tmp_path / "p.toml"
    config.write_text(Path(find_preset("tiny").source).read_text().replace("builtin:tiny", str(tmp_path / "tiny")))
    ran = runner.invoke(app, ["run", "--config", str(config), "--out", str(tmp_path / "run")])
    assert ran.exit_code == 2 and not (tmp_path / "run").exists(), ran.output
    result = runner.invoke(app, ["doctor", "--config", str(config), "--json"])
    assert result.exit_code == 1, result.output
    (check,) = [c for c in json.loads(result.stdout)["checks"] if c["name"] == "preset"]
    message = check["detail"].removeprefix("tiny (local): ")
    assert check["status"] == "fail" and f"{weights} is truncated" in message
    assert ran.stderr.strip() == f"error: {message} (hint: {check['hint']})"


# -- memory ---------------------------------------------------------------------------------------


def test_parameter_counts_are_transformer_lens_s():
    """GPT-2 small has 124,439,808 parameters with tied embeddings; TransformerLens keeps W_U
    (768 × 50257) and b_U apart: 163,087,441. Gemma-2-2B: 2,614,341,888 + W_U (2304 × 256000)."""
    assert KNOWN_SHAPES["gpt2-small"].parameters() == 124_439_808 + 768 * 50257 + 50257
    gemma = KNOWN_SHAPES["gemma-2-2b"].parameters()
    assert abs(gemma - (2_614_341_888 + 2304 * 256000)) / gemma < 0.001


def test_shape_presets_carry_the_known_shapes():
    for name in ("gpt2-small", "gemma-2-2b"):
        preset = find_preset(f"{name}-shape")
        assert ModelShape.from_tl_config(preset.model.config) == KNOWN_SHAPES[name]


def test_little_free_gpu_memory_predicts_a_small_batch_and_says_what_to_type():
    """gpt2-small in float32 on a GPU with 2 GiB free: weights 622 MiB + SAEs 433 MiB + 512 MiB
    runtime leave ~72 MiB of the 80% budget, ~31 MiB per sample at 32 tokens: batch 2."""
    env = fake_cuda(free=2 * GiB)
    check, est = check_memory(env, gpt2_facts(), "cuda", "float32")
    assert est.model_bytes == 163_087_441 * 4 and est.budget_bytes == int(0.8 * 2 * GiB)
    assert est.largest_safe == 2
    assert est.per_batch[2] <= est.budget_bytes < est.per_batch[4]
    assert check.status == "warn" and "predicted largest safe batch 2" in check.detail and "batch size 16" in check.detail
    assert "saecli run --preset gpt2-small --batch-size 2" in check.hint
    assert "--dtype bfloat16" in check.hint and "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True" in check.hint

    roomy, est = check_memory(fake_cuda(free=40 * GiB, total=40 * GiB), gpt2_facts(), "cuda", "float32")
    assert roomy.status == "ok" and est.largest_safe >= 128


def test_weights_that_do_not_fit_fail_with_the_flags_to_pass():
    check, est = check_memory(fake_cuda(free=GiB), gpt2_facts(), "cuda", "float32")
    assert check.status == "fail" and est.largest_safe is None
    assert "the weights alone" in check.detail
    assert "--dtype bfloat16" in check.hint and "--device cpu" in check.hint
    old_gpu, _ = check_memory(fake_cuda(free=GiB, bf16=False), gpt2_facts(), "cuda", "float32")
    assert "--dtype float16" in old_gpu.hint


def test_estimate_grows_with_batch_and_text_length():
    env = fake_cuda(free=80 * GiB, total=80 * GiB)
    _, short = check_memory(env, gpt2_facts(longest_tokens=32), "cuda", "float32")
    _, long = check_memory(env, gpt2_facts(longest_tokens=256), "cuda", "float32")
    sizes = list(short.per_batch)
    assert sizes == [2**i for i in range(8)]  # up to the data's 200 samples
    assert all(short.per_batch[a] < short.per_batch[b] for a, b in zip(sizes, sizes[1:], strict=False))
    assert all(long.per_batch[s] > short.per_batch[s] for s in sizes)
    assert long.largest_safe == short.largest_safe == 128  # the data's size caps both
    small = fake_cuda(free=6 * GiB)
    assert (
        check_memory(small, gpt2_facts(longest_tokens=256), "cuda", "float32")[1].largest_safe
        < check_memory(small, gpt2_facts(longest_tokens=32), "cuda", "float32")[1].largest_safe
    )


def test_unknown_shape_points_to_the_probe():
    check, est = check_memory(fake_env(), gpt2_facts(model_shape=None), "cpu", "float32")
    assert est is None and check.status == "warn" and "doctor --probe --preset gpt2-small" in check.hint


# -- the command ----------------------------------------------------------------------------------

CHECKS = {"platform", "versions", "torch", "cuda", "mps", "cpu", "device", "preset", "memory"}


def test_json_is_valid_and_has_every_check():
    result = runner.invoke(app, ["doctor", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert {c["name"] for c in report["checks"]} == CHECKS
    assert all(set(c) == {"name", "status", "detail", "hint"} and c["status"] in ("ok", "warn", "fail") for c in report["checks"])
    assert report["ok"] is True and report["preset"] == "tiny" and report["device"] == "cpu"
    assert report["estimate"]["largest_safe"] >= 1 and report["oom_hints"]
    assert report["environment"]["versions"]["torch"]


def test_table_and_exit_code_1_on_a_failed_check(monkeypatch):
    result = runner.invoke(app, ["doctor"])
    assert result.exit_code == 0 and "saecli doctor: tiny" in result.stdout and "If a run runs out of memory" in result.stdout

    monkeypatch.setattr(doctor_facts, "package_versions", lambda: {**GOOD_VERSIONS, "transformer_lens": "4.0.0"})
    result = runner.invoke(app, ["doctor"])
    assert result.exit_code == 1 and "removed HookedTransformer" in result.stdout and "FAIL" in result.stdout


def test_doctor_imports_neither_transformer_lens_nor_sae_lens():
    """What keeps `saecli doctor` fast: the checks read metadata and files, not the libraries."""
    code = (
        "import sys; from saecli.doctor import diagnose; diagnose('gemma-2-2b'); diagnose('tiny'); "
        "print([m for m in ('transformer_lens', 'sae_lens', 'transformers') if m in sys.modules])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={"HF_HUB_OFFLINE": "1", "PATH": ""}, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


@pytest.mark.slow
def test_probe_on_the_embedded_preset():
    result = runner.invoke(app, ["doctor", "--probe", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    probe = by_name(dataclasses.replace(doctor.Check("x", "ok", ""), **c) for c in report["checks"])["probe"]
    assert probe.status == "ok" and "largest batch that fit" in probe.detail
    sizes = [p["size"] for p in report["probe"]["probes"]]
    assert sizes[0] == 1 and all(b == 2 * a for a, b in zip(sizes, sizes[1:], strict=False))
    assert all(p["peak_bytes"] > 0 for p in report["probe"]["probes"] if p["outcome"] == "ok")
    assert report["probe"]["size"] == sizes[-1] and report["probe"]["device"] == "cpu"


@pytest.mark.slow
def test_tables_agree_with_transformer_lens_and_sae_lens():
    """HUB_MODELS and the YAML-read SAE locations are what TransformerLens and SAELens themselves use."""
    from sae_lens.loading.pretrained_saes_directory import get_repo_id_and_folder_name
    from transformer_lens.loading_from_pretrained import get_official_model_name

    for name, repo in hub.HUB_MODELS.items():
        assert get_official_model_name(name) == repo
    for preset in ("gpt2-small", "gemma-2-2b"):
        facts = gather_preset(find_preset(preset), check_hub=False)
        expected = [get_repo_id_and_folder_name(s.release, s.id) for s in find_preset(preset).saes]
        assert [hub.sae_location(s.release, s.id) for s in find_preset(preset).saes] == expected
        assert [(a.repo, a.include) for a in facts.artifacts if a.include] == expected
