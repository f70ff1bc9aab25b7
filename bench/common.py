"""Helpers shared by the benchmark modules (``bench/<name>.py``, run by ``bench/run.py``).

The contract of a module: ``run(quick: bool = False) -> str`` starts what it needs, measures
several rounds, stops everything, and returns a Markdown section starting with ``## `` that names
the command reproducing it (see :func:`reproduce_line`).

What is here:

* machine facts for the section header: :func:`environment_line`, :func:`pick_cpus`;
* a uvicorn server process pinned to one core, with its CPU time: :func:`start_uvicorn`,
  :class:`ServerProcess`, :func:`process_cpu_seconds`;
* wrk, pinned to another core: :func:`ensure_wrk`, :func:`run_wrk`, :func:`parse_wrk`,
  :func:`write_rotating_script` (a Lua script cycling through many Authorization headers);
* Redis command counting: :func:`reset_commandstats`, :func:`commandstats`;
* small maths and formatting: :func:`median`, :func:`fmt`, :func:`markdown_table`,
  :func:`poll_until`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from revoker.localredis import free_port, stop_process

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
#: Commands that the benchmark itself sends to Redis to measure; never counted as load.
MEASUREMENT_COMMANDS = frozenset({"info", "config|resetstat", "config", "ping", "client|setinfo"})

T = TypeVar("T")


# --- machine ---------------------------------------------------------------------------------


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (or platform's guess)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def redis_version(client: Any) -> str:
    """``redis_version`` from INFO server of a sync redis-py client."""
    info = client.info("server")
    name = "valkey" if "valkey_version" in info else "redis"
    return f"{name} {info.get('valkey_version') or info.get('redis_version')}"


def environment_line(redis_client: Any | None = None) -> str:
    """One line of facts every section states: date, nproc, CPU, load, Redis and Python."""
    parts = [
        dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        f"nproc {os.cpu_count()}",
        cpu_model(),
        "load avg {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()),
        f"Python {platform.python_version()}",
    ]
    if redis_client is not None:
        parts.append(redis_version(redis_client))
    return "; ".join(parts)


def reproduce_line(name: str) -> str:
    """The sentence naming the commands that reproduce a module's section."""
    return f"Reproduce: `make bench` (all) or `.venv/bin/python bench/run.py --only {name}`."


def pick_cpus() -> tuple[int, int]:
    """(server core, load-generator core): the last two CPUs this process may run on.

    The server under test gets a core to itself; the load generator (wrk) and helpers such as
    Redis share the other one. With a single CPU both are the same and the figures say so.
    """
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) == 1:
        return cpus[0], cpus[0]
    return cpus[-1], cpus[-2]


def pin(pid: int, cpu: int) -> None:
    """Pin a running process (all its threads start from this mask) to one CPU."""
    os.sched_setaffinity(pid, {cpu})


# --- waiting ---------------------------------------------------------------------------------


def poll_until(
    predicate: Callable[[], T | None], *, timeout: float, interval: float = 0.05, what: str
) -> T:
    """Call ``predicate`` until it returns something truthy; TimeoutError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def http_get(url: str, headers: Mapping[str, str] | None = None, timeout: float = 5.0) -> int:
    """GET ``url`` and return the status code (4xx/5xx included); raises OSError if unreachable."""
    request = urllib.request.Request(url, headers=dict(headers or {}))  # noqa: S310 - loopback http
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - loopback
            response.read()
            return int(response.status)
    except urllib.error.HTTPError as e:
        return int(e.code)


def http_get_text(url: str, timeout: float = 5.0) -> str:
    """The body of a GET on ``url`` (which must answer 2xx)."""
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - loopback http
        return str(response.read().decode())


# --- server process --------------------------------------------------------------------------


def process_cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` (all its threads) in seconds, from /proc/<pid>/stat."""
    raw = Path(f"/proc/{pid}/stat").read_text()
    # The command name (field 2) may contain spaces and parentheses: split after its last ')'.
    fields = raw[raw.rindex(")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5)
    return (utime + stime) / os.sysconf("SC_CLK_TCK")


@dataclass
class ServerProcess:
    """A uvicorn server started by :func:`start_uvicorn`."""

    name: str
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cpu_seconds(self) -> float:
        return process_cpu_seconds(self.pid)

    def log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (uvicorn shuts down gracefully), SIGKILL if it does not exit."""
        stop_process(self.process, timeout)


def clean_env(extra: Mapping[str, str]) -> dict[str, str]:
    """This process's environment without any REVOKER_* variable, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("REVOKER_")}
    env.update(extra)
    return env


def start_uvicorn(
    app: str,
    *,
    name: str,
    env: Mapping[str, str],
    cpu: int | None,
    log_dir: Path,
    factory: bool = True,
    app_dir: Path = BENCH_DIR,
    ready_path: str = "/",
    timeout: float = 30.0,
) -> ServerProcess:
    """Start ``uvicorn <app>`` as issue 2 measures it: uvloop, httptools, one worker, no access log.

    The process is pinned to ``cpu`` with taskset (so its pid is uvicorn's own) and is ready when
    ``ready_path`` answers any HTTP status. ``env`` is the child's whole environment.
    """
    port = free_port()
    log_path = log_dir / f"{name}.log"
    command = [
        sys.executable, "-m", "uvicorn", app,
        "--app-dir", str(app_dir),
        "--host", "127.0.0.1", "--port", str(port),
        "--loop", "uvloop", "--http", "httptools",
        "--workers", "1", "--no-access-log", "--log-level", "warning",
    ]  # fmt: skip
    if factory:
        command.append("--factory")
    if cpu is not None:
        command = ["taskset", "-c", str(cpu), *command]
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, env=dict(env), stdout=log, stderr=subprocess.STDOUT)
    server = ServerProcess(name, port, process, log_path)

    def ready() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"uvicorn {name} exited early:\n{server.log_tail()}")
        try:
            http_get(server.base_url + ready_path, timeout=1.0)
        except OSError:
            return False
        return True

    try:
        poll_until(ready, timeout=timeout, what=f"uvicorn {name} on port {port}")
    except BaseException:
        server.stop()
        raise
    return server


