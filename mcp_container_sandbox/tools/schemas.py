"""Tool input schemas in the form every major client's converter accepts without loss.

FastMCP (through pydantic) writes an optional parameter as ``anyOf: [X, {"type": "null"}]`` and
closes each schema with ``"additionalProperties": false``. Both are valid JSON Schema, but
google-genai's MCP adapter fails on a boolean ``additionalProperties`` (every tool; upstream
googleapis/python-genai#2393) and drops the description of a parameter written with ``anyOf``.
The same meaning, written ``"type": [X, "null"]`` beside X's own bounds, and without the
top-level flag, passes through Gemini's, OpenAI's strict and LangChain's conversions with every
description kept. The server still refuses arguments a tool does not have: its validation comes
from the tool's signature, not from this advertised schema.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

from fastmcp.server.middleware import CallNext, Middleware, MiddlewareContext
from fastmcp.tools import Tool


def portable(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema rewritten as the module says; anything else is left as it is."""
    out = _closed_nowhere(copy.deepcopy(schema))
    for name, prop in (out.get("properties") or {}).items():
        out["properties"][name] = _nullable(prop)
    return out


def _closed_nowhere(schema: Any) -> Any:
    """The schema without ``"additionalProperties": false`` at any depth (an object in a list, say)."""
    if isinstance(schema, dict):
        if schema.get("additionalProperties") is False:
            del schema["additionalProperties"]
        for value in schema.values():
            _closed_nowhere(value)
    elif isinstance(schema, list):
        for value in schema:
            _closed_nowhere(value)
    return schema


def _nullable(prop: dict[str, Any]) -> dict[str, Any]:
    """``{"anyOf": [X, {"type": "null"}], ...}`` as ``{...X, "type": [X's type, "null"], ...}``."""
    branches = prop.get("anyOf")
    if not isinstance(branches, list) or len(branches) != 2 or {"type": "null"} not in branches:
        return prop
    (other,) = [branch for branch in branches if branch != {"type": "null"}]
    if not isinstance(other.get("type"), str) or "anyOf" in other:
        return prop
    merged = {key: value for key, value in prop.items() if key != "anyOf"}
    merged.update({key: value for key, value in other.items() if key != "type"})
    merged["type"] = [other["type"], "null"]
    return merged


class PortableSchemas(Middleware):
    """Lists every tool with its schema made portable (the tools themselves are not changed)."""

    async def on_list_tools(self, context: MiddlewareContext[Any], call_next: CallNext[Any, Sequence[Tool]]
                            ) -> Sequence[Tool]:
        return [tool.model_copy(update={"parameters": portable(tool.parameters)}) for tool in await call_next(context)]
