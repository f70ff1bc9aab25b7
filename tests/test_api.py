"""The admin HTTP API (revoker.api) over ASGI, on the real Redis under a private key prefix.

Job tests publish to a throwaway broker of their own (LocalRedis): tasks never land in a queue
that another test's worker could consume.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import jwt
import pytest
import redis.asyncio

from conftest import make_settings
from revoker.api import ADMIN_SCOPE, create_app, openapi_document
from revoker.bulk import MAX_REASON_LENGTH, BulkRevocation
from revoker.localredis import LocalRedis, free_port
from revoker.sessions import TokenPair, start_session
from revoker.settings import RevokerSettings
from revoker.store import RedisTokenRevocationStore
from revoker.tokens import create_access_token, decode_token, generate_jti

pytestmark = pytest.mark.redis

FORM = {"Content-Type": "application/x-www-form-urlencoded"}


async def close_store(store: RedisTokenRevocationStore) -> None:
    await store.aclose()
    # The store's client does not own its pool (it is built around a BlockingConnectionPool), so
    # aclose() alone leaves the pool's sockets open until the loop is gone.
    await store.client.connection_pool.disconnect()


@pytest.fixture
async def rstore(settings: RevokerSettings) -> AsyncIterator[RedisTokenRevocationStore]:
    """An async store on the real Redis, bound to this test's event loop."""
    store = RedisTokenRevocationStore(settings=settings)
    yield store
    await close_store(store)


def client_for(app: Any, *, raise_app_exceptions: bool = True) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=raise_app_exceptions)
    return httpx.AsyncClient(transport=transport, base_url="http://admin.test")


@asynccontextmanager
async def api_client(
    settings: RevokerSettings, *, raise_app_exceptions: bool = True
) -> AsyncIterator[httpx.AsyncClient]:
    """The admin API for ``settings`` with a store of its own, closed afterwards."""
    store = RedisTokenRevocationStore(settings=settings)
    try:
        app = create_app(store=store)
        async with client_for(app, raise_app_exceptions=raise_app_exceptions) as c:
            yield c
    finally:
        await close_store(store)


