"""Hosts as Linux network namespaces joined by veth pairs, for tests of many hosts for real.

A :class:`Lab` is a switch (a namespace holding a bridge) and hosts (a namespace each, whose
``eth0`` is one end of a veth pair and whose other end is a port of the bridge). The test process
joins the switch too (:meth:`Lab.join_operator`: a veth in the root namespace), so it talks to
the hosts as an operator's machine would, and may get a point-to-point link of its own to one
host (:meth:`Lab.direct_link`) that stays up while that host's switch link is down.
:meth:`Lab.cut` drops a host's link (``ip link set DEV down`` on the switch's port; no netem on
these machines) and :meth:`Lab.restore` brings it back.

Everything a lab creates lives in its own namespaces, named ``rv<id>-<host>``: deleting them
(:meth:`Lab.close`, also run by the fixtures' finalizers when a test fails) deletes every veth
pair and bridge with them, root-namespace ends included, and kills nothing else. Processes run in
a host with ``ip netns exec`` (which execs the command: the pid is the program's own), each in a
session of its own so the lab can kill exactly its own process groups.

Needs root and ``ip`` (iproute2); :func:`available` says whether this machine has both.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from celery_helpers import ENV_PREFIX, WorkerProcess, celery_command

__all__ = ["Host", "Lab", "available"]


def available() -> str | None:
    """None when network namespaces can be made here, else why not (a skip reason)."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "iproute2 (ip) is not installed"
    probe = f"rvprobe{secrets.token_hex(3)}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"ip netns add failed: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")


def _free_subnet() -> ipaddress.IPv4Network:
    """A /24 in 10.200.0.0/13 that no route of the root namespace touches."""
    routes = subprocess.run(["ip", "-4", "route", "show", "table", "all"], capture_output=True,
                            text=True).stdout  # fmt: skip
    used = []
    for line in routes.splitlines():
        with contextlib.suppress(ValueError, IndexError):
            used.append(ipaddress.ip_network(line.split()[0], strict=False))
    for _ in range(100):
        net = ipaddress.ip_network(f"10.{200 + secrets.randbelow(8)}.{secrets.randbelow(256)}.0/24")
        if not any(net.overlaps(u) for u in used if u.version == 4 and u.prefixlen > 0):
            return net  # type: ignore[return-value]
    raise RuntimeError("no free 10.200.0.0/13 subnet for the lab")


@dataclass
class Host:
    """One namespace-host on the lab's switch."""

    name: str
    netns: str
    address: str
    #: The switch-side end of its link (what :meth:`Lab.cut` sets down).
    port: str
    #: Its address on a direct link to the test process, if it has one.
    direct_address: str | None = None

    def command(self, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.netns, *argv]


