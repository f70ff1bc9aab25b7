"""``revoker demo`` end to end, as a newcomer runs it: the story it tells, and that it cleans up.

The demo starts real processes (Redis, a Celery worker, Flower, uvicorn); afterwards none of
them may be left: no pid it reported is alive and no process carries its key prefix.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from revoker.localredis import LocalRedis
from revoker.settings import RevokerSettings

DEMO_TIMEOUT = 180


def revoker_command() -> list[str]:
    exe = Path(sys.executable).parent / "revoker"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "revoker"]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def processes_with(marker: bytes) -> list[int]:
    """Pids of processes whose environment carries ``marker`` (the demo's key prefix)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if marker in (entry / "environ").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def assert_nothing_left(output: str) -> None:
    pids = [int(pid) for pid in re.findall(r"\(pid (\d+)\)", output)]
    assert len(pids) >= 3, output  # worker, service, Flower (and Redis when it started one)
    prefix = re.search(r"key prefix: (demo-[0-9a-f]+)", output)
    assert prefix is not None, output
    marker = f"REVOKER_KEY_PREFIX={prefix.group(1)}".encode()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        leftovers = [pid for pid in pids if alive(pid)] + processes_with(marker)
        if not leftovers:
            return
        time.sleep(0.1)
    raise AssertionError(f"processes left behind: {leftovers}")


@pytest.fixture
def output_file() -> Iterator[Path]:
    """A file the demo's output goes to (read while it runs)."""
    with tempfile.TemporaryDirectory() as tmp:
        yield Path(tmp) / "demo.out"


@pytest.mark.celery
def test_demo_tells_the_whole_story_and_stops_everything(output_file: Path) -> None:
    """`revoker demo` runs by itself to exit 0, shows each step, and leaves no process behind."""
    with output_file.open("wb") as out:
        result = subprocess.run(
            [*revoker_command(), "demo"],
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=DEMO_TIMEOUT,
            check=False,
        )
    output = output_file.read_text()
    assert result.returncode == 0, output
    expected_in_order = [
        "Redis: started a throwaway",
        "Celery worker ready",
        "Flower: http://127.0.0.1:",
        "created 5,000 login sessions",
        "GET /me as user00000@acme   -> 200 OK",
        "GET /me as user00000@globex -> 200 OK",
        "3. Revoke every token of tenant 'acme'",
        "job done in",
        "3,000 of 3,000 sessions revoked",
        "4. After the revocation",
        "GET /me as user00000@acme   -> 401 rejected",
        "GET /me as user00000@globex -> 200 OK",
        "5. A stolen refresh token is replayed",
        "refresh token reuse detected: the whole session (family) is burned",
        "GET /me as user00000@globex -> 401 rejected",
        "newest refresh token is dead too",
        "Demo finished: all processes stopped.",
    ]
    position = 0
    for line in expected_in_order:
        found = output.find(line, position)
        assert found >= 0, f"missing (in order) {line!r}:\n{output}"
        position = found + len(line)
    assert re.search(r"Flower: \S+ +\(user demo, password \S+\)", output)
    assert "Traceback" not in output
    assert_nothing_left(output)


@pytest.mark.celery
def test_demo_keep_running_uses_the_given_redis_and_cleans_up_on_sigterm(
    output_file: Path,
) -> None:
    """With REVOKER_REDIS_URL set, the demo uses that Redis, and SIGTERM stops it cleanly."""
    with LocalRedis() as server:
        env = {k: v for k, v in os.environ.items() if not k.startswith("REVOKER_")}
        env["REVOKER_REDIS_URL"] = server.url
        with output_file.open("wb") as out:
            demo = subprocess.Popen(
                [*revoker_command(), "demo", "--keep-running"],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
            )
            try:
                deadline = time.monotonic() + DEMO_TIMEOUT
                while "Press Ctrl-C" not in output_file.read_text():
                    assert demo.poll() is None, output_file.read_text()
                    assert time.monotonic() < deadline, output_file.read_text()
                    time.sleep(0.2)
                time.sleep(0.5)
                assert demo.poll() is None, "--keep-running returned by itself"
                console = re.search(r"The console: (\S+)", output_file.read_text())
                assert console is not None, output_file.read_text()
                assert httpx.get(f"{console.group(1)}/login", timeout=10).status_code == 200
                demo.send_signal(signal.SIGTERM)
                demo.wait(60)
            finally:
                if demo.poll() is None:
                    demo.kill()
                    demo.wait(10)
        output = output_file.read_text()
        assert "Redis: using REVOKER_REDIS_URL" in output, output
        assert "Interrupted." in output
        assert "Demo finished: all processes stopped." in output
        assert "Traceback" not in output
        prefix = re.search(r"key prefix: (demo-[0-9a-f]+)", output)
        assert prefix is not None
        client = redis.Redis.from_url(server.url)
        try:
            assert list(client.scan_iter(match=f"{prefix.group(1)}:*")) == []
        finally:
            client.close()
        assert_nothing_left(output)


@pytest.mark.redis
async def test_demo_service_logs_in_checks_and_rotates(settings: RevokerSettings) -> None:
    """The demo service: /login opens a session, /me needs a valid token, /refresh rotates."""
    from revoker.demo_service import create_app
    from revoker.store import get_revocation_store

    transport = httpx.ASGITransport(app=create_app(settings))
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://demo") as client:
            assert (await client.get("/health")).json() == {"status": "ok"}
            assert (await client.get("/me")).status_code == 401
            login = await client.post("/login", json={"user_id": "ann", "tenant_id": "acme"})
            assert login.status_code == 200, login.text
            tokens = login.json()
            me = await client.get(
                "/me", headers={"Authorization": f"Bearer {tokens['access_token']}"}
            )
            assert me.status_code == 200
            assert (me.json()["sub"], me.json()["tenant"]) == ("ann", "acme")
            rotated = await client.post("/refresh", json={"refresh_token": tokens["refresh_token"]})
            assert rotated.status_code == 200, rotated.text
            assert rotated.json()["refresh_token"] != tokens["refresh_token"]
            garbage = await client.post("/refresh", json={"refresh_token": "nope"})
            assert garbage.status_code == 401
            await get_revocation_store(settings).revoke_user_tokens("ann", tenant_id="acme")
            revoked = await client.get(
                "/me", headers={"Authorization": f"Bearer {rotated.json()['access_token']}"}
            )
            assert revoked.status_code == 401
            assert (await client.post("/login", json={"user_id": ""})).status_code == 422
    finally:
        store = get_revocation_store(settings)
        await store.aclose()
        await store.client.connection_pool.disconnect()


@pytest.mark.celery
def test_demo_cleans_up_when_its_output_is_closed() -> None:
    """`revoker demo | head`: the reader goes away mid-story, and still no process is left."""
    proc = subprocess.Popen(
        [*revoker_command(), "demo"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env={k: v for k, v in os.environ.items() if not k.startswith("REVOKER_")},
    )
    assert proc.stdout is not None
    seen = []
    deadline = time.monotonic() + DEMO_TIMEOUT
    while time.monotonic() < deadline:
        line = proc.stdout.readline().decode()
        assert line, "the demo ended before starting its services:\n" + "".join(seen)
        seen.append(line)
        if "Flower:" in line:
            break
    proc.stdout.close()  # the next line the demo prints hits a closed pipe
    proc.wait(DEMO_TIMEOUT)
    assert_nothing_left("".join(seen))
