"""revoker.events in one process: signing, the router, queues, push outcomes, poll, dead letters.

Real Redis under a private prefix; receivers are httpx MockTransports here (the real processes:
tests/test_ssf_e2e.py).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from prometheus_client import REGISTRY

from conftest import private_settings
from revoker.events import emit_chunk_events
from revoker.events.claims import BACKCHANNEL_LOGOUT, SESSION_REVOKED, VERIFICATION
from revoker.events.delivery import deliver
from revoker.events.poll import PollRequest, poll_once
from revoker.events.router import route
from revoker.events.signing import SigningKey
from revoker.events.streams import (
    PUSH,
    DeliveryRequest,
    StreamRequest,
    SubjectRequest,
)
from revoker.events.transmitter import Transmitter
from revoker.exceptions import ConfigurationError
from revoker.job_record import JobRecord
from revoker.sessions import start_session_sync
from revoker.store import SyncRedisTokenRevocationStore

pytestmark = pytest.mark.redis


def add_relying_party(t: Transmitter, client_id: str, uri: str) -> None:
    """Register ``client_id`` as an API client with a back-channel logout URI."""
    from revoker.clients import ClientRegistry

    ClientRegistry(t.client, t.keys).add(
        client_id, ["revoker:introspect"], client_id=client_id, backchannel_logout_uri=uri
    )


def write_key(path: Path, kind: str = "ec") -> Path:
    """A PEM private key at ``path`` (EC P-256 or RSA 2048)."""
    key: Any = (
        ec.generate_private_key(ec.SECP256R1())
        if kind == "ec"
        else rsa.generate_private_key(public_exponent=65537, key_size=2048)
    )
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return path


def verify(token: str, jwks: dict[str, Any], audience: Any) -> dict[str, Any]:
    """The claims of ``token``, verified against ``jwks`` as a receiver does."""
    header = jwt.get_unverified_header(token)
    key = jwt.PyJWKSet.from_dict(jwks)[header["kid"]]
    return jwt.decode(token, key.key, algorithms=[header["alg"]], audience=audience)


@pytest.fixture
def tx(tmp_path: Path) -> Iterator[tuple[Transmitter, SyncRedisTokenRevocationStore]]:
    """A transmitter and store over a private prefix, with an EC key."""
    with private_settings(
        events_signing_key_file=write_key(tmp_path / "key.pem"),
        events_issuer="https://revoker.test",
        issuer="https://idp.test",
        events_retry_base=0.01,
        events_max_attempts=3,
    ) as s:
        store = SyncRedisTokenRevocationStore(settings=s)
        yield Transmitter.for_store(store), store
        store.close()


def push_stream(t: Transmitter, url: str = "http://rx.test/events", **extra: Any) -> str:
    request = StreamRequest(delivery=DeliveryRequest(method=PUSH, endpoint_url=url), **extra)
    return str(t.registry.create(request, poll_url="http://tx.test/ssf/poll")["stream_id"])


def poll_stream(t: Transmitter, **extra: Any) -> str:
    return str(
        t.registry.create(StreamRequest(**extra), poll_url="http://tx.test/ssf/poll")["stream_id"]
    )


def queued(t: Transmitter, dest: str) -> list[dict[str, Any]]:
    return [e.claims for e in t.queues.head(dest, 1000)]


@pytest.mark.parametrize(("kind", "alg"), [("ec", "ES256"), ("rsa", "RS256")])
def test_sets_verify_against_the_jwks(tmp_path: Path, kind: str, alg: str) -> None:
    """A SET carries typ secevent+jwt, its key's alg and RFC 7638 kid, and verifies by the JWKS."""
    key = SigningKey.from_pem(write_key(tmp_path / "k.pem", kind).read_bytes())
    token = key.sign_set({"iss": "i", "aud": "a", "jti": "j", "events": {}})
    header = jwt.get_unverified_header(token)
    assert header == {"alg": alg, "typ": "secevent+jwt", "kid": key.kid}
    assert verify(token, key.jwks, "a")["jti"] == "j"
    assert len(key.kid) == 43  # base64url of a SHA-256
    logout = key.sign_logout({"iss": "i", "aud": "c", "jti": "x", "events": {}})
    claims = verify(logout, key.jwks, "c")
    assert jwt.get_unverified_header(logout)["typ"] == "logout+jwt"
    assert claims["exp"] - claims["iat"] == 120


