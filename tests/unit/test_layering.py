"""The package's layering, as docs/architecture.md states it, checked on the source: the domain
knows nothing of MCP or HTTP, its subpackages import one way, the tool layer and the HTTP side
see only the domain's public face, and the tools call only the facade's methods."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from mcp_container_sandbox.sandbox import SandboxManager

PACKAGE = Path(__file__).resolve().parents[2] / "mcp_container_sandbox"
DOMAIN = PACKAGE / "sandbox"
# The domain's bottom: what every part of it may use.
DOMAIN_BOTTOM = {"errors", "model", "paths", "contract", "background", "clock"}
# What each subpackage may import of the domain besides itself and DOMAIN_BOTTOM.
SUBPACKAGE_MAY_IMPORT = {
    "backend": set(),
    "runtime": {"backend"},
    "network": {"backend"},
    "storage": {"backend", "runtime"},
}
WEB_FRAMEWORKS = ("fastmcp", "mcp", "starlette", "uvicorn", "websockets", "httpx")
# The Kubernetes backend reaches the cluster's API over HTTP and its exec streams over WebSockets, as the
# Podman backend reaches Podman's REST API over its socket: a client of those, there only; never a server's parts.
API_CLIENTS = {"sandbox/backend/kubernetes": ("websockets.asyncio.client", "websockets.exceptions", "httpx"),
               "sandbox/backend/podman_api.py": ("httpx",)}


def _modules(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.py"))


def _absolute_imports(path: Path) -> set[str]:
    """Every module the file imports, as an absolute dotted name."""
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    package = parts[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                base = node.module or ""
            else:
                base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}
    return found


def _domain_part(module: str) -> str | None:
    """Which part of the domain a dotted module name is in: a subpackage's name, a top module's, or None."""
    prefix = "mcp_container_sandbox.sandbox."
    return module[len(prefix):].split(".")[0] if module.startswith(prefix) else None


def test_the_domain_never_imports_mcp_http_or_the_layers_above_it() -> None:
    offenders = []
    for path in _modules(DOMAIN):
        for module in _absolute_imports(path):
            top = module.split(".")[0]
            above = module.startswith("mcp_container_sandbox.") and not (
                module.startswith("mcp_container_sandbox.sandbox") or module.startswith("mcp_container_sandbox.settings"))
            client = any(str(path.relative_to(PACKAGE)).startswith(folder) and module.startswith(allowed)
                         for folder, allowed in API_CLIENTS.items())
            if (top in WEB_FRAMEWORKS and not client) or above:
                offenders.append(f"{path.relative_to(PACKAGE)} imports {module}")
    assert not offenders, offenders


def test_the_domain_subpackages_import_one_way() -> None:
    offenders = []
    for sub, allowed in SUBPACKAGE_MAY_IMPORT.items():
        for path in _modules(DOMAIN / sub):
            for module in _absolute_imports(path):
                part = _domain_part(module)
                if part is not None and part != sub and part not in DOMAIN_BOTTOM | allowed:
                    offenders.append(f"{path.relative_to(PACKAGE)} imports {module}")
    for name in DOMAIN_BOTTOM:
        for module in _absolute_imports(DOMAIN / f"{name}.py"):
            part = _domain_part(module)
            if part is not None and part not in DOMAIN_BOTTOM:
                offenders.append(f"sandbox/{name}.py imports {module}")
    assert not offenders, offenders


def test_imports_inside_the_domain_have_no_cycle() -> None:
    graph = {}
    for path in _modules(DOMAIN):
        name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        graph[name] = {m for m in _absolute_imports(path) if m.startswith("mcp_container_sandbox.sandbox.")
                       and m != name and (PACKAGE.parent / (m.replace(".", "/") + ".py")).exists()}
    done: set[str] = set()
    while len(done) < len(graph):
        ready = {module for module, deps in graph.items() if module not in done and deps <= done}
        assert ready, f"an import cycle among {sorted(set(graph) - done)}"
        done |= ready


def test_tools_and_web_see_only_the_domains_public_face() -> None:
    offenders = []
    for folder in ("tools", "web"):
        for path in _modules(PACKAGE / folder):
            for module in _absolute_imports(path):
                if _domain_part(module) is not None and not _public(module):
                    offenders.append(f"{path.relative_to(PACKAGE)} imports {module}")
    assert not offenders, offenders


def _public(module: str) -> bool:
    """``mcp_container_sandbox.sandbox`` itself or a name it exports (``...sandbox.SandboxError``)."""
    import mcp_container_sandbox.sandbox as face

    rest = module[len("mcp_container_sandbox.sandbox."):]
    return rest in face.__all__


def test_tools_call_only_the_facades_methods() -> None:
    """``self.sandboxes.<name>`` in a tool is a public method of SandboxManager, never one of its parts."""
    methods = {name for name in dir(SandboxManager) if not name.startswith("_") and callable(getattr(SandboxManager, name))}
    offenders = []
    for path in _modules(PACKAGE / "tools"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute)
                    and node.value.attr == "sandboxes" and node.attr not in methods):
                offenders.append(f"{path.relative_to(PACKAGE)}:{node.lineno} uses sandboxes.{node.attr}")
    assert not offenders, offenders


def test_only_the_backend_speaks_podman() -> None:
    # A Podman subcommand is spelled either as podman.run("sub", ...) or as an argv ["podman", ...].
    spoken = re.compile(r"""podman\.(run|argv)\(|\[\s*["']podman["']""")
    speakers = sorted(str(path.relative_to(PACKAGE)) for path in _modules(PACKAGE) if spoken.search(path.read_text()))
    assert all(speaker.startswith("sandbox/backend/") for speaker in speakers), speakers
    assert speakers, "the pattern no longer finds the backend's own podman calls"


def test_only_the_settings_read_the_environment() -> None:
    # podman_cli.system_env copies it for the server's subprocesses, with the system folders on PATH.
    readers = sorted(str(path.relative_to(PACKAGE)) for path in [*_modules(PACKAGE), PACKAGE.parent / "server.py"]
                     if re.search(r"os\.environ|getenv", path.read_text()))
    assert readers == ["sandbox/backend/podman_cli.py", "settings.py"], readers
