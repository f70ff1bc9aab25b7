"""The console's HTTP surface (ASGI, the real Redis, a private prefix): sign-in, sessions, CSRF,
the refusals without credentials, and the forms that write without a worker.

The browser test (tests/test_console_browser.py) drives the same pages in Chromium with a real
worker; these tests pin the security properties request by request.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
import redis

from conftest import REDIS_URL, private_settings
from revoker.api import ADMIN_SCOPE, create_app
from revoker.console.sessions import SESSION_COOKIE
from revoker.localredis import LocalRedis
from revoker.settings import RevokerSettings, configure
from revoker.store import RedisTokenRevocationStore
from revoker.tokens import create_access_token

pytestmark = [pytest.mark.redis]

#: Every console route a signed-out browser could call: (method, path).
PAGES = [
    ("GET", "/console/jobs"),
    ("GET", "/console/jobs/0123456789abcdef01234567"),
    ("GET", "/console/revoke"),
    ("GET", "/console/check"),
    ("GET", "/console/audit"),
    ("GET", "/console/health"),
]
POSTS = [
    "/console/logout",
    "/console/revoke/tenant",
    "/console/revoke/user",
    "/console/revoke/token",
    "/console/revoke/family",
    "/console/jobs/0123456789abcdef01234567/confirm",
    "/console/check",
]
APIS = ["/console/api/jobs", "/console/api/jobs/0123456789abcdef01234567"]


@pytest.fixture(scope="module")
def broker() -> Iterator[LocalRedis]:
    """A private Redis as the Celery broker: a dry run's task never lands in a shared queue."""
    with LocalRedis() as lr:
        yield lr


@pytest.fixture
def settings(broker: LocalRedis) -> Iterator[RevokerSettings]:
    """Process-wide settings with a private prefix and the private broker (no worker runs), and
    a Redis timeout a loaded host meets."""
    with private_settings(broker_url=broker.url, redis_timeout=2.0) as s:
        yield configure(s)


@pytest.fixture
async def store(settings: RevokerSettings) -> AsyncIterator[RedisTokenRevocationStore]:
    """An async store on the real Redis for this test's prefix."""
    s = RedisTokenRevocationStore(settings=settings)
    yield s
    await s.aclose()
    await s.client.connection_pool.disconnect()


@pytest.fixture
async def web(
    settings: RevokerSettings, store: RedisTokenRevocationStore
) -> AsyncIterator[httpx.AsyncClient]:
    """A browser-like client of the admin app (keeps cookies, follows no redirect)."""
    app = create_app(settings=settings, store=store)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://admin.test") as c:
        yield c


def admin_token(settings: RevokerSettings, sub: str = "ops-alice") -> str:
    token, _ = create_access_token(sub, scopes=[ADMIN_SCOPE], settings=settings)
    return token


async def sign_in(web: httpx.AsyncClient, token: str = "", **fields: str) -> httpx.Response:
    page = await web.get("/console/login")
    login = re.search(r'name="login" value="([^"]+)"', page.text)
    assert login is not None
    data = {"login": login.group(1), "token": token, **fields}
    return await web.post("/console/login", data=data)


def csrf_of(page: httpx.Response) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert found is not None, page.text
    return found.group(1)


async def signed_in(web: httpx.AsyncClient, settings: RevokerSettings) -> str:
    """Sign in as ops-alice; returns the session's CSRF token."""
    answer = await sign_in(web, admin_token(settings))
    assert answer.status_code == 303, answer.text
    return csrf_of(await web.get("/console/revoke"))


async def assert_all_refused(web: httpx.AsyncClient) -> None:
    for method, path in PAGES:
        answer = await web.request(method, path)
        assert answer.status_code == 303, path
        assert answer.headers["location"] == "/console/login"
    for path in POSTS:
        answer = await web.post(path, data={"csrf": "x", "reason": "r", "tenant_id": "t"})
        assert answer.status_code == 401, path
    for path in APIS:
        answer = await web.get(path)
        assert answer.status_code == 401, path
        assert answer.json()["error"] == "unauthorized"
    assert (await web.get("/console")).headers["location"] == "/console/jobs"


