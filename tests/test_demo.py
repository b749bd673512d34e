"""`winstar demo` runs the brief's story live and exits 0 in under a minute."""

from __future__ import annotations

import os
import subprocess
import sys
import time


def test_demo_runs_the_story(tmp_path):
    started = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-m", "winstar_core", "demo"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    elapsed = time.monotonic() - started
    assert out.returncode == 0, out.stderr
    assert elapsed < 60
    text = out.stdout
    for step in (
        "Assign a dashboard to the edge",
        "Create a device on the edge",
        "Cut the link",
        "Restore the link",
        "Downlinks view",
        "[Edge] Plant 9 All",
    ):
        assert step in text, step
    assert "Thermometer 4" in text and "Boiler" in text
    assert "pending" in text and "delivered" in text
    assert list(tmp_path.iterdir()) == []  # nothing left behind in the working folder


def test_demo_uses_only_the_installed_types(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "winstar_core", "demo"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={**os.environ, "WINSTAR_DISABLE_PLUGINS": "dashboards,assets,groups"},
    )
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "entity types installed: device" in text
    assert text.count("(skipped:") == 3  # the dashboard, the asset, the PE story
    assert "Thermometer 4" in text and "Boiler" not in text
