"""SSF with real processes: ``revoker api`` (uvicorn), a Celery worker and beat, and a receiver
(uvicorn, tests/ssf_receiver.py) verifying every SET with PyJWT against the transmitter's jwks_uri.

One private Redis (data and broker) and one set of processes per module keep CI time bounded;
each test uses streams of its own. Covered: push delivered and verified; the receiver down for a
while (every event delivered after it returns, in order); a receiver answering 400 (dead letter,
listed by the API and the CLI, replayed); the worker SIGKILLed mid-delivery while a slow receiver
holds it (nothing lost, duplicates deduplicated by jti; a fast stream unaffected); back-channel
logout; poll with acknowledgements across a restart of the API.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from celery_helpers import WorkerProcess, start_beat, start_worker, worker_env
from conftest import TEST_SECRET
from revoker.api import ADMIN_SCOPE
from revoker.clients import ClientRegistry
from revoker.localredis import LocalRedis, free_port, stop_process
from revoker.sessions import start_session_sync
from revoker.settings import RevokerSettings
from revoker.store import SyncRedisTokenRevocationStore
from revoker.tokens import create_access_token
from test_events import write_key

pytestmark = [pytest.mark.celery, pytest.mark.chaos]

TESTS = Path(__file__).resolve().parent
PUSH = "urn:ietf:rfc:8935"


def _wait(what: str, check: Callable[[], Any], timeout: float = 30.0, step: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(step)


def _serve(command: list[str], env: dict[str, str], url: str, log: Any) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)

    def up() -> bool:
        assert process.poll() is None, f"{command[:3]} exited"
        try:
            httpx.get(url, timeout=0.5)
        except httpx.TransportError:
            return False
        return True

    _wait(f"{command[:3]} to serve", up)
    return process


@dataclass
class Stack:
    """The processes of the module and how to talk to them."""

    settings: RevokerSettings
    env: dict[str, str]
    api_url: str
    api_port: int
    rx_url: str
    rx_port: int
    rx_log: Path
    headers: dict[str, str]
    store: SyncRedisTokenRevocationStore
    processes: dict[str, Any]

    def start_api(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("REVOKER_")} | self.env
        command = [
            str(Path(sys.executable).parent / "revoker"),
            "api", "--host", "127.0.0.1", "--port", str(self.api_port),
        ]  # fmt: skip
        self.processes["api"] = _serve(
            command, env, f"{self.api_url}/health", self.processes["log"]
        )

    def start_receiver(self) -> None:
        env = dict(os.environ) | {
            "PYTHONPATH": str(TESTS),
            "RX_JWKS_URL": f"{self.api_url}/ssf/jwks.json",
            "RX_LOG": str(self.rx_log),
            "RX_SLOW": "0.4",
        }
        command = [
            sys.executable, "-m", "uvicorn", "ssf_receiver:app",
            "--host", "127.0.0.1", "--port", str(self.rx_port), "--log-level", "warning",
        ]  # fmt: skip
        self.processes["rx"] = _serve(command, env, self.rx_url, self.processes["log"])

    def start_worker(self) -> None:
        self.processes["worker"] = start_worker(self.env, concurrency=2)

    def received(self, name: str) -> list[dict[str, Any]]:
        """The claims the receiver verified and recorded at ``/name``, in arrival order."""
        if not self.rx_log.exists():
            return []
        rows = [json.loads(line) for line in self.rx_log.read_text().splitlines() if line]
        return [row["claims"] for row in rows if row["name"] == name]

    def create_stream(self, name: str, **extra: Any) -> str:
        body = {
            "aud": f"urn:rx:{name}",
            "delivery": {"method": PUSH, "endpoint_url": f"{self.rx_url}/{name}"},
            **extra,
        }
        response = httpx.post(f"{self.api_url}/ssf/streams", json=body, headers=self.headers)
        assert response.status_code == 201, response.text
        return str(response.json()["stream_id"])


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Redis, the API, a worker with beat and the receiver, for the whole module."""
    tmp = tmp_path_factory.mktemp("ssf")
    with LocalRedis() as redis_server, tempfile.TemporaryFile() as log:
        settings = RevokerSettings(
            _env_file=None,  # type: ignore[call-arg]
            redis_url=redis_server.url,
            key_prefix="ssfe2e",
            jwt_secret=TEST_SECRET,
            issuer="https://idp.test",
            events_signing_key_file=write_key(tmp / "key.pem"),
            events_issuer="https://revoker.test",
            events_retry_base=0.3,
            events_retry_max=1.0,
            events_max_attempts=30,
            events_push_timeout=1.5,
            events_push_budget=2.0,
            redis_timeout=2.0,
        )
        env = worker_env(settings)
        api_port, rx_port = free_port(), free_port()
        token, _ = create_access_token("ops", scopes=[ADMIN_SCOPE], settings=settings)
        s = Stack(
            settings=settings,
            env=env,
            api_url=f"http://127.0.0.1:{api_port}",
            api_port=api_port,
            rx_url=f"http://127.0.0.1:{rx_port}",
            rx_port=rx_port,
            rx_log=tmp / "received.jsonl",
            headers={"Authorization": f"Bearer {token}"},
            store=SyncRedisTokenRevocationStore(settings=settings),
            processes={"log": log},
        )
        try:
            s.start_api()
            s.start_receiver()
            s.start_worker()
            s.processes["beat"] = start_beat(env)
            yield s
        finally:
            for name in ("worker", "beat"):
                process = s.processes.get(name)
                if isinstance(process, WorkerProcess):
                    process.stop(timeout=5)
            for name in ("api", "rx"):
                if name in s.processes:
                    stop_process(s.processes[name])
            s.store.close()
            log.seek(0)
            sys.stdout.write(log.read().decode(errors="replace")[-3000:])


