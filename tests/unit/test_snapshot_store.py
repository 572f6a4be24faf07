"""The snapshot store on the host and the layer archive (sandbox/snapshots.py, sandbox/layers.py),
without Podman: what a restart finds, tenancy, quotas, names, and a round trip of an overlay's
upper folder (whiteouts and opaque folders included)."""

from __future__ import annotations

import json
import os
import stat
import time
from dataclasses import asdict
from pathlib import Path

import anyio
import pytest

from mcp_container_sandbox.sandbox.backend.layers import pack, unpack
from mcp_container_sandbox.sandbox.errors import (
    SandboxError,
    SnapshotLimitReached,
    SnapshotNotFound,
    SnapshotTooLarge,
)
from mcp_container_sandbox.sandbox.storage.snapshots import (
    REASON_EXPIRED,
    Snapshot,
    Snapshots,
    check_name,
)


def store(tmp_path: Path, max_per_tenant: int = 10, max_bytes: int = 10**9) -> Snapshots:
    return Snapshots(tmp_path / "snapshots", 3600, max_per_tenant, max_bytes, backend=None, disks=None,  # type: ignore[arg-type]
                     runtime="", env={})


def keep(snapshots: Snapshots, snapshot_id: str, tenant: str = "a", size: int = 10, expires_in: float = 3600,
         reason: str = "requested", source: str = "c" * 32) -> Snapshot:
    now = time.time()
    snapshot = Snapshot(snapshot_id, "n", tenant, size, now, now + expires_in, source, reason, "img", "sha")
    snapshots.dir.mkdir(parents=True, exist_ok=True)
    (snapshots.dir / f"{snapshot_id}.json").write_text(json.dumps(asdict(snapshot)))
    (snapshots.dir / f"{snapshot_id}.tar").write_bytes(b"x" * size)
    return snapshot


def test_a_restart_finds_whole_snapshots_and_drops_the_rest(tmp_path: Path) -> None:
    snapshots = store(tmp_path)
    good = keep(snapshots, "snap-" + "1" * 32)
    keep(snapshots, "snap-" + "2" * 32, expires_in=-1)  # expired while the server was down
    keep(snapshots, "snap-" + "3" * 32)
    (snapshots.dir / f"snap-{'3' * 32}.tar").unlink()  # a record without its archive
    (snapshots.dir / f"snap-{'4' * 32}.tar").write_bytes(b"orphan")  # an archive without its record
    (snapshots.dir / f"snap-{'5' * 32}.tar.part").write_bytes(b"half")  # a server stopped while writing
    (snapshots.dir / f"snap-{'6' * 32}.json").write_text("{not json")
    snapshots.load()
    assert [s.snapshot_id for s in snapshots.list("a")] == [good.snapshot_id]
    assert sorted(p.name for p in snapshots.dir.iterdir()) == [f"{good.snapshot_id}.json", f"{good.snapshot_id}.tar"]


def test_another_tenants_snapshot_reads_like_a_missing_one(tmp_path: Path) -> None:
    snapshots = store(tmp_path)
    theirs = keep(snapshots, "snap-" + "1" * 32, tenant="b")
    snapshots.load()
    with pytest.raises(SnapshotNotFound) as foreign:
        snapshots.get(theirs.snapshot_id, "a")
    with pytest.raises(SnapshotNotFound) as missing:
        snapshots.get("snap-" + "9" * 32, "a")
    assert str(foreign.value) == str(missing.value).replace("9" * 32, "1" * 32)
    with pytest.raises(SnapshotNotFound):
        snapshots.delete(theirs.snapshot_id, "a")
    assert snapshots.get(theirs.snapshot_id, "b") == theirs
    assert snapshots.list("a") == []


