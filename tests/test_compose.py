"""docker-compose.yml and the Dockerfile, checked without Docker (it cannot run here).

Every service's command must be a real entry point of the package with options its parser
accepts, and every REVOKER_* variable a service is given must be a setting that validates.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

import click
import pytest
import yaml

from conftest import make_settings
from revoker.settings import ENV_PREFIX, RevokerSettings, configure, load_settings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
SERVICES = {"redis", "worker", "beat", "flower", "api", "demo"}
#: ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?message}, ${NAME?message}
_VARIABLE = re.compile(r"\$\{(\w+)(?:(:?-)([^}]*)|(:?\?)[^}]*)?\}")
#: What a user exports before `docker compose up` (the file refuses to start without them).
USER_ENV = {
    "REVOKER_JWT_SECRET": "compose-secret-0123456789-abcdefghijklmnop",
    "FLOWER_BASIC_AUTH": "admin:s3cret",
}


def interpolate(text: str) -> str:
    """Compose's variable interpolation, with the user's exports from USER_ENV."""

    def one(match: re.Match[str]) -> str:
        name, default_op, default, required_op = match.groups()
        if name in USER_ENV:
            return USER_ENV[name]
        if required_op is not None:
            raise AssertionError(f"${{{name}}} is required but the test does not set it")
        return default if default_op is not None else ""

    return _VARIABLE.sub(one, text.replace("$$", "\0")).replace("\0", "$")


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    """The compose file as written (variables not yet substituted)."""
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """The compose file as Compose sees it once the user's variables are exported."""
    data = yaml.safe_load(interpolate(COMPOSE.read_text()))
    assert isinstance(data, dict)
    return data


def argv(command: str | list[str]) -> list[str]:
    return shlex.split(command) if isinstance(command, str) else [str(part) for part in command]


def revoker_env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items() if str(k).startswith(ENV_PREFIX)}


# --- entry points --------------------------------------------------------------------------------


def check_celery(args: list[str]) -> None:
    """``celery -A revoker.worker <command> ...``: the app imports, the options parse."""
    from celery.bin.base import CLIContext
    from celery.bin.celery import celery

    assert args[:2] == ["-A", "revoker.worker"], args
    name, rest = args[2], args[3:]
    import revoker.worker

    assert revoker.worker.app.main == "revoker"
    command = celery.get_command(click.Context(celery), name)
    assert command is not None, f"celery has no {name!r} command"
    parent = click.Context(
        celery,
        info_name="celery",
        obj=CLIContext(app=revoker.worker.app, no_color=True, workdir=None),
    )
    context = command.make_context(name, list(rest), parent=parent)
    if name == "flower":
        # Flower passes its options through to tornado: check them against Flower's own.
        from flower.options import options

        known = {option.replace("-", "_") for option in options._options}
        for option in context.params["tornado_argv"]:
            assert option.startswith("--"), option
            key = option[2:].split("=", 1)[0].replace("-", "_")
            assert key in known, f"flower has no --{key} option"


def check_revoker(args: list[str]) -> None:
    """``revoker <command> ...``: a subcommand of the CLI whose options parse."""
    from revoker.cli import cli

    command = cli.commands.get(args[0])
    assert command is not None, f"revoker has no {args[0]!r} command"
    command.make_context(args[0], list(args[1:]))


def check_uvicorn(args: list[str]) -> None:
    """``uvicorn module:app ...``: uvicorn accepts the options and the app imports."""
    from uvicorn.importer import import_from_string
    from uvicorn.main import main as uvicorn_cli

    assert isinstance(uvicorn_cli, click.Command)
    context = uvicorn_cli.make_context("uvicorn", list(args))
    app = import_from_string(context.params["app"])
    assert callable(app)


ENTRY_POINTS = {"celery": check_celery, "revoker": check_revoker, "uvicorn": check_uvicorn}


@pytest.fixture
def revoker_settings() -> RevokerSettings:
    """Process settings, since the Celery app reads them when its configuration is touched."""
    return configure(make_settings())


def test_the_stack_has_every_service_with_healthcheck_and_restart(
    compose: dict[str, Any],
) -> None:
    """redis, worker, beat, flower, api and demo exist, each with a healthcheck and a restart."""
    services = compose["services"]
    assert set(services) == SERVICES
    for name, service in services.items():
        assert service.get("restart") in ("always", "unless-stopped", "on-failure"), name
        test = service.get("healthcheck", {}).get("test")
        assert test, name
        assert test[0] in ("CMD", "CMD-SHELL"), name
        for dependency in service.get("depends_on", {}):
            assert dependency in services, f"{name} depends on unknown {dependency}"
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond localhost"


@pytest.mark.parametrize("name", sorted(SERVICES - {"redis"}))
def test_service_command_is_a_real_entry_point(
    compose: dict[str, Any], name: str, revoker_settings: RevokerSettings
) -> None:
    """The service's command (and a celery/revoker healthcheck) parses against the real CLI."""
    service = compose["services"][name]
    commands = [argv(service["command"])]
    test = service["healthcheck"]["test"]
    health = argv(test[1]) if test[0] == "CMD-SHELL" else [str(part) for part in test[1:]]
    if health[0] in ENTRY_POINTS:
        commands.append(health)
    for command in commands:
        assert command[0] in ENTRY_POINTS, f"{name}: {command[0]} is not one of ours"
        ENTRY_POINTS[command[0]](command[1:])