@dataclass
class Lab:
    """A switch and its hosts (see the module docstring). Use as a context manager or call
    :meth:`close`: it removes every namespace and kills every process it started."""

    id: str = field(default_factory=lambda: secrets.token_hex(3))
    hosts: dict[str, Host] = field(default_factory=dict)
    processes: list[subprocess.Popen[Any]] = field(default_factory=list)
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="revoker-netns-")))
    _subnet: ipaddress.IPv4Network | None = None
    _next: int = 1
    _links: int = 0
    _namespaces: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._subnet = _free_subnet()
        self.switch = self._namespace("sw")
        _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.switch, "link", "set", "br0", "up")

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- topology ------------------------------------------------------------------------------

    def _namespace(self, role: str) -> str:
        name = f"rv{self.id}-{role}"
        _ip("netns", "add", name)
        self._namespaces.append(name)
        _ip("-n", name, "link", "set", "lo", "up")
        return name

    def _address(self) -> str:
        assert self._subnet is not None
        self._next += 1
        return str(self._subnet.network_address + self._next - 1)

    def _veth(self) -> tuple[str, str]:
        """A fresh veth pair in the root namespace (names <= 15 characters)."""
        self._links += 1
        a, b = f"rv{self.id}a{self._links}", f"rv{self.id}b{self._links}"
        _ip("link", "add", a, "type", "veth", "peer", "name", b)
        return a, b

    def add_host(self, name: str) -> Host:
        """A new namespace-host with ``eth0`` on the switch."""
        netns = self._namespace(name)
        inside, port = self._veth()
        _ip("link", "set", inside, "netns", netns)
        _ip("-n", netns, "link", "set", inside, "name", "eth0")
        address = self._address()
        _ip("-n", netns, "addr", "add", f"{address}/24", "dev", "eth0")
        _ip("-n", netns, "link", "set", "eth0", "up")
        _ip("link", "set", port, "netns", self.switch)
        _ip("-n", self.switch, "link", "set", port, "master", "br0")
        _ip("-n", self.switch, "link", "set", port, "up")
        host = Host(name, netns, address, port)
        self.hosts[name] = host
        return host

    def join_operator(self) -> str:
        """Put the test process (root namespace) on the switch; returns its address."""
        mine, port = self._veth()
        address = self._address()
        _ip("addr", "add", f"{address}/24", "dev", mine)
        _ip("link", "set", mine, "up")
        _ip("link", "set", port, "netns", self.switch)
        _ip("-n", self.switch, "link", "set", port, "master", "br0")
        _ip("-n", self.switch, "link", "set", port, "up")
        return address

    def direct_link(self, host: Host) -> str:
        """A point-to-point link from the test process to ``host`` (a /30 of its own), up
        whatever happens to the host's switch link; returns the host's address on it."""
        assert self._subnet is not None
        # The top of the lab's /24 (.252/30), apart from the switch's addresses (.1 up).
        base = self._subnet.network_address + 252
        mine, inside = self._veth()
        _ip("link", "set", inside, "netns", host.netns)
        _ip("-n", host.netns, "addr", "add", f"{base + 2}/30", "dev", inside)
        _ip("-n", host.netns, "link", "set", inside, "up")
        _ip("addr", "add", f"{base + 1}/30", "dev", mine)
        _ip("link", "set", mine, "up")
        host.direct_address = str(base + 2)
        return host.direct_address

    def cut(self, host: Host) -> None:
        """Drop ``host``'s switch link: its packets go nowhere, its TCP connections hang."""
        _ip("-n", self.switch, "link", "set", host.port, "down")

    def restore(self, host: Host) -> None:
        """Bring ``host``'s switch link back up."""
        _ip("-n", self.switch, "link", "set", host.port, "up")

    # --- processes -----------------------------------------------------------------------------

    def spawn(
        self, host: Host, argv: Sequence[str], *, env: Mapping[str, str] | None = None,
        log_name: str,
    ) -> tuple[subprocess.Popen[Any], Path]:  # fmt: skip
        """Run ``argv`` in ``host`` (its own session), output to a log file in the lab's
        directory; the lab kills it on close."""
        log_path = self.workdir / f"{log_name}.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                host.command(argv), env=dict(env) if env is not None else None, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        self.processes.append(process)
        return process, log_path

    def start_redis(self, host: Host, port: int = 6379, *extra: str) -> redis.Redis:
        """A redis-server in ``host`` on its address; returns a client of it (from the test
        process, which must have joined the switch)."""
        argv = ["redis-server", "--bind", host.address, "--port", str(port), "--save", "",
                "--appendonly", "no", "--protected-mode", "no", "--dir", str(self.workdir),
                *extra]  # fmt: skip
        process, log_path = self.spawn(host, argv, log_name=f"redis-{host.name}")
        client = redis.Redis(host=host.address, port=port, socket_timeout=5)
        deadline = time.monotonic() + 15
        while True:
            try:
                client.ping()
                return client
            except redis.ConnectionError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"redis-server in {host.name} did not start:\n{log_path.read_text()}"
                    ) from None
                time.sleep(0.05)

    def start_worker(
        self, host: Host, env: Mapping[str, str], *, concurrency: int = 1,
        extra_args: Sequence[str] = (),
    ) -> WorkerProcess:  # fmt: skip
        """``celery -A revoker.worker worker`` in ``host`` with ``env`` (REVOKER_* variables),
        ready (consuming) when this returns."""
        full = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
        full.update(env)
        full.setdefault("PYTHONUNBUFFERED", "1")
        hostname = f"{host.name}-{uuid.uuid4().hex[:6]}@{host.address}"
        argv = [*celery_command(), "-A", "revoker.worker", "worker", "--loglevel", "INFO",
                "--pool", "prefork", "--concurrency", str(concurrency), "--hostname", hostname,
                "--without-gossip", "--without-mingle", *extra_args]  # fmt: skip
        process, log_path = self.spawn(host, argv, env=full, log_name=f"worker-{host.name}")
        return WorkerProcess(process, log_path, hostname).wait_ready(timeout=60)

    # --- clean-up ------------------------------------------------------------------------------

    def close(self) -> None:
        """Kill the lab's process groups, then delete its namespaces (and so every link)."""
        for process in self.processes:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
        for process in self.processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(10)
        for name in reversed(self._namespaces):
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
        self._namespaces.clear()
        # Root-namespace ends vanish with their peers; this only catches a half-made pair.
        for n in range(1, self._links + 1):
            for end in (f"rv{self.id}a{n}", f"rv{self.id}b{n}"):
                subprocess.run(["ip", "link", "del", end], capture_output=True)
        shutil.rmtree(self.workdir, ignore_errors=True)

    def leftovers(self) -> list[str]:
        """Namespaces and links of this lab still present (empty after :meth:`close`)."""
        netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
        tag = f"rv{self.id}"
        return [line.split()[0] for line in netns.splitlines() if line.startswith(tag)] + [
            line.split(":")[1].strip().split("@")[0] for line in links.splitlines() if tag in line
        ]
