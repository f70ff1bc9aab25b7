"""The admin API with registered clients and scopes, RFC 7662 exactness, RFC 8414 discovery and
the JWKS, over ASGI on the real Redis under a private key prefix."""

from __future__ import annotations

import base64
import math
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from conftest import make_settings, private_settings
from revoker.api import create_app, openapi_document
from revoker.clients import ADMIN_SCOPE, INTROSPECT_SCOPE, REVOKE_SCOPE, ClientRegistry
from revoker.localredis import LocalRedis, free_port
from revoker.settings import RevokerSettings
from revoker.store import RedisTokenRevocationStore, SyncRedisTokenRevocationStore
from revoker.tokens import create_access_token, decode_token, generate_jti
from test_api import close_store

pytestmark = pytest.mark.redis

Credentials = tuple[str, str]


@pytest.fixture
def registry(settings: RevokerSettings) -> Iterator[ClientRegistry]:
    """The client registry on the shared Redis under the test's prefix."""
    store = SyncRedisTokenRevocationStore(settings=settings)
    yield ClientRegistry(store.client, store.keys)
    store.close()


@pytest.fixture
async def rstore(settings: RevokerSettings) -> AsyncIterator[RedisTokenRevocationStore]:
    """An async store on the real Redis, bound to this test's event loop."""
    store = RedisTokenRevocationStore(settings=settings)
    yield store
    await close_store(store)