async def test_everything_is_refused_without_a_session(web: httpx.AsyncClient) -> None:
    """Without a sign-in every page redirects to it, and every post and JSON call answers 401."""
    await assert_all_refused(web)
    web.cookies.set(SESSION_COOKIE, "forged.value", domain="admin.test", path="/console")
    await assert_all_refused(web)


async def test_a_bearer_token_is_not_a_console_session(
    web: httpx.AsyncClient, settings: RevokerSettings
) -> None:
    """An admin bearer header does not open console pages: only the session cookie does."""
    headers = {"Authorization": f"Bearer {admin_token(settings)}"}
    assert (await web.get("/console/jobs", headers=headers)).status_code == 303
    assert (await web.get("/console/api/jobs", headers=headers)).status_code == 401


async def test_sign_in_refuses_bad_tokens_and_foreign_forms(
    web: httpx.AsyncClient, settings: RevokerSettings
) -> None:
    """A garbage token is 401, a token without the admin scope 403, a form not ours 403."""
    assert (await sign_in(web, "not-a-token")).status_code == 401
    plain, _ = create_access_token("mallory", settings=settings)
    answer = await sign_in(web, plain)
    assert answer.status_code == 403
    assert "revoker:admin" in answer.text
    fresh = httpx.AsyncClient(transport=web._transport, base_url="http://admin.test")
    async with fresh:
        # A sign-in posted from elsewhere carries no login cookie of ours (login CSRF).
        page = await web.get("/console/login")
        login = re.search(r'name="login" value="([^"]+)"', page.text)
        assert login is not None
        forged = await fresh.post(
            "/console/login", data={"login": login.group(1), "token": admin_token(settings)}
        )
        assert forged.status_code == 403
        assert SESSION_COOKIE not in forged.cookies


async def test_session_cookie_and_expiry(web: httpx.AsyncClient, settings: RevokerSettings) -> None:
    """The session cookie is HttpOnly, SameSite=Strict, expires; its Redis record expires too."""
    token, _ = create_access_token(
        "ops-alice", scopes=[ADMIN_SCOPE], expires_delta=600, settings=settings
    )
    answer = await sign_in(web, token)
    assert answer.status_code == 303
    cookie = next(v for k, v in answer.headers.multi_items() if k == "set-cookie" and
                  v.startswith(SESSION_COOKIE))  # fmt: skip
    assert "HttpOnly" in cookie
    assert "SameSite=strict" in cookie
    assert "Path=/console" in cookie
    max_age = int(re.search(r"Max-Age=(\d+)", cookie).group(1))  # type: ignore[union-attr]
    # Cut to the token's 600 s, below the 3600 s session setting.
    assert 500 < max_age <= 600
    client = redis.Redis.from_url(REDIS_URL)
    try:
        (key,) = client.keys(f"{settings.key_prefix}:console:*")
        assert 500 < client.ttl(key) <= 600
        record = client.get(key)
        assert record is not None
        # The session keeps the verified claims, never the bearer token itself.
        assert b"ops-alice" in record
        assert token.encode() not in record
        assert token.split(".")[2].encode() not in record
    finally:
        client.close()
    page = await web.get("/console/jobs")
    assert page.status_code == 200
    assert "signed in as" in page.text
    assert "nonce-" in page.headers["content-security-policy"]
    assert "'unsafe-inline'" not in page.headers["content-security-policy"]


async def test_sign_out_and_a_revoked_admin_token_end_the_session(
    web: httpx.AsyncClient, settings: RevokerSettings, store: RedisTokenRevocationStore
) -> None:
    """Signing out deletes the session; revoking the admin token ends it at the next request."""
    csrf = await signed_in(web, settings)
    assert (await web.post("/console/logout", data={"csrf": csrf})).status_code == 303
    assert (await web.get("/console/jobs")).status_code == 303
    token, jti = create_access_token("ops-bob", scopes=[ADMIN_SCOPE], settings=settings)
    assert (await sign_in(web, token)).status_code == 303
    assert (await web.get("/console/jobs")).status_code == 200
    await store.revoke_token(jti, reason="offboarded", actor="test")
    assert (await web.get("/console/jobs")).status_code == 303
    assert (await web.get("/console/api/jobs")).status_code == 401


