"""How long to tell a model to wait for a running command: per MCP session, by what it has shown.

A client gives up on a request after its own timeout, and the model then sees only an error.
The defaults differ: OpenAI's Agents SDK waits 5 s, MCP Inspector 10 s (reset by progress), the
TypeScript SDK 60 s, the Python SDK's bare ClientSession (LangChain's and pydantic-ai's adapters,
google-genai) forever. A server cannot ask; it can only read what a session shows:

* the client's name in ``initialize``: the Python SDK's default, ``mcp``, is what every Python
  framework sends unless told otherwise, the Agents SDK (5 s) among them, so such a session is told
  to wait a short while (FIRST_WAIT), unless its request asks for progress;
* a request that asks for progress: the clients that do reset their timeout on it;
* a wait it took: a call that waited d seconds and whose answer came before the session's next
  request (a client that gave up would have asked again sooner) shows that waits of d are fine,
  so a short session is told up to d (a model that asked for longer waits of its own accord);
* a timeout: the client asked something new of the session while an earlier call (one that waits)
  was still being answered, seconds after it began. That call's age then bounds the client's
  timeout from above; later waits in the session stay under half of it, and a wait asked for
  past that ends early with the command still running (so the answer arrives in time).

Anything else is told LONG_WAIT, which fits the TypeScript SDK's default; MAX_WAIT is the longest
wait the server allows (check_container's wait_seconds).
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from fastmcp.server.middleware import CallNext, Middleware, MiddlewareContext

from ..fastmcp_private import progress_requested

FIRST_WAIT = 4  # fits the shortest default timeout known (the OpenAI Agents SDK's 5 s), with room for latency
LONG_WAIT = 30
MAX_WAIT = 50  # under the TypeScript SDK's 60 s default
OVERLAP_SECONDS = 2.0  # a new request this long after a waiting call began means the client gave up on it
PYTHON_SDK_DEFAULT_NAME = "mcp"
SESSIONS_KEPT = 4096  # the most recently heard-from sessions are remembered


@dataclass
class SessionWaits:
    """What one MCP session has shown about its client's patience."""

    short: bool = False  # the client did not name itself: the Python SDK's default, whose users' timeouts vary
    gave_up_after: float | None = None  # the least age of a waiting call when the client asked something new
    tolerated: float = 0.0  # the longest wait answered before the session's next request
    waiting: dict[int, float] = field(default_factory=dict)  # calls that wait: token -> when they began
    answered: tuple[float, float] | None = None  # the last waiting call: (how long it waited, when it answered)
    abandoned: set[int] = field(default_factory=set)  # waiting calls the client gave up on

    def suggested(self, progress: bool = False) -> int:
        """The wait_seconds to advise next."""
        if self.gave_up_after is not None:
            return max(1, min(LONG_WAIT, math.floor(self.gave_up_after / 2)))
        if self.short and not progress:
            return max(FIRST_WAIT, min(LONG_WAIT, math.floor(self.tolerated)))
        return LONG_WAIT

    def allowed(self, requested: float, progress: bool = False) -> float:
        """How long a call that asked for ``requested`` seconds may wait here: all of it, unless the
        client has shown that it gives up sooner."""
        return requested if self.gave_up_after is None else min(requested, self.suggested(progress))

    def arrived(self, now: float) -> None:
        """A request arrived: a waiting call older than OVERLAP_SECONDS was given up on; the last
        one answered before now was taken."""
        if self.answered is not None and not self.waiting and now >= self.answered[1]:
            self.tolerated = max(self.tolerated, self.answered[0])
            self.answered = None
        for token, began in self.waiting.items():
            age = now - began
            if age >= OVERLAP_SECONDS and token not in self.abandoned:
                self.abandoned.add(token)
                self.gave_up_after = age if self.gave_up_after is None else min(self.gave_up_after, age)


class WaitAdvisor:
    """SessionWaits by session id, for the SESSIONS_KEPT sessions heard from last. (A client on
    the 2026-07-28 protocol has no session: each of its requests starts afresh.)"""

    def __init__(self) -> None:
        self._sessions: OrderedDict[str, SessionWaits] = OrderedDict()
        self._tokens = 0

    def of(self, session_id: str | None, client_name: str | None) -> SessionWaits:
        """The session's record; a request from it arriving now is noted."""
        short = client_name == PYTHON_SDK_DEFAULT_NAME
        if session_id is None:
            return SessionWaits(short=short)
        waits = self._sessions.pop(session_id, None) or SessionWaits(short=short)
        self._sessions[session_id] = waits
        while len(self._sessions) > SESSIONS_KEPT:
            self._sessions.popitem(last=False)
        waits.arrived(time.monotonic())
        return waits

    @contextmanager
    def waiting(self, waits: SessionWaits) -> Iterator[None]:
        """A call that waits, while it is being answered."""
        self._tokens += 1
        token = self._tokens
        waits.waiting[token] = time.monotonic()
        try:
            yield
        finally:
            began = waits.waiting.pop(token, None)
            if began is not None and token not in waits.abandoned:
                now = time.monotonic()
                waits.answered = (now - began, now)
            waits.abandoned.discard(token)


_CURRENT: ContextVar[tuple[SessionWaits, bool] | None] = ContextVar("session_waits", default=None)


def current() -> tuple[SessionWaits, bool]:
    """This tool call's session record, and whether the call asked for progress."""
    return _CURRENT.get() or (SessionWaits(), False)


class WaitTracking(Middleware):
    """Notes each tool call in its session's record (a call arriving while a waiting one is still
    being answered shows a client that gave up) and makes the record current for the tool."""

    def __init__(self, advisor: WaitAdvisor) -> None:
        self.advisor = advisor

    async def on_call_tool(self, context: MiddlewareContext[Any], call_next: CallNext[Any, Any]) -> Any:
        ctx = context.fastmcp_context
        session_id = name = None
        progress = False
        if ctx is not None:
            try:
                session_id = ctx.session_id
                params = ctx.session.client_params
                name = params.client_info.name if params is not None and params.client_info is not None else None
                progress = progress_requested(ctx)
            except (RuntimeError, AttributeError, LookupError):
                pass
        _CURRENT.set((self.advisor.of(session_id, name), progress))
        return await call_next(context)
