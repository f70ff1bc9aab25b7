"""The SSF endpoints of the admin API in process (ASGI): metadata, stream management, status,
subjects, verification, poll, dead letters, relying parties, and their errors."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from conftest import private_settings
from revoker.api import ADMIN_SCOPE, create_app
from revoker.settings import RevokerSettings, configure
from revoker.store import RedisTokenRevocationStore, get_sync_revocation_store
from revoker.tokens import create_access_token
from test_api import close_store
from test_events import verify, write_key

pytestmark = pytest.mark.redis

SESSION_REVOKED = "https://schemas.openid.net/secevent/caep/event-type/session-revoked"


@pytest.fixture
def ssf_settings(tmp_path: Path) -> Any:
    """Settings with a signing key, process-wide, on a private prefix."""
    with private_settings(
        events_signing_key_file=write_key(tmp_path / "key.pem"),
        events_issuer="https://revoker.test",
        events_poll_wait=0.5,
    ) as s:
        yield configure(s)


@pytest.fixture
async def client(ssf_settings: RevokerSettings) -> AsyncIterator[httpx.AsyncClient]:
    """An admin client of the app (admin bearer token attached)."""
    token, _ = create_access_token("ops", scopes=[ADMIN_SCOPE], settings=ssf_settings)
    store = RedisTokenRevocationStore(settings=ssf_settings)
    transport = httpx.ASGITransport(app=create_app(settings=ssf_settings, store=store))
    try:
        async with httpx.AsyncClient(
            transport=transport,
            base_url="http://tx.test",
            headers={"Authorization": f"Bearer {token}"},
        ) as c:
            yield c
    finally:
        await close_store(store)
        get_sync_revocation_store(ssf_settings).close()


async def test_metadata_and_jwks_are_open(client: httpx.AsyncClient) -> None:
    """The well-known metadata names the endpoints and both delivery methods; the JWKS the key."""
    async with httpx.AsyncClient(transport=client._transport, base_url="http://tx.test") as anon:
        meta = (await anon.get("/.well-known/ssf-configuration")).json()
        assert meta["issuer"] == "https://revoker.test"
        assert meta["jwks_uri"] == "http://tx.test/ssf/jwks.json"
        assert meta["delivery_methods_supported"] == ["urn:ietf:rfc:8935", "urn:ietf:rfc:8936"]
        assert meta["configuration_endpoint"] == "http://tx.test/ssf/streams"
        assert set(meta["critical_subject_members"]) == {"session", "user", "tenant"}
        keys = (await anon.get("/ssf/jwks.json")).json()["keys"]
        assert keys[0]["kty"] == "EC"
        assert "d" not in keys[0]
        assert (await anon.post("/ssf/streams", json={})).status_code == 401


async def test_stream_lifecycle(client: httpx.AsyncClient, ssf_settings: RevokerSettings) -> None:
    """Create, read, list, update, replace, status, subjects, verify, poll, delete."""
    created = await client.post("/ssf/streams", json={"description": "siem", "aud": "https://rx"})
    assert created.status_code == 201, created.text
    stream = created.json()
    sid = stream["stream_id"]
    assert stream["delivery"] == {
        "method": "urn:ietf:rfc:8936",
        "endpoint_url": f"http://tx.test/ssf/poll/{sid}",
    }
    assert stream["events_delivered"] == [SESSION_REVOKED]
    assert (await client.get("/ssf/streams", params={"stream_id": sid})).json() == stream
    assert [s["stream_id"] for s in (await client.get("/ssf/streams")).json()] == [sid]
    patched = (
        await client.patch("/ssf/streams", json={"stream_id": sid, "per_session_events": True})
    ).json()
    assert patched["per_session_events"] is True
    assert patched["description"] == "siem"
    replaced = (await client.put("/ssf/streams", json={"stream_id": sid})).json()
    assert "description" not in replaced
    assert replaced["per_session_events"] is False
    push = {
        "method": "urn:ietf:rfc:8935",
        "endpoint_url": "http://rx.test/in",
        "authorization_header": "Bearer s3cret",
    }
    pushed = (await client.patch("/ssf/streams", json={"stream_id": sid, "delivery": push})).json()
    assert "authorization_header" not in pushed["delivery"]  # write-only
    poll_again = {"method": "urn:ietf:rfc:8936"}
    await client.patch("/ssf/streams", json={"stream_id": sid, "delivery": poll_again})

    status = await client.post(
        "/ssf/status", json={"stream_id": sid, "status": "paused", "reason": "x"}
    )
    assert status.json() == {"stream_id": sid, "status": "paused", "reason": "x"}
    assert (await client.get("/ssf/status", params={"stream_id": sid})).json()["status"] == "paused"
    await client.post("/ssf/status", json={"stream_id": sid, "status": "enabled"})

    subject = {"format": "opaque", "id": "acme"}
    assert (
        await client.post("/ssf/subjects/add", json={"stream_id": sid, "subject": subject})
    ).status_code == 200
    assert (
        await client.post("/ssf/subjects/remove", json={"stream_id": sid, "subject": subject})
    ).status_code == 204

    assert (
        await client.post("/ssf/verify", json={"stream_id": sid, "state": "s1"})
    ).status_code == 204
    polled = (await client.post(f"/ssf/poll/{sid}", json={"returnImmediately": True})).json()
    ((jti, token),) = polled["sets"].items()
    keys = (await client.get("/ssf/jwks.json")).json()
    claims = verify(token, keys, sid)  # the PUT put aud back to its default, the stream id
    assert claims["jti"] == jti
    assert jwt.get_unverified_header(token)["typ"] == "secevent+jwt"
    acked = (await client.post(f"/ssf/poll/{sid}", json={"ack": [jti]})).json()
    assert acked == {"sets": {}, "moreAvailable": False}  # waited events_poll_wait, none came

    assert (await client.delete("/ssf/streams", params={"stream_id": sid})).status_code == 204
    gone = await client.get("/ssf/streams", params={"stream_id": sid})
    assert gone.status_code == 404
    assert gone.json()["error"] == "not_found"


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("post", "/ssf/streams", {"delivery": {"method": "urn:ietf:rfc:8935"}}, 400),
        ("post", "/ssf/streams", {"delivery": {"method": "smtp"}}, 400),
        ("post", "/ssf/streams", {"stream_id": "mine"}, 400),
        ("post", "/ssf/streams", {"nonsense": 1}, 400),
        ("post", "/ssf/streams", [1, 2], 400),
        ("post", "/ssf/status", {"stream_id": "nope", "status": "enabled"}, 404),
        ("post", "/ssf/subjects/add", {"stream_id": "x", "subject": {"format": "smoke"}}, 400),
        ("post", "/ssf/poll/nope", {}, 404),
        ("patch", "/ssf/streams", {}, 400),
        ("post", "/ssf/dead-letters/replay", {"ids": ["nope"]}, 400),
        ("post", "/ssf/streams", {"aud": ""}, 400),
        ("post", "/ssf/verify", {"stream_id": "x" * 300}, 400),
    ],
)
async def test_bad_requests_get_clear_errors(
    client: httpx.AsyncClient, method: str, path: str, body: Any, status: int
) -> None:
    """Malformed or unknown input is a 4xx naming the problem, never a 5xx."""
    response = await client.request(method, path, json=body)
    assert response.status_code == status, response.text
    payload = response.json()
    assert payload.get("error") or payload.get("err")


async def test_dead_letters_and_relying_parties(
    client: httpx.AsyncClient, ssf_settings: RevokerSettings
) -> None:
    """Clients with a logout URI are listed as relying parties; a setErr'd SET is listed as a
    dead letter and replayed."""
    from revoker.clients import ClientRegistry
    from revoker.keys import KeyLayout

    sync = get_sync_revocation_store(ssf_settings)
    registry = ClientRegistry(sync.client, KeyLayout(ssf_settings.key_prefix))
    registry.add(
        "rp", ["revoker:introspect"], client_id="web", backchannel_logout_uri="http://rp.test/bcl"
    )
    registry.add("plain", ["revoker:introspect"], client_id="api")
    rp = {"client_id": "web", "backchannel_logout_uri": "http://rp.test/bcl"}
    assert (await client.get("/ssf/relying-parties")).json()["relying_parties"] == [rp]
    sid = (await client.post("/ssf/streams", json={})).json()["stream_id"]
    await client.post("/ssf/verify", json={"stream_id": sid})
    (jti,) = (await client.post(f"/ssf/poll/{sid}", json={"returnImmediately": True})).json()[
        "sets"
    ]
    errs = {jti: {"err": "invalid_issuer", "description": "who?"}}
    await client.post(f"/ssf/poll/{sid}", json={"setErrs": errs, "returnImmediately": True})
    letters = (await client.get("/ssf/dead-letters", params={"stream_id": sid})).json()[
        "dead_letters"
    ]
    assert [(d["jti"], d["error"]) for d in letters] == [(jti, "invalid_issuer: who?")]
    replayed = (await client.post("/ssf/dead-letters/replay", json={"stream_id": sid})).json()
    assert replayed["replayed"] == [letters[0]["id"]]
    again = (await client.post(f"/ssf/poll/{sid}", json={"returnImmediately": True})).json()
    assert list(again["sets"]) == [jti]


async def test_without_a_key_there_is_no_transmitter(settings: RevokerSettings) -> None:
    """REVOKER_EVENTS_SIGNING_KEY_FILE unset: the SSF endpoints are 404s naming it."""
    store = RedisTokenRevocationStore(settings=settings)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_app(settings=settings, store=store)),
        base_url="http://tx.test",
    ) as c:
        response = await c.get("/.well-known/ssf-configuration")
    await close_store(store)
    assert response.status_code == 404
    assert "REVOKER_EVENTS_SIGNING_KEY_FILE" in response.json()["error_description"]
    get_sync_revocation_store(settings).close()