async def test_writes_need_the_csrf_token(
    web: httpx.AsyncClient, settings: RevokerSettings, store: RedisTokenRevocationStore
) -> None:
    """A post without the session's CSRF token is 403 and revokes nothing."""
    await signed_in(web, settings)
    _, jti = create_access_token("victim", settings=settings)
    for csrf in (None, "wrong"):
        data = {"value": jti, "reason": "csrf probe"} | ({"csrf": csrf} if csrf else {})
        answer = await web.post("/console/revoke/token", data=data)
        assert answer.status_code == 403
        assert "CSRF" in answer.text
    assert not await store.is_token_revoked(jti)


async def test_revoke_a_token_check_it_and_find_its_audit_entry(
    web: httpx.AsyncClient, settings: RevokerSettings
) -> None:
    """The token form revokes as the signed-in operator; Check names the rule; Audit lists it."""
    csrf = await signed_in(web, settings)
    token, jti = create_access_token("carol", tenant_id="acme", settings=settings)
    valid = await web.post("/console/check", data={"csrf": csrf, "token": token})
    assert "Valid" in valid.text
    missing = await web.post("/console/revoke/token", data={"csrf": csrf, "value": token})
    assert missing.status_code == 422
    assert "reason is required" in missing.text
    done = await web.post(
        "/console/revoke/token", data={"csrf": csrf, "value": token, "reason": "stolen laptop"}
    )
    assert done.status_code == 200
    assert f"revoked token {jti}" in done.text
    checked = await web.post("/console/check", data={"csrf": csrf, "token": token})
    assert "Revoked (rule: jti)" in checked.text
    assert "stolen laptop" in checked.text
    invalid = await web.post("/console/check", data={"csrf": csrf, "token": "a.b.c"})
    assert "Invalid" in invalid.text
    audit = await web.get("/console/audit", params={"target": jti})
    assert audit.status_code == 200
    assert audit.text.count("<tr data-entry=") == 1
    assert "ops-alice" in audit.text
    assert "stolen laptop" in audit.text
    assert (await web.get("/console/audit", params={"before": "junk"})).status_code == 400


async def test_bulk_forms_validate_and_confirmation_needs_the_id(
    web: httpx.AsyncClient, settings: RevokerSettings
) -> None:
    """A bad bulk form is 422 with the field named; a confirmation must type the exact id."""
    csrf = await signed_in(web, settings)
    bad = await web.post(
        "/console/revoke/tenant",
        data={"csrf": csrf, "tenant_id": "acme", "reason": "x", "issued_after": "yesterday"},
    )
    assert bad.status_code == 422
    assert "issued_after" in bad.text
    assert (await web.get("/console/api/jobs")).json() == {"jobs": []}
    # Broker down is fine: the dry run is recorded and stays pending until a worker runs it.
    dry = await web.post(
        "/console/revoke/tenant", data={"csrf": csrf, "tenant_id": "acme", "reason": "leak"}
    )
    assert dry.status_code == 303
    job_url = dry.headers["location"]
    job = (await web.get(job_url.replace("/console/", "/console/api/"))).json()["job"]
    assert job["dry_run"] is True
    assert job["actor"] == "ops-alice"
    confirm = await web.post(
        f"{job_url}/confirm", data={"csrf": csrf, "confirm": "acme", "reason": "leak"}
    )
    assert confirm.status_code == 409  # the dry run has not counted yet
    page = await web.get(job_url)
    assert 'id="confirm-fields" disabled' in page.text
    assert (await web.get("/console/jobs", params={"status": "bogus"})).status_code == 400
    listed = await web.get("/console/api/jobs", params={"tenant": "acme", "actor": "ops-alice"})
    assert [j["id"] for j in listed.json()["jobs"]] == [job["id"]]
    assert (await web.get("/console/api/jobs", params={"tenant": "globex"})).json()["jobs"] == []