@pytest.fixture
async def client(
    settings: RevokerSettings, rstore: RedisTokenRevocationStore
) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client talking to the admin API over ASGI."""
    transport = httpx.ASGITransport(app=create_app(settings=settings, store=rstore))
    async with httpx.AsyncClient(transport=transport, base_url="http://admin.test") as c:
        yield c


def register(registry: ClientRegistry, *scopes: str, client_id: str | None = None) -> Credentials:
    record, secret = registry.add(f"client {scopes}", scopes, client_id=client_id)
    return record.client_id, secret


def basic(credentials: Credentials) -> dict[str, str]:
    encoded = base64.b64encode(f"{credentials[0]}:{credentials[1]}".encode()).decode()
    return {"Authorization": f"Basic {encoded}"}


def posted(credentials: Credentials) -> dict[str, str]:
    return {"client_id": credentials[0], "client_secret": credentials[1]}


def signed(settings: RevokerSettings, **claims: Any) -> str:
    """An access token with exactly these claims over the defaults, signed with the test key."""
    now = time.time()
    body = {"sub": "u1", "jti": generate_jti(), "typ": "access", "iat": now, "exp": int(now) + 600}
    body.update(claims)
    assert settings.jwt_secret is not None
    return jwt.encode(body, settings.jwt_secret.get_secret_value(), algorithm="HS256")


def assert_no_store(response: httpx.Response) -> None:
    assert response.headers.get("cache-control") == "no-store", response.headers


# --- client authentication -------------------------------------------------------------------


async def test_introspection_with_client_secret_basic_and_post(
    client: httpx.AsyncClient, registry: ClientRegistry, settings: RevokerSettings
) -> None:
    """An introspect-scoped client introspects with either RFC 6749 §2.3.1 method."""
    gateway = register(registry, INTROSPECT_SCOPE)
    token, jti = create_access_token("u1", scopes=["read"], settings=settings)
    by_header = await client.post(
        "/oauth/introspect", data={"token": token}, headers=basic(gateway)
    )
    by_form = await client.post("/oauth/introspect", data={"token": token, **posted(gateway)})
    for response in (by_header, by_form):
        assert response.status_code == 200, response.text
        assert_no_store(response)
        assert response.json()["active"] is True
        assert response.json()["jti"] == jti


async def test_bad_client_credentials_are_invalid_client_with_a_basic_challenge(
    client: httpx.AsyncClient, registry: ClientRegistry, settings: RevokerSettings
) -> None:
    """Wrong, unknown or malformed client credentials: 401 invalid_client, Basic challenge,
    no-store, on introspection and revocation alike; nothing is revoked."""
    client_id, secret = register(registry, ADMIN_SCOPE)
    token, _ = create_access_token("u1", settings=settings)
    attempts: list[dict[str, Any]] = [
        {"headers": basic((client_id, secret + "x"))},
        {"headers": basic(("no-such-client", secret))},
        {"headers": {"Authorization": "Basic !!notbase64"}},
        {"headers": {"Authorization": "Basic " + base64.b64encode(b"nocolon").decode()}},
        {"extra": posted((client_id, "wrong"))},
    ]
    for path in ("/oauth/introspect", "/oauth/revoke"):
        for attempt in attempts:
            response = await client.post(
                path,
                data={"token": token, **attempt.get("extra", {})},
                headers=attempt.get("headers", {}),
            )
            assert response.status_code == 401, (path, attempt, response.text)
            assert response.json()["error"] == "invalid_client"
            assert response.headers["www-authenticate"].startswith("Basic ")
            assert_no_store(response)
    assert decode_token(token, settings=settings)  # still verifies
    check = await client.post(
        "/oauth/introspect", data={"token": token}, headers=basic((client_id, secret))
    )
    assert check.json()["active"] is True


async def test_two_client_authentication_methods_at_once_are_refused(
    client: httpx.AsyncClient, registry: ClientRegistry, settings: RevokerSettings
) -> None:
    """RFC 6749 §2.3: Basic and client_secret together, or a bearer token and a posted secret,
    are 400 invalid_request (no-store)."""
    credentials = register(registry, INTROSPECT_SCOPE)
    token, _ = create_access_token("u1", settings=settings)
    both = await client.post(
        "/oauth/introspect",
        data={"token": token, **posted(credentials)},
        headers=basic(credentials),
    )
    bearer_and_post = await client.post(
        "/oauth/introspect",
        data={"token": token, **posted(credentials)},
        headers={"Authorization": f"Bearer {token}"},
    )
    for response in (both, bearer_and_post):
        assert response.status_code == 400
        assert response.json()["error"] == "invalid_request"
        assert_no_store(response)


async def test_introspect_only_client_cannot_revoke_or_enqueue(
    client: httpx.AsyncClient, registry: ClientRegistry, settings: RevokerSettings
) -> None:
    """Least privilege: an introspect-only client gets 403 on the job API and cannot revoke a
    token issued to another client (400 unauthorized_client; the token stays active)."""
    gateway = register(registry, INTROSPECT_SCOPE)
    headers = basic(gateway)
    enqueue = await client.post(
        "/jobs/tenants/acme/revocations", json={"reason": "x"}, headers=headers
    )
    assert enqueue.status_code == 403
    assert enqueue.json()["error"] == "insufficient_scope"
    listing = await client.get("/jobs", headers=headers)
    assert listing.status_code == 403
    token, _ = create_access_token("u1", client_id="web", settings=settings)
    refused = await client.post("/oauth/revoke", data={"token": token}, headers=headers)
    assert refused.status_code == 400
    assert refused.json()["error"] == "unauthorized_client"
    assert_no_store(refused)
    still = await client.post("/oauth/introspect", data={"token": token}, headers=headers)
    assert still.json()["active"] is True


async def test_a_client_revokes_tokens_issued_to_it_and_revoke_scope_revokes_any(
    client: httpx.AsyncClient, registry: ClientRegistry, settings: RevokerSettings
) -> None:
    """RFC 7009 §2.1: a client revokes a token whose client_id is its own; a revoker:revoke
    client revokes any token and reads jobs, but cannot introspect."""
    web = register(registry, INTROSPECT_SCOPE, client_id="web")
    ops = register(registry, REVOKE_SCOPE)
    own, _ = create_access_token("u1", client_id="web", settings=settings)
    other, _ = create_access_token("u2", client_id="mobile", settings=settings)
    assert (await client.post("/oauth/revoke", data={"token": own}, headers=basic(web))).is_success
    revoked_by_ops = await client.post("/oauth/revoke", data={"token": other, **posted(ops)})
    assert revoked_by_ops.status_code == 200
    for token in (own, other):
        answer = await client.post("/oauth/introspect", data={"token": token}, headers=basic(web))
        assert answer.json() == {"active": False}
    assert (await client.get("/jobs", headers=basic(ops))).status_code == 200
    forbidden = await client.post("/oauth/introspect", data={"token": own}, headers=basic(ops))
    assert forbidden.status_code == 403
    assert "www-authenticate" not in forbidden.headers


async def test_scoped_bearer_tokens_and_admin_clients(
    client: httpx.AsyncClient, registry: ClientRegistry, settings: RevokerSettings
) -> None:
    """A bearer token with revoker:introspect introspects but cannot list jobs; an admin client
    does both."""
    bearer, _ = create_access_token("rs", scopes=[INTROSPECT_SCOPE], settings=settings)
    token, _ = create_access_token("u1", settings=settings)
    headers = {"Authorization": f"Bearer {bearer}"}
    ok = await client.post("/oauth/introspect", data={"token": token}, headers=headers)
    assert ok.json()["active"] is True
    jobs = await client.get("/jobs", headers=headers)
    assert jobs.status_code == 403
    assert 'scope="revoker:revoke"' in jobs.headers["www-authenticate"]
    admin = basic(register(registry, ADMIN_SCOPE))
    assert (await client.get("/jobs", headers=admin)).status_code == 200
    assert (await client.post("/oauth/introspect", data={"token": token}, headers=admin)).is_success


async def test_rotated_secret_is_refused_by_the_api_at_once(
    client: httpx.AsyncClient, registry: ClientRegistry, settings: RevokerSettings
) -> None:
    """After rotate-secret, the old secret (just used successfully) is invalid_client."""
    client_id, old = register(registry, INTROSPECT_SCOPE)
    token, _ = create_access_token("u1", settings=settings)
    form = {"token": token}
    assert (
        await client.post("/oauth/introspect", data=form, headers=basic((client_id, old)))
    ).is_success
    _, new = registry.rotate_secret(client_id)
    stale = await client.post("/oauth/introspect", data=form, headers=basic((client_id, old)))
    assert stale.status_code == 401
    assert stale.json()["error"] == "invalid_client"
    fresh = await client.post("/oauth/introspect", data=form, headers=basic((client_id, new)))
    assert fresh.json()["active"] is True


async def test_a_revoke_scoped_client_enqueues_jobs_as_its_actor(
    settings: RevokerSettings, registry: ClientRegistry
) -> None:
    """A revoker:revoke client enqueues a job (202); the job's actor is client:<id>."""
    client_id, secret = register(registry, REVOKE_SCOPE)
    with LocalRedis() as broker:
        job_settings = make_settings(key_prefix=settings.key_prefix, broker_url=broker.url)
        store = RedisTokenRevocationStore(settings=job_settings)
        try:
            transport = httpx.ASGITransport(app=create_app(store=store))
            async with httpx.AsyncClient(transport=transport, base_url="http://a.test") as c:
                response = await c.post(
                    "/jobs/users/u1/revocations",
                    json={"reason": "left", "tenant_id": "acme", "dry_run": True},
                    headers=basic((client_id, secret)),
                )
        finally:
            await close_store(store)
    assert response.status_code == 202, response.text
    assert response.json()["actor"] == f"client:{client_id}"


