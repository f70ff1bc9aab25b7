"""The admin API app: the routes of every handler module, the error handlers, and ``serve``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.applications import Starlette
from starlette.middleware import Middleware

from revoker.api import audit, console, discovery, jobs, oauth, ops, ssf
from revoker.api.context import ApiContext
from revoker.api.errors import EXCEPTION_HANDLERS
from revoker.logs import configure_logging
from revoker.metrics import SurfaceMiddleware
from revoker.settings import get_settings

if TYPE_CHECKING:
    from revoker.settings import RevokerSettings
    from revoker.store import RedisTokenRevocationStore

__all__ = ["create_app", "serve"]


def create_app(
    *,
    settings: RevokerSettings | None = None,
    store: RedisTokenRevocationStore | None = None,
) -> Starlette:
    """The admin API for ``settings`` (default: the process settings).

    ``store`` pins one async store (tests, embedding); by default the process-wide store of the
    running event loop is used.
    """
    settings = settings or (store.settings if store is not None else get_settings())
    context = ApiContext(settings, store)
    app = Starlette(
        routes=[
            *oauth.routes(context),
            *jobs.routes(context),
            *ops.routes(context),
            *discovery.routes(context),
            *console.routes(context),
            *audit.routes(context),
            *ssf.routes(context),
        ],
        exception_handlers=dict(EXCEPTION_HANDLERS),
        # Revocations written by a request are counted under surface "api" (revoker.metrics).
        middleware=[Middleware(SurfaceMiddleware, surface="api")],
    )
    app.state.settings = settings
    return app


def serve(host: str = "127.0.0.1", port: int = 8080) -> None:
    """Serve the admin API with uvicorn until interrupted (``revoker api``)."""
    from revoker._extras import requires_extra

    with requires_extra("server", "revoker api"):
        import uvicorn

    # uvicorn's own lines through revoker's handler (REVOKER_LOG_FORMAT), not its dictConfig.
    configure_logging(get_settings(), default_level="INFO", also=("uvicorn",))
    uvicorn.run(
        create_app(),
        host=host,
        port=port,
        proxy_headers=False,
        server_header=False,
        log_config=None,
    )
