"""Metrics that add up: revocations by kind and surface, job metrics, a worker's endpoint.

Every number is read back the way Prometheus reads it: the text exposition parsed by
prometheus_client's own parser, from the admin API's ``/metrics`` and from a real prefork
worker's endpoint (multiprocess mode: the chunks run in two pool children, the main process
serves their sum).
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

from celery_helpers import WorkerProcess, seed_sessions, start_worker, worker_env
from conftest import private_settings
from revoker.api import create_app
from revoker.cli import cli
from revoker.jobs import enqueue_tenant_revocation, wait_for_job
from revoker.localredis import LocalRedis, free_port
from revoker.metrics import REVOCATIONS, count_revocation, revocation_surface
from revoker.settings import RevokerSettings
from revoker.store import RedisTokenRevocationStore, SyncRedisTokenRevocationStore
from revoker.tokens import create_refresh_token

pytestmark = pytest.mark.redis

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    """Every sample of an exposition, by (name, sorted labels)."""
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def close_store(store: RedisTokenRevocationStore) -> None:
    """Close the store and its pool's sockets (it does not own its pool)."""
    await store.aclose()
    await store.client.connection_pool.disconnect()


def revocations(kind: str, surface: str) -> float:
    return REVOCATIONS.labels(kind, surface)._value.get()


async def scrape(settings: RevokerSettings) -> Samples:
    """The admin API's /metrics, parsed."""
    store = RedisTokenRevocationStore(settings=settings)
    try:
        transport = httpx.ASGITransport(app=create_app(store=store))
        async with httpx.AsyncClient(transport=transport, base_url="http://admin.test") as c:
            response = await c.get("/metrics")
            assert response.status_code == 200
            return parse(response.text)
    finally:
        await close_store(store)


async def test_revocations_are_counted_by_kind_and_surface(settings: RevokerSettings) -> None:
    """Python, CLI and API revocations each land under their surface; a repeat counts nothing."""
    before = await scrape(settings)
    with SyncRedisTokenRevocationStore(settings=settings) as store:
        assert store.revoke_token("jti-python", expires_at=time.time() + 60)
        assert not store.revoke_token("jti-python", expires_at=time.time() + 60)  # no new write
        store.revoke_user_tokens("u1", tenant_id="acme", reason="test")
    result = CliRunner().invoke(cli, ["revoke", "token", "--jti", "jti-cli", "--reason", "cli"])
    assert result.exit_code == 0, result.output
    refresh, _jti, _family = create_refresh_token("u2", tenant_id="acme", settings=settings)
    store_a = RedisTokenRevocationStore(settings=settings)
    try:
        transport = httpx.ASGITransport(app=create_app(store=store_a))
        async with httpx.AsyncClient(transport=transport, base_url="http://admin.test") as c:
            assert (await c.post("/oauth/revoke", data={"token": refresh})).status_code == 200
    finally:
        await close_store(store_a)
    after = await scrape(settings)

    def delta(kind: str, surface: str) -> float:
        labels = {"kind": kind, "surface": surface}
        return value(after, "revoker_revocations_total", **labels) - value(
            before, "revoker_revocations_total", **labels
        )

    assert delta("token", "python") == 1
    assert delta("user", "python") == 1
    assert delta("token", "cli") == 1
    assert delta("family", "api") == 1
    assert delta("token", "api") == 0