async def test_health_page(web: httpx.AsyncClient, settings: RevokerSettings) -> None:
    """Health shows Redis, the broker, integrity and the counters, in words and symbols."""
    await signed_in(web, settings)
    page = await web.get("/console/health")
    assert page.status_code == 200
    for part in ("Redis", "Broker", "Integrity", "revoker_", "audit_entries"):
        assert part in page.text
    assert "none answered a ping" in page.text  # no worker runs here


async def test_bad_input_is_refused_clearly_never_a_5xx(
    web: httpx.AsyncClient, settings: RevokerSettings
) -> None:
    """Unknown forms, jobs and ids, wrong media types, repeated fields: a 4xx page saying why."""
    csrf = await signed_in(web, settings)
    cases = [
        (await web.post("/console/revoke/nosuch", data={"csrf": csrf}), 404, "nothing to revoke"),
        (await web.get("/console/jobs/" + "x" * 300), 404, "no job"),
        (await web.get("/console/api/jobs/nosuchjob"), 404, "no job"),
        (
            await web.post("/console/revoke/token", content=b"{}",
                           headers={"content-type": "application/json"}),
            415, "urlencoded",
        ),
        (
            await web.post("/console/revoke/token", content=f"csrf={csrf}&csrf={csrf}".encode(),
                           headers={"content-type": "application/x-www-form-urlencoded"}),
            400, "repeated",
        ),
        (
            await web.post("/console/revoke/family",
                           data={"csrf": csrf, "value": "f" * 2000, "reason": "r"}),
            422, "",
        ),
        (
            await web.post("/console/jobs/0123456789abcdef01234567/confirm",
                           data={"csrf": csrf, "confirm": "x"}),
            404, "no job",
        ),
    ]  # fmt: skip
    for answer, status, words in cases:
        assert answer.status_code == status, answer.text
        assert words in answer.text
        assert "Traceback" not in answer.text


async def test_revoke_a_session_from_one_of_its_tokens(
    web: httpx.AsyncClient, settings: RevokerSettings, store: RedisTokenRevocationStore
) -> None:
    """The family form takes a token of the session: its family (and tenant) is revoked."""
    from revoker.sessions import start_session

    csrf = await signed_in(web, settings)
    pair = await start_session("dave", tenant_id="acme", client_id="web", store=store)
    done = await web.post(
        "/console/revoke/family",
        data={"csrf": csrf, "value": pair.refresh_token, "reason": "lost phone"},
    )
    assert done.status_code == 200
    assert "revoked session" in done.text
    checked = await web.post("/console/check", data={"csrf": csrf, "token": pair.access_token})
    assert "Revoked (rule: family)" in checked.text
    assert "lost phone" in checked.text


async def test_audit_reader_filters_and_pages(
    settings: RevokerSettings, store: RedisTokenRevocationStore
) -> None:
    """The audit reader returns the newest matching entries first, a page at a time."""
    from revoker.console.data import read_audit

    for i in range(5):
        await store.revoke_token(f"jti-{i}", reason="paging", actor="ops-alice")
    await store.revoke_token("jti-other", reason="other", actor="ops-bob")
    seen: list[str] = []
    before = None
    for expected in (2, 2, 1):
        page = await read_audit(store, filters={"actor": "ops-alice"}, before=before, limit=2)
        assert len(page.entries) == expected
        seen += [entry.fields["target"] for entry in page.entries]
        before = page.next_before
    assert seen == [f"jti-{i}" for i in reversed(range(5))]
    assert before is None
    (bob,) = (await read_audit(store, filters={"actor": "ops-bob", "kind": "token"})).entries
    assert bob.fields["reason"] == "other"