def test_a_wrong_option_would_be_caught(revoker_settings: RevokerSettings) -> None:
    """The entry-point checks reject a misspelt option or subcommand (they are not vacuous)."""
    with pytest.raises(click.UsageError):
        check_celery(["-A", "revoker.worker", "worker", "--concurency=4"])
    with pytest.raises(AssertionError, match="no --basic_auht"):
        check_celery(["-A", "revoker.worker", "flower", "--basic-auht=a:b"])
    with pytest.raises(AssertionError):
        check_celery(["-A", "revoker.workers", "worker"])
    with pytest.raises(click.UsageError):
        check_revoker(["api", "--prot", "8080"])
    with pytest.raises(AssertionError):
        check_revoker(["serve"])
    with pytest.raises(click.UsageError):
        check_uvicorn(["revoker.demo_service:app", "--hots", "127.0.0.1"])


def test_every_revoker_variable_is_a_setting_that_validates(compose: dict[str, Any]) -> None:
    """Each REVOKER_* variable a service gets names a settings field, and together they load."""
    fields = set(RevokerSettings.model_fields)
    checked = 0
    for name, service in compose["services"].items():
        env = revoker_env(service)
        if name == "redis":
            assert not env
            continue
        assert env, f"{name} gets no REVOKER_* settings"
        for variable in env:
            assert variable.removeprefix(ENV_PREFIX).lower() in fields, f"{name}: {variable}"
        values = {k.removeprefix(ENV_PREFIX).lower(): v for k, v in env.items()}
        loaded = load_settings(_env_file=None, **values)
        assert loaded.redis_url == "redis://redis:6379/0"
        checked += 1
    assert checked == len(SERVICES) - 1


def test_secrets_are_required_not_defaulted(raw: dict[str, Any]) -> None:
    """The JWT secret and Flower's basic auth have no default: compose refuses to start without."""
    env = raw["services"]["api"]["environment"]
    assert env["REVOKER_JWT_SECRET"].startswith("${REVOKER_JWT_SECRET:?")
    assert "--basic-auth=${FLOWER_BASIC_AUTH:?" in raw["services"]["flower"]["command"]


def test_redis_persists_every_revocation_and_never_evicts(compose: dict[str, Any]) -> None:
    """Redis runs with AOF on, fsync at least every second, and maxmemory-policy noeviction."""
    redis = compose["services"]["redis"]
    args = argv(redis["command"])
    options = dict(zip(args[1::2], args[2::2], strict=False))
    assert args[0] == "redis-server"
    assert options["--appendonly"] == "yes"
    assert options["--appendfsync"] in ("everysec", "always")
    assert options["--maxmemory-policy"] == "noeviction"
    assert any(volume.endswith(":/data") for volume in redis["volumes"])


def test_revocations_are_acknowledged_durably(compose: dict[str, Any]) -> None:
    """The stack asks for durable acknowledgements its Redis can honour: fsync needs WAITAOF
    (the image's Redis >= 7.2) and appendfsync always; replicas:N needs N replicas."""
    redis = compose["services"]["redis"]
    options = dict(zip(argv(redis["command"])[1::2], argv(redis["command"])[2::2], strict=False))
    tag = re.fullmatch(r"redis:(\d+)\.(\d+)[\w.-]*", redis["image"])
    assert tag is not None, redis["image"]
    for name, service in compose["services"].items():
        if name == "redis":
            continue
        policy = load_settings(
            _env_file=None,
            **{k.removeprefix(ENV_PREFIX).lower(): v for k, v in revoker_env(service).items()},
        ).durability_policy
        assert policy.mode in ("fsync", "replicas"), f"{name}: REVOKER_DURABILITY={policy}"
        if policy.mode == "fsync":
            assert (int(tag[1]), int(tag[2])) >= (7, 2), "WAITAOF needs Redis 7.2"
            assert options["--appendfsync"] == "always", "WAITAOF under everysec is no barrier"
        else:
            commands = [argv(s.get("command") or []) for s in compose["services"].values()]
            assert sum("--replicaof" in c for c in commands) >= policy.replicas


def test_dockerfile_installs_the_package_and_serves_the_api() -> None:
    """The image installs revoker with the demo extra, runs unprivileged, and starts the API."""
    text = DOCKERFILE.read_text()
    assert '"revoker[demo]"' in text or "'.[demo]'" in text or '".[demo]"' in text
    assert re.search(r"^USER (?!root)\S+", text, re.MULTILINE)
    cmd = re.search(r"^CMD (\[.*\])$", text, re.MULTILINE)
    assert cmd is not None
    command = json.loads(cmd.group(1))
    assert command[0] == "revoker"
    check_revoker(command[1:])
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".venv" in ignored
    assert ".git" in ignored