async def test_client_authentication_fails_closed_when_redis_is_down(
    settings: RevokerSettings,
) -> None:
    """With Redis unreachable, client credentials get 503 + Retry-After, never a grant."""
    dead = RedisTokenRevocationStore.from_url(
        f"redis://127.0.0.1:{free_port()}/0",
        jwt_secret=settings.jwt_secret,
        key_prefix=settings.key_prefix,
        fail_open=True,
    )
    try:
        transport = httpx.ASGITransport(app=create_app(store=dead))
        async with httpx.AsyncClient(transport=transport, base_url="http://a.test") as c:
            response = await c.post(
                "/oauth/introspect", data={"token": "x"}, headers=basic(("some-id", "secret"))
            )
    finally:
        await close_store(dead)
    assert response.status_code == 503
    assert response.json()["error"] == "temporarily_unavailable"
    assert "retry-after" in response.headers


# --- RFC 7662 exactness ------------------------------------------------------------------------


async def test_introspection_is_inactive_from_exp_without_leeway(
    client: httpx.AsyncClient, registry: ClientRegistry, settings: RevokerSettings
) -> None:
    """A token 5 s past exp verifies within the 30 s leeway but is inactive at the authority; a
    token before its nbf is inactive; after it, nbf is reported as an integer."""
    headers = basic(register(registry, INTROSPECT_SCOPE))
    now = time.time()
    late = signed(settings, exp=int(now) - 5)
    assert decode_token(late, settings=settings).sub == "u1"  # the leeway lets services accept it
    early = signed(settings, nbf=now + 10)
    nbf = now - 10.5
    started = signed(settings, nbf=nbf)
    answers = [
        await client.post("/oauth/introspect", data={"token": t}, headers=headers)
        for t in (late, early, started)
    ]
    assert answers[0].json() == {"active": False}
    assert answers[1].json() == {"active": False}
    body = answers[2].json()
    assert body["active"] is True
    assert body["nbf"] == math.ceil(nbf)
    assert isinstance(body["nbf"], int)