@pytest.fixture
async def client(
    settings: RevokerSettings, rstore: RedisTokenRevocationStore
) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client talking to the admin API over ASGI."""
    async with client_for(create_app(settings=settings, store=rstore)) as c:
        yield c


def admin_headers(settings: RevokerSettings, sub: str = "ops-alice") -> dict[str, str]:
    token, _ = create_access_token(sub, scopes=[ADMIN_SCOPE], settings=settings)
    return {"Authorization": f"Bearer {token}"}


async def session(
    store: RedisTokenRevocationStore, user: str = "u1", tenant: str | None = "acme"
) -> TokenPair:
    return await start_session(user, tenant_id=tenant, client_id="web", store=store)


async def revoked(store: RedisTokenRevocationStore, token: str, typ: str = "access") -> bool:
    data = decode_token(token, typ, settings=store.settings)  # type: ignore[arg-type]
    return (await store.is_revoked(data)).revoked


def expired_token(settings: RevokerSettings) -> str:
    """A correctly signed access token that expired beyond the leeway."""
    now = time.time()
    claims = {"sub": "u1", "jti": generate_jti(), "typ": "access", "iat": now - 3600}
    claims["exp"] = int(now - settings.leeway - 60)
    assert settings.jwt_secret is not None
    return jwt.encode(claims, settings.jwt_secret.get_secret_value(), algorithm="HS256")


def assert_error(response: httpx.Response, status: int, error: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == error
    assert isinstance(body["error_description"], str)
    assert body["error_description"]
    return body  # type: ignore[no-any-return]


# --- RFC 7009 ------------------------------------------------------------------------------------


async def test_revoke_access_token_is_effective_and_idempotent(
    client: httpx.AsyncClient, rstore: RedisTokenRevocationStore
) -> None:
    """POST /oauth/revoke revokes an access token; a second call is the same 200."""
    pair = await session(rstore)
    for _ in range(2):
        response = await client.post("/oauth/revoke", data={"token": pair.access_token})
        assert response.status_code == 200
        assert response.headers["cache-control"] == "no-store"
        assert response.content == b""
    assert await revoked(rstore, pair.access_token)
    # The session itself (refresh family) is untouched by revoking one access token.
    assert not await revoked(rstore, pair.refresh_token, "refresh")


@pytest.mark.parametrize("hint", [None, "refresh_token", "access_token", "no_such_hint"])
async def test_revoke_refresh_token_burns_its_family(
    client: httpx.AsyncClient, rstore: RedisTokenRevocationStore, hint: str | None
) -> None:
    """A refresh token revokes its whole session, whatever the (possibly wrong) hint says."""
    pair = await session(rstore)
    other = await session(rstore, user="u2")
    form = {"token": pair.refresh_token}
    if hint is not None:
        form["token_type_hint"] = hint
    response = await client.post("/oauth/revoke", data=form)
    assert response.status_code == 200
    assert await revoked(rstore, pair.refresh_token, "refresh")
    assert await revoked(rstore, pair.access_token)
    assert not await revoked(rstore, other.access_token)


async def test_revoke_answers_200_for_invalid_expired_and_foreign_tokens(
    client: httpx.AsyncClient, settings: RevokerSettings, rstore: RedisTokenRevocationStore
) -> None:
    """Expired, garbage and foreign-signed tokens get the same 200 and write nothing."""
    expired = expired_token(settings)
    foreign, _ = create_access_token(
        "u1", settings=make_settings(jwt_secret="another-secret-0123456789-abcdefghij")
    )
    before = await rstore.get_stats()
    for token in (expired, foreign, "not-a-jwt", "a.b.c", "x" * 9000):
        response = await client.post("/oauth/revoke", data={"token": token})
        assert response.status_code == 200, token[:20]
    assert await rstore.get_stats() == before


@pytest.mark.parametrize(
    ("content", "headers", "why"),
    [
        (b'{"token": "abc"}', {"Content-Type": "application/json"}, "urlencoded"),
        (b"token_type_hint=access_token", FORM, "token parameter"),
        (b"token=", FORM, "token parameter"),
        (b"token=a&token=b", FORM, "repeated"),
        (b"token=%ff%fe", FORM, "UTF-8"),
    ],
)
async def test_revoke_rejects_a_bad_form_with_invalid_request(
    client: httpx.AsyncClient, content: bytes, headers: dict[str, str], why: str
) -> None:
    """A malformed revocation request is a 400 invalid_request JSON error naming the problem."""
    response = await client.post("/oauth/revoke", content=content, headers=headers)
    body = assert_error(response, 400, "invalid_request")
    assert why in body["error_description"]


async def test_revoke_rejects_an_oversized_body(client: httpx.AsyncClient) -> None:
    """A body over the limit is refused with 413, not read into memory."""
    response = await client.post("/oauth/revoke", content=b"token=" + b"a" * 70_000, headers=FORM)
    assert_error(response, 413, "request_too_large")


async def test_revoke_with_redis_down_is_503_never_a_false_200(
    settings: RevokerSettings,
) -> None:
    """When the store cannot write, /oauth/revoke says 503 + Retry-After, not 200."""
    dead = RedisTokenRevocationStore.from_url(
        f"redis://127.0.0.1:{free_port()}/0",
        jwt_secret=settings.jwt_secret,
        key_prefix=settings.key_prefix,
    )
    token, _ = create_access_token("u1", settings=dead.settings)
    async with client_for(create_app(store=dead)) as c:
        response = await c.post("/oauth/revoke", data={"token": token})
    await close_store(dead)
    body = assert_error(response, 503, "temporarily_unavailable")
    assert response.headers["retry-after"] == str(settings.retry_after_seconds)
    assert "Redis" in body["error_description"]


# --- RFC 7662 ------------------------------------------------------------------------------------


async def test_introspect_active_token_reports_its_claims(
    client: httpx.AsyncClient, settings: RevokerSettings, rstore: RedisTokenRevocationStore
) -> None:
    """An active access token is introspected with its subject, tenant, family and scope."""
    pair = await session(rstore)
    response = await client.post(
        "/oauth/introspect", data={"token": pair.access_token}, headers=admin_headers(settings)
    )
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert body["active"] is True
    assert body["sub"] == "u1"
    assert body["tenant"] == "acme"
    assert body["family"] == pair.family_id
    assert body["client_id"] == "web"
    assert body["jti"] == pair.access_jti
    assert body["token_type"] == "Bearer"
    assert body["token_use"] == "access_token"
    assert body["username"] == "u1"
    assert body["exp"] == pair.access_expires_at
    assert isinstance(body["iat"], int)
    assert "nbf" not in body


async def test_introspect_says_only_inactive_for_revoked_expired_and_invalid_tokens(
    client: httpx.AsyncClient, settings: RevokerSettings, rstore: RedisTokenRevocationStore
) -> None:
    """Revoked, expired, garbage and family-revoked tokens are exactly {"active": false}."""
    pair = await session(rstore)
    gone = await session(rstore, user="u2")
    await rstore.revoke_token(pair.access_jti)
    await rstore.revoke_family(gone.family_id, tenant_id="acme")
    headers = admin_headers(settings)
    tokens = [
        pair.access_token,
        gone.access_token,
        gone.refresh_token,
        "garbage",
        expired_token(settings),
    ]
    for token in tokens:
        response = await client.post("/oauth/introspect", data={"token": token}, headers=headers)
        assert response.status_code == 200
        assert response.json() == {"active": False}, token[:30]


async def test_introspect_a_rotated_away_refresh_token_is_inactive(
    client: httpx.AsyncClient, settings: RevokerSettings, rstore: RedisTokenRevocationStore
) -> None:
    """Only a family's current refresh token is active; the one it replaced is not."""
    from revoker.refresh import rotate_refresh_token

    pair = await session(rstore)
    newer = await rotate_refresh_token(pair.refresh_token, store=rstore)
    headers = admin_headers(settings)
    old = await client.post(
        "/oauth/introspect", data={"token": pair.refresh_token}, headers=headers
    )
    assert old.json() == {"active": False}
    current = await client.post(
        "/oauth/introspect",
        data={"token": newer.refresh_token, "token_type_hint": "refresh_token"},
        headers=headers,
    )
    assert current.json()["active"] is True
    assert current.json()["token_use"] == "refresh_token"
    assert "token_type" not in current.json()


