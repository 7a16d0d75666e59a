"""The notebooks in docs/notebooks/: stored with the outputs of one top-to-bottom run (the
documentation shows their figures), and executed again here from top to bottom."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = sorted(
    (Path(__file__).resolve().parents[2] / "docs" / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks():
    assert len(NOTEBOOKS) >= 5


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_is_stored_with_the_outputs_of_one_run_and_a_figure(path):
    notebook = nbformat.read(path, as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    # executed once, top to bottom, in a fresh kernel
    assert [cell.execution_count for cell in code] == list(range(1, len(code) + 1)), path.name
    outputs = [output for cell in code for output in cell.outputs]
    assert not [output for output in outputs if output.output_type == "error"], path.name
    figures = [output for output in outputs if "image/png" in output.get("data", {})]
    assert figures, f"{path.name} shows no figure"


@pytest.mark.single_pass  # the notebooks run as a user runs them, in float32
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_executes(path, monkeypatch):
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("XLA_PYTHON_CLIENT_PREALLOCATE", os.environ.get(
        "XLA_PYTHON_CLIENT_PREALLOCATE", "false"))  # fmt: skip
    notebook = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        notebook, timeout=600, kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
    )  # fmt: skip
    client.execute()  # raises CellExecutionError with the traceback if a cell fails
