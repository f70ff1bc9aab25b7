"""TokenRevocationMiddleware: verify and revocation-check every request, inline, in pure ASGI."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Final

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from starlette.websockets import WebSocketClose

from revoker import exceptions as exc
from revoker.check import RevocationChecker, bearer_token
from revoker.metrics import CHECKS
from revoker.settings import RevokerSettings, get_settings
from revoker.tokens import MAX_TOKEN_BYTES

if TYPE_CHECKING:
    from revoker.breaker import CircuitBreaker
    from revoker.store import RedisTokenRevocationStore

__all__ = [
    "DEFAULT_EXEMPT_PATHS",
    "WEBSOCKET_BEARER_SUBPROTOCOL",
    "TokenRevocationMiddleware",
    "error_response",
    "subprotocol_token",
    "www_authenticate",
]

logger = logging.getLogger("revoker.middleware")

#: Paths served without a check unless told otherwise: probes, metrics and API docs.
DEFAULT_EXEMPT_PATHS: Final = (
    "/health",
    "/healthz",
    "/metrics",
    "/docs",
    "/redoc",
    "/openapi.json",
)
#: WebSocket close codes (RFC 6455 §7.4.1): policy violation, and try again later.
WS_POLICY_VIOLATION: Final = 1008
WS_TRY_AGAIN_LATER: Final = 1013
#: What a browser offers as a WebSocket subprotocol, followed by the token itself
#: (``new WebSocket(url, ["revoker.bearer", token])``), when REVOKER_WEBSOCKET_SUBPROTOCOL_AUTH is
#: on: a browser cannot set an Authorization header on a WebSocket, but it can set this one.
WEBSOCKET_BEARER_SUBPROTOCOL: Final = "revoker.bearer"
_SEC_WEBSOCKET_PROTOCOL: Final = b"sec-websocket-protocol"


def subprotocol_token(subprotocols: Sequence[str]) -> tuple[str, list[str]] | None:
    """The bearer token a WebSocket client offered after ``revoker.bearer``, and the subprotocols
    left once it is taken out (``revoker.bearer`` stays); None when it offered none.

    Raises MalformedToken for ``revoker.bearer`` offered twice or with nothing after it, and for a
    token that is not an RFC 6750 b64token (the Authorization header's rule); TokenTooLarge.
    """
    if WEBSOCKET_BEARER_SUBPROTOCOL not in subprotocols:
        return None
    offered = list(subprotocols)
    at = offered.index(WEBSOCKET_BEARER_SUBPROTOCOL)
    if offered.count(WEBSOCKET_BEARER_SUBPROTOCOL) > 1:
        raise exc.MalformedToken(f"subprotocol {WEBSOCKET_BEARER_SUBPROTOCOL} is offered twice")
    if at + 1 >= len(offered):
        raise exc.MalformedToken(
            f"subprotocol {WEBSOCKET_BEARER_SUBPROTOCOL} has no token after it"
        )
    token = offered.pop(at + 1)
    if len(token) > MAX_TOKEN_BYTES:
        raise exc.TokenTooLarge(f"subprotocol token is larger than {MAX_TOKEN_BYTES} bytes")
    if not token.isascii():
        raise exc.MalformedToken("bearer token has characters a JWT cannot contain")
    # One rule for what a bearer credential may be: the Authorization header's.
    checked = bearer_token([(b"authorization", b"Bearer " + token.encode("ascii"))])
    if checked is None:  # pragma: no cover - a "Bearer" credential is always read
        raise exc.MalformedToken("bearer token is empty")
    return checked, offered


def _without_token(scope: Scope, subprotocols: list[str]) -> Scope:
    """``scope`` as the app sees it: the token gone from the subprotocols and from the header, so
    an app that logs what it was offered never logs a credential."""
    headers = [(n, v) for n, v in scope["headers"] if n.lower() != _SEC_WEBSOCKET_PROTOCOL]
    headers.append((_SEC_WEBSOCKET_PROTOCOL, ", ".join(subprotocols).encode("latin-1")))
    return {**scope, "subprotocols": subprotocols, "headers": headers}


def _echoing(send: Send, token: str) -> Send:
    """``send`` answering the handshake with ``revoker.bearer`` unless the app chose another of the
    offered subprotocols: a browser that offered subprotocols fails a handshake that names none."""

    async def echo(message: Message) -> None:
        if message["type"] == "websocket.accept" and message.get("subprotocol") in (None, token):
            message = {**message, "subprotocol": WEBSOCKET_BEARER_SUBPROTOCOL}
        await send(message)

    return echo


def _header_safe(text: str) -> str:
    """``text`` made fit for a WWW-Authenticate quoted-string (RFC 6750 §3 allowed characters)."""
    return "".join(c if " " <= c <= "~" and c not in '"\\' else "?" for c in text)[:200]


def www_authenticate(error: str | None, description: str) -> str:
    """The RFC 6750 §3 challenge: bare ``Bearer`` without an error (no credentials were sent)."""
    if error is None:
        return "Bearer"
    return f'Bearer error="{error}", error_description="{_header_safe(description)}"'


def error_response(
    status_code: int,
    error: str | None,
    description: str,
    *,
    retry_after: int | None = None,
) -> JSONResponse:
    """An RFC 6750 error: JSON body and, for 401, the WWW-Authenticate challenge."""
    headers: dict[str, str] = {"Cache-Control": "no-store"}
    if status_code == 401:
        headers["WWW-Authenticate"] = www_authenticate(error, description)
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    return JSONResponse(
        {"error": error or "unauthorized", "error_description": description},
        status_code=status_code,
        headers=headers,
    )


def _prefix_rule(prefix: str) -> str:
    if not prefix.startswith("/"):
        raise ValueError(f"path prefix {prefix!r} must start with '/'")
    return prefix


def _under(path: str, prefixes: tuple[str, ...]) -> bool:
    """Whether ``path`` is ``prefix`` or lies below it, segment-wise.

    ``/static`` covers ``/static`` and ``/static/app.js`` but not ``/static-admin``: a plain
    string prefix would exempt routes nobody meant to exempt. A prefix ending in ``/`` covers
    exactly what lies below it.
    """
    for prefix in prefixes:
        if path.startswith(prefix) and (
            len(path) == len(prefix) or prefix[-1] == "/" or path[len(prefix)] == "/"
        ):
            return True
    return False


class TokenRevocationMiddleware:
    """Reject revoked and invalid bearer tokens before the app runs.

    * ``exempt_paths`` are matched exactly, ``exempt_prefixes`` as path prefixes at a segment
      boundary (``/public`` covers ``/public/x``, not ``/publicity``).
    * A verified, unrevoked token's claims are put in ``request.state.token``.
    * Without a bearer token the request passes (the app decides) unless ``require_token``.
    * When Redis cannot answer: ``fail_open`` (default from settings) lets the request through,
      except under ``fail_closed_prefixes``, which answer 503 with Retry-After.
    * WebSockets are refused before accept: with the HTTP 401/503 itself where the server
      supports the denial-response extension, else by closing with 1008 (1013 for 503).
    * ``websocket_subprotocol_auth`` (default from REVOKER_WEBSOCKET_SUBPROTOCOL_AUTH): a
      WebSocket may carry its token as the subprotocol after ``revoker.bearer`` (see
      :func:`subprotocol_token`); the handshake then answers ``revoker.bearer`` and the app sees
      the subprotocols and headers without the token. Both credentials at once are refused
      (RFC 6750 §2: one method per request).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        store: RedisTokenRevocationStore | None = None,
        settings: RevokerSettings | None = None,
        exempt_paths: Iterable[str] = DEFAULT_EXEMPT_PATHS,
        exempt_prefixes: Iterable[str] = (),
        require_token: bool = False,
        fail_open: bool | None = None,
        fail_closed_prefixes: Iterable[str] = (),
        breaker: CircuitBreaker | None = None,
        checker: RevocationChecker | None = None,
        websocket_subprotocol_auth: bool | None = None,
    ) -> None:
        self.app = app
        #: A configuration error met here (bad REVOKER_* variables): Starlette builds its
        #: middleware while serving the first ASGI call, the lifespan's, whose error a server
        #: with lifespan "auto" (uvicorn's default) swallows before answering 500 to every
        #: request. Kept instead, and answered: lifespan.startup.failed saying it (see __call__).
        self.configuration_error: exc.ConfigurationError | None = None
        try:
            self.settings = settings or (store.settings if store is not None else get_settings())
            self.checker = checker or RevocationChecker(
                store, settings=self.settings, breaker=breaker
            )
        except exc.ConfigurationError as e:
            self.configuration_error = e
            self.settings = settings or RevokerSettings.model_construct()  # unused: see __call__
            return
        self.exempt_paths = frozenset(exempt_paths)
        self.exempt_prefixes = tuple(_prefix_rule(p) for p in exempt_prefixes)
        self.require_token = require_token
        self.fail_open = self.settings.fail_open if fail_open is None else fail_open
        self.fail_closed_prefixes = tuple(_prefix_rule(p) for p in fail_closed_prefixes)
        self._missing = CHECKS.counting("missing")
        self.websocket_subprotocol_auth = (
            self.settings.websocket_subprotocol_auth
            if websocket_subprotocol_auth is None
            else websocket_subprotocol_auth
        )
        if self.settings.log_middleware:  # opt-in: REVOKER_LOG_FORMAT/LEVEL in this process
            from revoker.logs import configure_logging

            configure_logging(self.settings)

    def is_exempt(self, path: str) -> bool:
        return path in self.exempt_paths or (
            bool(self.exempt_prefixes) and _under(path, self.exempt_prefixes)
        )

    def fails_open(self, path: str) -> bool:
        if self.fail_closed_prefixes and _under(path, self.fail_closed_prefixes):
            return False
        return self.fail_open

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.configuration_error is not None:
            await self._misconfigured(scope, receive, send, self.configuration_error)
            return
        if scope["type"] not in ("http", "websocket") or (
            (path := scope["path"]) in self.exempt_paths  # is_exempt, inline: every request
            or (self.exempt_prefixes and _under(path, self.exempt_prefixes))
        ):
            await self.app(scope, receive, send)
            return
        # Only the check is guarded: an exception raised by the app must reach the server (and
        # its error handling) untouched, not be answered with a second response.
        try:
            token = bearer_token(scope["headers"])
            if self.websocket_subprotocol_auth and scope["type"] == "websocket":
                offered = subprotocol_token(scope.get("subprotocols") or ())
                if offered is not None:
                    if token is not None:
                        raise exc.MalformedToken(
                            "a bearer token in both the Authorization header and the subprotocols"
                        )
                    token, others = offered
                    scope = _without_token(scope, others)
                    send = _echoing(send, token)
            if token is None:
                result = None
            else:
                # The warm path answers without a coroutine; anything else is check()'s.
                result = self.checker.check_now(token) or await self.checker.check(token)
        except exc.TokenError as e:
            if isinstance(e, exc.TokenRevoked):
                logger.info(
                    "revoked token rejected",
                    extra={
                        "rule": e.status.rule,
                        "reason": e.status.reason,
                        "jti": e.token.jti if e.token else None,
                        "sub": e.token.sub if e.token else None,
                        "tenant": e.token.tenant if e.token else None,
                        "path": scope["path"],
                        "scope_type": scope["type"],
                    },
                )
            await self._reject(scope, receive, send, 401, e.error_code, e.description)
            return
        if result is None:
            if self.require_token:
                self._missing()
                await self._reject(scope, receive, send, 401, None, "a bearer token is required")
                return
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        state["token"] = result.token
        state["revocation_checked"] = result.store_error is None
        if result.store_error is not None and not self.checker.admit_unchecked(
            self.fails_open(scope["path"]), result.store_error
        ):
            await self._reject(
                scope,
                receive,
                send,
                503,
                "temporarily_unavailable",
                "token revocation cannot be checked right now",
                retry_after=self.settings.retry_after_seconds,
            )
            return
        await self.app(scope, receive, send)

    async def _misconfigured(
        self, scope: Scope, receive: Receive, send: Send, error: exc.ConfigurationError
    ) -> None:
        """Serve nothing with a bad configuration: the lifespan's startup fails saying why (the
        server then stops), and a request (a server without lifespan) is a 500 with one log
        line, the app never run unchecked."""
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.failed", "message": str(error)})
                    return
                if message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] not in ("http", "websocket"):
            return
        logger.error("request refused: revoker is misconfigured: %s", error)
        await self._reject(scope, receive, send, 500, "server_error", "revoker is misconfigured")

    async def _reject(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        status_code: int,
        error: str | None,
        description: str,
        *,
        retry_after: int | None = None,
    ) -> None:
        response = error_response(status_code, error, description, retry_after=retry_after)
        if scope["type"] == "websocket":
            if "websocket.http.response" in scope.get("extensions", {}):
                # The client learns why (401 + challenge, or 503 + Retry-After), not just "403".
                await response(scope, receive, send)
                return
            code = WS_TRY_AGAIN_LATER if status_code == 503 else WS_POLICY_VIOLATION
            await WebSocketClose(code=code, reason=_header_safe(description)[:120])(
                scope, receive, send
            )
            return
        await response(scope, receive, send)
