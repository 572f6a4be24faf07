"""The entry point beside the package: ``python server.py`` serves Streamable HTTP on $HOST:$PORT
(as ``mcp-container-sandbox`` does), and ``fastmcp run server.py`` serves stdio. Everything else
is in mcp_container_sandbox/ (docs/architecture.md)."""

from __future__ import annotations

from typing import Any

from mcp_container_sandbox.cli import main


def __getattr__(name: str) -> Any:
    """``mcp``, built from the environment on first use: what ``fastmcp run server.py`` looks for.
    Importing this file builds nothing."""
    if name == "mcp":
        from mcp_container_sandbox.app import create_app
        from mcp_container_sandbox.settings import Settings

        globals()["mcp"] = create_app(Settings.from_env()).mcp
        return globals()["mcp"]
    raise AttributeError(name)


if __name__ == "__main__":
    main()
