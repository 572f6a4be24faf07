"""A sandbox's writable layer as one archive: what a snapshot holds, and how a fork gets it back.

Both homes of a sandbox's files here are overlays: its own disk (disks.py) or Podman's overlay
storage. The overlay's upper folder holds exactly what changed since the image: new and changed
files whole, a deleted file as a whiteout (a character device 0/0), a folder that replaced one of
the image as an "opaque" folder (the trusted.overlay.opaque attribute). GNU tar keeps all of
that (devices, owners, modes, links, empty folders, those attributes), so packing the upper
folder and unpacking it into a new sandbox's empty upper folder, over the same image, gives the
same file system. The folder is read and written on the host, never through the sandbox.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path

import anyio
from anyio.abc import Process

from ..errors import SnapshotFailed, SnapshotTooLarge

TAR_OPTIONS = (
    "--xattrs", "--xattrs-include=trusted.overlay.*", "--xattrs-include=user.*",
    "--numeric-owner", "--sparse", "--one-file-system",
)
# While an archive is written, its size is looked at this often (it stops at the cap).
POLL_SECONDS = 0.02


async def pack(upper: Path, archive: Path, cap_bytes: int, env: dict[str, str] | None = None) -> int:
    """Archive the upper folder into archive (a new file), stopping once it outgrows cap_bytes
    (SnapshotTooLarge, nothing left behind). Returns the archive's size."""
    argv = ["tar", "--create", "--file", str(archive), "--directory", str(upper), *TAR_OPTIONS, "."]
    said, too_large = bytearray(), 0
    try:
        async with await anyio.open_process(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                            env=env) as process, anyio.create_task_group() as tg:
            tg.start_soon(_drain, process, said)
            while process.returncode is None:
                with anyio.move_on_after(POLL_SECONDS):
                    await process.wait()
                size = _size(archive)
                if size > cap_bytes:
                    too_large = size
                    with contextlib.suppress(ProcessLookupError):  # it may have just ended
                        process.kill()
                    await process.wait()
    except OSError as exc:
        archive.unlink(missing_ok=True)
        raise SnapshotFailed(f"tar: {exc}") from None
    except BaseException:
        archive.unlink(missing_ok=True)
        raise
    # 1 is tar's "a file changed as it was read": not with the sandbox frozen, and no harm in any case.
    if not too_large and process.returncode not in (0, 1):
        archive.unlink(missing_ok=True)
        lines = said.decode(errors="replace").strip().splitlines()
        raise SnapshotFailed(f"tar exited with {process.returncode}: {lines[-1] if lines else ''}")
    size = too_large or _size(archive)
    if size > cap_bytes:
        archive.unlink(missing_ok=True)
        raise SnapshotTooLarge(size)
    return size


async def unpack(archive: Path, upper: Path, env: dict[str, str] | None = None) -> None:
    """Unpack an archive of pack() into an empty upper folder, before the overlay is mounted."""
    upper.mkdir(parents=True, exist_ok=True)
    argv = ["tar", "--extract", "--file", str(archive), "--directory", str(upper), *TAR_OPTIONS,
            "--same-owner", "--preserve-permissions"]
    try:
        result = await anyio.run_process(argv, check=False, env=env)
    except OSError as exc:
        raise SnapshotFailed(f"tar: {exc}") from None
    if result.returncode != 0:
        said = result.stderr.decode(errors="replace").strip().splitlines()
        raise SnapshotFailed(f"unpacking the snapshot failed: {said[-1] if said else result.returncode}")


async def _drain(process: Process, said: bytearray) -> None:
    """Keep tar's complaints (the last 4 KiB), so that a long list of them never stops it."""
    assert process.stderr is not None
    async for chunk in process.stderr:
        said.extend(chunk)
        del said[:-4096]


def _size(path: Path) -> int:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return 0
