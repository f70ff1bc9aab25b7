"""The audit trail read back: ``revoker audit`` (filters, JSON lines, --follow) and ``GET /audit``
(cursor paging, admin scope, clear errors), against the real Redis under a private prefix."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from celery_helpers import worker_env
from revoker.api import ADMIN_SCOPE, create_app
from revoker.audit import AuditEntry, AuditQuery, read_audit
from revoker.cli import cli
from revoker.rules import now_us
from revoker.settings import RevokerSettings
from revoker.store import RedisTokenRevocationStore, SyncRedisTokenRevocationStore
from revoker.tokens import create_access_token

pytestmark = pytest.mark.redis


def write_trail(settings: RevokerSettings) -> dict[str, float]:
    """Five revocations of four kinds by three actors; returns the times between them."""
    marks: dict[str, float] = {}
    with SyncRedisTokenRevocationStore(settings=settings) as store:
        store.revoke_token("jti-1", expires_at=time.time() + 60, reason="logout", actor="alice")
        time.sleep(0.01)
        marks["after_first"] = time.time()
        time.sleep(0.01)
        store.revoke_family("fam-1", tenant_id="acme", reason="stolen", actor="bob")
        store.revoke_user_tokens("u-7", tenant_id="acme", reason="left", actor="bob")
        store.execute(
            store.jobs.plan_audit(
                "job_chunk", "job-9", tenant_id="acme", reason="incident", actor="carol",
                at_us=now_us(), extra={"chunk": "0", "count": "2", "families": "f-a f-b"},
                count=2,
            )
        )  # fmt: skip
        time.sleep(0.01)
        marks["before_last"] = time.time()
        time.sleep(0.01)
        store.revoke_tenant_tokens("globex", reason="breach", actor="alice")
    return marks


def json_lines(output: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in output.splitlines() if line.strip()]


def test_cli_json_lines_and_filters(settings: RevokerSettings) -> None:
    """--json prints one object a line, oldest first; each filter keeps exactly its entries."""
    marks = write_trail(settings)
    runner = CliRunner()

    def audit(*args: str) -> list[dict[str, Any]]:
        result = runner.invoke(cli, ["audit", "--json", *args])
        assert result.exit_code == 0, result.output
        return json_lines(result.stdout)

    every = audit()
    assert [e["kind"] for e in every] == ["token", "family", "user", "job_chunk", "tenant"]
    first = every[0]
    assert (first["target"], first["actor"], first["reason"]) == ("jti-1", "alice", "logout")
    assert first["time"].endswith("+00:00")
    assert abs(first["at"] - time.time()) < 60
    chunk = every[3]
    assert (chunk["count"], chunk["families"], chunk["chunk"]) == (2, ["f-a", "f-b"], 0)
    assert [e["target"] for e in audit("--tenant", "acme")] == ["fam-1", "u-7", "job-9"]
    assert [e["kind"] for e in audit("--actor", "alice")] == ["token", "tenant"]
    assert [e["kind"] for e in audit("--kind", "token", "--kind", "tenant")] == ["token", "tenant"]
    assert [e["target"] for e in audit("--user", "u-7")] == ["u-7"]
    window = audit("--since", str(marks["after_first"]), "--until", str(marks["before_last"]))
    assert [e["kind"] for e in window] == ["family", "user", "job_chunk"]
    assert [e["kind"] for e in audit("--reverse", "--limit", "2")] == ["tenant", "job_chunk"]
    text = runner.invoke(cli, ["audit", "--kind", "token"])
    assert text.exit_code == 0
    assert "token jti-1 actor=alice reason='logout'" in text.stdout


@pytest.mark.parametrize(
    "args",
    [
        ["--kind", "nope"],
        ["--since", "yesterday"],
        ["--since", "200", "--until", "100"],
        ["--follow", "--reverse"],
    ],
    ids=["kind", "time", "window", "follow-reverse"],
)
def test_cli_bad_options_are_usage_errors(settings: RevokerSettings, args: list[str]) -> None:
    """Bad options exit 2 with one line saying why, never a traceback."""
    result = CliRunner().invoke(cli, ["audit", *args])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output


def test_cli_follow_prints_new_entries(settings: RevokerSettings) -> None:
    """`revoker audit --follow --json` (a real process) prints an entry written after it started."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("REVOKER_")}
    env.update(worker_env(settings))
    command = [sys.executable, "-m", "revoker", "audit", "--follow", "--json", "--kind", "token"]
    with subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as process:
        try:
            time.sleep(1.5)  # started and done with the (empty) past
            with SyncRedisTokenRevocationStore(settings=settings) as store:
                store.revoke_family("fam-x", tenant_id="acme", actor="bob")  # filtered out
                store.revoke_token("jti-followed", expires_at=time.time() + 60, actor="dave")
            assert process.stdout is not None
            ready, _, _ = select.select([process.stdout], [], [], 30)
            assert ready, f"no line within 30 s; stderr: {process.stderr}"
            entry = json.loads(process.stdout.readline())
            assert (entry["kind"], entry["target"]) == ("token", "jti-followed")
            assert entry["actor"] == "dave"
        finally:
            process.terminate()
            process.wait(10)


