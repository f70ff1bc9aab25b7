"""revoker: revoke JWTs across a fleet of Starlette/FastAPI services.

The per-request path (tokens, store, middleware) is imported eagerly; it is what every service
loads. Celery-backed parts (``revoker.jobs``, ``revoker.tasks``, ``revoker.worker``) are imported
only when used.
"""

from __future__ import annotations

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
