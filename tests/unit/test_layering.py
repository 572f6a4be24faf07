"""The package's layering, as the README's Layout section states it, checked on the source."""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "sandbox"


def _imports() -> dict[str, set[str]]:
    graph = {}
    for path in PACKAGE.glob("*.py"):
        tree = ast.parse(path.read_text())
        graph[path.stem] = {node.module for node in ast.walk(tree)
                            if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module}
    return graph


def test_imports_inside_the_package_go_one_way() -> None:
    graph = _imports()
    done: set[str] = set()
    while len(done) < len(graph):
        ready = {module for module, deps in graph.items() if module not in done and deps <= done}
        assert ready, f"an import cycle among {sorted(set(graph) - done)}"
        done |= ready


def test_the_manager_is_imported_only_by_the_package_face() -> None:
    assert [module for module, deps in _imports().items() if "manager" in deps] == ["__init__"]


def test_only_the_backend_and_the_cli_helper_speak_podman() -> None:
    # A Podman subcommand is spelled either as podman.run("sub", ...) or as an argv ["podman", ...].
    spoken = re.compile(r"""podman\.(run|argv)\(|\[\s*["']podman["']""")
    speakers = sorted(path.stem for path in PACKAGE.glob("*.py") if spoken.search(path.read_text()))
    assert speakers == ["backend", "sweep"], speakers


def test_only_config_reads_the_environment() -> None:
    # podman.system_env copies it for the server's subprocesses, with the system folders on PATH.
    readers = sorted(path.stem for path in [*PACKAGE.glob("*.py"), PACKAGE.parent / "server.py"]
                     if re.search(r"os\.environ|getenv", path.read_text()))
    assert readers == ["config", "podman"], readers