async def test_introspection_members_follow_rfc_7662() -> None:
    """Integer iat/exp, token_type Bearer, username (preferred_username, else sub), iss and aud
    from the token, scope as a space-separated string."""
    with private_settings(issuer="https://issuer.test", audience="api") as settings:
        store = RedisTokenRevocationStore(settings=settings)
        sync = SyncRedisTokenRevocationStore(settings=settings)
        iat = time.time() - 100.75
        try:
            credentials = register(ClientRegistry(sync.client, sync.keys), INTROSPECT_SCOPE)
            transport = httpx.ASGITransport(app=create_app(store=store))
            named = signed(
                settings,
                iss="https://issuer.test",
                aud="api",
                scope="read write",
                preferred_username="alice@example.com",
                iat=iat,
            )
            plain, _ = create_access_token("u9", settings=settings)
            async with httpx.AsyncClient(transport=transport, base_url="http://a.test") as c:
                first = (
                    await c.post("/oauth/introspect", data={"token": named, **posted(credentials)})
                ).json()
                second = (
                    await c.post("/oauth/introspect", data={"token": plain, **posted(credentials)})
                ).json()
        finally:
            await close_store(store)
            sync.close()
    assert first["token_type"] == "Bearer"
    assert first["username"] == "alice@example.com"
    assert first["scope"] == "read write"
    assert first["iss"] == "https://issuer.test"
    assert first["aud"] == "api"
    assert isinstance(first["iat"], int)
    assert first["iat"] == math.floor(iat)
    assert isinstance(first["exp"], int)
    assert second["username"] == "u9"
    assert "scope" not in second


async def test_every_oauth_answer_is_no_store(
    client: httpx.AsyncClient, registry: ClientRegistry, settings: RevokerSettings
) -> None:
    """200, 400, 401 and 403 answers of both OAuth endpoints carry Cache-Control: no-store."""
    credentials = register(registry, INTROSPECT_SCOPE)
    token, _ = create_access_token("u1", settings=settings)
    user, _ = create_access_token("u1", scopes=["read"], settings=settings)
    for path in ("/oauth/introspect", "/oauth/revoke"):
        answers = [
            await client.post(path, data={"token_type_hint": "access_token"}),
            await client.post(path, content=b"token=x", headers={"Content-Type": "text/plain"}),
            await client.post(path, data={"token": token}, headers=basic(credentials)),
        ]
        if path == "/oauth/introspect":
            answers.append(await client.post(path, data={"token": token}))
            answers.append(
                await client.post(
                    path, data={"token": token}, headers={"Authorization": f"Bearer {user}"}
                )
            )
        for response in answers:
            assert_no_store(response)
        assert [r.status_code for r in answers][:2] == [400, 400]


# --- RFC 8414 and the JWKS ---------------------------------------------------------------------


async def test_metadata_for_hmac_keys_has_no_jwks(client: httpx.AsyncClient) -> None:
    """RFC 8414 metadata names the endpoints, auth methods and scopes; HMAC keys are never
    published (no jwks_uri, the JWKS path 404)."""
    response = await client.get("/.well-known/oauth-authorization-server")
    assert response.status_code == 200
    meta = response.json()
    assert meta["issuer"] == "http://admin.test"
    assert meta["revocation_endpoint"] == "http://admin.test/oauth/revoke"
    assert meta["introspection_endpoint"] == "http://admin.test/oauth/introspect"
    assert meta["introspection_endpoint_auth_methods_supported"] == [
        "client_secret_basic",
        "client_secret_post",
        "Bearer",
    ]
    assert "none" in meta["revocation_endpoint_auth_methods_supported"]
    assert meta["scopes_supported"] == [INTROSPECT_SCOPE, REVOKE_SCOPE, ADMIN_SCOPE]
    assert "jwks_uri" not in meta
    assert (await client.get("/.well-known/jwks.json")).status_code == 404


