"""Flower shows revoker's jobs: `celery -A revoker.worker flower` read through its HTTP API.

A real worker and a real Flower run against a throwaway LocalRedis broker; a tenant revocation is
enqueued and Flower's API must list the job's tasks under their real names, with the progress
they reported, behind HTTP basic auth.
"""

from __future__ import annotations

import ast
import os
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from celery_helpers import WorkerProcess, celery_command, seed_sessions, start_worker, worker_env
from conftest import private_settings
from revoker.jobs import enqueue_tenant_revocation, wait_for_job
from revoker.localredis import LocalRedis, free_port, stop_process
from revoker.sessions import start_session_sync
from revoker.settings import RevokerSettings
from revoker.store import SyncRedisTokenRevocationStore

pytestmark = [pytest.mark.celery, pytest.mark.redis]

AUTH = ("ops", "flower-test-password")
T = TypeVar("T")


def poll(predicate: Callable[[], T | None], *, timeout: float, what: str) -> T:
    """Call ``predicate`` until it returns something truthy, or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def broker() -> Iterator[LocalRedis]:
    """A throwaway Redis as broker and result backend."""
    server = LocalRedis().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def flower_settings(broker: LocalRedis) -> Iterator[RevokerSettings]:
    """Settings of the worker, Flower and the test: five chunks of 40 for 200 sessions."""
    with private_settings(broker_url=broker.url, result_backend=broker.url, chunk_size=40) as s:
        yield s


@pytest.fixture(scope="module")
def worker(flower_settings: RevokerSettings) -> Iterator[WorkerProcess]:
    """A real worker sending task events (the app's configuration turns them on)."""
    process = start_worker(worker_env(flower_settings), concurrency=2)
    yield process
    process.stop()


@pytest.fixture(scope="module")
def flower(flower_settings: RevokerSettings, worker: WorkerProcess) -> Iterator[str]:
    """`celery -A revoker.worker flower` with basic auth on a free loopback port; its base URL."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("REVOKER_")}
    env.update(worker_env(flower_settings))
    log = Path(tempfile.mkstemp(prefix="revoker-flower-", suffix=".log")[1])
    command = [
        *celery_command(), "-A", "revoker.worker", "flower",
        f"--port={port}", "--address=127.0.0.1", f"--basic-auth={AUTH[0]}:{AUTH[1]}",
    ]  # fmt: skip
    with log.open("wb") as out:
        process = subprocess.Popen(
            command,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"flower exited early:\n{log.read_text()[-3000:]}")
        try:
            return httpx.get(f"{base}/api/workers", auth=AUTH, timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        poll(up, timeout=30, what="Flower to answer")
        yield base
    finally:
        stop_process(process)
        log.unlink(missing_ok=True)


def test_flower_requires_credentials(flower: str) -> None:
    """Without credentials, or with a wrong password, Flower's API answers 401."""
    assert httpx.get(f"{flower}/api/tasks", timeout=5).status_code == 401
    wrong = httpx.get(f"{flower}/api/tasks", auth=(AUTH[0], "nope"), timeout=5)
    assert wrong.status_code == 401
    assert httpx.get(f"{flower}/api/tasks", auth=AUTH, timeout=5).status_code == 200


def test_flower_shows_the_jobs_tasks_and_progress(
    flower: str, flower_settings: RevokerSettings
) -> None:
    """The job task and its five chunk tasks appear under their names with their progress."""
    with SyncRedisTokenRevocationStore(settings=flower_settings) as store:
        for i in range(200):
            start_session_sync(f"user-{i}", tenant_id="flower-co", store=store)
    job_id = enqueue_tenant_revocation(
        "flower-co", reason="flower test", actor="pytest", settings=flower_settings
    )
    record = wait_for_job(job_id, timeout=60, settings=flower_settings)
    assert record.status == "done"
    assert record.chunks_total == 5

    def tasks(name: str) -> dict[str, Any]:
        response = httpx.get(f"{flower}/api/tasks", params={"taskname": name}, auth=AUTH, timeout=5)
        response.raise_for_status()
        found: dict[str, Any] = response.json()
        return found

    def job_seen() -> dict[str, Any] | None:
        found = tasks("revoker.revoke_job")
        task = found.get(job_id)
        return task if task and task.get("state") == "SUCCESS" else None

    job_task = poll(job_seen, timeout=30, what="the job task in Flower")
    assert job_task["name"] == "revoker.revoke_job"

    def chunks_seen() -> list[dict[str, Any]] | None:
        mine = [
            t
            for t in tasks("revoker.revoke_chunk").values()
            if job_id in str(t.get("args")) and t.get("state") == "SUCCESS"
        ]
        return mine if len(mine) == 5 else None

    chunk_tasks = poll(chunks_seen, timeout=30, what="the five chunk tasks in Flower")
    results = [ast.literal_eval(t["result"]) for t in chunk_tasks]
    assert sorted(r["chunk"] for r in results) == [0, 1, 2, 3, 4]
    assert sum(r["revoked"] for r in results) == 200
    # Each chunk reported the job's progress as it finished: the last saw 5 of 5 done.
    assert {r["chunks_total"] for r in results} == {5}
    assert max(r["chunks_done"] for r in results) == 5
    assert any(r["status"] == "done" for r in results)

    # The custom progress events themselves reached Flower (its per-event-type counters).
    def progress_events() -> set[str]:
        text = httpx.get(f"{flower}/metrics", auth=AUTH, timeout=5).text
        return {
            name
            for name in ("revoker.revoke_job", "revoker.revoke_chunk")
            for line in text.splitlines()
            if line.startswith("flower_events_total")
            and 'type="task-progress"' in line
            and f'task="{name}"' in line
            and float(line.rsplit(" ", 1)[1]) > 0
        }

    poll(lambda: progress_events() == {"revoker.revoke_job", "revoker.revoke_chunk"} or None,
         timeout=30, what="task-progress events in Flower's metrics")  # fmt: skip

    info = httpx.get(f"{flower}/api/task/info/{job_id}", auth=AUTH, timeout=5)
    assert info.status_code == 200
    assert info.json()["name"] == "revoker.revoke_job"
    assert info.json()["worker"].startswith("test-")


def test_the_jobs_task_in_flower_ends_when_the_job_does(
    flower: str, flower_settings: RevokerSettings
) -> None:
    """While chunks run, the job's task is PROGRESS (with the job's counts), never SUCCESS; it
    succeeds once the last chunk has, and a search by job id lists the job and every chunk."""
    import redis

    client = redis.Redis.from_url(flower_settings.redis_url)
    try:
        seed_sessions(client, flower_settings, "flower-big", 2400, users=200)
    finally:
        client.close()
    job_id = enqueue_tenant_revocation(
        "flower-big", reason="flower test", actor="pytest", settings=flower_settings
    )

    def job_task() -> dict[str, Any]:
        response = httpx.get(f"{flower}/api/task/info/{job_id}", auth=AUTH, timeout=5)
        return response.json() if response.status_code == 200 else {}

    seen_progress: list[dict[str, Any]] = []
    with SyncRedisTokenRevocationStore(settings=flower_settings) as store:
        deadline = time.monotonic() + 90
        while True:
            task = job_task()
            status = store.get_job(job_id).status  # read after Flower: Flower cannot be ahead
            if task.get("state") == "SUCCESS":
                assert status == "done", f"Flower says SUCCESS while the job is {status}"
                break
            if task.get("state") == "PROGRESS" and status == "running" and task.get("result"):
                seen_progress.append(ast.literal_eval(task["result"]))
            assert time.monotonic() < deadline, "the job did not finish in Flower"
            time.sleep(0.05)
    record = wait_for_job(job_id, timeout=30, settings=flower_settings)
    assert record.status == "done"
    total = record.chunks_total  # buckets are grouped into chunks of at least 40 sessions
    assert total > 10
    assert seen_progress, "no PROGRESS state seen for the job's task while it ran"
    partial = [t for t in seen_progress if t.get("chunks_done", total) < total]
    assert partial, "the job's task never showed a partial count"
    assert all(t.get("job_id") == job_id and t.get("chunks_total") == total for t in partial)

    def found() -> dict[str, Any] | None:
        response = httpx.get(f"{flower}/api/tasks", params={"search": job_id}, auth=AUTH, timeout=5)
        response.raise_for_status()
        tasks: dict[str, Any] = response.json()
        chunks = [t for t in tasks.values() if t.get("name") == "revoker.revoke_chunk"]
        done = [t for t in chunks if t.get("state") == "SUCCESS"]
        return tasks if job_id in tasks and len(done) == total else None

    tasks = poll(found, timeout=30, what="the job and all its chunks by a search for its id")
    job = tasks[job_id]
    assert job["name"] == "revoker.revoke_job"
    assert job["state"] == "SUCCESS"
    chunks = [t for t in tasks.values() if t.get("name") == "revoker.revoke_chunk"]
    # The job's task ended with its last chunk, not when revoke_job returned (before any chunk).
    assert job["succeeded"] >= max(t["started"] for t in chunks)
    final = ast.literal_eval(job["result"])
    assert (final["status"], final["chunks_done"], final["families_revoked"]) == (
        "done",
        total,
        2400,
    )
