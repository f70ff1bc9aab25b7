"""The operator console at ``/console``: jobs, revocations, token checks, audit and health in a
browser, server-rendered (Jinja2) with one small script for live job progress.

Sign-in is the admin API's own authentication (:func:`authenticate`, the one call into it). A
signed-in operator holds a server-side session (``revoker.console.sessions``): an HttpOnly,
SameSite=Strict cookie carrying a signed id of a Redis record that expires. Every write is a POST
carrying the session's CSRF token. Nothing but the sign-in form answers without a session: pages
redirect to it, form posts and the JSON endpoints the script polls answer 401.

Every page is sent with a Content-Security-Policy allowing only the page's own nonce-tagged style
and script (inlined from ``revoker/console/static``), so there is no static route to protect and
no script the page did not bring.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from html import escape
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import parse_qsl, urlencode

from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from revoker import exceptions as exc
from revoker import health as health_checks
from revoker import jobs as bulk_jobs
from revoker.api import auth
from revoker.api.errors import ApiError
from revoker.api.requests import MAX_BODY_BYTES
from revoker.bulk import BulkRevocation
from revoker.clients import AsyncClientRegistry
from revoker.console import STATIC_DIR, TEMPLATES_DIR
from revoker.job_record import JOB_STATUSES
from revoker.tokens import MAX_TOKEN_BYTES, TokenData

if TYPE_CHECKING:
    from jinja2 import Environment

    from revoker.api.context import ApiContext
    from revoker.clients import ClientRecord
    from revoker.console.sessions import ConsoleSession, SessionSigner
    from revoker.job_record import JobRecord

__all__ = ["PREFIX", "RULE_TEXT", "Identity", "authenticate", "routes", "still_valid"]

#: Where the console is mounted in the admin API.
PREFIX: Final = "/console"
#: Jobs the list shows (filtered by tenant/actor among this many of the newest).
_JOB_LIST: Final = 200
_STREAM_ID: Final = re.compile(r"\d{1,20}-\d{1,20}")

#: What each rule of a revoked token means (the words of ``revoker check``).
RULE_TEXT: Final = {
    "jti": "this token was revoked",
    "family": "its session (refresh family) was revoked",
    "user": "every token of its user issued before a cut-off was revoked",
    "tenant": "every token of its tenant issued before a cut-off was revoked",
    "global": "every token issued before the revocation data was found lost was revoked",
}


# --- authentication: the one call into the admin API's -------------------------------------------


@dataclass(frozen=True, slots=True)
class Identity:
    """Who signed in: ``name`` is the actor recorded on what they do; ``claims`` what
    :func:`still_valid` checks on every later request (kept in the session, unlike the token)."""

    name: str
    expires_at: float | None
    claims: dict[str, Any]


async def authenticate(
    context: ApiContext, credential: str, *, client_id: str | None = None
) -> Identity:
    """Authenticate a console sign-in exactly as the admin API authenticates a request: through
    :func:`revoker.api.auth.authenticate` with the ``revoker:admin`` scope.

    ``credential`` is an admin token (a bearer token: verified, unrevoked), or, with
    ``client_id``, a registered client's secret (client credentials, as ``client_secret_post``).
    Raises ApiError (400, 401, 403) or StoreUnavailable (503), as the API does.
    """
    credential = credential.strip()
    if not credential or len(credential) > MAX_TOKEN_BYTES or not credential.isascii():
        raise ApiError(401, "invalid_token", "paste an admin token, or a client id and secret")
    headers: list[tuple[bytes, bytes]] = []
    form: dict[str, str] | None = None
    if client_id:
        form = {"client_id": client_id.strip(), "client_secret": credential}
    else:
        headers.append((b"authorization", f"Bearer {credential}".encode("ascii")))
    scope = {
        "type": "http",
        "method": "POST",
        "path": f"{PREFIX}/login",
        "query_string": b"",
        "headers": headers,
    }
    principal = await auth.authenticate(context, Request(scope), scope=auth.ADMIN_SCOPE, form=form)
    if principal.token is not None:
        return Identity(
            name=principal.actor,
            expires_at=float(principal.token.exp),
            claims={"kind": "token", "token": principal.token.model_dump()},
        )
    record = await _client_record(context, principal.client_id)
    if record is None:
        raise ApiError(401, "invalid_client", "client authentication failed")
    return Identity(
        name=principal.actor,
        expires_at=None,
        claims={
            "kind": "client",
            "client_id": record.client_id,
            "secret": _secret_version(record),
        },
    )


def _secret_version(record: ClientRecord) -> str:
    """Which secret the client has now: a digest of its stored hash (a new one on every rotation;
    ``secret_rotated_at`` is whole seconds, so two rotations in one second would look alike)."""
    return hashlib.sha256(record.secret_hash.encode()).hexdigest()


async def _client_record(context: ApiContext, client_id: str | None) -> ClientRecord | None:
    if client_id is None:
        return None
    registry = AsyncClientRegistry(context.store.client, context.store.keys)
    return await registry.get(client_id)


async def still_valid(context: ApiContext, claims: dict[str, Any]) -> bool:
    """Whether a signed-in identity may still act: what :func:`authenticate` checked that can
    change since.

    A token's signature and scope cannot change; its expiry and revocation can: revoking the
    admin token ends the session at its next request. A client must still be registered with
    the admin scope and the secret it signed in with (rotating the secret or removing the client
    ends its sessions). Fails closed: StoreUnavailable when Redis cannot say.
    """
    if claims.get("kind") == "client":
        record = await _client_record(context, claims.get("client_id"))
        return (
            record is not None
            and auth.ADMIN_SCOPE in record.scopes
            and _secret_version(record) == claims.get("secret")
        )
    try:
        token = TokenData.model_validate(claims.get("token"))
    except ValidationError:
        return False
    if token.exp <= time.time():
        return False
    return not (await context.store.is_revoked(token)).revoked


# --- the pieces every page uses ------------------------------------------------------------------


def _when(value: float | None) -> str:
    if value is None:
        return "-"
    return datetime.fromtimestamp(value, UTC).isoformat(timespec="milliseconds")


def _environment() -> Environment:
    from revoker._extras import requires_extra

    with requires_extra("server", "the console"):
        from jinja2 import Environment, FileSystemLoader, StrictUndefined

    env = Environment(
        loader=FileSystemLoader([TEMPLATES_DIR, STATIC_DIR]),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["when"] = _when
    env.globals.update(prefix=PREFIX, statuses=JOB_STATUSES, rule_text=RULE_TEXT)
    return env


def _headers(nonce: str) -> dict[str, str]:
    return {
        "Content-Security-Policy": (
            f"default-src 'none'; style-src 'nonce-{nonce}'; script-src 'nonce-{nonce}'; "
            "connect-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; "
            "base-uri 'none'"
        ),
        "Cache-Control": "no-store",
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "X-Frame-Options": "DENY",
    }


class _Refused(Exception):
    """A page answer that is an error: its status and message, shown in the page's layout."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


