"""The full flow through an agent framework, at its default settings, with a scripted model.

Runs in the clients' venv (tests/e2e/frameworks/requirements.txt). A language model cannot run here, so
each framework gets a stand-in for one, named as such: a script that makes the flow's tool calls
in order and, for a command still running, makes the call the server's message names, with the
wait_seconds written there (the model following our messages verbatim). A call that fails (a
client's timeout included) is made again, as the frameworks tell a model to ("Please try again").
Everything between the script and the server is the framework's own: its MCP client, its tool
conversion, its agent loop where it has one that takes a scripted model (OpenAI Agents SDK:
Runner with a Model; pydantic-ai: Agent with FunctionModel), its tool objects otherwise
(LangChain's tools, google-genai's function-call handling for MCP sessions).

    python tests/e2e/frameworks/flow.py <framework> <server url ending in /mcp> [seconds of the long command] [wait to ask]

Prints one JSON line: the calls made, the client's timeouts met, the waits asked, and whether
each step did what it should.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
import time
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any

import httpx

Call = tuple[str, dict[str, Any]]
WAIT_ADVICE = re.compile(r"check_container with container_id='([^']+)', command_id='([^']+)' and wait_seconds=(\d+)")
TIMED_OUT = re.compile(r"timed out|timeout|error occurred while running the tool", re.IGNORECASE)


@dataclass
class Outcome:
    """A tool call's result as the framework handed it to the model."""

    text: str
    error: bool
    data: dict[str, Any] | None = None

    @classmethod
    def of(cls, value: Any, error: bool = False) -> Outcome:
        if isinstance(value, dict):
            return cls(json.dumps(value), error, value)
        if isinstance(value, list):  # content blocks
            value = "".join(block.get("text", "") if isinstance(block, dict) else getattr(block, "text", str(block))
                            for block in value)
        text = str(value)
        try:
            data = json.loads(text)
        except ValueError:
            data = None
        return cls(text, error or not isinstance(data, dict), data if isinstance(data, dict) else None)


@dataclass
class Report:
    calls: int = 0
    timeouts: int = 0
    waits: list[int] = field(default_factory=list)
    long_command_calls: int = 0  # from starting the long command to its result
    long_command_seconds: float = 0.0
    steps: dict[str, bool] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


def flow(report: Report, long_seconds: float, ask_wait: int | None = None) -> Generator[Call, Outcome, None]:
    """The scripted model: yields each tool call, is sent what came back. With ask_wait, it asks
    for that wait instead of the one the message names (a model that knows better)."""

    def until_done(call: Call) -> Generator[Call, Outcome, Outcome]:
        while True:  # a failed call is made again, as the framework tells the model
            outcome = yield call
            if not (outcome.error and TIMED_OUT.search(outcome.text)):
                return outcome
            report.timeouts += 1

    created = yield from until_done(("create_container", {}))
    container_id = (created.data or {}).get("container_id", "")
    report.steps["create"] = bool(container_id)
    listed = yield from until_done(("list_containers", {}))  # a tool without parameters
    report.steps["list"] = container_id in [entry.get("container_id") for entry in (listed.data or {}).get("containers", [])]
    ran = yield from until_done(("execute_command", {"container_id": container_id, "command": "echo hello from the flow"}))
    report.steps["command"] = (ran.data or {}).get("stdout") == "hello from the flow\n"
    written = yield from until_done(("write_file", {"container_id": container_id, "path": "/tmp/report.txt",
                                                    "content": "a report\n"}))
    report.steps["write_file"] = not written.error
    shared = yield from until_done(("get_file_url", {"container_id": container_id, "path": "/tmp/report.txt"}))
    url = (shared.data or {}).get("url", "")
    report.steps["file_url"] = bool(url) and httpx.get(url, timeout=30).content == b"a report\n"

    started = time.monotonic()
    result = yield from until_done(("execute_command", {"container_id": container_id,
                                                        "command": f"sleep {long_seconds}; echo done"}))
    report.long_command_calls = 1
    command = result.data or {}
    while command.get("status") == "running":
        advice = WAIT_ADVICE.search(command.get("message", ""))
        if advice is None:
            report.errors.append(f"no wait advice in {command.get('message')!r}")
            break
        wait = ask_wait or int(advice.group(3))
        report.waits.append(wait)
        checked = yield from until_done(("check_container", {"container_id": advice.group(1),
                                                             "command_id": advice.group(2), "wait_seconds": wait}))
        report.long_command_calls += 1
        command = (checked.data or {}).get("command") or {}
    report.long_command_seconds = round(time.monotonic() - started, 1)
    report.steps["long_command"] = command.get("status") == "completed" and command.get("stdout") == "done\n"

    refused = yield ("execute_command", {"container_id": "no-such-sandbox", "command": "true"})
    report.steps["error"] = refused.error and "create_container" in refused.text
    destroyed = yield from until_done(("destroy_container", {"container_id": container_id}))
    report.steps["destroy"] = not destroyed.error


