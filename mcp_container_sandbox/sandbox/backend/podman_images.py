"""The Podman backend's images: an image's id, the folders of its layers (what a sandbox's own disk
is laid over), and the holder that keeps it on the host.

A container run from a rootfs does not count as a user of its image, so ``podman image prune -a``
would delete the layers under running sandboxes. A stopped container per image (never started)
keeps Podman from removing it: ``mcp-sandbox-holds-<image id>``."""

from __future__ import annotations

import json

from ..errors import DiskUnavailable
from .abstract import ImageRoot
from .podman_cli import Podman

LABEL_HOLDS_IMAGE = "mcp-sandbox.holds-image"


class PodmanImages:
    podman: Podman

    async def image_id(self, image: str) -> str:
        inspected = await self.podman.run("image", "inspect", "--format", "{{.Id}}", "--", image, check=False, timeout=60)
        return inspected.stdout.decode(errors="replace").strip() if inspected.exit_code == 0 else ""

    async def image_root(self, image: str) -> ImageRoot:
        result = await self.podman.run("image", "inspect", "--format", "json", "--", image, check=False, timeout=60)
        if result.exit_code != 0:  # not on this host yet: pull it, as podman run would
            await self.podman.run("pull", "--quiet", "--", image, timeout=600)
            result = await self.podman.run("image", "inspect", "--format", "json", "--", image, timeout=60)
        entry = (json.loads(result.stdout or b"[]") or [{}])[0]
        driver = entry.get("GraphDriver") or {}
        data = driver.get("Data") or {}
        if driver.get("Name") == "overlay" and data.get("UpperDir"):
            lowerdir = ":".join(d for d in (data.get("UpperDir"), data.get("LowerDir")) if d)
        elif driver.get("Name") == "vfs":
            # VFS keeps each layer as a whole tree, and Podman 4 does not show its path in the
            # image's data: `podman image mount` names it (for VFS it mounts nothing).
            mounted = await self.podman.run("image", "mount", "--", entry.get("Id") or image, timeout=60)
            lowerdir = mounted.stdout.decode(errors="replace").strip()
        else:
            raise DiskUnavailable(f"Podman's storage driver {driver.get('Name')!r} is not one a sandbox disk can sit on")
        config = entry.get("Config") or {}
        return ImageRoot(entry.get("Id", ""), lowerdir, tuple(config.get("Env") or ()), config.get("WorkingDir") or "")

    async def keep_image(self, image: str, image_id: str) -> None:
        holder = f"mcp-sandbox-holds-{image_id[:12]}"
        result = await self.podman.run(
            "create", "--name", holder, "--label", f"{LABEL_HOLDS_IMAGE}={image}", "--network", "none",
            "--entrypoint", "true", "--", image_id or image, check=False, timeout=60,
        )
        if result.exit_code != 0 and "already in use" not in result.stderr:
            raise DiskUnavailable(f"could not create {holder}, which keeps the image from removal: {result.stderr.strip()[-300:]}")