async def test_introspect_requires_an_unrevoked_admin_token(
    client: httpx.AsyncClient, settings: RevokerSettings, rstore: RedisTokenRevocationStore
) -> None:
    """No token 401 (with a challenge), no admin scope 403, a revoked admin token 401."""
    pair = await session(rstore)
    form = {"token": pair.access_token}
    missing = await client.post("/oauth/introspect", data=form)
    assert_error(missing, 401, "unauthorized")
    assert missing.headers["www-authenticate"] == 'Bearer, Basic realm="revoker", charset="UTF-8"'
    user_token, _ = create_access_token("u1", scopes=["read"], settings=settings)
    forbidden = await client.post(
        "/oauth/introspect", data=form, headers={"Authorization": f"Bearer {user_token}"}
    )
    assert_error(forbidden, 403, "insufficient_scope")
    admin_token, admin_jti = create_access_token("ops", scopes=[ADMIN_SCOPE], settings=settings)
    await rstore.revoke_token(admin_jti)
    revoked_admin = await client.post(
        "/oauth/introspect", data=form, headers={"Authorization": f"Bearer {admin_token}"}
    )
    assert_error(revoked_admin, 401, "invalid_token")
    assert 'error="invalid_token"' in revoked_admin.headers["www-authenticate"]


async def test_admin_requests_fail_closed_when_redis_is_down(settings: RevokerSettings) -> None:
    """Even with fail_open, an admin token that cannot be checked gets 503, never a grant."""
    dead = RedisTokenRevocationStore.from_url(
        f"redis://127.0.0.1:{free_port()}/0",
        jwt_secret=settings.jwt_secret,
        key_prefix=settings.key_prefix,
        fail_open=True,
    )
    async with client_for(create_app(store=dead)) as c:
        response = await c.post(
            "/oauth/introspect",
            data={"token": "whatever"},
            headers=admin_headers(dead.settings),
        )
    await close_store(dead)
    assert_error(response, 503, "temporarily_unavailable")
    assert "retry-after" in response.headers