class Script:
    """Drives flow(): next(outcome) is the next call, or None at the end."""

    def __init__(self, long_seconds: float, ask_wait: int | None = None) -> None:
        self.report = Report()
        self._flow = flow(self.report, long_seconds, ask_wait)
        self._started = False

    def next(self, outcome: Outcome | None) -> Call | None:
        try:
            call = next(self._flow) if not self._started else self._flow.send(outcome)  # type: ignore[arg-type]
        except StopIteration:
            return None
        self._started = True
        self.report.calls += 1
        return call


# ----- the frameworks


async def openai_agents(url: str, script: Script) -> None:
    """OpenAI Agents SDK: Runner.run with the script as its Model; MCPServerStreamableHttp at defaults."""
    from agents import Agent, Runner
    from agents.items import ModelResponse
    from agents.mcp import MCPServerStreamableHttp
    from agents.models.interface import Model
    from agents.usage import Usage
    from openai.types.responses import (
        ResponseFunctionToolCall,
        ResponseOutputMessage,
        ResponseOutputText,
    )

    class ScriptedModel(Model):  # the stand-in for a language model
        async def get_response(self, system_instructions: Any, input: Any, *args: Any, **kwargs: Any) -> ModelResponse:
            outputs = [item for item in input if isinstance(item, dict) and item.get("type") == "function_call_output"]
            outcome = Outcome.of(outputs[-1]["output"]) if outputs else None
            call = script.next(outcome) if outputs or not script._started else None
            if call is None:
                text = ResponseOutputText(type="output_text", text="done", annotations=[])
                message = ResponseOutputMessage(id="msg", type="message", role="assistant", status="completed",
                                                content=[text])
                return ModelResponse(output=[message], usage=Usage(), response_id=None)
            name, arguments = call
            tool_call = ResponseFunctionToolCall(type="function_call", call_id=f"call_{script.report.calls}",
                                                 name=name, arguments=json.dumps(arguments))
            return ModelResponse(output=[tool_call], usage=Usage(), response_id=None)

        def stream_response(self, *args: Any, **kwargs: Any) -> Any:
            raise NotImplementedError

    model = ScriptedModel()
    async with MCPServerStreamableHttp({"url": url}) as server:
        agent = Agent(name="sandbox user", model=model, mcp_servers=[server])
        result = await Runner.run(agent, "Use the sandbox.", max_turns=200)
    assert result.final_output == "done"


