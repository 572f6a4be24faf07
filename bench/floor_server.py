"""A bare FastMCP server with one tool that does nothing (bench.py's ``floor`` row): what a tool
call costs over Streamable HTTP on this machine before any work of ours. Its answer has the shape
of ours for "echo hi"."""

import sys

from fastmcp import FastMCP

mcp = FastMCP("floor")


@mcp.tool
def execute_command(container_id: str, command: str) -> dict:
    """Does nothing; answers as execute_command does for "echo hi"."""
    return {"container_id": container_id, "exit_code": 0, "stdout": "hi\n", "stderr": "", "timed_out": False,
            "duration_ms": 1}


if __name__ == "__main__":
    mcp.run(transport="http", host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", show_banner=False,
            uvicorn_config={"loop": "asyncio"})  # as server.main runs