def test_push_delivers_verified_sets_and_logout_tokens(stack: Stack) -> None:
    """A revoked session reaches the stream as a verified session-revoked SET, and its relying
    party as a verified logout token."""
    stream = stack.create_stream("ok")
    ClientRegistry(stack.store.client, stack.store.keys).add(
        "web app",
        ["revoker:introspect"],
        client_id="web",
        backchannel_logout_uri=f"{stack.rx_url}/bcl",
    )
    time.sleep(2.5)  # the router notices the new relying party (its per-session flag) in a run
    pair = start_session_sync("alice", tenant_id="acme", client_id="web", store=stack.store)
    stack.store.revoke_family(pair.family_id, tenant_id="acme", reason="lost phone", actor="ops")
    (claims,) = _wait("the SET", lambda: stack.received("ok"))
    assert claims["sub_id"]["session"] == {"format": "opaque", "id": pair.family_id}
    assert claims["iss"] == "https://revoker.test"
    (logout,) = _wait("the logout token", lambda: stack.received("bcl"))
    assert logout["sid"] == pair.family_id
    assert logout["sub"] == "alice"
    assert "nonce" not in logout
    httpx.delete(
        f"{stack.api_url}/ssf/streams", params={"stream_id": stream}, headers=stack.headers
    )


def test_receiver_down_then_back_gets_everything_in_order(stack: Stack) -> None:
    """Events revoked while the receiver is down are all delivered, in order, once it is back."""
    stream = stack.create_stream("order")
    stop_process(stack.processes["rx"])
    names = [f"down-{n}" for n in range(5)]
    for name in names:
        stack.store.revoke_tenant_tokens(name)
    time.sleep(2.5)  # a few failed attempts, backing off
    assert stack.received("order") == []
    stack.start_receiver()
    got = _wait("all five", lambda: len(stack.received("order")) >= 5 and stack.received("order"))
    tenants = list(dict.fromkeys(c["sub_id"]["id"] for c in got))
    assert tenants == names
    httpx.delete(
        f"{stack.api_url}/ssf/streams", params={"stream_id": stream}, headers=stack.headers
    )


