"""One tree of failures: everything a tool can meet is a SandboxError, whose message says what
happened and what to do next (the tool layer hands it to the model as it is)."""

from __future__ import annotations

import errno
import os
from collections.abc import Sequence

from .paths import DATA_DIR, STATE_DIR


class SandboxError(Exception):
    """A failure the client must hear about; the message says what to do next."""


class PodmanError(SandboxError):
    """``podman`` itself failed: carries its argv, exit code and stderr."""

    def __init__(self, argv: Sequence[str], exit_code: int | None, stderr: str, hint: str = "") -> None:
        self.argv = list(argv)
        self.exit_code = exit_code
        self.stderr = stderr.strip()
        what = f"'podman {argv[1] if len(argv) > 1 else ''}' failed"
        if exit_code is not None:
            what += f" with exit code {exit_code}"
        detail = self.stderr.splitlines()[-1] if self.stderr else "no error output"
        super().__init__(f"{what}: {detail[:500]}." + (f" {hint}" if hint else ""))


class PodmanUnavailable(PodmanError):
    """The ``podman`` program is missing or does not answer."""


def shown(identifier: str) -> str:
    """An id a client gave, quoted, and cut short when it is long."""
    return repr(identifier if len(identifier) <= 80 else identifier[:77] + "...")


class SandboxNotFound(SandboxError):
    def __init__(self, container_id: str, why: str = "") -> None:
        super().__init__(
            f"No sandbox with container_id {shown(container_id)}{why or ''}. Sandboxes are destroyed "
            "by destroy_container or when their lifetime ends; call create_container for a new one."
        )


class SandboxStopped(SandboxError):
    """The sandbox's container exists but has stopped: nothing runs in it any more."""


class SandboxLimitReached(SandboxError):
    pass


class MachineryFailed(SandboxError):
    """The server's own files or processes in a sandbox failed: the user's command did not run."""


# The agent's reason when fork() fails with EAGAIN: the sandbox is at its process limit.
FORK_AT_PROCESS_LIMIT = f"fork-{errno.EAGAIN}"
FORK_RETRY_SECONDS = 5.0
# The agent's "<what>-unwritable:<folder>:errno-<n>": what it could not write there.
UNWRITABLE = {"output-unwritable": "output files", "state-unwritable": "record"}


def machinery_failure(reason: str) -> SandboxError:
    """The tool error for a command the server could not start, from the agent's or library's reason."""
    if reason == FORK_AT_PROCESS_LIMIT:
        return SandboxError(
            "The sandbox is at its limit of 100 processes, so the command could not start (it did not run). "
            "Wait for some of its processes to end, or end them (for example kill the background jobs you "
            "started), then run the command again; if nothing helps, destroy the sandbox and create a new one."
        )
    parts = reason.split(":")
    if parts[0] in UNWRITABLE and len(parts) == 3:
        errno_text = parts[2].removeprefix("errno-")
        why = os.strerror(int(errno_text)) if errno_text.isdigit() else parts[2]
        cause = f"could not create the command's {UNWRITABLE[parts[0]]} in {parts[1]} inside the sandbox ({why})"
    else:
        cause = f"could not start the command in the sandbox ({reason[:300] or 'no reason given'})"
    return MachineryFailed(
        f"The server {cause}, so the command did not run. This is the server's machinery failing, not your "
        f"command. If a command changed the permissions of {DATA_DIR} or {STATE_DIR}, restore them "
        f"(chmod -R u+rwX {DATA_DIR}); otherwise destroy this sandbox with destroy_container and create a new one."
    )


class LimitsNotEnforced(SandboxError):
    """Podman on this host would start sandboxes without their memory, CPU or process limits."""


class ImageNotAllowed(SandboxError):
    pass


class InvalidCommand(SandboxError):
    pass


class CommandNotFound(SandboxError):
    pass


class FileNotShareable(SandboxError):
    pass


class FileLinkNotFound(SandboxError):
    pass


class InvalidPath(SandboxError):
    """A path that is not a plain absolute path inside the sandbox."""


class FileNotWritable(SandboxError):
    """write_file could not write where it was asked to."""


class ChannelError(SandboxError):
    """The command channel to a sandbox failed; the manager goes on without it where it can."""


class ChannelClosed(ChannelError):
    """The channel's process ended; the sandbox may be gone, or the process was killed."""


class ChannelRequestFailed(ChannelError):
    """The agent refused a request; the message is its reason."""


class DiskUnavailable(SandboxError):
    """A sandbox disk could not be made or mounted; the message says why."""


class InvalidAllowList(SandboxError):
    """create_container's allow_domains cannot be used as given."""


class SnapshotNotFound(SandboxError):
    def __init__(self, snapshot_id: str, why: str = "") -> None:
        super().__init__(
            f"No snapshot with snapshot_id {shown(snapshot_id)}{why}. Snapshots are removed by delete_snapshot and when "
            "they expire; list_snapshots shows yours."
        )


class SnapshotFailed(SandboxError):
    """A snapshot could not be taken or a fork could not be made from one."""


class SnapshotTooLarge(SandboxError):
    """An archive outgrew what it may take (the caller says which limit)."""

    def __init__(self, size_bytes: int) -> None:
        self.size_bytes = size_bytes
        super().__init__(f"the snapshot outgrew its limit at {size_bytes} bytes")


class SnapshotLimitReached(SandboxError):
    pass


class TakenElsewhere(SandboxError):
    """A pooled sandbox another server (sharing the sandboxes) handed out first: not this one's to use."""


class PortClosed(SandboxError):
    """Nothing accepts connections on that port inside the sandbox."""

    def __init__(self, port: int, why: str = "refused") -> None:
        self.port = port
        super().__init__(f"Nothing is listening on port {port} inside the sandbox ({why}). Start the server there "
                         f"(on 0.0.0.0 or 127.0.0.1, port {port}), e.g. in the background with execute_command, "
                         "then load the URL again.")


class PortLinkNotFound(SandboxError):
    pass


def write_refusal(path: str, reason: str) -> str:
    """FileNotWritable's message for what the sandbox answered a write with."""
    explained = {
        "is-a-directory": "it is a directory",
        "parent-not-a-directory": "a parent of it is a file, not a directory",
        "cannot-create-parent": "its parent directory cannot be created",
        "bad-path": "the path is not a plain absolute path",
    }.get(reason.split()[0] if reason else "", reason[:200])
    return f"Could not write {path[:200]!r}: {explained}. Pick another path, or check it with execute_command (ls -la)."
