"""The repository's shape: one product package, nothing stray at the root."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_no_empty_file_is_tracked_at_the_root() -> None:
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    at_root = [name for name in tracked if "/" not in name]
    assert at_root, "git ls-files listed nothing"
    assert [name for name in at_root if (ROOT / name).stat().st_size == 0] == []
