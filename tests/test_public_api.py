"""The public API: every ``__all__`` names exactly what a module defines for public use."""

from __future__ import annotations

import ast
import importlib
import inspect
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

#: Modules of the per-request foundation: their __all__ must list every public name they define.
#: (Other modules are held only to "every __all__ entry exists"; see the test below.)
FOUNDATION = {
    "revoker.exceptions",
    "revoker.keys",
    "revoker.rules",
    "revoker.scripts",
    "revoker.sessions",
    "revoker.settings",
    "revoker.store",
    "revoker.store._async",
    "revoker.store._base",
    "revoker.store._clients",
    "revoker.store._sync",
    "revoker.tokens",
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
        if isinstance(value, logging.Logger | TypeVar | ParamSpec):
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
    """``from revoker import *`` binds exactly ``revoker.__all__``, with no duplicates."""
    assert len(set(revoker.__all__)) == len(revoker.__all__)
    namespace: dict[str, object] = {}
    exec("from revoker import *", namespace)  # noqa: S102 - fixed text: a star import, run as users do
    assert set(namespace) - {"__builtins__"} == set(revoker.__all__)
    assert revoker.__version__


@pytest.mark.parametrize("name", MODULES)
def test_module_all_names_exactly_its_public_names(name: str) -> None:
    """Each __all__ exists and every entry is importable; foundation ones omit nothing public."""
    module = importlib.import_module(name)
    exported = getattr(module, "__all__", None)
    assert exported is not None, f"{name} has no __all__"
    missing = [item for item in exported if not hasattr(module, item)]
    assert not missing, f"{name}.__all__ names what does not exist: {missing}"
    assert len(set(exported)) == len(exported), f"{name}.__all__ has duplicates"
    if name not in FOUNDATION:
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