def test_a_400_is_dead_lettered_listed_and_replayable(stack: Stack) -> None:
    """A receiver answering 400 puts the event in the dead-letter list at once (API and CLI)."""
    stream = stack.create_stream("bad")
    stack.store.revoke_tenant_tokens("refused")

    def letters() -> list[dict[str, Any]]:
        response = httpx.get(
            f"{stack.api_url}/ssf/dead-letters", params={"stream_id": stream}, headers=stack.headers
        )
        return list(response.json()["dead_letters"])

    (letter,) = _wait("the dead letter", letters)
    assert letter["error"] == "400 invalid_request: refused"
    assert letter["attempts"] == 1
    env = {k: v for k, v in os.environ.items() if not k.startswith("REVOKER_")} | stack.env
    revoker = str(Path(sys.executable).parent / "revoker")
    listed = subprocess.run(
        [revoker, "events", "dead-letter", "list", "--stream", stream, "--json"],
        env=env, capture_output=True, text=True, check=True, timeout=30,
    )  # fmt: skip
    assert [d["jti"] for d in json.loads(listed.stdout)] == [letter["jti"]]
    replayed = subprocess.run(
        [revoker, "events", "dead-letter", "replay", "--stream", stream, "--json"],
        env=env, capture_output=True, text=True, check=True, timeout=30,
    )  # fmt: skip
    assert json.loads(replayed.stdout)["replayed"] == [letter["id"]]
    # Replayed, refused again: back in the list with the same jti.
    _wait("the replayed dead letter", lambda: [d["jti"] for d in letters()] == [letter["jti"]])
    httpx.delete(
        f"{stack.api_url}/ssf/streams", params={"stream_id": stream}, headers=stack.headers
    )


def test_worker_killed_mid_delivery_loses_nothing(stack: Stack) -> None:
    """SIGKILL the worker while it waits on a slow receiver: after a new worker starts every
    event arrives (duplicates only by jti); a fast stream is delivered meanwhile."""
    slow = stack.create_stream("slow")
    fast = stack.create_stream("fast")
    names = [f"kill-{n}" for n in range(10)]
    for name in names:
        stack.store.revoke_tenant_tokens(name)
    _wait("the slow receiver to start", lambda: stack.received("slow"), step=0.05)
    # One worker slot is busy with the slow stream; the fast stream still gets everything.
    _wait("the fast stream", lambda: len(stack.received("fast")) >= 10, timeout=20)
    assert len(stack.received("slow")) < 10
    stack.processes["worker"].kill()
    stack.start_worker()
    _wait(
        "every slow event",
        lambda: len({c["jti"] for c in stack.received("slow")}) >= 10,
        timeout=60,
    )
    got = stack.received("slow")
    assert [c["sub_id"]["id"] for c in {c["jti"]: c for c in got}.values()] == names
    for stream in (slow, fast):
        httpx.delete(
            f"{stack.api_url}/ssf/streams", params={"stream_id": stream}, headers=stack.headers
        )


def test_poll_with_acks_across_an_api_restart(stack: Stack) -> None:
    """Unacknowledged SETs survive a restart of the API; acknowledged ones are not returned."""
    response = httpx.post(
        f"{stack.api_url}/ssf/streams", json={"aud": "poller"}, headers=stack.headers
    )
    stream = response.json()["stream_id"]
    poll_url = response.json()["delivery"]["endpoint_url"]
    for name in ("p1", "p2", "p3"):
        stack.store.revoke_tenant_tokens(name)

    def poll(body: dict[str, Any]) -> dict[str, Any]:
        return dict(httpx.post(poll_url, json=body, headers=stack.headers, timeout=20).json())

    first = _wait(
        "three SETs",
        lambda: (
            len(poll({"returnImmediately": True})["sets"]) == 3
            and poll({"maxEvents": 2, "returnImmediately": True})
        ),
    )
    assert first["moreAvailable"] is True
    stop_process(stack.processes["api"])
    stack.start_api()
    second = poll({"maxEvents": 5, "ack": list(first["sets"]), "returnImmediately": True})
    assert len(second["sets"]) == 1
    assert not set(second["sets"]) & set(first["sets"])
    third = poll({"ack": list(second["sets"]), "returnImmediately": True})
    assert third == {"sets": {}, "moreAvailable": False}
    httpx.delete(
        f"{stack.api_url}/ssf/streams", params={"stream_id": stream}, headers=stack.headers
    )