def test_quotas_count_and_bytes(tmp_path: Path) -> None:
    snapshots = store(tmp_path, max_per_tenant=2, max_bytes=100)
    keep(snapshots, "snap-" + "1" * 32, size=60)
    snapshots.load()
    room, message = snapshots._room("a")
    assert room == 40 and "40 bytes left" in message.format(size=50) and "SANDBOX_SNAPSHOT_MAX_BYTES" in message
    keep(snapshots, "snap-" + "2" * 32, size=10)
    snapshots.load()
    with pytest.raises(SnapshotLimitReached, match="SANDBOX_MAX_SNAPSHOTS_PER_TENANT"):
        snapshots._room("a")
    assert snapshots._room("b")[0] == 100  # another tenant's are not counted
    snapshots.delete("snap-" + "2" * 32, "a")
    keep(snapshots, "snap-" + "3" * 32, size=40)
    snapshots.load()
    snapshots.max_per_tenant = 3
    with pytest.raises(SnapshotLimitReached, match="already hold 100 bytes"):
        snapshots._room("a")


def test_expiry_notes_and_names(tmp_path: Path) -> None:
    snapshots = store(tmp_path)
    kept = keep(snapshots, "snap-" + "1" * 32, reason=REASON_EXPIRED, source="d" * 32)
    snapshots.load()
    note = snapshots.kept_from("d" * 32, "a")
    assert kept.snapshot_id in note and f"create_container(snapshot_id='{kept.snapshot_id}')" in note
    assert snapshots.kept_from("d" * 32, "b") == ""  # another tenant hears nothing of it
    snapshots.mark("e" * 32)
    assert snapshots.marked("e" * 32) and not snapshots.marked("../x")
    snapshots.keep_marks(set())
    assert not snapshots.marked("e" * 32)
    assert snapshots.reap_expired(time.time() + 7200) == [kept.snapshot_id]
    assert snapshots.kept_from("d" * 32, "a") == "" and not any(snapshots.dir.glob("snap-*"))
    assert check_name(None) == "" and check_name(" mine ") == "mine"
    with pytest.raises(SandboxError, match="at most 128"):
        check_name("n" * 129)


@pytest.mark.skipif(os.geteuid() != 0, reason="whiteouts (device nodes) and trusted.* attributes need root")
def test_an_upper_folder_survives_the_round_trip(tmp_path: Path) -> None:
    upper = tmp_path / "upper"
    (upper / "etc").mkdir(parents=True)
    (upper / "etc" / "new.conf").write_text("new\n")
    os.chown(upper / "etc" / "new.conf", 1234, 5678)
    os.chmod(upper / "etc" / "new.conf", 0o4750)  # after chown, which clears setuid
    os.mknod(upper / "etc" / "deleted", 0o000 | stat.S_IFCHR, os.makedev(0, 0))  # a whiteout
    (upper / "opt").mkdir()
    os.setxattr(upper / "opt", "trusted.overlay.opaque", b"y")  # a folder that replaced the image's
    (upper / "empty").mkdir()
    os.symlink("/etc/new.conf", upper / "link")
    archive = tmp_path / "layer.tar"
    size = anyio.run(pack, upper, archive, 10**9)
    assert size == archive.stat().st_size > 0
    restored = tmp_path / "restored"
    anyio.run(unpack, archive, restored)
    new = (restored / "etc" / "new.conf").stat()
    assert (new.st_mode & 0o7777, new.st_uid, new.st_gid) == (0o4750, 1234, 5678)
    deleted = (restored / "etc" / "deleted").lstat()
    assert stat.S_ISCHR(deleted.st_mode) and deleted.st_rdev == os.makedev(0, 0)
    assert os.getxattr(restored / "opt", "trusted.overlay.opaque") == b"y"
    assert (restored / "empty").is_dir() and os.readlink(restored / "link") == "/etc/new.conf"
    # Over the cap: stopped, and nothing is left.
    (upper / "big").write_bytes(os.urandom(200_000))
    with pytest.raises(SnapshotTooLarge):
        anyio.run(pack, upper, tmp_path / "too-big.tar", 100_000)
    assert not (tmp_path / "too-big.tar").exists()