def test_count_revocation_logs_one_line_without_the_token(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """count_revocation adds n under (kind, surface) and logs one documented line of ids."""
    before = revocations("family", "job")
    with caplog.at_level("INFO", logger="revoker.revocations"):
        count_revocation("family", "job", 7, target="job-1", tenant="acme", actor="ops")
        count_revocation("family", "job", 0)  # nothing written: nothing counted or logged
    assert revocations("family", "job") - before == 7
    (record,) = [r for r in caplog.records if r.name == "revoker.revocations"]
    assert record.__dict__["event"] == "revocation"
    assert (record.__dict__["kind"], record.__dict__["count"]) == ("family", 7)
    assert "target=job-1" in record.getMessage()


def test_a_surface_block_is_scoped() -> None:
    """revocation_surface applies inside its block only, and refuses an unknown surface."""
    from revoker.metrics import current_surface

    assert current_surface() == "python"
    with revocation_surface("recovery"):
        assert current_surface() == "recovery"
    assert current_surface() == "python"
    with pytest.raises(ValueError, match="unknown surface"), revocation_surface("web"):  # type: ignore[arg-type]
        pass


# --- a real job, a real prefork worker ---------------------------------------------------------


@pytest.fixture(scope="module")
def broker() -> Iterator[LocalRedis]:
    """A throwaway Redis as the worker's broker and result backend."""
    server = LocalRedis().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def job_settings(broker: LocalRedis) -> Iterator[RevokerSettings]:
    """Chunks of 40: 120 sessions make three chunks, spread over two pool children."""
    with private_settings(broker_url=broker.url, result_backend=broker.url, chunk_size=40) as s:
        yield s


@pytest.fixture(scope="module")
def metrics_worker(job_settings: RevokerSettings) -> Iterator[tuple[WorkerProcess, int]]:
    """A prefork worker (concurrency 2) in multiprocess mode, with its metrics port."""
    port = free_port()
    directory = tempfile.mkdtemp(prefix="revoker-prom-")
    env = worker_env(job_settings)
    env.update(PROMETHEUS_MULTIPROC_DIR=directory, REVOKER_WORKER_METRICS_PORT=str(port))
    process = start_worker(env, concurrency=2)
    yield process, port
    process.stop()
    for leftover in Path(directory).glob("*"):
        leftover.unlink()
    os.rmdir(directory)


@pytest.mark.celery
async def test_a_real_job_adds_up_on_the_worker_and_the_api(
    job_settings: RevokerSettings, metrics_worker: tuple[WorkerProcess, int]
) -> None:
    """After a 120-session tenant job: the worker's endpoint sums its children's counts
    (sessions, revocations under surface job, one duration), the API counts the job done."""
    worker, port = metrics_worker
    import redis

    client = redis.Redis.from_url(job_settings.redis_url)
    try:
        seed_sessions(client, job_settings, "metrics-co", 120, users=30)
    finally:
        client.close()
    api_before = await scrape(job_settings)
    job_id = enqueue_tenant_revocation(
        "metrics-co", reason="metrics test", actor="pytest", settings=job_settings
    )
    record = wait_for_job(job_id, timeout=60, settings=job_settings)
    assert (record.status, record.chunks_total, record.families_revoked) == ("done", 3, 120)

    def worker_samples() -> Samples:
        response = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
        response.raise_for_status()
        return parse(response.text)

    # The finishing chunk observes the duration just after the record says done.
    deadline = time.monotonic() + 20
    samples = worker_samples()
    while value(samples, "revoker_job_duration_seconds_count", kind="tenant", status="done") < 1:
        assert time.monotonic() < deadline, worker.log()[-3000:]
        await asyncio.sleep(0.2)
        samples = worker_samples()
    assert value(samples, "revoker_job_sessions_revoked_total", kind="tenant") == 120
    assert value(samples, "revoker_revocations_total", kind="family", surface="job") == 120
    assert value(samples, "revoker_job_duration_seconds_count", kind="tenant", status="done") == 1
    duration = value(samples, "revoker_job_duration_seconds_sum", kind="tenant", status="done")
    assert 0 < duration < 60
    assert value(samples, "revoker_job_chunks_parked_total") == 0

    api = await scrape(job_settings)
    # The tenant watermark was written by this (Python) process when it enqueued the job.
    tenant_python = value(api, "revoker_revocations_total", kind="tenant", surface="python")
    assert (
        tenant_python
        - value(api_before, "revoker_revocations_total", kind="tenant", surface="python")
        == 1
    )
    assert value(api, "revoker_jobs", status="done") == 1
    assert value(api, "revoker_jobs", status="running") == 0
    assert value(api, "revoker_outbox_pending") == 0
    assert value(api, "revoker_outbox_oldest_age_seconds") == 0


async def test_the_outbox_backlog_and_its_age(settings: RevokerSettings) -> None:
    """A job whose broker is down stays pending: the API reports one pending, aged."""
    dead = f"redis://127.0.0.1:{free_port()}/0"
    with private_settings(broker_url=dead, result_backend=dead) as s:
        enqueue_tenant_revocation("outbox-co", reason="t", actor="pytest", settings=s)
        await asyncio.sleep(0.3)
        samples = await scrape(s)
    assert value(samples, "revoker_jobs", status="pending") == 1
    assert value(samples, "revoker_outbox_pending") == 1
    assert 0.2 < value(samples, "revoker_outbox_oldest_age_seconds") < 30


def test_recovery_cutoffs_count_under_recovery(settings: RevokerSettings) -> None:
    """`recover --cutoff` and a detected data loss (policy cutoff) count one global/recovery
    revocation each; `recover` without a cut-off writes none and counts none."""
    import redis

    from revoker.tokens import decode_token

    before = revocations("global", "recovery")
    with SyncRedisTokenRevocationStore(settings=settings) as store:
        store.recover(cutoff=False, actor="ops")
        assert revocations("global", "recovery") == before
        store.recover(cutoff=True, actor="ops")
        assert revocations("global", "recovery") == before + 1
        token, _ = create_refresh_token("u-loss", settings=settings)[:2]
        store.revoke_token("jti-before-loss", expires_at=time.time() + 60)
        client = redis.Redis.from_url(settings.redis_url)
        try:
            client.delete(store.keys.integrity)  # the denylist is "wiped"
        finally:
            client.close()
        store.is_revoked(decode_token(token, expected_type="refresh", settings=settings))
    assert revocations("global", "recovery") == before + 2


def test_tallied_checks_read_exactly_from_every_thread() -> None:
    """Checks counted through CHECKS.counting from 4 threads at once, and by labels().inc(),
    are all in the exposition: every read (a scrape, get_sample_value) adds the tallies first,
    and a second read adds nothing twice."""
    import threading

    from prometheus_client import REGISTRY, generate_latest

    from revoker.metrics import CHECKS

    def read() -> float:
        return REGISTRY.get_sample_value("revoker_checks_total", {"outcome": "ok"}) or 0.0

    before = read()
    count = CHECKS.counting("ok")
    assert CHECKS.counting("ok") == count  # one tally per label values

    def work() -> None:
        for _ in range(5000):
            count()

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    CHECKS.labels("ok").inc()
    assert read() == before + 20_001
    assert read() == before + 20_001
    count()
    scraped = value(parse(generate_latest(REGISTRY).decode()), "revoker_checks_total", outcome="ok")
    assert scraped == before + 20_002
