"""Smoke test of benchmarks/device_check.py: it runs from a checkout with only jax and numpy
(romanjax's array API imports none of the host-side libraries) and writes its table and
JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_device_check_runs_with_jax_and_numpy_only(tmp_path):
    script = textwrap.dedent(f"""
        import sys
        sys.argv = ["device_check.py", "--size", "512", "--repeat", "1", "--budget", "1e9",
                    "--out", {str(tmp_path)!r}]
        sys.path.insert(0, {str(ROOT / "benchmarks")!r})
        import device_check
        results = device_check.main()
        heavy = sorted(m for m in ("galsim", "asdf", "astropy", "roman_datamodels")
                       if m in sys.modules)
        assert not heavy, heavy
        print("ROWS", len(results))
    """)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=900, cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "ROWS 10" in done.stdout
    table = (tmp_path / "device_check.md").read_text()
    assert "| fit_ramps_casertano(detect_jumps) |" in table and "read+write" in table
    data = json.loads((tmp_path / "device_check.json").read_text())
    assert data["size"] == 512 and len(data["results"]) == 10
    for entry in data["results"]:
        assert entry["time_s"] > 0 and entry["over_read"] > 0 and entry["compile_s"] >= 0
        assert entry["target_s"] is None  # targets apply on GPUs only


def test_device_check_skips_the_rows_past_its_time_budget(tmp_path, monkeypatch):
    """With the budget spent before the first row (0 s: making the frame takes longer), no
    row runs, every selected one is listed as skipped in the table and the JSON, and both
    files are complete."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import device_check

    rows = ["fit_ramps_casertano", "fit_ramps_optimal"]
    results = device_check.main(["--size", "64", "--repeat", "1", "--budget", "0",
                                 "--only", *rows, "--out", str(tmp_path)])  # fmt: skip
    assert results == []
    data = json.loads((tmp_path / "device_check.json").read_text())
    assert data["results"] == [] and sorted(data["skipped"]) == sorted(rows)
    table = (tmp_path / "device_check.md").read_text()
    for row in rows:
        assert f"| {row} | skipped: time budget spent |" in table
    assert not list(tmp_path.glob("*.tmp"))