def test_a_key_that_is_not_p256_or_rsa_is_refused(tmp_path: Path) -> None:
    """A P-384 key or garbage is a configuration error naming the setting."""
    key = ec.generate_private_key(ec.SECP384R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(ConfigurationError, match="P-256"):
        SigningKey.from_pem(pem)
    with pytest.raises(ConfigurationError, match="REVOKER_EVENTS_SIGNING_KEY_FILE"):
        SigningKey.from_pem(b"not a key")


def test_a_revoked_session_becomes_one_session_revoked_set(tx: Any) -> None:
    """Revoking a family queues a CAEP session-revoked with a complex subject (session, user
    iss_sub, tenant), the reason and initiator, once even when routed twice."""
    t, store = tx
    stream = poll_stream(t, aud="https://rx.test")
    pair = start_session_sync("alice", tenant_id="acme", client_id="web", store=store)
    store.revoke_family(pair.family_id, tenant_id="acme", reason="stolen laptop", actor="ops")
    store.revoke_token("some-jti", actor="ops")  # a token names no session: no event
    assert route(t) == 1
    (claims,) = queued(t, stream)
    assert claims["aud"] == "https://rx.test"
    assert claims["iss"] == "https://revoker.test"
    assert claims["sub_id"] == {
        "format": "complex",
        "session": {"format": "opaque", "id": pair.family_id},
        "user": {"format": "iss_sub", "iss": "https://idp.test", "sub": "alice"},
        "tenant": {"format": "opaque", "id": "acme"},
    }
    event = claims["events"][SESSION_REVOKED]
    assert event["initiating_entity"] == "admin"
    assert event["reason_admin"] == {"en": "stolen laptop"}
    assert isinstance(event["event_timestamp"], int)
    # The same audit entry routed again (a router that died before XACK) queues nothing new.
    t.client.xgroup_setid(t.keys.audit, "revoker-events", "0")
    route(t)
    assert len(queued(t, stream)) == 1


def test_watermarks_give_one_event_and_only_per_session_streams_get_chunks(tx: Any) -> None:
    """A user watermark is one user event; a bulk chunk's sessions reach only the stream that
    asked for per-session events."""
    t, store = tx
    plain = poll_stream(t)
    detailed = poll_stream(t, per_session_events=True)
    store.revoke_user_tokens("bob", tenant_id="acme", actor=None)
    pairs = [start_session_sync("bob", tenant_id="acme", store=store) for _ in range(3)]
    record = JobRecord(id="job1", kind="user", tenant_id="acme", user_id="bob", created_at=1.0)
    ids = [p.family_id.encode() for p in pairs]
    assert emit_chunk_events(store, record, ids) == 3
    route(t)
    (user_event,) = queued(t, plain)
    assert user_event["sub_id"]["user"] == {
        "format": "iss_sub",
        "iss": "https://idp.test",
        "sub": "bob",
    }
    assert user_event["events"][SESSION_REVOKED]["initiating_entity"] == "system"
    sessions = [c["sub_id"].get("session", {}).get("id") for c in queued(t, detailed)]
    assert sorted(s for s in sessions if s) == sorted(p.family_id for p in pairs)


def test_chunks_cost_nothing_when_no_stream_wants_sessions(tx: Any) -> None:
    """Without a per-session stream or relying party, emit_chunk_events writes nothing."""
    t, store = tx
    poll_stream(t)
    record = JobRecord(id="job2", kind="tenant", tenant_id="acme", created_at=1.0)
    assert emit_chunk_events(store, record, [b"1.abc"]) == 0
    assert t.client.xlen(t.keys.events_chunks) == 0


def test_subjects_filter_a_stream(tx: Any) -> None:
    """A stream that added a tenant subject gets that tenant's events only."""
    t, store = tx
    stream = poll_stream(t)
    tenant = {"format": "complex", "tenant": {"format": "opaque", "id": "acme"}}
    t.registry.add_subject(SubjectRequest(stream_id=stream, subject=tenant))
    store.revoke_tenant_tokens("other")
    store.revoke_tenant_tokens("acme")
    route(t)
    assert [c["sub_id"]["id"] for c in queued(t, stream)] == ["acme"]
    t.registry.remove_subject(SubjectRequest(stream_id=stream, subject=tenant))
    store.revoke_tenant_tokens("other")
    route(t)
    assert len(queued(t, stream)) == 2


def test_a_paused_stream_holds_a_bounded_queue(tx: Any, tmp_path: Path) -> None:
    """Paused: events are held (the newest REVOKER_EVENTS_MAX_HELD), the rest counted as dropped;
    disabled: the held events are dropped and new ones not queued."""
    t, store = tx
    small = Transmitter(t.client, t.settings.model_copy(update={"events_max_held": 10}))
    stream = poll_stream(small)
    small.registry.set_status(stream, "paused", "maintenance")
    for n in range(15):
        store.revoke_tenant_tokens(f"t{n}")
    route(small)
    assert [c["sub_id"]["id"] for c in queued(small, stream)] == [f"t{n}" for n in range(5, 15)]
    assert small.queues.dropped(stream) == 5
    answer, _ = poll_once(small, stream, PollRequest(returnImmediately=True))
    assert answer["sets"] == {}  # paused: held, not handed out
    small.registry.set_status(stream, "disabled", None)
    store.revoke_tenant_tokens("late")
    route(small)
    assert queued(small, stream) == []


def _receiver(statuses: list[int], seen: list[str]) -> httpx.Client:
    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request.content.decode())
        status = statuses.pop(0) if statuses else 202
        body = {"err": "invalid_audience", "description": "no"} if status == 400 else None
        return httpx.Response(status, json=body)

    return httpx.Client(transport=httpx.MockTransport(handle))


