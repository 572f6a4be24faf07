"""``pip install .`` as a user would run it: what lands in site-packages, and the command it adds.
Not a unit test: pip fetches the build backend from the package index."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_pip_install_adds_one_top_level_package_with_a_working_command(tmp_path: Path) -> None:
    """``pip install .`` (without dependencies, into a folder of its own) puts one top-level name
    into site-packages, with its package data, and the console script prints its usage."""
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                    "--disable-pip-version-check", "--target", str(target), str(ROOT)], check=True,
                   capture_output=True, timeout=300)
    names = sorted(p.name for p in target.iterdir() if not p.name.endswith((".dist-info", ".egg-info")) and p.name != "bin")
    assert names == ["mcp_container_sandbox"], names
    assert (target / "mcp_container_sandbox" / "sandbox" / "runtime" / "sandbox-lib.sh").is_file()
    shown = subprocess.run([sys.executable, "-m", "mcp_container_sandbox", "--help"], capture_output=True, text=True,
                           timeout=60, cwd=tmp_path, env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"})
    assert shown.returncode == 0, shown.stderr
    assert "usage: mcp-container-sandbox" in shown.stdout and "SANDBOX_MAX_CONTAINERS" in shown.stdout