async def pydantic_ai(url: str, script: Script) -> None:
    """pydantic-ai: Agent.run with the script as a FunctionModel; MCPToolset at defaults."""
    from pydantic_ai import Agent
    from pydantic_ai.mcp import MCPToolset
    from pydantic_ai.messages import (
        ModelResponse,
        RetryPromptPart,
        TextPart,
        ToolCallPart,
        ToolReturnPart,
    )
    from pydantic_ai.models.function import FunctionModel

    def scripted(messages: list[Any], info: Any) -> ModelResponse:  # the stand-in for a language model
        outcome = None
        for part in messages[-1].parts:
            if isinstance(part, ToolReturnPart):
                outcome = Outcome.of(part.content)
            elif isinstance(part, RetryPromptPart):
                outcome = Outcome.of(part.model_response(), error=True)
        call = script.next(outcome)
        if call is None:
            return ModelResponse(parts=[TextPart("done")])
        return ModelResponse(parts=[ToolCallPart(call[0], call[1], tool_call_id=f"call_{script.report.calls}")])

    model = FunctionModel(scripted)
    agent = Agent(model, toolsets=[MCPToolset(url)])
    async with agent:
        result = await agent.run("Use the sandbox.")
    assert result.output == "done"


async def langchain(url: str, script: Script) -> None:
    """LangChain MCP adapters: MultiServerMCPClient's tools, invoked as an agent's tool node does."""
    from langchain_mcp_adapters.client import MultiServerMCPClient

    tools = {tool.name: tool for tool in
             await MultiServerMCPClient({"sandbox": {"url": url, "transport": "streamable_http"}}).get_tools()}
    outcome = None
    while (call := script.next(outcome)) is not None:
        try:
            outcome = Outcome.of(await tools[call[0]].ainvoke(call[1]))
        except Exception as exc:  # noqa: BLE001 - a tool error, as the agent's tool node reports it
            outcome = Outcome(f"Error: {exc}", True)


async def google_genai(url: str, script: Script) -> None:
    """google-genai: the MCP session as a tool, its function calls answered by google-genai's own
    automatic-function-calling code (what generate_content does between two model turns)."""
    from google.genai import types
    from google.genai._adapters import McpToGenAiToolAdapter
    from google.genai._extra_utils import get_function_response_parts_async
    from mcp import ClientSession
    from mcp.client.streamable_http import streamablehttp_client

    async with streamablehttp_client(url) as (read, write, _), ClientSession(read, write) as session:
        await session.initialize()
        adapter = McpToGenAiToolAdapter(session, await session.list_tools())
        assert adapter.tools, "google-genai converted no tools"
        outcome = None
        while (call := script.next(outcome)) is not None:
            response = types.GenerateContentResponse(candidates=[types.Candidate(content=types.Content(
                role="model", parts=[types.Part(function_call=types.FunctionCall(name=call[0], args=call[1]))]))])
            parts = await get_function_response_parts_async(response, {name: adapter for name in
                                                                       [tool.name for tool in
                                                                        (await session.list_tools()).tools]})
            answer = parts[0].function_response.response or {}
            outcome = Outcome.of(_text_of(answer.get("error", answer.get("result"))), error="error" in answer)


def _text_of(result: Any) -> Any:
    """A CallToolResult as google-genai hands it to Gemini, as text or data."""
    if hasattr(result, "model_dump"):
        result = result.model_dump(mode="json", by_alias=True)
    if isinstance(result, dict):
        if result.get("structuredContent") or result.get("structured_content"):
            return result.get("structuredContent") or result.get("structured_content")
        content = result.get("content") or []
        return "".join(block.get("text", "") for block in content if isinstance(block, dict))
    return result


FRAMEWORKS = {"openai-agents": openai_agents, "pydantic-ai": pydantic_ai, "langchain": langchain,
              "google-genai": google_genai}


async def main(framework: str, url: str, long_seconds: float, ask_wait: int | None) -> None:
    script = Script(long_seconds, ask_wait)
    try:
        await FRAMEWORKS[framework](url, script)
    except Exception as exc:  # noqa: BLE001 - reported, and the test fails on it
        script.report.errors.append(f"{type(exc).__name__}: {exc}")
    print(json.dumps(script.report.__dict__))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], float(sys.argv[3]) if len(sys.argv) > 3 else 8,
                     int(sys.argv[4]) if len(sys.argv) > 4 else None))
