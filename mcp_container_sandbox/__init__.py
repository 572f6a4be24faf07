"""MCP container sandbox server: isolated Linux sandboxes (Podman containers) for an AI model,
with commands, files, snapshots and preview URLs, over MCP (Streamable HTTP or stdio).

Layout (docs/architecture.md): ``sandbox/`` is the domain (Podman, never MCP or HTTP), ``tools/``
the MCP tools over its facade, ``web/`` the HTTP side, ``app.py`` builds them from ``settings.py``,
``cli.py`` runs them.
"""

__version__ = "0.1.0"
