"""Background tasks that outlive the request that started them."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import anyio

from .errors import SandboxError


class BackgroundTasks:
    """A task group living in a task of its own.

    FastMCP may enter a lifespan in one task and leave it in another, where an anyio task
    group opened in the lifespan cannot be closed; this one is stopped by ``stop``.
    """

    def __init__(self) -> None:
        self._send: Any = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        send, receive = anyio.create_memory_object_stream[tuple[Any, tuple[Any, ...]]](math.inf)
        self._send = send
        started = anyio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run(receive, started))
        await started.wait()

    async def _run(self, receive: Any, started: anyio.Event) -> None:
        async with anyio.create_task_group() as task_group:
            started.set()
            async with receive:
                async for function, args in receive:
                    task_group.start_soon(function, *args)

    def start_soon(self, function: Any, *args: Any) -> None:
        if self._send is None:
            raise SandboxError("The server's background tasks are not running; this is a server bug.")
        self._send.send_nowait((function, args))

    async def stop(self) -> None:
        task, self._task, self._send = self._task, None, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
