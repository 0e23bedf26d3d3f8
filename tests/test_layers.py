"""Imports run one way only, down the layers of DESIGN.md: engine code never imports Dagster or the
assets, storage and the registry sit under everything, and benchmarks call the engine, not assets."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = (
    ("storage", "layout", "grokking", "settings", "allocator"),
    ("data",),
    ("graph",),
    ("evaluation",),
    ("llm",),
    ("models",),
    ("training",),
    ("serving",),
    ("resources", "automation", "ui", "cli", "definitions"),
)
"""`grec_dagster.<name>` modules and packages, bottom first; a module may import its own layer and below."""
LAYER_OF = {name: index for index, names in enumerate(LAYERS) for name in names}
ENGINE_TOP = LAYER_OF["serving"]


def imported_modules(path: Path) -> set[str]:
    """Every module `path` imports, at any depth (lazy imports inside functions count)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def layer(module: str) -> int | None:
    """The layer of a `grec_dagster.*` module; None for anything else (the package root has none)."""
    parts = module.split(".")
    return LAYER_OF.get(parts[1]) if parts[0] == "grec_dagster" and len(parts) > 1 else None


def package_modules() -> list[Path]:
    return sorted((ROOT / "grec_dagster").rglob("*.py"))


def test_every_engine_module_has_a_layer() -> None:
    names = {path.relative_to(ROOT / "grec_dagster").parts[0].removesuffix(".py") for path in package_modules()}
    assert names - {"__init__"} == set(LAYER_OF)


@pytest.mark.parametrize("path", package_modules(), ids=lambda path: str(path.relative_to(ROOT)))
def test_imports_only_look_down(path: Path) -> None:
    own = layer(".".join(("grec_dagster", *path.relative_to(ROOT / "grec_dagster").with_suffix("").parts)))
    if own is None:  # grec_dagster/__init__.py
        return
    for module in imported_modules(path):
        target = layer(module)
        assert target is None or target <= own, f"{module} is above {path.relative_to(ROOT)}"
        if own <= ENGINE_TOP:
            assert module.split(".")[0] not in {"dagster", "assets"}, f"engine code {path.name} imports {module}"


@pytest.mark.parametrize("path", sorted((ROOT / "benchmarks").glob("*.py")), ids=lambda path: path.name)
def test_benchmarks_call_the_engine_not_the_assets(path: Path) -> None:
    assert not {module for module in imported_modules(path) if module.split(".")[0] == "assets"}
