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
            if isinstance(node, ast.Attribute) and _private(node.attr) and isinstance(node.value, ast.Name) and node.value.id in modules:
                offenders.append(f"{path.name}: {node.value.id}.{node.attr}")
    assert offenders == []