# --- GET /audit ---------------------------------------------------------------------------------


@pytest.fixture
async def api(settings: RevokerSettings) -> AsyncIterator[httpx.AsyncClient]:
    """The admin API over ASGI with a store of its own."""
    store = RedisTokenRevocationStore(settings=settings)
    try:
        transport = httpx.ASGITransport(app=create_app(store=store))
        async with httpx.AsyncClient(transport=transport, base_url="http://admin.test") as c:
            yield c
    finally:
        await store.aclose()
        await store.client.connection_pool.disconnect()


def admin(settings: RevokerSettings, scopes: tuple[str, ...] = (ADMIN_SCOPE,)) -> dict[str, str]:
    token, _ = create_access_token("ops", scopes=list(scopes), settings=settings)
    return {"Authorization": f"Bearer {token}"}


async def test_api_pages_with_a_cursor(settings: RevokerSettings, api: httpx.AsyncClient) -> None:
    """limit=2 walks all five entries in three pages, in order, none twice; desc reverses."""
    write_trail(settings)
    headers = admin(settings)
    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        params = {"limit": "2", **({"cursor": cursor} if cursor else {})}
        response = await api.get("/audit", params=params, headers=headers)
        assert response.status_code == 200
        assert response.headers["cache-control"] == "no-store"
        body = response.json()
        seen += [e["kind"] for e in body["entries"]]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert seen == ["token", "family", "user", "job_chunk", "tenant"]
    assert pages == 3
    newest = await api.get("/audit", params={"order": "desc", "limit": "1"}, headers=headers)
    assert [e["kind"] for e in newest.json()["entries"]] == ["tenant"]
    filtered = await api.get(
        "/audit", params={"tenant": "acme", "kind": "family,user"}, headers=headers
    )
    assert [e["target"] for e in filtered.json()["entries"]] == ["fam-1", "u-7"]
    assert filtered.json()["next_cursor"] is None


async def test_api_requires_the_admin_scope(
    settings: RevokerSettings, api: httpx.AsyncClient
) -> None:
    """Without a token 401 with a Bearer challenge; without revoker:admin 403."""
    anonymous = await api.get("/audit")
    assert anonymous.status_code == 401
    assert anonymous.headers["www-authenticate"].startswith("Bearer")
    weak = await api.get("/audit", headers=admin(settings, scopes=("revoker:introspect",)))
    assert weak.status_code == 403
    assert weak.json()["error"] == "insufficient_scope"


@pytest.mark.parametrize(
    "params",
    [
        {"cursor": "'; DROP"},
        {"since": "yesterday"},
        {"kind": "token,nope"},
        {"limit": "0"},
        {"limit": "100000"},
        {"since": "200", "until": "100"},
        {"colour": "blue"},
    ],
    ids=["cursor", "since", "kind", "limit0", "limit-big", "window", "unknown"],
)
async def test_api_bad_queries_are_422(
    settings: RevokerSettings, api: httpx.AsyncClient, params: dict[str, str]
) -> None:
    """A bad query is a 422 invalid_request naming the parameter, never a 500."""
    response = await api.get("/audit", params=params, headers=admin(settings))
    assert response.status_code == 422, response.text
    assert response.json()["error"] == "invalid_request"


def test_a_narrow_filter_stops_at_the_scan_budget(
    settings: RevokerSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A filter matching nothing examines SCAN_BUDGET entries, then returns a cursor to go on."""
    import revoker.audit as audit_module

    monkeypatch.setattr(audit_module, "SCAN_BUDGET", 3)
    monkeypatch.setattr(audit_module, "PAGE_SIZE", 2)
    write_trail(settings)
    with SyncRedisTokenRevocationStore(settings=settings) as store:
        query = AuditQuery(actor="nobody", cursor=None)
        page = store.run(read_audit(store.core, query))
        assert page.entries == []
        assert page.next_cursor is not None
        rest = store.run(
            read_audit(store.core, query.model_copy(update={"cursor": page.next_cursor}))
        )
        assert rest.entries == []
        assert rest.next_cursor is None


@pytest.mark.parametrize(
    ("stored", "shown"), [("12", 12), ("²", "²"), ("١٢", "١٢"), ("-3", "-3"), ("", "")]
)
def test_a_corrupt_count_is_shown_as_stored_not_raised(stored: str, shown: object) -> None:
    """A count or chunk field that is not ASCII digits (a corrupt or hand-written entry) is
    passed through as text: ``int()`` of a Unicode digit such as '²' raises."""
    entry = AuditEntry.from_stream(b"1-0", {b"kind": b"job", b"count": stored, b"chunk": stored})
    assert entry.as_dict()["count"] == shown
    assert entry.as_dict()["chunk"] == shown