# --- jobs ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def broker() -> Iterator[LocalRedis]:
    """A private Redis used only as the Celery broker of the job tests."""
    with LocalRedis() as server:
        yield server


@pytest.fixture
async def jobs_client(
    broker: LocalRedis, rstore: RedisTokenRevocationStore
) -> AsyncIterator[tuple[httpx.AsyncClient, RevokerSettings]]:
    """The admin API whose jobs publish to the private broker; data stays on the test Redis."""
    job_settings = make_settings(
        key_prefix=rstore.settings.key_prefix, broker_url=broker.url, visibility_timeout=30
    )
    async with api_client(job_settings) as c:
        yield c, job_settings


async def test_tenant_job_is_accepted_recorded_and_effective_at_once(
    jobs_client: tuple[httpx.AsyncClient, RevokerSettings], rstore: RedisTokenRevocationStore
) -> None:
    """202 with the job (actor = admin's sub); the tenant's tokens are revoked before any worker."""
    client, job_settings = jobs_client
    victim = await session(rstore, tenant="acme")
    bystander = await session(rstore, tenant="globex")
    response = await client.post(
        "/jobs/tenants/acme/revocations",
        json={"reason": "breach"},
        headers=admin_headers(job_settings, sub="ops-bob"),
    )
    assert response.status_code == 202, response.text
    job = response.json()
    assert response.headers["location"] == f"/jobs/{job['id']}"
    assert job["kind"] == "tenant"
    assert job["tenant_id"] == "acme"
    assert job["actor"] == "ops-bob"
    assert job["reason"] == "breach"
    assert job["status"] == "pending"
    assert job["watermark_at"] is not None
    assert await revoked(rstore, victim.access_token)
    assert not await revoked(rstore, bystander.access_token)

    fetched = await client.get(f"/jobs/{job['id']}", headers=admin_headers(job_settings))
    assert fetched.status_code == 200
    assert fetched.json()["id"] == job["id"]
    listed = await client.get("/jobs", headers=admin_headers(job_settings))
    assert [j["id"] for j in listed.json()["jobs"]] == [job["id"]]
    assert (await client.get("/jobs?status=done", headers=admin_headers(job_settings))).json() == {
        "jobs": []
    }


async def test_identical_job_while_pending_is_409_with_the_existing_id(
    jobs_client: tuple[httpx.AsyncClient, RevokerSettings],
) -> None:
    """The same request twice while the first is pending: 409 naming the first job."""
    client, job_settings = jobs_client
    body = {"reason": "cleanup", "client_id": "mobile", "dry_run": True}
    first = await client.post(
        "/jobs/tenants/acme/revocations", json=body, headers=admin_headers(job_settings)
    )
    assert first.status_code == 202
    second = await client.post(
        "/jobs/tenants/acme/revocations", json=body, headers=admin_headers(job_settings)
    )
    error = assert_error(second, 409, "duplicate_job")
    assert error["job_id"] == first.json()["id"]
    assert second.headers["location"] == f"/jobs/{first.json()['id']}"


