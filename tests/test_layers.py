"""The low-level homes stay low: ``saecli.device``, ``saecli.memory`` and ``saecli.hub`` import only
``saecli.config`` and ``saecli.errors`` (at any depth of their code), and none imports torch or the
model libraries when imported."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import saecli

LOW = {"device": {"saecli.errors"}, "memory": {"saecli.config", "saecli.errors"}, "hub": {"saecli.errors"}}


def _saecli_imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("saecli"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("saecli")}
    return found


@pytest.mark.parametrize("name", sorted(LOW))
def test_low_level_modules_import_only_config_and_errors(name):
    path = Path(saecli.__file__).parent / f"{name}.py"
    assert _saecli_imports(path) <= LOW[name]


def test_importing_them_loads_no_heavy_library():
    code = (
        "import sys; import saecli.device, saecli.memory, saecli.hub; "
        "print([m for m in ('torch', 'transformer_lens', 'sae_lens', 'huggingface_hub') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("name", ["saecli.device", "saecli.config", "saecli.columns"])
def test_the_package_root_imports_nothing_heavy(name):
    """``import saecli.device`` runs ``saecli/__init__.py`` first: its API names are imported on first
    use, so a low module loads neither polars, torch nor the data modules."""
    heavy = ("polars", "torch", "numpy", "saecli.data", "saecli.models", "saecli.engine")
    code = f"import sys, {name}; print([m for m in {heavy!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_the_api_names_still_come_from_the_root():
    from saecli.data import Sample, load_samples
    from saecli.engine import analyze
    from saecli.errors import SaecliError
    from saecli.models import LoadedPreset, load_preset

    assert (saecli.Sample, saecli.load_samples, saecli.SaecliError) == (Sample, load_samples, SaecliError)
    assert (saecli.LoadedPreset, saecli.load_preset, saecli.analyze) == (LoadedPreset, load_preset, analyze)
    assert isinstance(saecli.__version__, str) and saecli.SCHEMA_VERSION == 1
    assert set(saecli.__all__) <= set(dir(saecli)) and "ModuleType" not in dir(saecli)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = saecli.nope


def _is_module(dotted: str) -> bool:
    path = Path(saecli.__file__).parent.parent.joinpath(*dotted.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def test_no_private_name_is_imported_across_modules():
    """A leading underscore means "this module's own": another module that needs it needs a public name."""
    offenders = []
    for path in sorted(Path(saecli.__file__).parent.rglob("*.py")):
        tree = ast.parse(path.read_text())
        modules: set[str] = set()  # local names bound to saecli modules
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("saecli"):
                for alias in node.names:
                    if _private(alias.name):
                        offenders.append(f"{path.name}: from {node.module} import {alias.name}")
                    if _is_module(f"{node.module}.{alias.name}"):
                        modules.add(alias.asname or alias.name)
            elif isinstance(node, ast.Import):
                modules |= {(a.asname or a.name).split(".")[0] for a in node.names if a.name.startswith("saecli")}
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and _private(node.attr)
                and isinstance(node.value, ast.Name)
                and node.value.id in modules
            ):
                offenders.append(f"{path.name}: {node.value.id}.{node.attr}")
    assert offenders == []