async def _read_form(request: Request) -> dict[str, str]:
    """A urlencoded form (size-capped, no repeated field)."""
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media != "application/x-www-form-urlencoded":
        raise _Refused(415, "the form must be sent as application/x-www-form-urlencoded")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise _Refused(413, f"the form is larger than {MAX_BODY_BYTES} bytes")
    try:
        pairs = parse_qsl(
            body.decode("ascii"), keep_blank_values=True, max_num_fields=30, errors="strict"
        )
    except (UnicodeDecodeError, ValueError):
        raise _Refused(400, "the form is not valid urlencoded UTF-8") from None
    form: dict[str, str] = {}
    for name, value in pairs:
        if name in form:
            raise _Refused(400, f"field {name!r} is repeated")
        form[name] = value
    return form


def _field(form: dict[str, str], name: str) -> str | None:
    value = form.get(name, "").strip()
    return value or None


def _validation_text(error: ValidationError) -> list[str]:
    out = []
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"])
        message = str(item["msg"]).removeprefix("Value error, ")
        out.append(f"{where}: {message}" if where else message)
    return out


Handler = Callable[[Request, "ConsoleSession", dict[str, str]], Awaitable[Response]]


class Console:
    """One admin app's console: templates, the session signer, and the guard around pages."""

    def __init__(self, context: ApiContext) -> None:
        self.context = context
        self._env: Environment | None = None
        self._signer: SessionSigner | None = None

    @property
    def env(self) -> Environment:
        if self._env is None:
            self._env = _environment()
        return self._env

    @property
    def signer(self) -> SessionSigner:
        if self._signer is None:
            from revoker._extras import requires_extra

            with requires_extra("server", "the console"):
                from revoker.console.sessions import SessionSigner

            self._signer = SessionSigner(self.context.settings)
        return self._signer

    def render(
        self,
        name: str,
        session: ConsoleSession | None,
        *,
        status: int = 200,
        **values: Any,
    ) -> HTMLResponse:
        nonce = secrets.token_urlsafe(18)
        try:
            env = self.env
        except exc.ConfigurationError as e:
            # Jinja2 missing (a core-only install): say which extra, in the plainest page.
            return HTMLResponse(escape(str(e)), status_code=503, headers=_headers(nonce))
        html = env.get_template(name).render(
            nonce=nonce, session=session, csrf=session.csrf if session else "", **values
        )
        return HTMLResponse(html, status_code=status, headers=_headers(nonce))

    async def session(self, request: Request) -> ConsoleSession | None:
        """The request's live session, its credential authenticated again; None if none."""
        from revoker.console.sessions import SESSION_COOKIE

        session_id = self.signer.session_id(request.cookies.get(SESSION_COOKIE))
        if session_id is None:
            return None
        store = self.context.store
        session = await self.signer.load(store, session_id)
        if session is None:
            return None
        if not await still_valid(self.context, session.claims):
            # The admin token was revoked: so is the session.
            await self.signer.delete(store, session_id)
            return None
        return session

    def guard(self, handler: Handler, *, api: bool = False) -> Callable[[Request], Any]:
        """``handler`` behind a session (and, for a POST, its CSRF token)."""

        async def endpoint(request: Request) -> Response:
            session: ConsoleSession | None = None
            try:
                session = await self.session(request)
                if session is None:
                    if api:
                        return JSONResponse(
                            {"error": "unauthorized", "error_description": "sign in first"},
                            status_code=401,
                            headers={"Cache-Control": "no-store"},
                        )
                    if request.method == "GET":
                        return RedirectResponse(f"{PREFIX}/login", status_code=303)
                    raise _Refused(401, "sign in first")
                form: dict[str, str] = {}
                if request.method == "POST":
                    from revoker.console.sessions import csrf_matches

                    form = await _read_form(request)
                    if not csrf_matches(session.csrf, form.get("csrf")):
                        raise _Refused(
                            403, "the form's CSRF token is missing or wrong: reload and retry"
                        )
                return await handler(request, session, form)
            except _Refused as e:
                return self._refusal(e.status, e.message, session, api=api)
            except ApiError as e:
                return self._refusal(e.status_code, e.description, session, api=api)
            except exc.StoreUnavailable as e:
                return self._refusal(503, f"Redis is unavailable: {e}", session, api=api)
            except exc.ConfigurationError as e:
                return self._refusal(503, str(e), session, api=api)

        return endpoint

    def _refusal(
        self, status: int, message: str, session: ConsoleSession | None, *, api: bool
    ) -> Response:
        if api:
            return JSONResponse(
                {"error": "refused", "error_description": message},
                status_code=status,
                headers={"Cache-Control": "no-store"},
            )
        return self.render("error.html", session, status=status, message=message)


