"""The in-sandbox shell library (sandbox/runtime/sandbox-lib.sh) is a real file: shipped as package
data, POSIX sh, and clean under shellcheck."""

from __future__ import annotations

import shutil
import subprocess
from importlib import resources

import pytest

from mcp_container_sandbox.sandbox.runtime import helpers

LIBRARY = resources.files("mcp_container_sandbox.sandbox.runtime").joinpath("sandbox-lib.sh")


def test_the_library_is_package_data_and_is_what_sandboxes_get() -> None:
    assert LIBRARY.is_file()
    assert helpers.SANDBOX_LIB == LIBRARY.read_text(encoding="utf-8")
    names = [name for name, _, _ in helpers.helpers_files(None)]
    assert len(names) == 1 and names[0].endswith(".sh"), names  # the agent joins it when there is one


def test_the_library_passes_shellcheck_as_posix_sh() -> None:
    if shutil.which("shellcheck") is None:
        pytest.fail("shellcheck is not installed: scripts/setup.sh --test installs it (Debian: apt-get install shellcheck)")
    result = subprocess.run(["shellcheck", "--shell=sh", "--severity=info", str(LIBRARY)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_library_parses_under_the_shells_sandboxes_have() -> None:
    for shell in ("sh", "busybox sh", "dash"):
        argv = shell.split()
        if shutil.which(argv[0]) is None:
            continue
        result = subprocess.run([*argv, "-n", str(LIBRARY)], capture_output=True, text=True)
        assert result.returncode == 0, (shell, result.stderr)