# --- wrk -------------------------------------------------------------------------------------


def ensure_wrk() -> str:
    """The wrk binary, or a clear error saying how to install it (``make bench`` does)."""
    found = shutil.which("wrk")
    if found is None:
        raise SystemExit("wrk is not installed: run `make bench` or `apt-get install -y wrk`")
    return found


@dataclass(frozen=True)
class WrkResult:
    """What one wrk run reported."""

    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    socket_errors: int
    raw: str = field(repr=False)


_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if match is None:
        raise ValueError(f"unexpected wrk duration {text!r}")
    return float(match[1]) * _UNITS_MS[match[2]]


def parse_wrk(text: str) -> WrkResult:
    """Parse wrk's text output (run with ``--latency``)."""
    done = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)", text)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
    p50 = re.search(r"^\s+50%\s+(\S+)", text, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", text, re.M)
    if not (done and rps and p50 and p99):
        raise ValueError(f"cannot parse wrk output:\n{text}")
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text
    )
    return WrkResult(
        requests=int(done[1]),
        seconds=_ms(done[2] + done[3]) / 1000,
        rps=float(rps[1]),
        p50_ms=_ms(p50[1]),
        p99_ms=_ms(p99[1]),
        non_2xx=int(non_2xx[1]) if non_2xx else 0,
        socket_errors=sum(int(n) for n in errors.groups()) if errors else 0,
        raw=text,
    )


def run_wrk(
    url: str,
    *,
    duration: float,
    connections: int = 32,
    threads: int = 1,
    script: Path | None = None,
    cpu: int | None = None,
) -> WrkResult:
    """Run wrk against ``url`` for ``duration`` seconds (pinned to ``cpu``) and parse it."""
    command = [
        ensure_wrk(), "--latency",
        "-t", str(threads), "-c", str(connections), "-d", f"{max(1, round(duration))}s",
        "--timeout", "5s",
    ]  # fmt: skip
    if script is not None:
        command += ["-s", str(script)]
    command.append(url)
    if cpu is not None:
        command = ["taskset", "-c", str(cpu), *command]
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=duration + 30, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
    return parse_wrk(done.stdout)


def _lua_string(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9\-._~+/= ]*", value):
        raise ValueError("only header-safe characters can go into the wrk script")
    return f'"{value}"'


def write_rotating_script(
    path: Path, request_path: str, headers: Sequence[Mapping[str, str]]
) -> Path:
    """A wrk Lua script sending GET ``request_path`` with each header set in turn, forever.

    Requests are formatted once in ``init`` (so wrk spends no CPU building them); each wrk thread
    starts at its own offset.
    """
    rows = ",\n".join(
        "  {" + ", ".join(f"[{_lua_string(k)}] = {_lua_string(v)}" for k, v in h.items()) + "}"
        for h in headers
    )
    path.write_text(
        f"""-- generated by bench/common.py: rotate through {len(headers)} header sets
local header_sets = {{
{rows}
}}
local requests = {{}}
local i = 0
local counter = 0

function setup(thread)
  thread:set("offset", counter * 7919)
  counter = counter + 1
end

function init(args)
  for k, h in ipairs(header_sets) do
    requests[k] = wrk.format("GET", {_lua_string(request_path)}, h)
  end
  i = (offset or 0) % #requests
end

function request()
  i = i % #requests + 1
  return requests[i]
end
"""
    )
    return path


# --- Redis command counting ------------------------------------------------------------------


def reset_commandstats(client: Any) -> None:
    """CONFIG RESETSTAT: zero INFO commandstats before a measured round."""
    client.config_resetstat()


def commandstats(client: Any, *, exclude: Iterable[str] = MEASUREMENT_COMMANDS) -> dict[str, int]:
    """Calls per command since the last reset, from INFO commandstats (sync client)."""
    skip = set(exclude)
    counts: dict[str, int] = {}
    for name, stats in client.info("commandstats").items():
        command = name.removeprefix("cmdstat_").lower()
        if command not in skip:
            counts[command] = int(stats["calls"])
    return counts


# --- maths and formatting --------------------------------------------------------------------


def median(values: Iterable[float]) -> float:
    """The median of ``values`` (NaN when there are none)."""
    data = list(values)
    return statistics.median(data) if data else float("nan")


def fmt(value: float, digits: int = 0) -> str:
    """A number with thousands separators and ``digits`` decimals."""
    return f"{value:,.{digits}f}"


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A GitHub-flavoured Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)
