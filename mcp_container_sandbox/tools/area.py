"""How a tool area is written: a class whose ``@tool`` methods are its tools (the method's name is
the tool's name, its docstring the description unless one is given), sharing one ToolContext."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, TypeVar

from fastmcp import FastMCP
from fastmcp.apps.config import AppConfig
from mcp.types import ToolAnnotations
from pydantic import AfterValidator, Field

from .context import ToolContext

F = TypeVar("F", bound=Callable[..., Any])


def _not_blank(value: str | None) -> str | None:
    if value is not None and not value.strip():
        raise ValueError("a blank string; give a value, or leave the argument out for its default")
    return value


NotBlank = AfterValidator(_not_blank)
"""For a name, an id or a path: a string of spaces is refused rather than taken as "omitted"."""

ContainerId = Annotated[
    str, Field(description="The container_id returned by create_container.", max_length=200), NotBlank
]
CommandId = Annotated[str, Field(description="The command_id from execute_command.", max_length=200), NotBlank]


def tool(*, title: str, description: str | None = None, app: str | None = None, app_only: bool = False,
         **hints: bool) -> Callable[[F], F]:
    """Marks a method of a ToolArea as a tool, with its MCP annotations (read_only_hint, ...) and, with
    ``app``, the ``ui://`` resource a host that supports MCP Apps shows with its result; ``app_only``: a
    tool an app calls, which hosts do not offer the model (app.py)."""

    def mark(function: F) -> F:
        config = AppConfig(resource_uri=app) if app else AppConfig(visibility=["app"]) if app_only else None
        function.__mcp_tool__ = {"annotations": ToolAnnotations(title=title, **hints), "description": description,  # type: ignore[attr-defined]
                                 "app": config}
        return function

    return mark


class ToolArea:
    """A group of tools; ``register`` adds each ``@tool`` method, in the order they are written."""

    def __init__(self, context: ToolContext) -> None:
        self.context = context
        self.sandboxes = context.sandboxes

    def register(self, mcp: FastMCP) -> None:
        for name, function in vars(type(self)).items():
            options = getattr(function, "__mcp_tool__", None)
            if options is not None:
                mcp.tool(getattr(self, name), **{key: value for key, value in options.items() if value is not None})