# --- sign-in -------------------------------------------------------------------------------------


def _login_page(console: Console, *, status: int = 200, message: str | None = None) -> Response:
    from revoker.console.sessions import LOGIN_COOKIE, LOGIN_FORM_MAX_AGE

    cookie, form_value = console.signer.login_challenge()
    response = console.render("login.html", None, status=status, login=form_value, message=message)
    response.set_cookie(
        LOGIN_COOKIE,
        cookie,
        max_age=LOGIN_FORM_MAX_AGE,
        path=f"{PREFIX}/login",
        httponly=True,
        samesite="strict",
    )
    return response


async def login_form(console: Console, request: Request) -> Response:
    """The sign-in page (the one page without a session)."""
    try:
        if await console.session(request) is not None:
            return RedirectResponse(f"{PREFIX}/jobs", status_code=303)
        return _login_page(console)
    except (exc.StoreUnavailable, exc.ConfigurationError) as e:
        return console.render("error.html", None, status=503, message=str(e))


async def login(console: Console, request: Request) -> Response:
    """Sign in with an admin token: a new session, then the jobs page."""
    from revoker.console.sessions import LOGIN_COOKIE, SESSION_COOKIE

    try:
        form = await _read_form(request)
        if not console.signer.login_matches(request.cookies.get(LOGIN_COOKIE), form.get("login")):
            return _login_page(
                console, status=403, message="the sign-in form expired or was not ours: try again"
            )
        client_id = _field(form, "client_id")
        secret = form.get("client_secret", "") if client_id else form.get("token", "")
        identity = await authenticate(console.context, secret, client_id=client_id)
        session = await console.signer.create(
            console.context.store,
            name=identity.name,
            claims=identity.claims,
            credential_expires_at=identity.expires_at,
        )
    except _Refused as e:
        return _login_page(console, status=e.status, message=e.message)
    except ApiError as e:
        return _login_page(console, status=e.status_code, message=e.description)
    except (exc.StoreUnavailable, exc.ConfigurationError) as e:
        return console.render("error.html", None, status=503, message=str(e))
    if session is None:
        return _login_page(console, status=401, message="that token expires too soon")
    response = RedirectResponse(f"{PREFIX}/jobs", status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        console.signer.cookie_value(session),
        max_age=int(session.expires_at - datetime.now(UTC).timestamp()),
        path=PREFIX,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    response.delete_cookie(LOGIN_COOKIE, path=f"{PREFIX}/login")
    return response


async def logout(
    console: Console, _request: Request, session: ConsoleSession, _form: dict[str, str]
) -> Response:
    """Sign out: the session is deleted in Redis, the cookie cleared."""
    from revoker.console.sessions import SESSION_COOKIE

    await console.signer.delete(console.context.store, session.id)
    response = RedirectResponse(f"{PREFIX}/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path=PREFIX)
    return response


# --- jobs ----------------------------------------------------------------------------------------


def _job_filters(request: Request) -> dict[str, str]:
    query = request.query_params
    filters = {name: query.get(name, "").strip() for name in ("status", "tenant", "actor")}
    if filters["status"] and filters["status"] not in JOB_STATUSES:
        raise _Refused(400, f"status must be one of {', '.join(JOB_STATUSES)}")
    return filters


async def _jobs(console: Console, filters: dict[str, str]) -> list[JobRecord]:
    records = await console.context.store.list_jobs(
        limit=_JOB_LIST,
        status=filters["status"] or None,  # type: ignore[arg-type]
    )
    tenant, actor = filters["tenant"], filters["actor"]
    return [
        record
        for record in records
        if (not tenant or record.tenant_id == tenant) and (not actor or record.actor == actor)
    ]


async def jobs_page(
    console: Console, request: Request, session: ConsoleSession, _form: dict[str, str]
) -> Response:
    """The jobs, newest first, filtered by status, tenant and actor; updated live."""
    filters = _job_filters(request)
    records = await _jobs(console, filters)
    poll = f"{PREFIX}/api/jobs?{urlencode(filters)}"
    return console.render(
        "jobs.html", session, jobs=records, filters=filters, poll=poll, active="jobs"
    )


async def jobs_json(
    console: Console, request: Request, _session: ConsoleSession, _form: dict[str, str]
) -> Response:
    """What the jobs page polls."""
    records = await _jobs(console, _job_filters(request))
    return JSONResponse(
        {"jobs": [record.as_dict() for record in records]}, headers={"Cache-Control": "no-store"}
    )


async def _detail(console: Console, request: Request) -> Any:
    from revoker.console.data import job_detail

    job_id = str(request.path_params["job_id"])
    try:
        return await job_detail(console.context.store, job_id)
    except (exc.JobNotFound, exc.InvalidIdentifier):
        raise _Refused(404, f"no job {job_id!r} (unknown, or past its retention)") from None


async def job_page(
    console: Console, request: Request, session: ConsoleSession, _form: dict[str, str]
) -> Response:
    """One job: chunks, counts, timings, errors, parked chunks; a dry run's confirmation."""
    detail = await _detail(console, request)
    return console.render(
        "job.html",
        session,
        job=detail.record,
        detail=detail,
        poll=f"{PREFIX}/api/jobs/{detail.record.id}",
        active="jobs",
        message=request.query_params.get("message"),
    )


async def job_json(
    console: Console, request: Request, _session: ConsoleSession, _form: dict[str, str]
) -> Response:
    """What a job page polls."""
    detail = await _detail(console, request)
    return JSONResponse({"job": detail.as_dict()}, headers={"Cache-Control": "no-store"})


# --- revocations ---------------------------------------------------------------------------------


def _revoke_page(
    console: Console,
    session: ConsoleSession,
    *,
    status: int = 200,
    errors: dict[str, list[str]] | None = None,
    done: str | None = None,
    form: dict[str, str] | None = None,
    which: str | None = None,
) -> Response:
    return console.render(
        "revoke.html",
        session,
        status=status,
        errors=errors or {},
        done=done,
        form=form or {},
        which=which,
        active="revoke",
    )


async def revoke_page(
    console: Console, _request: Request, session: ConsoleSession, _form: dict[str, str]
) -> Response:
    """The revocation forms."""
    return _revoke_page(console, session)


async def _enqueue(console: Console, request: BulkRevocation) -> str:
    try:
        return await run_in_threadpool(
            bulk_jobs.enqueue, request, settings=console.context.settings
        )
    except exc.DuplicateJob as e:
        raise _Refused(409, f"the same request is already in progress: job {e.job_id}") from None


async def revoke_bulk(
    console: Console, scope: str, session: ConsoleSession, form: dict[str, str]
) -> Response:
    """Step one of a tenant or user revocation: a dry run, whose page asks for confirmation."""
    try:
        revocation = BulkRevocation(
            scope=scope,  # type: ignore[arg-type]  # the route allows tenant|user only
            tenant_id=_field(form, "tenant_id"),
            user_id=_field(form, "user_id") if scope == "user" else None,
            reason=form.get("reason", ""),
            actor=session.name,
            client_id=_field(form, "client_id"),
            issued_after=_field(form, "issued_after"),  # type: ignore[arg-type]  # pydantic parses
            issued_before=_field(form, "issued_before"),  # type: ignore[arg-type]
            dry_run=True,
        )
    except ValidationError as e:
        return _revoke_page(
            console,
            session,
            status=422,
            errors={scope: _validation_text(e)},
            form=form,
            which=scope,
        )
    job_id = await _enqueue(console, revocation)
    return RedirectResponse(f"{PREFIX}/jobs/{job_id}", status_code=303)


async def confirm_bulk(
    console: Console, request: Request, session: ConsoleSession, form: dict[str, str]
) -> Response:
    """Step two: the dry run's request for real, once its id is typed back."""
    detail = await _detail(console, request)
    dry = detail.record
    if not dry.dry_run or dry.kind not in ("tenant", "user"):
        raise _Refused(400, "only a dry run can be confirmed")
    if dry.status != "done":
        raise _Refused(409, "the dry run has not finished: wait for its count")
    target = dry.tenant_id if dry.kind == "tenant" else dry.user_id
    if form.get("confirm", "").strip() != target:
        raise _Refused(422, f"type {target!r} exactly to confirm the revocation")
    try:
        revocation = BulkRevocation(
            scope=dry.kind,
            tenant_id=dry.tenant_id,
            user_id=dry.user_id,
            reason=form.get("reason", ""),
            actor=session.name,
            client_id=dry.client_id,
            issued_after=dry.issued_after,
            issued_before=dry.issued_before,
            dry_run=False,
        )
    except ValidationError as e:
        raise _Refused(422, "; ".join(_validation_text(e))) from None
    job_id = await _enqueue(console, revocation)
    return RedirectResponse(f"{PREFIX}/jobs/{job_id}", status_code=303)


async def revoke(
    console: Console, request: Request, session: ConsoleSession, form: dict[str, str]
) -> Response:
    """A revocation form's post: bulk (tenant, user) or single (token, family)."""
    which = str(request.path_params["which"])
    if which in ("tenant", "user"):
        return await revoke_bulk(console, which, session, form)
    if which in ("token", "family"):
        return await revoke_single(console, which, session, form)
    raise _Refused(404, f"nothing to revoke by {which!r}: tenant, user, token or family")


def _looks_like_jwt(value: str) -> bool:
    return value.count(".") == 2 and all(value.split("."))


async def revoke_single(
    console: Console, which: str, session: ConsoleSession, form: dict[str, str]
) -> Response:
    """Revoke one token (a JWT or its jti) or one session (a family id, or one of its tokens)."""
    value = form.get("value", "").strip()
    reason = form.get("reason", "").strip()
    problems: list[str] = []
    if not value:
        problems.append("value: paste a token, or an id")
    if not reason:
        problems.append("reason: a reason is required (it goes to the audit trail)")
    if problems:
        return _revoke_page(
            console, session, status=422, errors={which: problems}, form=form, which=which
        )
    store = console.context.store
    tenant_id = _field(form, "tenant_id")
    expires_at: float | None = None
    target = value
    try:
        if _looks_like_jwt(value):
            data = console.context.verifier.decode_any(value)
            if which == "token":
                target, expires_at = data.jti, float(data.exp)
            elif data.family is None:
                raise _Refused(422, "the token belongs to no session (it has no family)")
            else:
                target, tenant_id = data.family, data.tenant
        if which == "token":
            newly = await store.revoke_token(
                target, expires_at=expires_at, reason=reason, actor=session.name
            )
        else:
            newly = await store.revoke_family(
                target, tenant_id=tenant_id, reason=reason, actor=session.name
            )
    except exc.TokenError as e:
        return _revoke_page(
            console,
            session,
            status=422,
            errors={which: [f"refusing to revoke: {e.description}"]},
            form=form,
            which=which,
        )
    except exc.InvalidIdentifier as e:
        return _revoke_page(
            console, session, status=422, errors={which: [str(e)]}, form=form, which=which
        )
    what = "token" if which == "token" else "session"
    done = f"revoked {what} {target}" + ("" if newly else f" (the {what} was already revoked)")
    return _revoke_page(console, session, done=done, which=which)


# --- check, audit, health ------------------------------------------------------------------------


async def check_page(
    console: Console, request: Request, session: ConsoleSession, form: dict[str, str]
) -> Response:
    """Paste a token: valid, or which rule revoked it, when and why (``revoker check``)."""
    result: dict[str, Any] | None = None
    if request.method == "POST":
        token = form.get("token", "").strip()
        try:
            data = console.context.verifier.decode_any(token)
        except exc.TokenError as e:
            result = {"valid": False, "invalid": f"{e.description} ({type(e).__name__})"}
        else:
            status = await console.context.store.is_revoked(data)
            result = {"valid": not status.revoked, "status": status, "token": data}
    return console.render("check.html", session, result=result, active="check")


async def audit_page(
    console: Console, request: Request, session: ConsoleSession, _form: dict[str, str]
) -> Response:
    """The audit trail, newest first, filtered by kind, tenant, actor and target; paged."""
    from revoker.console.data import AUDIT_FILTERS, read_audit

    query = request.query_params
    filters = {name: query.get(name, "").strip() for name in AUDIT_FILTERS}
    before = query.get("before") or None
    if before is not None and not _STREAM_ID.fullmatch(before):
        raise _Refused(400, "before must be an audit entry id such as 1700000000000-0")
    page = await read_audit(console.context.store, filters=filters, before=before)
    older = (
        f"{PREFIX}/audit?{urlencode({**page.filters, 'before': page.next_before})}"
        if page.next_before
        else None
    )
    return console.render(
        "audit.html", session, page=page, filters=filters, older=older, active="audit"
    )


async def health_page(
    console: Console, _request: Request, session: ConsoleSession, _form: dict[str, str]
) -> Response:
    """Redis, the broker, the denylist's integrity and durability, the counters."""
    from revoker.console.data import metric_counters, worker_names

    context = console.context
    report = await health_checks.check_async(context.store, context.settings)
    workers, workers_error = await run_in_threadpool(worker_names, context.settings)
    stats: dict[str, Any] | None
    try:
        stats = await context.store.get_stats()
    except exc.StoreUnavailable:
        stats = None
    return console.render(
        "health.html",
        session,
        report=report,
        stats=stats,
        counters=metric_counters(),
        workers=workers,
        workers_error=workers_error,
        active="health",
    )


async def home(_request: Request) -> Response:
    return RedirectResponse(f"{PREFIX}/jobs", status_code=303)


def routes(context: ApiContext) -> list[Route]:
    """The console's routes in one admin app: browser pages, left out of the OpenAPI document
    (which describes the JSON API; ``include_in_schema=False``)."""
    console = Console(context)
    guard = console.guard
    # path, endpoint, methods: every page but the sign-in ones is behind a session (guard).
    table: list[tuple[str, Callable[[Request], Any], list[str]]] = [
        ("", home, ["GET"]),
        ("/login", partial(login_form, console), ["GET"]),
        ("/login", partial(login, console), ["POST"]),
        ("/logout", guard(partial(logout, console)), ["POST"]),
        ("/jobs", guard(partial(jobs_page, console)), ["GET"]),
        ("/jobs/{job_id}", guard(partial(job_page, console)), ["GET"]),
        ("/jobs/{job_id}/confirm", guard(partial(confirm_bulk, console)), ["POST"]),
        ("/revoke", guard(partial(revoke_page, console)), ["GET"]),
        ("/revoke/{which}", guard(partial(revoke, console)), ["POST"]),
        ("/check", guard(partial(check_page, console)), ["GET", "POST"]),
        ("/audit", guard(partial(audit_page, console)), ["GET"]),
        ("/health", guard(partial(health_page, console)), ["GET"]),
        ("/api/jobs", guard(partial(jobs_json, console), api=True), ["GET"]),
        ("/api/jobs/{job_id}", guard(partial(job_json, console), api=True), ["GET"]),
    ]
    return [
        Route(PREFIX + path, endpoint, methods=methods, include_in_schema=False)
        for path, endpoint, methods in table
    ]
