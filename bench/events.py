"""Issue 13's benchmark: Shared Signals events signed and delivered per second, and what one costs.

* **sign**: µs to sign one CAEP session-revoked SET (ES256 and RS256 keys), in this process;
* **route**: revocations turned into queued events per second (the router, in this process);
* **poll**: SETs delivered per second to a receiver polling the admin API (``revoker api`` under
  uvicorn; RFC 8936 polls of up to 500 SETs, each acknowledging the previous batch);
* **push**: SETs delivered per second by real Celery workers (1 and 2 worker processes) to a
  receiver (``tests/ssf_receiver.py`` under uvicorn: it verifies every SET with PyJWT), over
  HTTP keep-alive, several streams at once (one delivery task per stream: in order per stream).

Everything runs on one private Redis (data and broker).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpx
import redis
from common import (
    clean_env,
    environment_line,
    fmt,
    markdown_table,
    median,
    reproduce_line,
    start_uvicorn,
)
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from revoker.api import ADMIN_SCOPE
from revoker.events.claims import Occurrence, session_revoked_claims
from revoker.events.router import route
from revoker.events.signing import SigningKey
from revoker.events.streams import PUSH, DeliveryRequest, StreamRequest
from revoker.events.tasks import start_deliveries
from revoker.events.transmitter import Transmitter
from revoker.localredis import LocalRedis
from revoker.settings import RevokerSettings, configure, reset_settings
from revoker.store import SyncRedisTokenRevocationStore
from revoker.tokens import create_access_token

REPO_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_DIR / "tests"))
from celery_helpers import seed_sessions, start_worker, worker_env  # noqa: E402 - after the path insert

NAME = "events"
SECRET = "bench-secret-0123456789-abcdefghijklmnopqrstuvwxyz"
PREFIX = "bevents"


def _pem(kind: str) -> bytes:
    key: Any = (
        ec.generate_private_key(ec.SECP256R1())
        if kind == "ec"
        else rsa.generate_private_key(public_exponent=65537, key_size=2048)
    )
    return bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def sign_cost(kind: str, n: int) -> float:
    """µs per signed SET with a ``kind`` key."""
    key = SigningKey.from_pem(_pem(kind))
    occ = Occurrence(
        "session", source="a:1-0", tenant_id="acme", user_id="alice", family_id="1f.abc",
        at_us=1_700_000_000_000_000, reason="bench", initiator="admin",
    )  # fmt: skip
    claims = session_revoked_claims(
        occ, iss="https://revoker.test", aud="urn:rx", jti="j", user_issuer="https://idp"
    )
    started = time.perf_counter()
    for _ in range(n):
        key.sign_set(claims)
    return (time.perf_counter() - started) / n * 1e6


def _settings(url: str, key_file: Path) -> RevokerSettings:
    return RevokerSettings(
        _env_file=None,  # type: ignore[call-arg]
        redis_url=url,
        key_prefix=PREFIX,
        jwt_secret=SECRET,
        events_signing_key_file=key_file,
        events_issuer="https://revoker.test",
        events_max_held=1_000_000,
        events_push_budget=5.0,
        redis_timeout=5.0,
    )


def _revoke(store: SyncRedisTokenRevocationStore, n: int, tag: str) -> None:
    for i in range(n):
        store.revoke_tenant_tokens(f"{tag}-{i}")


def route_rate(t: Transmitter, store: SyncRedisTokenRevocationStore, n: int, tag: str) -> float:
    _revoke(store, n, tag)
    started = time.perf_counter()
    routed = 0
    while True:
        got = route(t, budget=60)
        if not got:
            break
        routed += got
    return routed / (time.perf_counter() - started)


def poll_rate(t: Transmitter, store: SyncRedisTokenRevocationStore, api: str, n: int) -> float:
    """SETs per second a receiver gets by polling ``api`` (each poll acks the previous batch)."""
    created = t.registry.create(StreamRequest(), poll_url=f"{api}/ssf/poll")
    stream = created["stream_id"]
    route_rate(t, store, n, f"poll-{stream}")
    token, _ = create_access_token("bench", scopes=[ADMIN_SCOPE], settings=t.settings)
    url = created["delivery"]["endpoint_url"]
    received = 0
    ack: list[str] = []
    with httpx.Client(headers={"Authorization": f"Bearer {token}"}, timeout=30) as client:
        started = time.perf_counter()
        while True:
            body = {"maxEvents": 500, "returnImmediately": True, "ack": ack}
            answer = client.post(url, json=body).json()
            ack = list(answer["sets"])
            received += len(ack)
            if not ack:
                break
        took = time.perf_counter() - started
    t.registry.delete(stream)
    if received != n:
        raise RuntimeError(f"poll received {received} of {n}")
    return n / took


def push_rate(
    t: Transmitter,
    store: SyncRedisTokenRevocationStore,
    rx: str,
    env: dict[str, str],
    processes: int,
    streams: int,
    n: int,
) -> float:
    """SETs per second delivered by ``processes`` worker processes to ``streams`` streams."""
    ids = [
        t.registry.create(
            StreamRequest(
                aud="urn:rx:push",
                delivery=DeliveryRequest(method=PUSH, endpoint_url=f"{rx}/push"),
            ),
            poll_url="http://unused",
        )["stream_id"]
        for _ in range(streams)
    ]
    route_rate(t, store, n, f"push-{processes}")
    worker = start_worker(env, concurrency=processes)
    try:
        started = time.perf_counter()
        deadline = time.monotonic() + 300
        while any(t.queues.length(s) for s in ids):
            start_deliveries(t)  # what beat does every second, here at once
            if time.monotonic() > deadline:
                raise RuntimeError("push did not finish in 300 s")
            time.sleep(0.02)
        took = time.perf_counter() - started
    finally:
        worker.stop()
    dead = len(t.queues.dead_letters(limit=10))
    for s in ids:
        t.registry.delete(s)
    if dead:
        raise RuntimeError(f"{dead} dead letters: the receiver refused SETs")
    return n * streams / took


def chunk_rate(
    t: Transmitter, store: SyncRedisTokenRevocationStore, client: Any, n: int, wanted: bool
) -> float:
    """Sessions/s one bulk chunk revokes (revoke_buckets in this process), with the events hook
    free (no stream wants per-session events) or handing every session to the router."""
    from revoker import keys as k
    from revoker.job_record import JobRecord
    from revoker.tasks.buckets import job_mark, job_selection, revoke_buckets

    tenant = f"chunk-{'wanted' if wanted else 'free'}"
    ids = seed_sessions(client, t.settings, tenant, n, users=max(1, n // 100))
    stream = None
    if wanted:
        stream = t.registry.create(StreamRequest(per_session_events=True), poll_url="http://x")
    record = JobRecord(id=f"bench-{tenant}", kind="tenant", tenant_id=tenant, created_at=4e9)
    buckets = sorted({k.family_bucket(fid) or 0 for fid in ids})
    time.sleep(1.1)  # past the hook's cached look at the per-session flag
    started = time.perf_counter()
    revoke_buckets(
        store, buckets, tenant_id=tenant, select=job_selection(record), mark=job_mark(record)
    )
    took = time.perf_counter() - started
    if stream is not None:
        t.registry.delete(stream["stream_id"])
        handed = sum(
            len(json.loads(fields[b"s"]))
            for _, fields in client.xrange(t.keys.events_chunks, "-", "+")
        )
        client.delete(t.keys.events_chunks)
        if handed != n:
            raise RuntimeError(f"the hook handed over {handed} of {n} sessions")
    return n / took


def run(quick: bool = False) -> str:
    signs = 300 if quick else 3000
    events = 300 if quick else 5000
    rounds = 1 if quick else 3
    streams = 2 if quick else 4
    tmp = Path(tempfile.mkdtemp(prefix="revoker-bench-events-"))
    key_file = tmp / "key.pem"
    key_file.write_bytes(_pem("ec"))
    cost = {kind: sign_cost(kind, signs) for kind in ("ec", "rsa")}
    samples: dict[str, list[float]] = {
        "route": [], "poll": [], "push1": [], "push2": [], "chunk_free": [], "chunk_wanted": [],
    }  # fmt: skip
    chunk = 2000 if quick else 20_000
    with LocalRedis() as server:
        # The process settings too: start_deliveries publishes with the Celery app's.
        settings = configure(_settings(server.url, key_file))
        client = redis.Redis.from_url(server.url)
        env_line = environment_line(client)
        client.close()
        store = SyncRedisTokenRevocationStore(settings=settings)
        t = Transmitter.for_store(store)
        env = worker_env(settings)
        api = start_uvicorn(
            "revoker.api.app:create_app",
            name="events-api",
            env=clean_env(env),
            cpu=None,
            log_dir=tmp,
            ready_path="/health",
        )
        rx = start_uvicorn(
            "ssf_receiver:app",
            name="events-rx",
            env=clean_env({"RX_JWKS_URL": f"{api.base_url}/ssf/jwks.json", "RX_LOG": os.devnull}),
            cpu=None,
            log_dir=tmp,
            factory=False,
            app_dir=REPO_DIR / "tests",
            ready_path="/",
        )
        try:
            for r in range(rounds):
                probe = t.registry.create(StreamRequest(), poll_url="http://unused")
                samples["route"].append(route_rate(t, store, events, f"route{r}"))
                t.registry.delete(probe["stream_id"])
                samples["poll"].append(poll_rate(t, store, api.base_url, events))
                data = redis.Redis.from_url(server.url)
                samples["chunk_free"].append(chunk_rate(t, store, data, chunk, wanted=False))
                samples["chunk_wanted"].append(chunk_rate(t, store, data, chunk, wanted=True))
                data.close()
                for processes in (1, 2):
                    rate = push_rate(t, store, rx.base_url, env, processes, streams, events)
                    samples[f"push{processes}"].append(rate)
                print(
                    f"  round {r + 1}/{rounds}: route {fmt(samples['route'][-1])}/s, poll "
                    f"{fmt(samples['poll'][-1])}/s, push {fmt(samples['push1'][-1])}/s (1), "
                    f"{fmt(samples['push2'][-1])}/s (2)",
                    file=sys.stderr,
                )
        finally:
            api.stop()
            rx.stop()
            store.close()
            reset_settings()
    rows = [
        ["sign one SET, ES256 (µs)", fmt(cost["ec"], 1)],
        ["sign one SET, RS256 (µs)", fmt(cost["rsa"], 1)],
        ["route: revocations -> queued SETs (/s, one stream)", fmt(median(samples["route"]))],
        ["poll: SETs delivered (/s, 500 per poll, acked)", fmt(median(samples["poll"]))],
    ]
    for processes in (1, 2):
        label = f"push: SETs delivered (/s, {processes} worker process(es), {streams} streams)"
        rows.append([label, fmt(median(samples[f"push{processes}"]))])
    for key, what in (("chunk_free", "no"), ("chunk_wanted", "a")):
        label = f"bulk chunk of {chunk}, {what} per-session stream (sessions revoked/s)"
        rows.append([label, fmt(median(samples[key]))])
    return "\n\n".join(
        [
            "## Shared Signals events (issue 13)",
            env_line,
            f"{events} events per run, median of {rounds} round(s); the push receiver verifies "
            "every SET with PyJWT (ES256) and answers 202; poll and push sign each SET when it "
            "is delivered. Signing is in this process.",
            markdown_table(["measure", "value"], rows),
            reproduce_line(NAME),
        ]
    )


if __name__ == "__main__":
    print(run(quick="--quick" in sys.argv))
