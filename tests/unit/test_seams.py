"""The pure parts of the backend and the registry: a container's podman arguments and the quotas."""

from __future__ import annotations

import anyio
import pytest

from mcp_container_sandbox.sandbox.backend.abstract import ContainerSpec
from mcp_container_sandbox.sandbox.backend.podman import run_args
from mcp_container_sandbox.sandbox.contract import (
    HARDENING_FLAGS,
    LIMIT_FLAGS,
    ULIMIT_FLAGS,
)
from mcp_container_sandbox.sandbox.errors import SandboxLimitReached, SandboxNotFound
from mcp_container_sandbox.sandbox.model import Sandbox
from mcp_container_sandbox.sandbox.registry import SandboxRegistry


def _contains(args: list[str], flags: tuple[str, ...]) -> bool:
    return any(args[i:i + len(flags)] == list(flags) for i in range(len(args)))


def test_every_container_gets_the_products_limits_from_an_image() -> None:
    args = run_args(ContainerSpec("mcp-sandbox-x", {"a": "1"}, ("sleep", "9"), image="img:1", network="none",
                                  tmpfs=("/run/x:size=1m",), volumes=("/var/lib/x",)))
    assert _contains(args, LIMIT_FLAGS) and _contains(args, ULIMIT_FLAGS) and _contains(args, HARDENING_FLAGS)
    assert args[-4:] == ["sleep", "--", "img:1", "9"]
    assert args[args.index("--entrypoint") + 1] == "sleep"
    assert ["--network", "none"] == args[args.index("--network"):args.index("--network") + 2]
    assert "--rootfs" not in args and "a=1" in args[args.index("--label") + 1]


def test_a_container_on_its_own_disk_runs_from_the_rootfs_with_the_images_environment() -> None:
    args = run_args(ContainerSpec("n", {}, ("sleep", "9"), rootfs="/disks/n/root", env=("PATH=/bin",),
                                  workdir="/w", volumes=("/disks/n/fs/data:/var/lib/x",)))
    assert args[-3:] == ["/disks/n/root", "sleep", "9"] and args[-4] == "--rootfs"
    assert "--entrypoint" not in args and "--network" not in args
    assert _contains(args, ("--env", "PATH=/bin")) and _contains(args, ("--workdir", "/w"))
    assert _contains(args, LIMIT_FLAGS)


def _sandbox(container_id: str, tenant: str) -> Sandbox:
    return Sandbox(container_id, "img", 1.0, 4e9, tenant=tenant)


def test_quotas_count_sandboxes_being_made_and_free_their_place_on_failure() -> None:
    async def main() -> None:
        registry = SandboxRegistry(max_containers=3, max_per_tenant=2)
        async with registry.reserve("a"):
            registry.add(_sandbox("1", "a"))
        async with registry.reserve("a"):  # the second of a's two places, still being made
            with pytest.raises(SandboxLimitReached, match="SANDBOX_MAX_PER_TENANT"):
                async with registry.reserve("a"):
                    pass
        with pytest.raises(RuntimeError):
            async with registry.reserve("b"):
                raise RuntimeError("the create failed")
        async with registry.reserve("b"):
            registry.add(_sandbox("2", "b"))
        async with registry.reserve("a"):
            registry.add(_sandbox("3", "a"))
        with pytest.raises(SandboxLimitReached, match="SANDBOX_MAX_CONTAINERS"):
            async with registry.reserve("c"):
                pass
    anyio.run(main)


def test_another_tenants_sandbox_is_answered_as_one_that_does_not_exist() -> None:
    registry = SandboxRegistry(max_containers=3, max_per_tenant=0)
    registry.add(_sandbox("1", "a"))
    assert registry.get("1", "a").container_id == "1"
    with pytest.raises(SandboxNotFound) as theirs:
        registry.get("1", "b")
    with pytest.raises(SandboxNotFound) as nobodys:
        registry.get("2", "b")
    assert str(theirs.value).replace("1", "2") == str(nobodys.value)
    assert registry.list("b") == [] and registry.live(None) is None  # type: ignore[arg-type]


def test_the_agent_is_found_where_the_repository_keeps_its_source_and_build() -> None:
    """A checkout's server finds agent/sandbox-agent.c and build/sandbox-agent (else every command
    costs a podman exec, which still works: only the speed would say so)."""
    from mcp_container_sandbox.sandbox.runtime import channel

    assert channel.AGENT_SOURCE.is_file(), channel.AGENT_SOURCE
    assert (channel.ROOT / "pyproject.toml").is_file()
