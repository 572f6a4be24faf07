"""Per-sandbox disks: each sandbox writes to an ext4 image of its own, so it cannot fill the host.

Podman bounds a container's disk (``--storage-opt size=``) only on XFS with project quotas,
which hosts of this kind lack (an ext4 root; a kernel without XFS quota support). So where the
server runs as root with loop devices, a sandbox named NAME gets:

    DIR/<namespace>/NAME.img    sparse, formatted ext4, SANDBOX_DISK_LIMIT_BYTES long
    DIR/<namespace>/NAME/fs     that image, loop-mounted
    DIR/<namespace>/NAME/root   an overlay: the image's layers below, upper and work dirs on fs
    DIR/<namespace>/NAME/fs/data  the server's own folder in the sandbox, bind-mounted

and the container runs with ``--rootfs DIR/<namespace>/NAME/root``. Writing past the limit is
the sandbox's own "No space left on device"; on the host it takes at most the limit. The image's
layers come from Podman's overlay or VFS storage (the nested deployment uses VFS). Without root,
tools or loop devices (rootless Podman, most PaaS containers) ``probe`` says why at start, and
sandboxes run from their image as usual, their disk use bounded only by the volume under Podman.
"""

from __future__ import annotations

import fcntl
import logging
import os
import secrets
import shutil
import stat
from pathlib import Path, PurePosixPath

import anyio

from ..errors import DiskUnavailable, SnapshotFailed
from ..paths import DATA_DIR
from .abstract import Backend, ImageRoot
from .layers import unpack
from .podman_cli import system_env

logger = logging.getLogger("mcp_sandbox.disks")

# The mount option string of an overlay must fit in a page.
MAX_LOWERDIR = 3500
# Podman storage drivers whose image layers an overlay can sit on.
STORAGE_DRIVERS = ("overlay", "vfs")
# A new disk's mounts are tried this often before its create fails.
MOUNT_ATTEMPTS = 3
# Disks kept formatted and loop-mounted ahead, named SPARE_PREFIX + a token: a create renames one
# to its sandbox's name and mounts only the overlay (mkfs and the loop mount cost ~50 ms a create).
SPARES = 2
SPARE_PREFIX = ".spare-"
LOOP_CTL_GET_FREE = 0x4C82  # linux/loop.h
LOOP_MAJOR = 7


async def run_tool(*argv: str, env: dict[str, str] | None = None) -> None:
    """Run a host tool (mkfs, mount, umount); DiskUnavailable says why it failed."""
    try:
        result = await anyio.run_process(list(argv), check=False, env=env)
    except OSError as exc:
        raise DiskUnavailable(f"{argv[0]}: {exc}") from None
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).decode(errors="replace").strip().splitlines()
        said = f"{detail[-1] if detail else result.returncode}"
        if argv[0] == "mount":  # mount(8) only says "dmesg(1) may have more information"
            said += await _kernel_says(env)
        raise DiskUnavailable(f"'{' '.join(argv[:2])}' failed: {said}")


def cannot_mount(env: dict[str, str], what_needs_root: str) -> str:
    """Why the server cannot make and loop-mount file systems here ("" when it can): root and the tools."""
    if os.geteuid() != 0:
        return f"the server does not run as root ({what_needs_root})"
    missing = [tool for tool in ("mkfs.ext4", "mount", "umount") if shutil.which(tool, path=env.get("PATH")) is None]
    return f"{', '.join(missing)} not found (Debian: apt-get install e2fsprogs mount)" if missing else ""


