"""revoker: revoke JWTs across a fleet of Starlette/FastAPI services.

``import revoker`` imports nothing but this module: each name below is imported from its module
when first used (PEP 562), so ``import revoker.exceptions`` or ``revoker.settings`` costs no
Starlette, Redis or PyJWT import, and the integrations that need an extra (``revoker.worker``,
``revoker.cli``, ``revoker.api.serve``, ``revoker.demo``) load only when a process uses them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:  # what the names below resolve to, for type checkers and IDEs
    from revoker.dependencies import require_scopes, require_valid_token
    from revoker.exceptions import (
        ConfigurationError,
        FamilyRevoked,
        RefreshError,
        RefreshTokenReused,
        RevokerError,
        StoreUnavailable,
        TokenError,
        TokenRevoked,
        UnknownFamily,
    )
    from revoker.middleware import TokenRevocationMiddleware
    from revoker.refresh import rotate_refresh_token, rotate_refresh_token_sync
    from revoker.rules import RevocationStatus
    from revoker.sessions import TokenPair, start_session, start_session_sync
    from revoker.settings import RevokerSettings, configure, get_settings
    from revoker.store import (
        RedisTokenRevocationStore,
        SyncRedisTokenRevocationStore,
        get_revocation_store,
        get_sync_revocation_store,
    )
    from revoker.tokens import (
        TokenData,
        create_access_token,
        create_refresh_token,
        decode_token,
        generate_jti,
    )

__version__ = "0.1.0"

__all__ = [
    "ConfigurationError",
    "FamilyRevoked",
    "RedisTokenRevocationStore",
    "RefreshError",
    "RefreshTokenReused",
    "RevocationStatus",
    "RevokerError",
    "RevokerSettings",
    "StoreUnavailable",
    "SyncRedisTokenRevocationStore",
    "TokenData",
    "TokenError",
    "TokenPair",
    "TokenRevocationMiddleware",
    "TokenRevoked",
    "UnknownFamily",
    "__version__",
    "configure",
    "create_access_token",
    "create_refresh_token",
    "decode_token",
    "generate_jti",
    "get_revocation_store",
    "get_settings",
    "get_sync_revocation_store",
    "require_scopes",
    "require_valid_token",
    "rotate_refresh_token",
    "rotate_refresh_token_sync",
    "start_session",
    "start_session_sync",
]

#: Where each name of ``__all__`` lives (``__version__`` is defined here).
_MODULES: Final = {
    "revoker.dependencies": ("require_scopes", "require_valid_token"),
    "revoker.exceptions": (
        "ConfigurationError",
        "FamilyRevoked",
        "RefreshError",
        "RefreshTokenReused",
        "RevokerError",
        "StoreUnavailable",
        "TokenError",
        "TokenRevoked",
        "UnknownFamily",
    ),
    "revoker.middleware": ("TokenRevocationMiddleware",),
    "revoker.refresh": ("rotate_refresh_token", "rotate_refresh_token_sync"),
    "revoker.rules": ("RevocationStatus",),
    "revoker.sessions": ("TokenPair", "start_session", "start_session_sync"),
    "revoker.settings": ("RevokerSettings", "configure", "get_settings"),
    "revoker.store": (
        "RedisTokenRevocationStore",
        "SyncRedisTokenRevocationStore",
        "get_revocation_store",
        "get_sync_revocation_store",
    ),
    "revoker.tokens": (
        "TokenData",
        "create_access_token",
        "create_refresh_token",
        "decode_token",
        "generate_jti",
    ),
}
_MODULE_OF: Final = {name: module for module, names in _MODULES.items() for name in names}


def __getattr__(name: str) -> Any:
    """Import ``name`` from its module on first use, then keep it as a plain attribute."""
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
