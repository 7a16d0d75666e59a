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


#: The array API's only ways into the host layer: large host frames on CPUs run through the
#: frame driver, and a differentiable scene is set up on the host (a galsim PSF, an astropy
#: WCS) before JAX-GalSim evaluates and differentiates it.
HOST_ROUTES = {"romanjax.host.frames": None, "romanjax.host.scene": {"jax_scene.py"}}


def _exists(name: str) -> bool:
    """Whether ``name`` is a module of the package (or a dunder of one, ``__version__``)."""
    parts = name.split(".")[1:]
    if parts and parts[-1].startswith("__"):
        parts = parts[:-1]
    stem = PACKAGE.joinpath(*parts)
    return stem.with_suffix(".py").is_file() or (stem / "__init__.py").is_file()


def test_a_missing_module_is_caught():
    assert _exists("romanjax.host.scene") and _exists("romanjax.__version__")
    assert _exists("romanjax.kernels") and not _exists("romanjax.scene")


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_every_package_import_resolves(path):
    for name in _imports(path):
        if name.split(".")[0] == "romanjax":
            assert _exists(name), f"{path.relative_to(PACKAGE)} imports {name}, not in romanjax"


@pytest.mark.parametrize(
    "path", [p for p in _modules() if "host" not in p.relative_to(PACKAGE).parts],
    ids=lambda p: str(p.relative_to(PACKAGE)))
def test_only_the_host_layer_reaches_host_modules_and_libraries(path):
    for name in _imports(path):
        top = name.split(".")[0]
        assert top not in HOST_LIBRARIES, f"{path.name} imports {name}"
        if name.startswith("romanjax.host"):
            assert name in HOST_ROUTES, f"{path.name} imports {name}"
            users = HOST_ROUTES[name]
            assert users is None or path.name in users, f"{path.name} imports {name}"