def test_without_the_server_extra_the_console_names_it() -> None:
    """A core-only install still builds the admin app; the console answers 503 naming the extra."""
    import subprocess
    import sys

    code = (
        "import sys, asyncio\n"
        "sys.modules['jinja2'] = None\n"
        "import httpx\n"
        "from revoker.api import create_app\n"
        "from revoker.settings import RevokerSettings\n"
        f"s = RevokerSettings(_env_file=None, jwt_secret={'x' * 40!r})\n"
        "async def main():\n"
        "    transport = httpx.ASGITransport(app=create_app(settings=s))\n"
        "    async with httpx.AsyncClient(transport=transport, base_url='http://a') as c:\n"
        "        r = await c.get('/console/login')\n"
        "        print(r.status_code, r.text)\n"
        "asyncio.run(main())\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("503 ")
    assert "pip install &#x27;revoker[server]&#x27;" in done.stdout


def test_console_pages_are_not_in_the_openapi_document(settings: RevokerSettings) -> None:
    """The OpenAPI document describes the JSON API; the console's browser pages stay out of it."""
    from revoker.api import openapi_document

    app = create_app(settings=settings)
    console = [r for r in app.routes if getattr(r, "path", "").startswith("/console")]
    assert len(console) == 14
    assert not any(r.include_in_schema for r in console)  # type: ignore[attr-defined]
    assert not [path for path in openapi_document()["paths"] if path.startswith("/console")]


async def test_sign_in_with_client_credentials(
    web: httpx.AsyncClient, settings: RevokerSettings
) -> None:
    """A registered admin client signs in with its id and secret and acts as client:<id>; a
    wrong secret is 401, a client without the admin scope 403; rotating the secret ends it."""
    from revoker.clients import REVOKE_SCOPE, ClientRegistry
    from revoker.keys import KeyLayout

    client = redis.Redis.from_url(REDIS_URL)
    registry = ClientRegistry(client, KeyLayout(settings.key_prefix))
    try:
        admin, secret = registry.add("ops team", [ADMIN_SCOPE])
        narrow, narrow_secret = registry.add("gateway", [REVOKE_SCOPE])
        wrong = await sign_in(web, client_id=admin.client_id, client_secret="nope" * 10)
        assert wrong.status_code == 401
        refused = await sign_in(web, client_id=narrow.client_id, client_secret=narrow_secret)
        assert refused.status_code == 403
        assert (
            await sign_in(web, client_id=admin.client_id, client_secret=secret)
        ).status_code == 303
        page = await web.get("/console/revoke")
        assert f"client:{admin.client_id}" in page.text
        _, jti = create_access_token("victim", settings=settings)
        done = await web.post(
            "/console/revoke/token",
            data={"csrf": csrf_of(page), "value": jti, "reason": "by a client"},
        )
        assert done.status_code == 200
        audit = await web.get("/console/audit", params={"target": jti})
        assert f"client:{admin.client_id}" in audit.text
        registry.rotate_secret(admin.client_id)
        assert (await web.get("/console/jobs")).status_code == 303
    finally:
        client.close()


async def test_job_detail_shows_deliveries_parked_chunks_and_the_last_error(
    store: RedisTokenRevocationStore,
) -> None:
    """A job's page reads its chunks' deliveries and last error through the store's job plan:
    a chunk delivered more often than max_redeliveries is listed as parked."""
    from revoker.bulk import BulkRevocation
    from revoker.console.data import job_detail
    from revoker.job_record import JobRecord

    request = BulkRevocation(scope="tenant", tenant_id="acme", reason="r", actor="ops")
    record = JobRecord.for_request(request, job_id="console-job", created_at=1.0)
    await store.record_job(record, idem_key=store.keys.job_idempotency("console-job"))
    cap = store.settings.max_redeliveries
    deliveries = store.keys.job_deliveries(record.id)
    await store.client.hset(deliveries, mapping={"0": 1, "3": cap + 1})
    await store.client.hset(store.keys.job(record.id), "last_error", "chunk 3: boom")
    detail = await job_detail(store, record.id)
    assert detail.deliveries == {0: 1, 3: cap + 1}
    assert detail.parked == [3]
    assert detail.last_error == "chunk 3: boom"
