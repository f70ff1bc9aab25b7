"""REVOKER_LOG_FORMAT / REVOKER_LOG_LEVEL, read from the real output of each process that applies
them: the CLI, the admin API under uvicorn, a Celery worker, and (opt-in) the dependency."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import httpx
import pytest
from click.testing import CliRunner
from fastapi import Depends, FastAPI

from celery_helpers import seed_sessions, start_worker, worker_env
from conftest import private_settings
from revoker import dependencies
from revoker.cli import cli
from revoker.dependencies import require_valid_token
from revoker.jobs import enqueue_user_revocation, wait_for_job
from revoker.localredis import LocalRedis, free_port, stop_process
from revoker.logs import JsonFormatter, configure_logging
from revoker.settings import RevokerSettings, configure
from revoker.tokens import create_access_token

pytestmark = pytest.mark.redis


def env_for(settings: RevokerSettings, **extra: str) -> dict[str, str]:
    """This environment without REVOKER_*, plus ``settings`` and ``extra`` as variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("REVOKER_")}
    env.update(worker_env(settings))
    env.update(extra)
    return env


def json_records(text: str) -> list[dict[str, Any]]:
    """The JSON lines of a process's output (other lines, e.g. Celery's own, are skipped)."""
    out = []
    for line in text.splitlines():
        if line.startswith("{"):
            out.append(json.loads(line))
    return out


@pytest.fixture(autouse=True)
def _restore_revoker_logger() -> Iterator[None]:
    """configure_logging changes the process's ``revoker`` logger: put it back afterwards."""
    logger = logging.getLogger("revoker")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    yield
    logger.handlers[:] = saved[0]
    logger.setLevel(saved[1])
    logger.propagate = saved[2]


def test_json_formatter_carries_extras_and_exceptions() -> None:
    """A JSON line has time, level, logger, message, the record's extras and its exception."""
    stream = io.StringIO()
    with private_settings(log_format="json", log_level="DEBUG") as s:
        configure_logging(s, stream=stream)
    log = logging.getLogger("revoker.test")
    log.info("hello %s", "there", extra={"event": "x", "count": 3})
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed")
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["message"] == "hello there"
    assert (first["level"], first["logger"], first["event"], first["count"]) == (
        "INFO",
        "revoker.test",
        "x",
        3,
    )
    assert first["time"].endswith("+00:00")
    assert "ValueError: boom" in second["exception"]
    assert isinstance(JsonFormatter().format(logging.makeLogRecord({"msg": "m"})), str)


def test_cli_lines_follow_the_settings(settings: RevokerSettings) -> None:
    """The CLI: silent at its default WARNING; with LEVEL=INFO and FORMAT=json (a real process),
    one JSON line per revocation on stderr, stdout untouched; the text format otherwise."""
    quiet = CliRunner().invoke(cli, ["revoke", "token", "--jti", "jti-quiet"])
    assert quiet.exit_code == 0, quiet.output
    assert quiet.stderr == ""
    configure(settings.model_copy(update={"log_level": "INFO"}))
    text = CliRunner().invoke(cli, ["revoke", "token", "--jti", "jti-text"])
    assert text.exit_code == 0, text.output
    assert "INFO revoker.revocations: revocation kind=token surface=cli" in text.stderr
    loud = subprocess.run(
        [sys.executable, "-m", "revoker", "revoke", "token", "--jti", "jti-loud", "--reason", "r"],
        env=env_for(settings, REVOKER_LOG_LEVEL="INFO", REVOKER_LOG_FORMAT="json"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert loud.returncode == 0, loud.stderr
    (line,) = [r for r in json_records(loud.stderr) if r.get("event") == "revocation"]
    assert (line["kind"], line["surface"], line["target"], line["reason"]) == (
        "token",
        "cli",
        "jti-loud",
        "r",
    )
    assert line["logger"] == "revoker.revocations"
    assert not json_records(loud.stdout)


def test_api_under_uvicorn_logs_json(settings: RevokerSettings) -> None:
    """`revoker api` with FORMAT=json: uvicorn's lines and revoker's revocation line are JSON,
    and the revoked token never appears in the output."""
    port = free_port()
    log_path = Path(tempfile.mkstemp(prefix="revoker-api-", suffix=".log")[1])
    with log_path.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "revoker", "api", "--port", str(port)],
            env=env_for(settings, REVOKER_LOG_FORMAT="json"),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    token, jti = create_access_token("u-log", settings=settings)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{base}/openapi.json", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert process.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.2)
        response = httpx.post(f"{base}/oauth/revoke", data={"token": token}, timeout=10)
        assert response.status_code == 200
        deadline = time.monotonic() + 10
        while '"revocation"' not in log_path.read_text():
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.1)
    finally:
        stop_process(process)
    output = log_path.read_text()
    log_path.unlink()
    records = json_records(output)
    (line,) = [r for r in records if r.get("event") == "revocation"]
    assert (line["kind"], line["surface"], line["target"]) == ("token", "api", jti)
    assert any(r["logger"].startswith("uvicorn") for r in records)
    assert token not in output