def ec_key_files(tmp_path: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    private = tmp_path / "key.pem"
    public = tmp_path / "pub.pem"
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return private, public


async def test_metadata_and_jwks_for_an_asymmetric_key(tmp_path: Path) -> None:
    """With an ES256 key the metadata names /.well-known/jwks.json (on REVOKER_API_PUBLIC_URL),
    the issuer is REVOKER_ISSUER, and the served key verifies revoker's tokens."""
    private, public = ec_key_files(tmp_path)
    for key_setting in ({"jwt_private_key_file": private}, {"jwt_public_key_file": public}):
        settings = make_settings(
            jwt_secret=None,
            jwt_algorithm="ES256",
            jwt_key_id="k1",
            issuer="https://issuer.test",
            api_public_url="https://revoker.internal/",
            **key_setting,
        )
        store = RedisTokenRevocationStore(settings=settings)
        try:
            transport = httpx.ASGITransport(app=create_app(store=store))
            async with httpx.AsyncClient(transport=transport, base_url="http://x.test") as c:
                meta = (await c.get("/.well-known/oauth-authorization-server")).json()
                keys = (await c.get("/.well-known/jwks.json")).json()
        finally:
            await close_store(store)
        assert meta["issuer"] == "https://issuer.test"
        assert meta["jwks_uri"] == "https://revoker.internal/.well-known/jwks.json"
        assert meta["introspection_endpoint"] == "https://revoker.internal/oauth/introspect"
        (jwk,) = keys["keys"]
        assert jwk["kid"] == "k1"
        assert jwk["use"] == "sig"
        assert "d" not in jwk  # the public half only
    signer = make_settings(
        jwt_secret=None,
        jwt_algorithm="ES256",
        jwt_key_id="k1",
        issuer="https://issuer.test",
        jwt_private_key_file=private,
    )
    token, _ = create_access_token("u1", settings=signer)
    claims = jwt.decode(
        token, jwt.PyJWK(jwk).key, algorithms=["ES256"], issuer="https://issuer.test"
    )
    assert claims["sub"] == "u1"


def test_openapi_declares_bearer_and_client_credentials() -> None:
    """The OpenAPI document has bearer and HTTP Basic security schemes; introspection accepts
    either, and its form documents client_secret_post's client_id and client_secret."""
    document = openapi_document()
    schemes = document["components"]["securitySchemes"]
    assert schemes["bearer"] == {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
    assert schemes["clientSecretBasic"]["scheme"] == "basic"
    introspect = document["paths"]["/oauth/introspect"]["post"]
    assert {"bearer": [INTROSPECT_SCOPE]} in introspect["security"]
    assert {"clientSecretBasic": [INTROSPECT_SCOPE]} in introspect["security"]
    form = introspect["requestBody"]["content"]["application/x-www-form-urlencoded"]["schema"]
    assert {"client_id", "client_secret"} <= set(form["properties"])
    assert "/.well-known/oauth-authorization-server" in document["paths"]
    jobs = document["paths"]["/jobs"]["get"]
    assert {"bearer": [REVOKE_SCOPE]} in jobs["security"]


async def test_a_flood_of_wrong_secrets_is_bounded_and_spares_known_clients(
    client: httpx.AsyncClient,
    registry: ClientRegistry,
    settings: RevokerSettings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Wrong secrets sent at once run at most SECRET_CHECKS_AT_ONCE Argon2 checks at a time;
    past the queue they are 503 with Retry-After at once; a client verified before is served
    meanwhile, and once the flood ends a wrong secret is a 401 again."""
    import asyncio
    import threading

    from revoker import clients

    known = register(registry, INTROSPECT_SCOPE)
    token, _ = create_access_token("u1", settings=settings)
    form = {"token": token}
    assert (await client.post("/oauth/introspect", data=form, headers=basic(known))).is_success

    real_verify = clients.verify_secret
    running = {"now": 0, "most": 0}
    lock = threading.Lock()

    def slow_verify(secret_hash: str, secret: str) -> bool:
        with lock:
            running["now"] += 1
            running["most"] = max(running["most"], running["now"])
        try:
            time.sleep(0.05)  # a slower host's Argon2: the flood outlasts its own sending
            return real_verify(secret_hash, secret)
        finally:
            with lock:
                running["now"] -= 1

    monkeypatch.setattr(clients, "verify_secret", slow_verify)
    victim_id, _ = register(registry, INTROSPECT_SCOPE)
    flood = 3 * (clients.SECRET_CHECKS_AT_ONCE + clients.SECRET_CHECKS_QUEUED)
    wrong = [
        client.post("/oauth/introspect", data=form, headers=basic((victim_id, f"guess-{n}")))
        for n in range(flood)
    ]
    answers, served = await asyncio.gather(
        asyncio.gather(*wrong),
        client.post("/oauth/introspect", data=form, headers=basic(known)),
    )
    statuses = [answer.status_code for answer in answers]
    assert set(statuses) == {401, 503}, statuses
    assert statuses.count(401) <= clients.SECRET_CHECKS_AT_ONCE + clients.SECRET_CHECKS_QUEUED
    busy = next(answer for answer in answers if answer.status_code == 503)
    assert busy.json()["error"] == "temporarily_unavailable"
    assert busy.headers["retry-after"] == "1"
    assert_no_store(busy)
    assert running["most"] <= clients.SECRET_CHECKS_AT_ONCE
    assert served.json()["active"] is True
    after = await client.post("/oauth/introspect", data=form, headers=basic((victim_id, "x")))
    assert after.status_code == 401
