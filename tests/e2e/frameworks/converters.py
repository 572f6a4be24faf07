"""Run each agent framework's own tool-schema converter over every tool the server lists.

Runs in the clients' venv (tests/e2e/frameworks/requirements.txt), which pins the frameworks with
the `mcp` they need; the test in tests/test_frameworks.py starts a server and reads the JSON
this prints: per converter and tool, an error (the converter failed) or, per parameter, whether
its description and default came through.

    python tests/e2e/frameworks/converters.py http://127.0.0.1:8000/mcp
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable
from typing import Any

from mcp import ClientSession
from mcp.client.streamable_http import streamablehttp_client


def gemini(tool: Any, session: Any) -> dict[str, Any]:
    from google.genai._mcp_utils import (
        mcp_to_gemini_tool,  # what generate_content(tools=[session]) calls
    )

    declaration = mcp_to_gemini_tool(tool).function_declarations[0]
    return declaration.parameters.model_dump(mode="json", exclude_none=True) if declaration.parameters else {}


def openai_agents_strict(tool: Any, server: Any) -> dict[str, Any]:
    from agents.mcp.util import MCPUtil

    converted = MCPUtil.to_function_tool(tool, server, convert_schemas_to_strict=True)
    if not converted.strict_json_schema:
        raise ValueError("the Agents SDK fell back to a non-strict schema")
    return converted.params_json_schema


def langchain_openai(tool: Any, session: Any) -> dict[str, Any]:
    from langchain_core.utils.function_calling import convert_to_openai_tool
    from langchain_mcp_adapters.tools import convert_mcp_tool_to_langchain_tool

    return convert_to_openai_tool(convert_mcp_tool_to_langchain_tool(session, tool))["function"]["parameters"]


def pydantic_ai_google(tool: Any, session: Any) -> dict[str, Any]:
    from pydantic_ai.profiles.google import GoogleJsonSchemaTransformer

    return GoogleJsonSchemaTransformer(dict(tool.inputSchema)).walk()


def pydantic_ai_openai_strict(tool: Any, session: Any) -> dict[str, Any]:
    from pydantic_ai.profiles.openai import OpenAIJsonSchemaTransformer

    return OpenAIJsonSchemaTransformer(dict(tool.inputSchema), strict=True).walk()


CONVERTERS: dict[str, Callable[[Any, Any], dict[str, Any]]] = {
    "google-genai": gemini,
    "openai-agents (strict)": openai_agents_strict,
    "langchain-mcp-adapters -> OpenAI": langchain_openai,
    "pydantic-ai (Gemini)": pydantic_ai_google,
    "pydantic-ai (OpenAI strict)": pydantic_ai_openai_strict,
}


BOUNDS = ("maxLength", "minimum", "maximum", "pattern")
SNAKE = {"maxLength": "max_length"}  # google-genai's own field names


def compare(ours: dict[str, Any], theirs: dict[str, Any]) -> dict[str, Any]:
    """Per parameter: its description kept (a converter may add to it: pydantic-ai writes bounds
    that OpenAI's strict mode lacks into it), its default kept (None when the converter carries no
    defaults at all or the parameter has none), and which of its bounds were lost."""
    converted = theirs.get("properties") or {}
    carries_defaults = any("default" in prop for prop in converted.values())
    out = {}
    for name, prop in (ours.get("properties") or {}).items():
        got = converted.get(name) or {}
        default = prop.get("default")
        out[name] = {
            "present": name in converted,
            "description": str(prop.get("description")) in str(got.get("description")),
            "default": (got.get("default") == default) if carries_defaults and default is not None else None,
            "bounds_lost": [bound for bound in BOUNDS if bound in prop and bound not in got
                            and SNAKE.get(bound) not in got and f"{bound}=" not in str(got.get("description"))],
        }
    return out


async def main(url: str) -> None:
    from agents.mcp import MCPServerStreamableHttp

    report: dict[str, Any] = {}
    async with streamablehttp_client(url) as (read, write, _), ClientSession(read, write) as session:
        await session.initialize()
        tools = (await session.list_tools()).tools
        async with MCPServerStreamableHttp({"url": url}) as agents_server:
            for converter, convert in CONVERTERS.items():
                report[converter] = {}
                for tool in tools:
                    try:
                        theirs = convert(tool, agents_server if converter.startswith("openai-agents") else session)
                        report[converter][tool.name] = {"params": compare(tool.inputSchema, theirs)}
                    except Exception as exc:  # noqa: BLE001 - the report says what failed
                        report[converter][tool.name] = {"error": f"{type(exc).__name__}: {exc}"}
    print(json.dumps(report))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
