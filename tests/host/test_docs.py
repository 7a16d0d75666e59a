"""The documentation site: every public name has an API entry, CITATION.cff is complete, and
``mkdocs build --strict`` is clean."""

from __future__ import annotations

import importlib
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

import romanjax

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
DIRECTIVE = re.compile(r"^:::\s+([\w.]+)\s*$", re.MULTILINE)


def api_directives() -> set[str]:
    found = set()
    for page in (DOCS / "api").glob("*.md"):
        found.update(DIRECTIVE.findall(page.read_text()))
    return found


def test_every_public_name_has_an_api_entry():
    directives = api_directives()
    missing = []
    for name in romanjax.__all__:
        if name == "__version__":
            continue
        if name in romanjax._SUBMODULES:
            target = f"romanjax.{name}"
        else:
            target = f"{romanjax._EXPORTS[name]}.{name}"
        if target not in directives:
            missing.append(target)
    assert not missing, f"no `::: path` entry in docs/api/*.md for {missing}"


def test_api_entries_resolve_to_the_public_objects():
    """Each directive names an object that exists, and public names point at the object that
    ``romanjax.<name>`` returns (so the docs document what users get)."""
    for target in sorted(api_directives()):
        module_name, _, attribute = target.rpartition(".")
        if target == "romanjax.dq":  # a module page
            importlib.import_module(target)
            continue
        module = importlib.import_module(module_name)
        assert hasattr(module, attribute), target
        if attribute in romanjax._EXPORTS:
            assert getattr(module, attribute) is getattr(romanjax, attribute), target


def test_nav_lists_every_page():
    yaml = pytest.importorskip("yaml")

    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text().replace("!!python", "#"))
    listed = set()

    def walk(node):
        if isinstance(node, str):
            listed.add(node)
        elif isinstance(node, list):
            for item in node:
                walk(item)
        elif isinstance(node, dict):
            for value in node.values():
                walk(value)

    walk(config["nav"])
    pages = {str(p.relative_to(DOCS)) for pattern in ("*.md", "*.ipynb")
             for p in DOCS.rglob(pattern) if ".ipynb_checkpoints" not in p.parts}
    assert pages == listed


def test_citation_cff_is_complete():
    yaml = pytest.importorskip("yaml")

    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert cff["cff-version"] == "1.2.0"
    assert cff["title"] == "romanjax"
    assert cff["version"] == romanjax.__version__
    text = str(cff["references"])
    for needle in ["Roman-STScI-000394", "10.1088/1538-3873/ad38d9", "10.1088/1538-3873/ad38da",
                   "10.1088/1538-3873/ad4b9e", "10.1080/00949659308811496",
                   "10.1145/2063384.2063405", "10.1016/0167-6687(93)90997-4", "Sanchez",
                   "romanisim", "stcal"]:  # fmt: skip
        assert needle in text, needle


@pytest.mark.skipif(
    importlib.util.find_spec("mkdocs") is None
    or importlib.util.find_spec("mkdocstrings_handlers") is None,
    reason="the docs extra (mkdocs, mkdocs-material, mkdocstrings[python]) is not installed",
)
def test_mkdocs_build_strict(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
        env={**__import__("os").environ, "NO_MKDOCS_2_WARNING": "1"},
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "api" / "forward" / "index.html").exists()
    html = (tmp_path / "api" / "ramp" / "index.html").read_text()
    assert "fit_ramps_likely" in html and "fit_ramps_casertano" in html
    # every notebook has a page that shows its stored figures
    notebooks = sorted((DOCS / "notebooks").glob("*.ipynb"))
    assert notebooks
    for notebook in notebooks:
        page = (tmp_path / "notebooks" / notebook.stem / "index.html").read_text()
        assert page.count("data:image/png;base64,") >= 1, notebook.name