def test_push_outcomes_retry_dead_letter_and_replay(tx: Any) -> None:
    """202 delivers in order; 5xx backs off and retries; 400 dead-letters at once with its code;
    the attempt cap dead-letters; replay queues it again with the same jti."""
    t, store = tx
    stream = push_stream(t, aud="rx")
    seen: list[str] = []
    for name in ("a", "b", "c", "d"):
        store.revoke_tenant_tokens(name)
    route(t)
    before = {o: _count(o) for o in ("delivered", "retried", "dead_lettered")}
    client = _receiver([202, 500, 202, 400, 500, 500, 500], seen)
    assert deliver(t, stream, client=client) == "backoff"  # a delivered, b failed once
    _jti, attempts, _ = t.queues.attempts(stream)
    assert attempts == 1
    import time

    time.sleep(0.05)
    assert deliver(t, stream, client=client) == "backoff"  # b delivered, c 400, d failed
    letters = t.queues.dead_letters(dest=stream)
    assert [verify_claims(letter.claims) for letter in letters] == ["c"]
    assert letters[0].error.startswith("400 invalid_audience")
    for _ in range(5):
        time.sleep(0.1)
        deliver(t, stream, client=client)
    letters = t.queues.dead_letters(dest=stream)
    assert [verify_claims(letter.claims) for letter in letters] == ["d", "c"]
    assert letters[0].attempts == 3
    counted = {o: _count(o) - before[o] for o in before}
    assert counted == {"delivered": 2, "retried": 3, "dead_lettered": 2}
    tenants = [verify(s, t.key.jwks, "rx")["sub_id"]["id"] for s in seen]
    assert tenants[:3] == ["a", "b", "b"]
    replayed = t.queues.replay([letters[1].id], exists=lambda d: True)
    assert [r.jti for r in replayed] == [letters[1].jti]
    assert deliver(t, stream, client=_receiver([202], seen)) == "idle"
    assert verify(seen[-1], t.key.jwks, "rx")["jti"] == letters[1].jti