def ensure_free_loop_node() -> None:
    """Give the next free loop device a node in /dev when it has none. In a container (the nested
    deployment) /dev is a copy made when it started, without the loop devices the kernel adds
    later, and mount(8) would fail on the one it is handed."""
    try:
        control = os.open("/dev/loop-control", os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return  # no loop devices at all: mount says so
    try:
        number = fcntl.ioctl(control, LOOP_CTL_GET_FREE)
    except OSError:
        return
    finally:
        os.close(control)
    node = f"/dev/loop{number}"
    if not os.path.exists(node):
        try:
            os.mknod(node, 0o660 | stat.S_IFBLK, os.makedev(LOOP_MAJOR, number))
            logger.info("made the missing loop device node %s", node)
        except FileExistsError:
            pass
        except OSError as exc:
            logger.warning("could not make the loop device node %s: %s", node, exc)


async def _kernel_says(env: dict[str, str] | None) -> str:
    """The kernel's latest words on loop devices, overlays or ext4, for a failed mount's message."""
    try:
        result = await anyio.run_process(["dmesg"], check=False, env=env)
    except OSError:
        return ""
    lines = [line for line in result.stdout.decode(errors="replace").splitlines()[-20:]
             if any(word in line for word in ("overlay", "loop", "EXT4"))]
    return f" (kernel: {lines[-1].strip()[:300]})" if lines else ""


class SandboxDisks:
    def __init__(self, base: str, namespace: str, limit_bytes: int, backend: Backend) -> None:
        self.dir = Path(base) / namespace
        self.limit_bytes = limit_bytes
        self.enabled = False
        self.why_not = ""
        self.backend = backend
        self._env = system_env()
        self._images: dict[str, ImageRoot] = {}
        self._image_locks: dict[str, anyio.Lock] = {}
        self._spares: list[str] = []  # ready: formatted, mounted at <dir>/<spare>/fs
        self._spare_taken = anyio.Event()

    async def _run(self, *argv: str) -> None:
        await run_tool(*argv, env=self._env)

    async def probe(self) -> None:
        """Decide once, at start, whether sandboxes get disks: the settings, root, the tools,
        Podman's storage driver, and a small disk made, mounted and removed. Disabled, why_not
        says why; a sandbox is then made without one rather than refused."""
        self.enabled = False
        if self.limit_bytes <= 0:
            self.why_not = "SANDBOX_DISK_LIMIT_BYTES is 0"
            return
        self.why_not = cannot_mount(self._env, "loop and overlay mounts need it")
        if self.why_not:
            return
        try:
            info = await self.backend.host_info()
        except Exception as exc:  # Podman is missing or hangs: /health says so
            self.why_not = f"Podman did not answer ({exc})"
            return
        driver = str((info.get("store") or {}).get("graphDriverName") or "")
        if driver not in STORAGE_DRIVERS:
            self.why_not = (f"Podman's storage driver is {driver or 'unknown'!r}; a sandbox disk sits on an image "
                            f"of {' or '.join(STORAGE_DRIVERS)} storage")
            return
        name = f"probe-{os.getpid()}"
        empty = self.dir / f".{name}-lower"
        try:
            empty.mkdir(parents=True, exist_ok=True)
            await self._mount(name, str(empty), fresh=True, size=16 * 1024 * 1024)
        except (DiskUnavailable, OSError) as exc:
            self.why_not = str(exc)
        else:
            self.enabled = True
        finally:
            await self.release(name)
            shutil.rmtree(empty, ignore_errors=True)

    def root(self, name: str) -> Path:
        return self.dir / name / "root"

    def data(self, name: str) -> Path:
        """The server's own folder of a sandbox, on its disk but beside its root file system."""
        return self.dir / name / "fs" / "data"

    def upper(self, name: str) -> Path:
        """What the sandbox changed since its image (the overlay's upper folder, on its disk)."""
        return self.dir / name / "fs" / "upper"

    def place(self, name: str, path_inside: str, files: list[tuple[str, bytes, int]]) -> None:
        """Write files into a folder of the sandbox's data mount (DATA_DIR inside) before it starts."""
        relative = PurePosixPath(path_inside).relative_to(DATA_DIR)
        folder = self.data(name) / relative
        folder.mkdir(parents=True, exist_ok=True)
        for file_name, data, mode in files:
            target = folder / file_name
            target.write_bytes(data)
            target.chmod(mode)

    def image_file(self, name: str) -> Path:
        return self.dir / f"{name}.img"

    def exists(self, name: str) -> bool:
        return self.image_file(name).exists() or (self.dir / name).exists()

    def names(self) -> set[str]:
        """Sandbox names that have a disk here."""
        if not self.dir.is_dir():
            return set()
        return ({p.stem for p in self.dir.glob("*.img") if not p.name.startswith(".")}
                | {p.name for p in self.dir.iterdir() if p.is_dir() and not p.name.startswith(".")})

    async def image_root(self, image: str) -> ImageRoot:
        cached = self._images.get(image)
        if cached is not None:
            return cached
        async with self._image_locks.setdefault(image, anyio.Lock()):  # a burst asks Podman once
            cached = self._images.get(image)
            if cached is not None:
                return cached
            return await self._find_image_root(image)

    async def _find_image_root(self, image: str) -> ImageRoot:
        root = await self.backend.image_root(image)
        if len(root.lowerdir) > MAX_LOWERDIR:
            raise DiskUnavailable(f"the image {image!r} has too many layers for one overlay mount")
        await self.backend.keep_image(image, root.image_id)
        self._images[image] = root
        return root

    async def create(self, name: str, image: str, layer: Path | None = None) -> ImageRoot:
        """A fresh disk for a sandbox, mounted at root(name) over the image's layers (and a
        snapshot's, when given); returns what the container takes from the image besides (its
        environment and working folder). A spare disk is used when one is ready."""
        root = await self.image_root(image)
        spare = await self._take_spare(name)
        for attempt in range(1, MOUNT_ATTEMPTS + 1):
            try:
                await self._mount(name, root.lowerdir, fresh=not spare, size=self.limit_bytes, layer=layer,
                                  spare=spare)
                break
            except SnapshotFailed:
                await self.release(name)
                raise
            except (DiskUnavailable, OSError) as exc:
                await self.release(name)
                spare = False  # made anew from here on
                if attempt == MOUNT_ATTEMPTS:
                    raise DiskUnavailable(str(exc)) from None
                # A loop device or mount that a concurrent one disturbed: the disk is new and
                # nobody uses it yet, so making it again is safe.
                logger.warning("sandbox disk %s: attempt %d failed (%s); making it again", name, attempt, exc)
                await anyio.sleep(0.2 * attempt)
        return root

    async def remount(self, name: str, image: str) -> None:
        """Mount an existing disk again (after a reboot of the host) before its container starts."""
        await self._mount(name, (await self.image_root(image)).lowerdir, fresh=False, size=self.limit_bytes)

    async def _mount(self, name: str, lowerdir: str, fresh: bool, size: int, layer: Path | None = None,
                     spare: bool = False) -> None:
        """The disk's file system at <name>/fs (made when fresh; a spare has it already), then the
        overlay at <name>/root; a snapshot's layer is unpacked into a new disk before the overlay."""
        if not spare:
            await self._mount_fs(name, fresh, size)
        fs, root = self.dir / name / "fs", self.root(name)
        if (fresh or spare) and layer is not None:  # before the overlay is mounted over it
            await unpack(layer, fs / "upper", self._env)
        root.mkdir(parents=True, exist_ok=True)
        if not os.path.ismount(root):
            await self._run(
                "mount", "-t", "overlay", "overlay", "-o",
                f"lowerdir={lowerdir},upperdir={fs / 'upper'},workdir={fs / 'work'}", str(root),
            )

    async def _mount_fs(self, name: str, fresh: bool, size: int) -> None:
        image_file, fs = self.image_file(name), self.dir / name / "fs"
        fs.mkdir(parents=True, exist_ok=True)
        if fresh:
            with open(image_file, "wb") as handle:
                handle.truncate(size)
            # No journal, no reserved blocks: the sandbox gets all of its space, at once.
            await self._run("mkfs.ext4", "-q", "-F", "-O", "^has_journal", "-E", "nodiscard", "-m", "0", str(image_file))
        elif not image_file.exists():
            raise DiskUnavailable(f"the disk image {image_file} is gone")
        if not os.path.ismount(fs):
            ensure_free_loop_node()
            await self._run("mount", "-o", "loop,nodev", str(image_file), str(fs))
        for sub in ("upper", "work", "data"):
            (fs / sub).mkdir(exist_ok=True)

    # ----- spares

    async def keep_spares(self) -> None:
        """Keep SPARES disks made ahead, one at a time, for as long as the server runs."""
        while True:
            while len(self._spares) < SPARES:
                spare = f"{SPARE_PREFIX}{secrets.token_hex(4)}"
                try:
                    await self._mount_fs(spare, fresh=True, size=self.limit_bytes)
                except (DiskUnavailable, OSError) as exc:
                    logger.warning("could not make a spare sandbox disk (%s); creates make their own", exc)
                    await self.release(spare)
                    await anyio.sleep(30)
                    continue
                self._spares.append(spare)
            self._spare_taken = anyio.Event()
            await self._spare_taken.wait()

    async def _take_spare(self, name: str) -> bool:
        """A ready spare disk, renamed to be the sandbox's (its mount goes with its folder)."""
        while self._spares:
            spare = self._spares.pop(0)
            self._spare_taken.set()
            try:
                os.rename(self.dir / spare, self.dir / name)
                os.rename(self.image_file(spare), self.image_file(name))
                return True
            except OSError as exc:
                logger.warning("could not use the spare disk %s (%s)", spare, exc)
                await self.release(name)
                await self.release(spare)
        return False

    async def release_spares(self) -> None:
        """Unmount and delete the spare disks (a stopping server; also what one that died left)."""
        self._spares = []
        if self.dir.is_dir():
            for path in self.dir.glob(f"{SPARE_PREFIX}*.img"):
                await self.release(path.stem)
            for path in self.dir.glob(f"{SPARE_PREFIX}*"):
                if path.is_dir():
                    await self.release(path.name)

    async def release(self, name: str) -> None:
        """Unmount and delete a sandbox's disk (its container must be gone); fine if there is none."""
        for mount_point in (self.root(name), self.dir / name / "fs"):
            if os.path.ismount(mount_point):
                try:
                    await self._run("umount", str(mount_point))
                except DiskUnavailable as exc:
                    logger.warning("could not unmount %s (%s); detaching it lazily", mount_point, exc)
                    try:
                        await self._run("umount", "-l", str(mount_point))
                    except DiskUnavailable:
                        return  # leave the files: deleting under a live mount would reach into it
        shutil.rmtree(self.dir / name, ignore_errors=True)
        self.image_file(name).unlink(missing_ok=True)
