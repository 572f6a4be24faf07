"""The entry point beside the package: ``python server.py`` serves Streamable HTTP on $HOST:$PORT
(as ``mcp-container-sandbox`` does), ``fastmcp run server.py`` serves stdio, and
``uvicorn --factory server:http_app --loop asyncio`` serves the ASGI app. Everything else is in
mcp_container_sandbox/ (docs/architecture.md). Importing this file builds nothing."""

from __future__ import annotations

from typing import Any

from mcp_container_sandbox.cli import main


def _built() -> Any:
    """A server from the environment's settings (app.create_app)."""
    from mcp_container_sandbox.app import create_app
    from mcp_container_sandbox.settings import Settings

    return create_app(Settings.from_env())


def http_app() -> Any:
    """The ASGI app, for ``uvicorn --factory server:http_app --loop asyncio``."""
    return _built().http_app()


def __getattr__(name: str) -> Any:
    """``mcp``, built on first use: what ``fastmcp run server.py`` looks for."""
    if name == "mcp":
        globals()["mcp"] = _built().mcp
        return globals()["mcp"]
    raise AttributeError(name)


if __name__ == "__main__":
    main()