def _count(outcome: str) -> float:
    return REGISTRY.get_sample_value("revoker_events_total", {"outcome": outcome}) or 0.0


def verify_claims(claims: dict[str, Any]) -> str:
    return str(claims["sub_id"]["id"])


def test_poll_acks_errors_and_more_available(tx: Any) -> None:
    """Poll hands out the oldest events, again until acknowledged; setErrs dead-letters."""
    t, store = tx
    stream = poll_stream(t)
    for name in ("a", "b", "c"):
        store.revoke_tenant_tokens(name)
    route(t)
    first, _ = poll_once(t, stream, PollRequest(maxEvents=2, returnImmediately=True))
    assert first["moreAvailable"] is True
    jtis = list(first["sets"])
    again, _ = poll_once(t, stream, PollRequest(maxEvents=2, returnImmediately=True))
    assert list(again["sets"]) == jtis  # not acknowledged: returned again
    errs = {jtis[1]: {"err": "invalid_key", "description": "kid?"}}
    rest, _ = poll_once(
        t,
        stream,
        PollRequest.model_validate({"ack": [jtis[0]], "setErrs": errs, "returnImmediately": True}),
    )
    assert len(rest["sets"]) == 1
    assert rest["moreAvailable"] is False
    (tenant,) = [verify(s, t.key.jwks, stream)["sub_id"]["id"] for s in rest["sets"].values()]
    assert tenant == "c"
    assert [d.error for d in t.queues.dead_letters(dest=stream)] == ["invalid_key: kid?"]


def test_relying_parties_get_logout_tokens_for_their_sessions(tx: Any) -> None:
    """A relying party gets one logout token per revoked session of its client: sid, sub,
    events, typ logout+jwt, no nonce; another client's session is not sent to it."""
    t, store = tx
    add_relying_party(t, "web", "http://rp.test/bcl")
    route(t)  # the router's run that first sees the relying party (as beat does each second)
    mine = start_session_sync("carol", tenant_id=None, client_id="web", store=store)
    other = start_session_sync("carol", tenant_id=None, client_id="mobile", store=store)
    store.revoke_family(mine.family_id, tenant_id=None)
    store.revoke_family(other.family_id, tenant_id=None)
    route(t)
    forms: list[str] = []

    def handle(request: httpx.Request) -> httpx.Response:
        forms.append(request.content.decode())
        return httpx.Response(200)

    assert (
        deliver(t, "rp:web", client=httpx.Client(transport=httpx.MockTransport(handle))) == "idle"
    )
    (form,) = forms
    token = form.removeprefix("logout_token=")
    claims = verify(token, t.key.jwks, "web")
    assert jwt.get_unverified_header(token)["typ"] == "logout+jwt"
    assert claims["sid"] == mine.family_id
    assert claims["sub"] == "carol"
    assert claims["events"] == {BACKCHANNEL_LOGOUT: {}}
    assert "nonce" not in claims
    assert claims["iss"] == "https://revoker.test"


def test_verification_events_go_through_the_stream(tx: Any) -> None:
    """A verification event is queued with its state, to the stream's audience."""
    t, _store = tx
    stream = poll_stream(t)
    from revoker.api.ssf import _verify

    _verify(t, stream, "abc")
    (claims,) = queued(t, stream)
    assert claims["events"] == {VERIFICATION: {"state": "abc"}}
    assert json.dumps(claims["sub_id"]) == json.dumps({"format": "opaque", "id": stream})


