"""Start real ``celery -A revoker.worker worker`` processes for tests and benchmarks.

The worker is configured only through REVOKER_* environment variables, exactly as in production.
Each worker runs in its own session (process group), so :meth:`WorkerProcess.kill` can SIGKILL the
main process and every pool child at once, as a crashed machine would.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from revoker.keys import KeyLayout, bucket_of_user, encode_record, family_id_prefix, family_ttl
from revoker.rules import to_us
from revoker.settings import ENV_PREFIX, RevokerSettings

__all__ = [
    "WorkerProcess",
    "celery_command",
    "seed_sessions",
    "start_beat",
    "start_worker",
    "worker_env",
]


def celery_command() -> list[str]:
    """The ``celery`` entry point of this virtualenv."""
    exe = Path(sys.executable).parent / "celery"
    if exe.exists():
        return [str(exe)]
    return [sys.executable, "-m", "celery"]


def _env_value(value: Any) -> str:
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def worker_env(settings: RevokerSettings, broker_url: str | None = None) -> dict[str, str]:
    """``settings`` as REVOKER_* variables (unset fields are left out), plus the broker URL."""
    env: dict[str, str] = {}
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        if value is not None:
            env[f"{ENV_PREFIX}{name.upper()}"] = _env_value(value)
    if broker_url is not None:
        env[f"{ENV_PREFIX}BROKER_URL"] = broker_url
    return env


@dataclass
class WorkerProcess:
    """One worker (main process plus its pool) started by :func:`start_worker`."""

    process: subprocess.Popen[bytes]
    log_path: Path
    hostname: str
    _log: Any = field(default=None, repr=False)

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        """Everything the worker has written so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_ready(self, timeout: float = 30.0) -> WorkerProcess:
        """Block until the worker consumes (its "ready." log line); raise with its log if not."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if " ready." in self.log():
                return self
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"celery worker exited with {self.process.returncode}:\n{self.log()[-4000:]}"
                )
            time.sleep(0.05)
        raise TimeoutError(f"celery worker not ready within {timeout}s:\n{self.log()[-4000:]}")

    def _signal_group(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, sig)

    def kill(self) -> None:
        """SIGKILL the whole worker (main process and pool children) at once."""
        self._signal_group(signal.SIGKILL)
        self.process.wait(10)
        self._close_log()

    def stop(self, timeout: float = 15.0) -> None:
        """Warm shutdown (SIGTERM); SIGKILL the group if it has not exited within ``timeout``."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout)
        # Pool children orphaned by a crash of the main process would keep consuming.
        self._signal_group(signal.SIGKILL)
        if self.process.poll() is None:
            self.process.wait(10)
        self._close_log()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


def start_worker(
    env: Mapping[str, str],
    *,
    concurrency: int = 2,
    extra_args: Sequence[str] = (),
    wait: bool = True,
) -> WorkerProcess:
    """Start ``celery -A revoker.worker worker`` with ``env`` (REVOKER_* variables) added.

    The caller's own REVOKER_* variables are dropped so only ``env`` configures the worker.
    """
    full = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    full.update(env)
    full.setdefault("PYTHONUNBUFFERED", "1")
    hostname = f"test-{uuid.uuid4().hex[:8]}@127.0.0.1"
    fd, name = tempfile.mkstemp(prefix="revoker-worker-", suffix=".log")
    log = os.fdopen(fd, "wb")
    command = [
        *celery_command(),
        "-A", "revoker.worker",
        "worker",
        "--loglevel", "INFO",
        "--pool", "prefork",
        "--concurrency", str(concurrency),
        "--hostname", hostname,
        "--without-gossip",
        "--without-mingle",
        *extra_args,
    ]  # fmt: skip
    process = subprocess.Popen(
        command, env=full, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    worker = WorkerProcess(process, Path(name), hostname, log)
    if wait:
        try:
            worker.wait_ready()
        except BaseException:
            worker.stop(timeout=2)
            raise
    return worker


def start_beat(env: Mapping[str, str]) -> WorkerProcess:
    """Start ``celery -A revoker.worker beat`` (schedule file in a temporary directory)."""
    full = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    full.update(env)
    workdir = tempfile.mkdtemp(prefix="revoker-beat-")
    log_path = Path(workdir) / "beat.log"
    log = log_path.open("wb")
    command = [
        *celery_command(), "-A", "revoker.worker", "beat", "--loglevel", "INFO",
        "--schedule", str(Path(workdir) / "schedule"),
    ]  # fmt: skip
    process = subprocess.Popen(
        command, env=full, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    return WorkerProcess(process, log_path, "beat", log)


def seed_sessions(
    client: Any,
    settings: RevokerSettings,
    tenant_id: str | None,
    count: int,
    *,
    users: int = 10,
    client_ids: Sequence[str | None] = (None,),
    created: Sequence[float] | None = None,
    id_prefix: str = "fam",
    batch: int = 200,
) -> list[str]:
    """Record ``count`` sessions fast (Lua, pipelined), as ``record_session`` would.

    Session ``i`` belongs to user ``u<i % users>``, client ``client_ids[i % len(client_ids)]`` and
    was created at ``created[i]`` (default: now). Returns the family ids in order. Tests and
    benchmarks need 100,000s of sessions: one ``start_session`` each would take minutes.
    """
    keys = KeyLayout(settings.key_prefix)
    now = time.time()
    ttl = family_ttl(settings.refresh_token_ttl, settings.leeway)
    expires = int(now) + settings.refresh_token_ttl
    buckets = [bucket_of_user(f"u{u}", settings.session_buckets) for u in range(users)]
    ids = [
        f"{family_id_prefix(buckets[i % users])}{id_prefix}-{i:07d}-{uuid.uuid4().hex[:8]}"
        for i in range(count)
    ]
    pipe = client.pipeline(transaction=False)
    for i in range(count):
        key = keys.session_bucket(tenant_id, buckets[i % users])
        record = encode_record(
            user_id=f"u{i % users}",
            client_id=client_ids[i % len(client_ids)],
            created_us=to_us(created[i] if created is not None else now),
            expires=expires,
            current_jti=f"rt-{ids[i]}",
        )
        pipe.execute_command("HSET", key, ids[i], record)
        if len(pipe) >= batch * 10:
            pipe.execute()
    for b in set(buckets):
        pipe.execute_command("EXPIRE", keys.session_bucket(tenant_id, b), ttl)
    pipe.execute()
    return ids


def run_job_inline(monkeypatch: Any, job_id: str) -> Any:
    """Run a job as a worker would, in this process (``revoke_job``, which runs each chunk, with
    the broker replaced by direct calls), and return its record (a ``jobs.JobRecord``)."""
    from revoker import jobs, tasks
    from revoker.worker import app

    monkeypatch.setattr(app, "producer_or_acquire", lambda *a, **kw: contextlib.nullcontext(None))
    monkeypatch.setattr(
        tasks.revoke_chunk, "apply_async", lambda args, **kw: tasks.revoke_chunk(*args)
    )
    tasks.revoke_job(job_id)
    return jobs.get_job(job_id)