async def test_user_job_requires_tenant_id_and_records_the_selector(
    jobs_client: tuple[httpx.AsyncClient, RevokerSettings],
) -> None:
    """A user job must say its tenant (null allowed); the window and client are recorded."""
    client, job_settings = jobs_client
    headers = admin_headers(job_settings)
    missing = await client.post(
        "/jobs/users/u1/revocations", json={"reason": "left"}, headers=headers
    )
    body = assert_error(missing, 422, "invalid_request")
    assert "tenant_id" in body["error_description"]
    response = await client.post(
        "/jobs/users/u1/revocations",
        json={
            "reason": "left",
            "tenant_id": "acme",
            "client_id": "web",
            "issued_after": "2026-01-01T00:00:00Z",
            "issued_before": 1_900_000_000,
        },
        headers=headers,
    )
    assert response.status_code == 202, response.text
    job = response.json()
    assert (job["kind"], job["user_id"], job["tenant_id"]) == ("user", "u1", "acme")
    assert job["issued_after"] == 1_767_225_600.0
    assert job["issued_before"] == 1_900_000_000.0
    assert job["watermark_at"] is None  # a filtered job has no watermark: the fan-out enforces


@pytest.mark.parametrize(
    ("path", "content", "headers", "status", "needle"),
    [
        ("/jobs/tenants/acme/revocations", b"{}", None, 422, "reason"),
        ("/jobs/tenants/acme/revocations", b'{"reason": "  "}', None, 422, "blank"),
        ("/jobs/tenants/acme/revocations", b'{"reason": "x", "bogus": 1}', None, 422, "bogus"),
        ("/jobs/tenants/acme/revocations", b'{"reason": "x", "dry_run": "yes"}', None, 422, "dry"),
        (
            "/jobs/tenants/acme/revocations",
            b'{"reason": "x", "issued_after": 20, "issued_before": 10}',
            None,
            422,
            "later",
        ),
        (
            "/jobs/tenants/acme/revocations",
            b'{"reason": "x", "issued_after": "2026-01-01T00:00:00"}',
            None,
            422,
            "issued_after",
        ),
        ("/jobs/tenants/acme/revocations", b'{"reason": NaN}', None, 400, "JSON"),
        ("/jobs/tenants/acme/revocations", b"{not json", None, 400, "JSON"),
        ("/jobs/tenants/acme/revocations", b"reason=x", FORM, 415, "application/json"),
        (f"/jobs/tenants/{'t' * 300}/revocations", b'{"reason": "x"}', None, 422, "tenant_id"),
    ],
)
async def test_job_requests_are_validated_with_clear_json_errors(
    jobs_client: tuple[httpx.AsyncClient, RevokerSettings],
    path: str,
    content: bytes,
    headers: dict[str, str] | None,
    status: int,
    needle: str,
) -> None:
    """Every invalid job request is a JSON error naming what is wrong; nothing is enqueued."""
    client, job_settings = jobs_client
    all_headers = {"Content-Type": "application/json", **admin_headers(job_settings)}
    all_headers.update(headers or {})
    response = await client.post(path, content=content, headers=all_headers)
    assert response.status_code == status, response.text
    assert needle in response.json()["error_description"]
    assert (await client.get("/jobs", headers=admin_headers(job_settings))).json() == {"jobs": []}


async def test_job_bodies_are_validated_by_bulk_revocation_alone(
    jobs_client: tuple[httpx.AsyncClient, RevokerSettings],
) -> None:
    """The reason limit is BulkRevocation's on both scopes, and so is the user path id's rule."""
    client, job_settings = jobs_client
    headers = admin_headers(job_settings)
    longest = "r" * MAX_REASON_LENGTH
    for path, body in [
        ("/jobs/tenants/acme/revocations", {}),
        ("/jobs/users/u1/revocations", {"tenant_id": "acme"}),
    ]:
        too_long = await client.post(
            path, json={**body, "reason": longest + "r", "dry_run": True}, headers=headers
        )
        error = assert_error(too_long, 422, "invalid_request")
        assert error["errors"][0]["loc"] == ["reason"]
        accepted = await client.post(
            path, json={**body, "reason": longest, "dry_run": True}, headers=headers
        )
        assert accepted.status_code == 202, accepted.text
        assert accepted.json()["reason"] == longest
    long_user = await client.post(
        f"/jobs/users/{'u' * 300}/revocations",
        json={"reason": "x", "tenant_id": "acme"},
        headers=headers,
    )
    assert assert_error(long_user, 422, "invalid_request")["errors"][0]["loc"] == ["user_id"]