def test_a_bulk_chunk_emits_its_sessions_through_the_fan_out(tx: Any) -> None:
    """revoke_buckets (a job chunk) hands its revoked sessions to the router: a per-session
    stream gets one event each, the relying party a logout token per session of its client, a
    plain stream nothing; a dry run hands over nothing."""
    from revoker import keys as k
    from revoker.tasks.buckets import job_mark, job_selection, revoke_buckets

    t, store = tx
    plain = poll_stream(t)
    detailed = poll_stream(t, per_session_events=True)
    add_relying_party(t, "web", "http://rp.test/bcl")
    pairs = [
        start_session_sync(
            f"u{n}", tenant_id="acme", client_id="web" if n % 2 else "cli", store=store
        )
        for n in range(4)
    ]
    record = JobRecord(id="job3", kind="tenant", tenant_id="acme", created_at=2e9, actor="ops")
    buckets = sorted({k.family_bucket(p.family_id) or 0 for p in pairs})
    revoke_buckets(store, buckets, tenant_id="acme", select=job_selection(record), mark=None)
    assert t.client.xlen(t.keys.events_chunks) == 0
    revoke_buckets(
        store, buckets, tenant_id="acme", select=job_selection(record), mark=job_mark(record)
    )
    route(t)
    assert queued(t, plain) == []
    sessions = sorted(c["sub_id"]["session"]["id"] for c in queued(t, detailed))
    assert sessions == sorted(p.family_id for p in pairs)
    logouts = sorted(c["sid"] for c in queued(t, "rp:web"))
    assert logouts == sorted(p.family_id for n, p in enumerate(pairs) if n % 2)


def test_cli_streams_relying_parties_and_usage(tx: Any) -> None:
    """`revoker events streams` lists streams and relying parties with what they hold; a replay
    naming nothing or a bad id is a usage error."""
    from click.testing import CliRunner

    from revoker.cli import cli
    from revoker.settings import configure

    t, store = tx
    configure(t.settings)
    stream = poll_stream(t)
    store.revoke_tenant_tokens("acme")
    route(t)
    runner = CliRunner()
    add_relying_party(t, "web", "https://rp.test/bcl")
    listed = runner.invoke(cli, ["events", "streams", "--json"])
    rows = {row["stream_id"]: row for row in json.loads(listed.output)}
    assert rows[stream]["held"] == 1
    assert rows["rp:web"]["kind"] == "logout"
    assert runner.invoke(cli, ["events", "dead-letter", "replay"]).exit_code == 2
    assert runner.invoke(cli, ["events", "dead-letter", "replay", "x"]).exit_code == 2
    empty = runner.invoke(cli, ["events", "dead-letter", "list"])
    assert empty.output.strip() == "no dead letters"


def test_a_holders_own_revocation_is_user_initiated(tx: Any) -> None:
    """A session revoked by its own user (RFC 7009 audits the holder's sub) is
    initiating_entity user, with its reason also as reason_user."""
    t, store = tx
    stream = poll_stream(t)
    pair = start_session_sync("dave", tenant_id=None, store=store)
    store.revoke_family(pair.family_id, tenant_id=None, reason="signed out", actor="dave")
    route(t)
    (claims,) = queued(t, stream)
    event = claims["events"][SESSION_REVOKED]
    assert event["initiating_entity"] == "user"
    assert event["reason_user"] == {"en": "signed out"}


def test_beat_routes_events_only_with_a_signing_key(tmp_path: Path) -> None:
    """The worker's beat runs revoker.events_route every second only when a key is configured."""
    from conftest import make_settings
    from revoker.worker import celery_config

    assert "revoker-events-route" not in celery_config(make_settings())["beat_schedule"]
    keyed = make_settings(events_signing_key_file=write_key(tmp_path / "k.pem"))
    entry = celery_config(keyed)["beat_schedule"]["revoker-events-route"]
    assert entry["task"] == "revoker.events_route"
    assert entry["schedule"] == 1.0
