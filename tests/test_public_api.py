"""The public API: every ``__all__`` names exactly what a module defines for public use."""

from __future__ import annotations

import ast
import importlib
import inspect
import json
import logging
import pkgutil
import subprocess
import sys
from types import ModuleType
from typing import ParamSpec, TypeVar

import pytest

import revoker

#: The seed's imports, which must keep working.
SEED_NAMES = {
    "generate_jti",
    "create_access_token",
    "create_refresh_token",
    "TokenData",
    "RedisTokenRevocationStore",
    "get_revocation_store",
    "TokenRevocationMiddleware",
}

#: Modules whose __all__ leaves out public names they define (constants and type aliases of their
#: own). Every other module, new ones included, must list in __all__ every public name it defines.
NOT_EXHAUSTIVE = {
    "revoker.api.console",
    "revoker.api.errors",
    "revoker.api.ssf",
    "revoker.bulk",
    "revoker.demo",
    "revoker.demo_service",
    "revoker.durability",
    "revoker.events.claims",
    "revoker.events.delivery",
    "revoker.events.router",
    "revoker.events.signing",
    "revoker.events.tasks",
    "revoker.integrity",
    "revoker.metrics",
    "revoker.middleware",
}

MODULES = sorted(
    info.name
    for info in pkgutil.walk_packages(revoker.__path__, "revoker.")
    if not info.name.endswith("__main__")  # importing it would run the CLI
)


def defined_public_names(module: ModuleType) -> set[str]:
    """Names a module's own top level binds without a leading underscore.

    Imports, TypeVars and loggers are not API; everything else (functions, classes,
    constants, type aliases) is.
    """
    tree = ast.parse(inspect.getsource(module))
    names: set[str] = set()
    for node in tree.body:
        targets: list[ast.expr] = []
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AnnAssign):
            targets = [node.target]
        for target in targets:
            if isinstance(target, ast.Name):
                names.add(target.id)
    public = set()
    for name in names:
        if name.startswith("_"):
            continue
        value = getattr(module, name, None)
        # type(), not isinstance(): a Celery task is a proxy whose __class__ would finalize the
        # Celery app, reading the process settings, when this test runs alone.
        if issubclass(type(value), logging.Logger | TypeVar | ParamSpec):
            continue
        public.add(name)
    return public


def test_every_module_is_listed() -> None:
    """Sanity: the walk finds the per-request modules."""
    for name in ("revoker.tokens", "revoker.store", "revoker.keys", "revoker.middleware"):
        assert name in MODULES


def test_seed_names_are_exported_from_the_package() -> None:
    """The seed's names import from ``revoker`` directly."""
    assert set(revoker.__all__) >= SEED_NAMES


def test_package_all_is_importable_and_sorted() -> None:
    """``revoker.__all__`` is sorted, has no duplicates, and ``from revoker import *`` binds it."""
    assert revoker.__all__ == sorted(revoker.__all__)
    assert len(set(revoker.__all__)) == len(revoker.__all__)
    namespace: dict[str, object] = {}
    exec("from revoker import *", namespace)  # noqa: S102 - fixed text: a star import, run as users do
    assert set(namespace) - {"__builtins__"} == set(revoker.__all__)
    assert revoker.__version__


@pytest.mark.parametrize("name", MODULES)
def test_module_all_names_exactly_its_public_names(name: str) -> None:
    """Each __all__ exists and every entry is importable; it omits nothing public (but in the
    modules of NOT_EXHAUSTIVE)."""
    module = importlib.import_module(name)
    exported = getattr(module, "__all__", None)
    assert exported is not None, f"{name} has no __all__"
    missing = [item for item in exported if not hasattr(module, item)]
    assert not missing, f"{name}.__all__ names what does not exist: {missing}"
    assert len(set(exported)) == len(exported), f"{name}.__all__ has duplicates"
    if name in NOT_EXHAUSTIVE:
        return
    unlisted = defined_public_names(module) - set(exported)
    assert not unlisted, f"{name} defines public names missing from __all__: {sorted(unlisted)}"


def test_public_api_imports_without_celery() -> None:
    """``import revoker`` (the per-request path) does not import Celery."""
    result = subprocess.run(
        [sys.executable, "-c", "import sys, revoker; print('celery' in sys.modules)"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert result.stdout.strip() == "False"


#: What ``import revoker`` (and ``import revoker.exceptions``) must not pull in: the request path's
#: libraries load when a name is first used, and the extras' never.
HEAVY = ("starlette", "redis", "hiredis", "jwt", "pydantic", "celery", "kombu", "click", "uvicorn")


def _imported_after(code: str) -> dict[str, list[str]]:
    """Run ``code`` in a fresh interpreter; the revoker modules and HEAVY libraries it imported."""
    probe = (
        f"import json, sys\n{code}\n"
        "top = {name.partition('.')[0] for name in sys.modules}\n"
        "print(json.dumps({'revoker': sorted(m for m in sys.modules if m.startswith('revoker')),"
        f" 'heavy': sorted(top & set({HEAVY!r}))}}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    imported: dict[str, list[str]] = json.loads(result.stdout)
    return imported


def test_import_revoker_imports_no_library() -> None:
    """``import revoker`` and ``import revoker.exceptions`` import only those two modules."""
    imported = _imported_after("import revoker, revoker.exceptions")
    assert imported == {"revoker": ["revoker", "revoker.exceptions"], "heavy": []}


def test_a_name_is_imported_from_its_module_on_first_use() -> None:
    """Using ``revoker.TokenRevocationMiddleware`` imports the middleware, Starlette, no extra."""
    imported = _imported_after("import revoker\nrevoker.TokenRevocationMiddleware")
    assert "revoker.middleware" in imported["revoker"]
    assert "starlette" in imported["heavy"]
    assert not {"celery", "kombu", "click", "uvicorn"} & set(imported["heavy"])


@pytest.mark.parametrize("name", sorted(set(revoker.__all__) - {"__version__"}))
def test_each_lazy_name_is_its_module_object(name: str) -> None:
    """Each name of ``revoker.__all__`` is the very object its module defines."""
    module = importlib.import_module(revoker._MODULE_OF[name])
    assert getattr(revoker, name) is getattr(module, name)


def test_lazy_table_matches_the_type_checking_imports() -> None:
    """The names type checkers see (TYPE_CHECKING imports) are those ``__getattr__`` serves."""
    tree = ast.parse(inspect.getsource(revoker))
    block = next(
        node
        for node in tree.body
        if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING"
    )
    seen = {
        alias.name: node.module
        for node in block.body
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }
    assert seen == revoker._MODULE_OF
    assert set(seen) | {"__version__"} == set(revoker.__all__)


def test_an_unknown_name_is_an_attribute_error() -> None:
    """A name revoker does not export raises AttributeError, so ``hasattr`` works."""
    assert not hasattr(revoker, "no_such_name")
    with pytest.raises(AttributeError, match="no_such_name"):
        _ = revoker.no_such_name  # type: ignore[attr-defined]
