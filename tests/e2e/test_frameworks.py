"""The agent frameworks people build with, each at its default settings, against a real server.

The Python frameworks live in .venv-clients (tests/e2e/frameworks/requirements.txt: they pin their own
`mcp`), the TypeScript SDK and mcp-remote in tests/e2e; scripts/setup.sh --test installs both.
tests/e2e/frameworks/converters.py runs each framework's tool-schema converter over every tool;
tests/e2e/frameworks/flow.py and tests/e2e/flow.mjs run the full flow (create, list, a command, write_file,
a file URL downloaded, a command longer than the shortest client timeout followed as our messages
say, an error, destroy) with a scripted stand-in for the model (no language model runs here).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from typing import Any

import pytest
from conftest import ROOT, sandboxes_left

from mcp_container_sandbox.tools import tool_names

CLIENTS_PYTHON = ROOT / ".venv-clients" / "bin" / "python"
E2E = ROOT / "tests" / "e2e"
LONG_COMMAND_SECONDS = 8  # longer than the OpenAI Agents SDK's 5 s timeout, and than FIRST_WAIT


def run_json(argv: list[str], timeout: float = 300) -> Any:
    """Run a client script; its last line of output is its JSON report."""
    for needed in (CLIENTS_PYTHON, E2E / "node_modules" / ".bin" / "mcp-remote"):
        if not needed.exists():
            pytest.fail(f"{needed} is missing: run ./scripts/test.sh, which installs the clients (scripts/setup.sh --test)")
    env = {**os.environ, "OPENAI_AGENTS_DISABLE_TRACING": "1"}
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_every_framework_converts_every_tool_keeping_each_description(start_server: Any) -> None:
    served = start_server()
    report = run_json([str(CLIENTS_PYTHON), "tests/e2e/frameworks/converters.py", served.url + "/mcp"])
    assert set(report) == {"google-genai", "openai-agents (strict)", "langchain-mcp-adapters -> OpenAI",
                           "pydantic-ai (Gemini)", "pydantic-ai (OpenAI strict)"}
    for converter, tools in report.items():
        assert len(tools) == len(tool_names()), converter
        for tool, outcome in tools.items():
            if "error" in outcome:
                # The Agents SDK makes a strict schema only for an object that lists its properties;
                # a tool without parameters is offered non-strict (and works: see the flow below).
                assert converter == "openai-agents (strict)" and tool in {"list_containers", "list_snapshots", "list_volumes"}, \
                    (converter, tool, outcome["error"])
                continue
            for name, param in outcome["params"].items():
                assert param["present"] and param["description"], (converter, tool, name)
                assert param["default"] in (True, None), (converter, tool, name)
                # google-genai reads only its own snake_case names of the bounds JSON Schema spells
                # in camelCase: maxLength never reaches Gemini (minimum, maximum, pattern do).
                assert set(param["bounds_lost"]) <= ({"maxLength"} if converter == "google-genai" else set()), \
                    (converter, tool, name, param["bounds_lost"])


@pytest.mark.parametrize("framework", ["openai-agents", "pydantic-ai", "langchain", "google-genai",
                                       "typescript-sdk", "mcp-remote"])
def test_the_full_flow_through_each_framework_at_its_defaults(start_server: Any, framework: str) -> None:
    served = start_server()
    url = served.url + "/mcp"
    if framework in ("typescript-sdk", "mcp-remote"):
        argv = ["node", str(E2E / "flow.mjs"), "http" if framework == "typescript-sdk" else "mcp-remote", url]
    else:
        argv = [str(CLIENTS_PYTHON), "tests/e2e/frameworks/flow.py", framework, url]
    report = run_json([*argv, str(LONG_COMMAND_SECONDS)])
    assert report["errors"] == [], report
    assert report["steps"] == {step: True for step in ("create", "list", "command", "write_file", "file_url",
                                                       "long_command", "error", "destroy")}, report
    assert report["timeouts"] == 0, report  # following our messages verbatim never meets the client's timeout
    assert report["waits"] and report["long_command_seconds"] < LONG_COMMAND_SECONDS + 5, report
    assert sandboxes_left(served.env["SANDBOX_NAMESPACE"]) == []


def test_a_client_that_gave_up_on_a_long_wait_is_answered_in_time_afterwards(start_server: Any) -> None:
    """A model that asks for 30 s waits anyway, through the Agents SDK (5 s timeout): the first
    such call times out; the server sees the client ask again while it still waits, and from then
    on answers that session's waits in time, saying which wait to ask for."""
    served = start_server()
    report = run_json([str(CLIENTS_PYTHON), "tests/e2e/frameworks/flow.py", "openai-agents", served.url + "/mcp", "14", "30"])
    assert report["errors"] == [] and all(report["steps"].values()), report
    assert report["timeouts"] == 1, report


def test_the_documented_snippets_are_the_code_the_flows_run() -> None:
    """Every line of each snippet in docs/clients.md's "From your agent framework" (but comments and
    lines marked as not run) is a line of tests/e2e/frameworks/flow.py or tests/e2e/flow.mjs."""
    page = (ROOT / "docs" / "clients.md").read_text()
    section = page.split("## From your agent framework", 1)[1].split("\n## ", 1)[0].split("**Waiting", 1)[0]
    snippets = re.findall(r"```(?:python|js)\n(.*?)```", section, re.DOTALL)
    assert len(snippets) == 5
    flows = {line.strip() for path in (ROOT / "tests" / "e2e" / "frameworks" / "flow.py", E2E / "flow.mjs")
             for line in path.read_text().splitlines()}
    for snippet in snippets:
        for line in snippet.splitlines():
            line = line.strip()
            if line and not line.startswith(("#", "//")) and "not run in the tests" not in line:
                assert line in flows, line
