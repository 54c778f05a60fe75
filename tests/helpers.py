"""Test helpers that are not fixtures: a complete random :class:`LoadedPreset` built in memory.

Imported by ``conftest.py`` and by tests that need a model of another shape
(``from helpers import random_loaded``: pytest puts this folder on ``sys.path``)."""

from __future__ import annotations

from typing import Any

import torch

from saecli.config import ModelSpec, Preset, SAESpec
from saecli.device import sae_dtype_for
from saecli.models import LoadedPreset
from saecli.synthetic import random_model, random_sae


def random_loaded(
    *,
    n_layers: int = 3,
    d_model: int = 32,
    d_sae: int = 128,
    layers: tuple[int, int, int] = (0, 1, 2),
    dtype: str = "float64",
    seed: int = 0,
    target_l0: float = 8.0,
    n_ctx: int = 128,
    model_overrides: dict[str, Any] | None = None,
) -> LoadedPreset:
    """A complete :class:`LoadedPreset` with random weights (tests: milliseconds on a CPU)."""
    model = random_model(
        {
            "n_layers": n_layers,
            "d_model": d_model,
            "n_heads": 4,
            "d_head": d_model // 4,
            "d_mlp": 4 * d_model,
            "n_ctx": n_ctx,
            **(model_overrides or {}),
        },
        seed=seed,
        dtype=dtype,
    )
    sae_dtype = sae_dtype_for(dtype)
    # The residual stream of a random model grows through the layers; scale each SAE's threshold
    # to the spread of its layer so every layer stays sparse.
    probe = model.to_tokens(["The quick brown fox jumps over the lazy dog.", "Paris is the capital of France."])
    _, cache = model.run_with_cache(probe, names_filter=lambda n: n.endswith("hook_resid_post"))
    saes, hooks = {}, {}
    for i, layer in enumerate(layers):
        hook = f"blocks.{layer}.hook_resid_post"
        sae = random_sae(d_model, d_sae, hook, seed=seed + 1 + i, dtype=sae_dtype, target_l0=target_l0)
        spread = cache[hook].to(torch.float64).std().item()
        sae.threshold.data *= spread
        saes[layer], hooks[layer] = sae, hook
    preset = Preset(
        name="random",
        description="seeded random weights (tests only)",
        model=ModelSpec(name="random", dtype=dtype),
        saes=tuple(SAESpec(layer=layer, path=f"memory:{layer}") for layer in layers),
        synthetic=True,
    )
    return LoadedPreset(
        preset=preset,
        model=model,
        saes=saes,
        hooks=hooks,
        device="cpu",
        device_reason="tests",
        dtype=dtype,
        sae_dtype=sae_dtype,
        load_seconds=0.0,
        identities={"model": "random", "saes": {}},
    )


def rerecord(run_dir: Any, name: str = "metrics.parquet") -> None:
    """After a test edits a run's file on purpose, record it in the manifest as the run's own (as
    if the run had written it), so the edit itself is what the test exercises, not the checksum."""
    import json
    from pathlib import Path

    from saecli.io import file_record

    path = Path(run_dir) / "manifest.json"
    manifest = json.loads(path.read_text())
    if "files" in manifest:
        manifest["files"][name] = file_record(Path(run_dir) / name)
        path.write_text(json.dumps(manifest))


def alive_at_each_part(monkeypatch: Any, window: int, *types: type) -> list[tuple[int, ...]]:
    """Runs in this process plan windows of ``window`` samples; at each part a run writes, the
    number of live objects of each of ``types`` is appended to the list returned."""
    import gc

    import saecli.runner as runner_module

    monkeypatch.setattr("saecli.plan.PLAN_WINDOW", window)
    monkeypatch.setattr("saecli.staging.PLAN_WINDOW", window)
    alive: list[tuple[int, ...]] = []
    write_part = runner_module._write_part

    def counting(*args: Any) -> Any:
        gc.collect()
        objects = gc.get_objects()
        alive.append(tuple(sum(type(o) is t for o in objects) for t in types))
        return write_part(*args)

    monkeypatch.setattr(runner_module, "_write_part", counting)
    return alive