def test_job_body_schemas_document_bulk_revocations_constraints() -> None:
    """The documented body fields carry BulkRevocation's types, limits and defaults."""
    bulk = BulkRevocation.model_json_schema()["properties"]
    schemas = openapi_document()["components"]["schemas"]
    for name in ("TenantRevocationRequest", "UserRevocationRequest"):
        for field, documented in schemas[name]["properties"].items():
            wording = {"title", "description", "default"}
            assert {k: v for k, v in documented.items() if k not in wording} == {
                k: v for k, v in bulk[field].items() if k not in wording
            }, (name, field)
    assert schemas["TenantRevocationRequest"]["properties"]["reason"]["maxLength"] == (
        MAX_REASON_LENGTH
    )
    assert schemas["UserRevocationRequest"]["required"] == ["reason", "tenant_id"]


async def test_job_lookup_errors_are_json(
    jobs_client: tuple[httpx.AsyncClient, RevokerSettings],
) -> None:
    """Unknown job 404, bad list query 422, and job endpoints demand the admin token."""
    client, job_settings = jobs_client
    headers = admin_headers(job_settings)
    assert_error(await client.get("/jobs/nope", headers=headers), 404, "not_found")
    assert_error(await client.get("/jobs?limit=0", headers=headers), 422, "invalid_request")
    assert_error(await client.get("/jobs?status=lost", headers=headers), 422, "invalid_request")
    assert_error(await client.get("/jobs"), 401, "unauthorized")
    post = await client.post("/jobs/tenants/acme/revocations", json={"reason": "x"})
    assert_error(post, 401, "unauthorized")


@pytest.mark.celery
async def test_tenant_job_runs_to_done_on_a_real_worker(
    broker: LocalRedis, settings: RevokerSettings, rstore: RedisTokenRevocationStore
) -> None:
    """Enqueued through the API, the job is carried out by a worker and reports done."""
    from celery_helpers import start_worker, worker_env

    job_settings = make_settings(
        key_prefix=settings.key_prefix, broker_url=broker.url, chunk_size=10
    )
    pairs = [await session(rstore, user=f"u{i}", tenant="initech") for i in range(25)]
    worker = start_worker(worker_env(job_settings, broker.url), concurrency=1)
    try:
        async with api_client(job_settings) as client:
            headers = admin_headers(job_settings)
            response = await client.post(
                "/jobs/tenants/initech/revocations", json={"reason": "offboard"}, headers=headers
            )
            assert response.status_code == 202, response.text
            job_id = response.json()["id"]
            deadline = time.monotonic() + 60
            job: dict[str, Any] = {}
            while time.monotonic() < deadline:
                job = (await client.get(f"/jobs/{job_id}", headers=headers)).json()
                if job["status"] in ("done", "failed"):
                    break
                await asyncio.sleep(0.1)
    finally:
        worker.stop()
    assert job["status"] == "done", (job, worker.log()[-3000:])
    assert job["families_matched"] == len(pairs)
    assert job["chunks_total"] == job["chunks_done"] == 3
    for pair in pairs[:3]:
        assert await revoked(rstore, pair.refresh_token, "refresh")


# --- operations, documents, errors ---------------------------------------------------------------