def test_dependency_logs_opt_in(
    settings: RevokerSettings, capsys: pytest.CaptureFixture[str]
) -> None:
    """REVOKER_LOG_MIDDLEWARE: the dependency's first check sets revoker's handler up in the
    service's process and its refusal is a JSON line on stderr (off: nothing is installed)."""

    async def call(app: FastAPI) -> int:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://svc") as client:
            response = await client.get("/me")  # no token: a refusal the dependency logs
            return response.status_code

    app = FastAPI()

    @app.get("/me")
    async def me(token: Annotated[Any, Depends(require_valid_token)]) -> dict[str, str]:
        return {"sub": token.sub}

    logging.getLogger("revoker").handlers.clear()
    dependencies._checker = None
    assert asyncio.run(call(app)) == 401
    assert not logging.getLogger("revoker").handlers
    configure(settings.model_copy(update={"log_middleware": True, "log_format": "json"}))
    dependencies._checker = None
    capsys.readouterr()
    assert asyncio.run(call(app)) == 401
    records = json_records(capsys.readouterr().err)
    (line,) = [r for r in records if r.get("event") == "rejected"]
    assert (line["status"], line["error"], line["path"]) == (401, None, "/me")
    dependencies._checker = None


@pytest.mark.celery
def test_worker_logs_json_lines() -> None:
    """A worker with FORMAT=json writes the job's revocation and its end as JSON lines."""
    broker = LocalRedis().start()
    try:
        with private_settings(broker_url=broker.url, result_backend=broker.url) as s:
            import redis

            client = redis.Redis.from_url(s.redis_url)
            try:
                seed_sessions(client, s, "log-co", 3, users=1)
            finally:
                client.close()
            worker = start_worker(env_for(s, REVOKER_LOG_FORMAT="json"), concurrency=1)
            try:
                job_id = enqueue_user_revocation(
                    "u0", tenant_id="log-co", reason="left", actor="t", settings=s
                )
                assert wait_for_job(job_id, timeout=60, settings=s).families_revoked == 3
                deadline = time.monotonic() + 10
                while '"job_finished"' not in worker.log():
                    assert time.monotonic() < deadline, worker.log()[-3000:]
                    time.sleep(0.1)
                records = json_records(worker.log())
            finally:
                worker.stop()
    finally:
        broker.stop()
    revocation = [r for r in records if r.get("event") == "revocation"]
    assert [(r["kind"], r["surface"], r["count"], r["target"]) for r in revocation] == [
        ("family", "job", 3, job_id)
    ]
    (finished,) = [r for r in records if r.get("event") == "job_finished"]
    assert (finished["job_id"], finished["status"], finished["families_revoked"]) == (
        job_id,
        "done",
        3,
    )


async def test_middleware_logs_opt_in(
    settings: RevokerSettings, capsys: pytest.CaptureFixture[str]
) -> None:
    """REVOKER_LOG_MIDDLEWARE: the middleware sets revoker's handler up when built, and its
    revoked-token line is JSON on stderr, without the token."""
    import fakeredis
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from revoker.middleware import TokenRevocationMiddleware
    from revoker.store import RedisTokenRevocationStore

    async def hello(_request: Any) -> PlainTextResponse:
        return PlainTextResponse("hello")

    opted = settings.model_copy(update={"log_middleware": True, "log_format": "json"})
    store = RedisTokenRevocationStore(fakeredis.aioredis.FakeRedis(), settings=opted)
    logging.getLogger("revoker").handlers.clear()
    app = TokenRevocationMiddleware(Starlette(routes=[Route("/", hello)]), store=store)
    assert [h.get_name() for h in logging.getLogger("revoker").handlers] == ["revoker"]
    token, jti = create_access_token("alice", settings=opted)
    await store.revoke_token(jti)
    capsys.readouterr()
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://svc") as client:
        response = await client.get("/", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401
    err = capsys.readouterr().err
    (line,) = [r for r in json_records(err) if r["message"] == "revoked token rejected"]
    assert (line["logger"], line["jti"], line["rule"]) == ("revoker.middleware", jti, "jti")
    assert token not in err
    await store.aclose()
