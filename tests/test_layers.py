"""Imports run one way: front door (medray.cli, medray.demo, the Python API) -> serve and
tune -> train -> cluster; and every import spells `medray.…` (a bare `import train` works
only from the repository root, and `train` is another package on PyPI)."""

import ast
import functools
import sys
from pathlib import Path

import pytest

from support.project import PROJECT

LAYERS = ("cluster", "train", "tune", "serve")  # folders installed as medray.<name>
SCANNED = (*LAYERS, "medray", "tests", "benchmarks")
FRONT_DOOR = ("medray.cli", "medray.demo", "medray.api")
# What each layer's modules must not import, at the top or inside a function.
FORBIDDEN = {
    "cluster": ("medray.train", "medray.tune", "medray.serve", *FRONT_DOOR),
    "train": ("medray.tune", "medray.serve", *FRONT_DOOR),
    "tune": FRONT_DOOR,
    "serve": FRONT_DOOR,
}


def module_name(path: Path) -> str | None:
    """The installed name of a file in a layer folder or medray/ (None elsewhere)."""
    parts = list(path.relative_to(PROJECT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    if parts[0] in LAYERS:
        return ".".join(["medray", *parts])
    if parts[0] == "medray":
        return ".".join(parts)
    return None


def imported_names(source: str, module: str | None, is_package: bool = False) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in the source, nested ones included.
    `from M import a` counts as importing M and M.a (a may be a submodule); a relative
    import is resolved against `module`."""
    names = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = (module or "").split(".")
                package = package if is_package else package[:-1]
                package = package[:len(package) - (node.level - 1)]
                base = ".".join([*package, *([base] if base else [])])
            names.append((node.lineno, base))
            names += [(node.lineno, f"{base}.{alias.name}") for alias in node.names if alias.name != "*"]
    return names


@functools.cache
def facade_names() -> frozenset[str]:
    import medray

    return frozenset(f"medray.{name}" for name in medray.__all__)


def violations(path: Path) -> list[str]:
    module = module_name(path)
    layer = path.relative_to(PROJECT).parts[0]
    forbidden = FORBIDDEN.get(layer, ())
    found = []
    for line, name in imported_names(path.read_text(), module, path.name == "__init__.py"):
        where = f"{path.relative_to(PROJECT)}:{line}"
        if name.split(".")[0] in LAYERS:
            found.append(f"{where}: bare `{name}`; spell it medray.{name}")
        elif any(name == f or name.startswith(f + ".") for f in forbidden) or (forbidden and name in facade_names()):
            found.append(f"{where}: {layer}/ imports {name}, a layer above it")
    return found


def scanned_files() -> list[Path]:
    return sorted(p for folder in SCANNED for p in (PROJECT / folder).rglob("*.py") if "__pycache__" not in p.parts)


def test_every_import_spells_medray_and_runs_down_the_layers():
    files = scanned_files()
    assert len([p for p in files if p.parts[len(PROJECT.parts)] in LAYERS]) > 40  # the layers were found
    problems = [problem for path in files for problem in violations(path)]
    assert problems == []


@pytest.mark.parametrize("source, expected", [
    ("import train.job", ["train.job"]),
    ("def f():\n    from medray.tune.run import run_search", ["medray.tune.run", "medray.tune.run.run_search"]),
    ("from .. import tune", ["medray", "medray.tune"]),
    ("from .storage import Storage", ["medray.cluster.storage", "medray.cluster.storage.Storage"]),
])
def test_the_scan_sees_nested_bare_and_relative_imports(source, expected):
    assert [name for _, name in imported_names(source, "medray.cluster.registry")] == expected


def test_a_lower_layer_importing_the_front_door_is_reported(tmp_path, monkeypatch):
    folder = tmp_path / "train"
    folder.mkdir()
    (folder / "job.py").write_text("import os\n\ndef f():\n    from medray import run_training\n"
                                   "    from medray.cli import main\n    from medray.cluster import storage\n")
    monkeypatch.setattr(sys.modules[__name__], "PROJECT", tmp_path)
    assert violations(folder / "job.py") == [
        "train/job.py:4: train/ imports medray.run_training, a layer above it",
        "train/job.py:5: train/ imports medray.cli, a layer above it",
        "train/job.py:5: train/ imports medray.cli.main, a layer above it",
    ]