async def test_health_reports_redis_and_broker(
    client: httpx.AsyncClient, settings: RevokerSettings
) -> None:
    """Both reachable: 200; a dead broker: 503 with the broker marked unhealthy."""
    ok = await client.get("/health")
    assert ok.status_code == 200
    assert ok.json()["status"] == "ok"
    assert ok.json()["redis"]["healthy"] is True
    assert ok.json()["broker"]["healthy"] is True
    dead_broker = make_settings(
        key_prefix=settings.key_prefix, broker_url=f"redis://127.0.0.1:{free_port()}/0"
    )
    async with api_client(dead_broker) as c:
        down = await c.get("/health")
    assert down.status_code == 503
    assert down.json()["redis"]["healthy"] is True
    assert down.json()["broker"]["healthy"] is False
    assert down.json()["status"] == "unavailable"


async def test_health_probes_an_amqp_broker(settings: RevokerSettings) -> None:
    """An AMQP broker is probed through kombu: RabbitMQ up is healthy, a closed port is a 503."""
    try:
        socket.create_connection(("127.0.0.1", 5672), timeout=0.5).close()
    except OSError:
        pytest.skip("RabbitMQ is not reachable at 127.0.0.1:5672")
    for broker_url, status in [
        ("amqp://guest:guest@127.0.0.1:5672//", 200),
        (f"amqp://guest:guest@127.0.0.1:{free_port()}//", 503),
    ]:
        amqp = make_settings(key_prefix=settings.key_prefix, broker_url=broker_url)
        async with api_client(amqp) as c:
            response = await c.get("/health")
        assert response.status_code == status, response.text
        broker = response.json()["broker"]
        assert broker["healthy"] is (status == 200)
        assert (broker["error"] is None) is (status == 200)


async def test_metrics_expose_revoker_counters(
    client: httpx.AsyncClient, rstore: RedisTokenRevocationStore
) -> None:
    """GET /metrics serves the Prometheus text format, including revocations via the API."""
    pair = await session(rstore)
    await client.post("/oauth/revoke", data={"token": pair.access_token})
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert 'revoker_revocations_total{kind="token"}' in response.text
    assert "revoker_checks_total" in response.text


async def test_openapi_document_describes_every_route(settings: RevokerSettings) -> None:
    """Every route of the app is in /openapi.json with its method, and nothing else is."""
    app = create_app(settings=settings)
    async with client_for(app) as client:
        response = await client.get("/openapi.json")  # touches no store
    assert response.status_code == 200
    document = response.json()
    assert document == openapi_document()
    assert document["openapi"].startswith("3.")
    routes = {
        (route.path, method.lower())
        for route in app.routes
        for method in route.methods - {"HEAD"}
        if route.path != "/openapi.json"
    }
    documented = {(path, method) for path, ops in document["paths"].items() for method in ops}
    assert routes == documented
    refs = document["components"]["schemas"]
    assert {"JobRecord", "TenantRevocationRequest", "UserRevocationRequest", "Error"} <= set(refs)


async def test_unknown_paths_methods_and_crashes_are_json(settings: RevokerSettings) -> None:
    """404, 405 and an unexpected exception all answer JSON errors, never HTML or a traceback."""

    class Exploding(RedisTokenRevocationStore):
        async def revoke_token(self, *args: Any, **kwargs: Any) -> bool:
            raise RuntimeError("boom")

    store = Exploding(redis.asyncio.Redis.from_url(settings.redis_url), settings=settings)
    async with client_for(create_app(store=store), raise_app_exceptions=False) as c:
        assert_error(await c.get("/nowhere"), 404, "not_found")
        not_allowed = await c.get("/oauth/revoke")
        assert_error(not_allowed, 405, "method_not_allowed")
        assert "POST" in not_allowed.headers["allow"]
        token, _ = create_access_token("u1", settings=settings)
        crash = await c.post("/oauth/revoke", data={"token": token})
    await close_store(store)
    body = assert_error(crash, 500, "server_error")
    assert "boom" not in body["error_description"]
