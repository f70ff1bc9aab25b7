"""Schemathesis against the served OpenAPI document: no generated request gets a 5xx.

The admin API runs as users run it (``revoker api`` under uvicorn, configured by REVOKER_*
variables) on a throwaway Redis of its own, which is also its broker: the jobs it accepts are
published to a queue no worker reads, and nothing touches the shared Redis.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from conftest import TEST_SECRET
from revoker.api import ADMIN_SCOPE, openapi_document
from revoker.localredis import LocalRedis, free_port, stop_process
from revoker.settings import load_settings
from revoker.tokens import create_access_token

pytestmark = pytest.mark.redis


def _revoker_command() -> list[str]:
    exe = Path(sys.executable).parent / "revoker"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "revoker"]


@pytest.fixture(scope="module")
def served_api() -> Iterator[tuple[str, dict[str, str]]]:
    """``revoker api`` on a free port over a private Redis: (base URL, admin headers)."""
    with LocalRedis() as server, tempfile.TemporaryFile() as log:
        env = {k: v for k, v in os.environ.items() if not k.startswith("REVOKER_")}
        env.update(
            REVOKER_REDIS_URL=server.url,
            REVOKER_JWT_SECRET=TEST_SECRET,
            REVOKER_KEY_PREFIX=f"rvschema-{uuid.uuid4().hex[:8]}",
            # The 100 ms production budget turns a busy shared CI machine into (correct) 503s;
            # this test hunts bugs, not latency.
            REVOKER_REDIS_TIMEOUT="2",
        )
        port = free_port()
        process = subprocess.Popen(
            [*_revoker_command(), "api", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 30
            while True:
                assert process.poll() is None, "revoker api exited; its log is printed below"
                try:
                    if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "revoker api did not come up in 30 s"
                time.sleep(0.1)
            assert httpx.get(f"{base}/openapi.json").json() == openapi_document()
            token_settings = load_settings(
                _env_file=None, redis_url=server.url, jwt_secret=TEST_SECRET
            )
            token, _ = create_access_token(
                "schemathesis", scopes=[ADMIN_SCOPE], settings=token_settings
            )
            yield base, {"Authorization": f"Bearer {token}"}
        finally:
            stop_process(process)
            log.seek(0)
            # Shown by pytest only when a test of this module failed: the server's side of it.
            print(log.read().decode(errors="replace")[-5000:])


# Built from the same function the server serves (the fixture checks they are identical): the
# tests must be generated at collection time, before any server is up.
schema = schemathesis.openapi.from_dict(openapi_document())


@schema.parametrize()
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
def test_no_request_gets_a_server_error(case: Any, served_api: tuple[str, dict[str, str]]) -> None:
    """Generated requests (with an admin token) to every endpoint never get a 5xx answer."""
    base, headers = served_api
    case.call_and_validate(base_url=base, headers=headers, checks=[not_a_server_error])
