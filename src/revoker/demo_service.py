"""A small FastAPI service protected by TokenRevocationMiddleware (the demo and the compose stack).

Serve it with ``uvicorn revoker.demo_service:app``. Endpoints:

* ``GET /me``: the claims of the caller's (verified, unrevoked) access token; 401 otherwise.
* ``POST /login``: a new login session for ``{"user_id", "tenant_id"}``. For trying the stack
  only: a real service authenticates the user before calling :func:`revoker.start_session`.
* ``POST /refresh``: rotate a refresh token (reuse burns the session).
* ``GET /health``: exempt from the check, for probes.

FastAPI is an optional dependency (``pip install 'revoker[demo]'``): only this module imports it.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException
from pydantic import BaseModel, ConfigDict, Field

from revoker import exceptions as exc
from revoker.dependencies import require_valid_token
from revoker.keys import MAX_ID_LENGTH
from revoker.middleware import TokenRevocationMiddleware
from revoker.settings import RevokerSettings, get_settings
from revoker.tokens import TokenData

__all__ = ["create_app"]

#: Paths served without a token: probes, the API docs, and the two token endpoints (they take
#: credentials in the body, not a bearer header).
EXEMPT_PATHS = ("/health", "/docs", "/openapi.json", "/login", "/refresh")


class LoginRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_id: str = Field(min_length=1, max_length=MAX_ID_LENGTH)
    tenant_id: str | None = Field(None, min_length=1, max_length=MAX_ID_LENGTH)
    client_id: str | None = Field(None, min_length=1, max_length=MAX_ID_LENGTH)


class RefreshRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    refresh_token: str = Field(min_length=1, max_length=8192)


def create_app(settings: RevokerSettings | None = None) -> FastAPI:
    """The demo service for ``settings`` (default: the process settings, read on first request)."""
    app = FastAPI(title="revoker demo service", version="1")
    # Every request carrying a bearer token is verified and checked; /me also demands one.
    app.add_middleware(
        TokenRevocationMiddleware,
        settings=settings,
        exempt_paths=EXEMPT_PATHS,
    )

    def current_settings() -> RevokerSettings:
        return settings or get_settings()

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/me")
    async def me(token: Annotated[TokenData, Depends(require_valid_token)]) -> dict[str, Any]:
        """Who the caller is, according to its token."""
        return {
            "sub": token.sub,
            "tenant": token.tenant,
            "client_id": token.client,
            "family": token.family,
            "scopes": list(token.scopes),
            "jti": token.jti,
            "exp": token.exp,
        }

    @app.post("/login")
    async def login(body: LoginRequest) -> dict[str, Any]:
        """Open a session (demo only: no password is asked)."""
        from revoker.sessions import start_session
        from revoker.store import get_revocation_store

        store = get_revocation_store(current_settings())
        try:
            pair = await start_session(
                body.user_id, tenant_id=body.tenant_id, client_id=body.client_id, store=store
            )
        except exc.StoreUnavailable:
            raise HTTPException(503, "the session store is unavailable") from None
        return pair.as_response()

    @app.post("/refresh")
    async def refresh(body: RefreshRequest) -> dict[str, Any]:
        """Rotate a refresh token; presenting a superseded one revokes its whole session."""
        from revoker.refresh import rotate_refresh_token
        from revoker.store import get_revocation_store

        store = get_revocation_store(current_settings())
        try:
            pair = await rotate_refresh_token(body.refresh_token, store=store)
        except exc.TokenError as e:
            raise HTTPException(401, e.description) from None
        except exc.RefreshError as e:
            raise HTTPException(401, str(e)) from None
        except exc.StoreUnavailable:
            raise HTTPException(503, "the session store is unavailable") from None
        return pair.as_response()

    return app


_app: FastAPI | None = None


def __getattr__(name: str) -> Any:
    # `uvicorn revoker.demo_service:app` looks the app up as an attribute: build it then, so that
    # importing this module reads no settings.
    global _app
    if name == "app":
        if _app is None:
            _app = create_app()
        return _app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
