"""The three layers stay apart: read every module's imports (top level and inside
functions) and check which layer each one reaches."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "romanjax"
HOST_LIBRARIES = {"asdf", "astropy", "gwcs", "roman_datamodels", "galsim", "dask"}


def _imports(path: Path) -> list[str]:
    """Absolute module names imported by ``path`` (relative imports resolved)."""
    # the package a relative import starts from (for __init__.py: the package itself)
    package = path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1]
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = list(package[: len(package) - node.level + 1]) if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            if node.module is None:
                names += [f"{module}.{alias.name}" for alias in node.names]
            else:
                names.append(module)
    return names


def _modules(folder: str | None = None):
    root = PACKAGE if folder is None else PACKAGE / folder
    return sorted(root.rglob("*.py"))


def test_import_resolution_sees_every_kind_of_import():
    # the checks below are only as good as this reader: relative, nested and absolute imports
    names = _imports(PACKAGE / "host" / "io" / "_asdf.py")
    assert "romanjax._read_pattern" in names and "asdf" in names
    assert "romanjax.host.frames" in _imports(PACKAGE / "ramp" / "_optimal.py")
    assert "romanjax._platform" in _imports(PACKAGE / "host" / "frames.py")


@pytest.mark.parametrize("path", _modules("kernels"), ids=lambda p: p.name)
def test_kernels_import_only_kernels_and_the_platform_module(path):
    # (and the static read pattern they are specialised for)
    allowed = {"romanjax._platform", "romanjax._read_pattern"}
    for name in _imports(path):
        if name.startswith("romanjax"):
            assert name.startswith("romanjax.kernels") or name in allowed, name


@pytest.mark.parametrize(
    "path", [p for p in _modules() if "host" not in p.relative_to(PACKAGE).parts],
    ids=lambda p: str(p.relative_to(PACKAGE)))
def test_only_the_host_layer_reaches_host_modules_and_libraries(path):
    for name in _imports(path):
        top = name.split(".")[0]
        assert top not in HOST_LIBRARIES, f"{path.name} imports {name}"
        if name.startswith("romanjax.host"):
            # the one route: large host frames on CPUs run through the frame driver
            assert name == "romanjax.host.frames", f"{path.name} imports {name}"
