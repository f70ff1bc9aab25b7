"""``revoker``: the operators' command line.

Enqueue bulk revocations and follow them, revoke one token or one session, inspect a token, and
check that Redis and the broker answer. Configuration comes from the ``REVOKER_*`` environment
(see :mod:`revoker.settings`); nothing here has settings of its own.

Scripts can rely on the exit codes listed in :data:`EXIT_CODES` (and in ``revoker --help``).
"""

from __future__ import annotations

import contextlib
import getpass
import json
import math
import socket
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final, NoReturn

import click

from revoker import exceptions as exc
from revoker.job_record import JOB_STATUSES
from revoker.settings import RevokerSettings, get_settings

if TYPE_CHECKING:
    from revoker.bulk import Scope
    from revoker.jobs import JobRecord
    from revoker.rules import RevocationStatus
    from revoker.store import SyncRedisTokenRevocationStore
    from revoker.tokens import TokenData

__all__ = ["EXIT_CODES", "cli", "main"]

EXIT_OK: Final = 0
EXIT_REVOKED_OR_INVALID: Final = 1
EXIT_USAGE: Final = 2
EXIT_UNAVAILABLE: Final = 3
EXIT_NOT_FOUND: Final = 4
EXIT_JOB_FAILED: Final = 5
EXIT_DUPLICATE: Final = 6
EXIT_TIMEOUT: Final = 7
EXIT_DATA_LOST: Final = 8

#: What each exit code means; the ``--help`` epilogue is built from this table.
EXIT_CODES: Final = {
    EXIT_OK: "success (check: the token is valid and not revoked)",
    EXIT_REVOKED_OR_INVALID: "check: the token is revoked or invalid",
    EXIT_USAGE: "usage error: bad option, id, time, token or configuration",
    EXIT_UNAVAILABLE: "Redis or the broker is unavailable",
    EXIT_NOT_FOUND: "not found (unknown job)",
    EXIT_JOB_FAILED: "the job failed (--wait, jobs watch)",
    EXIT_DUPLICATE: "an identical job is already running (its id is printed)",
    EXIT_TIMEOUT: "--timeout passed before the job finished (it keeps running)",
    EXIT_DATA_LOST: "health: the revocation data was lost or rolled back (until `revoker recover`)",
}

_EPILOG = "\b\nExit codes:\n" + "\n".join(
    f"  {code}  {meaning}" for code, meaning in EXIT_CODES.items()
)

#: Token errors raised only after PyJWT verified the signature: the token is genuine, merely
#: expired, not yet valid, of the other type or with unexpected claims. Such a token may still be
#: revoked by its jti; one whose signature does not verify may not.
_SIGNED_BUT_UNACCEPTABLE: Final = (
    exc.TokenExpired,
    exc.TokenNotYetValid,
    exc.MissingClaim,
    exc.InvalidClaim,
    exc.WrongTokenType,
)


def _fail(message: str, exit_code: int) -> NoReturn:
    """An expected failure: one line on stderr, then a documented exit code."""
    click.echo(f"Error: {message}", err=True)
    raise click.exceptions.Exit(exit_code)


def _unavailable_errors() -> tuple[type[BaseException], ...]:
    """Errors meaning "Redis or the broker did not answer", from whichever client raised them."""
    import redis.exceptions

    errors: list[type[BaseException]] = [
        exc.StoreUnavailable,
        redis.exceptions.ConnectionError,
        redis.exceptions.TimeoutError,
        ConnectionError,
        TimeoutError,
    ]
    with contextlib.suppress(ImportError):
        import kombu.exceptions

        errors.append(kombu.exceptions.OperationalError)
    return tuple(errors)


class _RevokerGroup(click.Group):
    """Turns revoker's expected errors into a message and an exit code, never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except exc.ConfigurationError as e:
            _fail(str(e), EXIT_USAGE)
        except exc.InvalidIdentifier as e:
            _fail(str(e), EXIT_USAGE)
        except exc.JobNotFound as e:
            _fail(str(e), EXIT_NOT_FOUND)
        except exc.DuplicateJob as e:
            click.echo(e.job_id)
            _fail(str(e), EXIT_DUPLICATE)
        except _unavailable_errors() as e:
            _fail(_describe_unavailable(e), EXIT_UNAVAILABLE)


def _describe_unavailable(error: BaseException) -> str:
    text = str(error)
    if isinstance(error, exc.StoreUnavailable):
        return text
    return f"Redis or the broker is unavailable: {type(error).__name__}: {text}"


# --- settings, stores, output -------------------------------------------------------------------


def _settings() -> RevokerSettings:
    return get_settings()


def _store() -> SyncRedisTokenRevocationStore:
    from revoker.store import get_sync_revocation_store

    return get_sync_revocation_store(_settings())


def default_actor() -> str:
    """Who is acting, for the audit: ``$USER@hostname``."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        # getuser() falls back to the password database, which a container may not have.
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def _emit_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, sort_keys=True, default=str))


def _when(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds")


class UnixTime(click.ParamType[float]):
    """A point in time: unix seconds, or ISO 8601 (a time without an offset is taken as UTC)."""

    name = "TIME"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            seconds = float(value)
        else:
            text = str(value).strip()
            try:
                seconds = float(text)
            except ValueError:
                try:
                    parsed = datetime.fromisoformat(text)
                except ValueError:
                    self.fail(
                        f"{value!r} is neither unix seconds nor an ISO 8601 time "
                        "(e.g. 2026-01-31T12:00:00Z)",
                        param,
                        ctx,
                    )
                if parsed.tzinfo is None:
                    parsed = parsed.replace(tzinfo=UTC)
                seconds = parsed.timestamp()
        if not math.isfinite(seconds) or seconds < 0:
            self.fail(f"{value!r} is not a time after 1970-01-01", param, ctx)
        return seconds


UNIX_TIME: Final = UnixTime()


class KeyId(click.ParamType[str]):
    """An id revoker can store, checked by the rule of every key so that a refusal names the
    argument (BulkRevocation applies the same rule; pydantic would word a long id its own way)."""

    name = "text"  # the metavar stays TEXT

    def __init__(self, what: str) -> None:
        self.what = what

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        from revoker.keys import escape_id

        try:
            escape_id(value, self.what)
        except exc.InvalidIdentifier as e:
            self.fail(str(e), param, ctx)
        return str(value)


_json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")


def _actor_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--actor",
        default=default_actor,
        show_default="$USER@hostname",
        help="Who is revoking, for the audit trail.",
    )(f)


def _selector_options(f: Callable[..., Any]) -> Callable[..., Any]:
    options: list[Callable[[Callable[..., Any]], Callable[..., Any]]] = [
        click.option("--reason", required=True, help="Why, for the audit trail."),
        _actor_option,
        click.option(
            "--client",
            "client_id",
            type=KeyId("client id"),
            help="Only sessions of this client app.",
        ),
        click.option(
            "--issued-after",
            type=UNIX_TIME,
            help="Only sessions started at or after TIME (ISO 8601 or unix seconds).",
        ),
        click.option(
            "--issued-before",
            type=UNIX_TIME,
            help="Only sessions started before TIME (ISO 8601 or unix seconds).",
        ),
        click.option(
            "--dry-run", is_flag=True, help="Count what would be revoked; change nothing."
        ),
        click.option("--wait", is_flag=True, help="Follow the job with a progress bar."),
        click.option(
            "--timeout",
            type=click.FloatRange(min=0, min_open=True),
            help="With --wait: give up waiting after this many seconds (exit 7).",
        ),
        _json_option,
    ]
    for option in reversed(options):
        f = option(f)
    return f


# --- the command tree -------------------------------------------------------------------------


@click.group(
    cls=_RevokerGroup,
    epilog=_EPILOG,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(package_name="revoker", prog_name="revoker")
def cli() -> None:
    """Revoke JWTs across services: tokens, sessions, users, tenants.

    Configuration comes from REVOKER_* environment variables (REVOKER_REDIS_URL,
    REVOKER_BROKER_URL, REVOKER_KEY_PREFIX, REVOKER_JWT_SECRET, ...).
    """


@cli.group(epilog=_EPILOG)
def revoke() -> None:
    """Revoke a tenant, a user, one token or one session."""


#: The option that sets a BulkRevocation field, for messages (ids are checked by KeyId first).
_OPTION_OF: Final = {
    "reason": "--reason",
    "actor": "--actor",
    "client_id": "--client",
    "issued_after": "--issued-after",
    "issued_before": "--issued-before",
}


@contextlib.contextmanager
def _rejected_as_usage() -> Iterator[None]:
    """A request BulkRevocation refuses (a ValueError) is a usage error."""
    from pydantic import ValidationError

    try:
        yield
    except ValidationError as e:
        problems = [
            (f"{_OPTION_OF.get(str(error['loc'][0]), error['loc'][0])}: " if error["loc"] else "")
            + error["msg"].removeprefix("Value error, ")
            for error in e.errors(include_url=False)
        ]
        _fail(f"rejected: {'; '.join(problems)}", EXIT_USAGE)


def _enqueued(job_id: str, *, what: str, wait: bool, timeout: float | None, as_json: bool) -> None:
    from revoker.jobs import get_job

    if not as_json:
        # First, so a script has the id even if the wait is interrupted or times out.
        click.echo(job_id)
    record = _follow(job_id, timeout=timeout) if wait else get_job(job_id)
    if as_json:
        _emit_json(record.as_dict())
    else:
        if not wait:
            click.echo(f"enqueued: {what} ({record.status})", err=True)
            if record.watermark_at is not None:
                click.echo(
                    f"tokens issued up to {_when(record.watermark_at)} are rejected from now on",
                    err=True,
                )
    _exit_for(record)


def _revoke_scope(
    scope: Scope, *, wait: bool, timeout: float | None, as_json: bool, **fields: Any
) -> None:
    """``revoke tenant`` and ``revoke user``: the options become one BulkRevocation."""
    from revoker.bulk import BulkRevocation
    from revoker.jobs import enqueue

    with _rejected_as_usage():
        request = BulkRevocation(scope=scope, **fields)
    job_id = enqueue(request)
    what = f"{'count' if request.dry_run else 'revoke'} sessions of {scope} {request.target}"
    if scope == "user":
        what += f" in {request.tenant_id}"
    _enqueued(job_id, what=what, wait=wait, timeout=timeout, as_json=as_json)


@revoke.command("tenant", epilog=_EPILOG)
@click.argument("tenant_id", type=KeyId("tenant id"))
@_selector_options
def revoke_tenant(tenant_id: str, **options: Any) -> None:
    """Revoke every session of tenant TENANT_ID (or the slice selected by the filters).

    Without filters the tenant's watermark is set before the command returns: every token of the
    tenant issued until now is rejected at once, and a job revokes the sessions one by one.
    """
    _revoke_scope("tenant", tenant_id=tenant_id, **options)


@revoke.command("user", epilog=_EPILOG)
@click.argument("user_id", type=KeyId("user id"))
@click.option(
    "--tenant", "tenant_id", required=True, type=KeyId("tenant id"), help="The user's tenant."
)
@_selector_options
def revoke_user(user_id: str, tenant_id: str, **options: Any) -> None:
    """Revoke every session of user USER_ID in one tenant (or the slice selected by the filters)."""
    _revoke_scope("user", user_id=user_id, tenant_id=tenant_id, **options)


def _looks_like_jwt(value: str) -> bool:
    return value.count(".") == 2 and all(value.split("."))


def _verified_claims(token: str) -> tuple[TokenData | None, dict[str, Any]]:
    """The token's claims if its signature verifies, even when it is no longer acceptable.

    Returns the full TokenData when the token is acceptable (as an access or a refresh token),
    else None and the raw claims of a genuine but expired/odd token. Raises the TokenError of a
    token whose signature (or header, or key id) does not verify.
    """
    import jwt

    from revoker.tokens import get_verifier

    try:
        data = get_verifier(_settings()).decode_any(token)
    except _SIGNED_BUT_UNACCEPTABLE:
        # The verifier checks the signature before any claim, so the claims are genuine.
        claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
        return None, claims
    return data, data.model_dump()


def _claim(claims: dict[str, Any], *names: str) -> Any:
    for name in names:
        if claims.get(name) is not None:
            return claims[name]
    return None


@revoke.command("token", epilog=_EPILOG)
@click.argument("token_or_jti")
@click.option("--reason", help="Why, for the audit trail.")
@_actor_option
@click.option("--jti", "bare_jti", is_flag=True, help="Treat the argument as a jti, never a JWT.")
@_json_option
def revoke_token(
    token_or_jti: str, reason: str | None, actor: str, bare_jti: bool, as_json: bool
) -> None:
    """Revoke one token, given as a JWT or as its jti.

    A JWT must carry a valid signature (it may have expired); its jti and expiry are read from it.
    """
    expires_at: float | None = None
    if not bare_jti and _looks_like_jwt(token_or_jti):
        try:
            _, claims = _verified_claims(token_or_jti)
        except exc.TokenError as e:
            _fail(f"refusing to revoke: {e}", EXIT_USAGE)
        jti = claims.get("jti")
        if not isinstance(jti, str) or not jti:
            _fail("the token carries no jti, so it cannot be revoked by jti", EXIT_USAGE)
        exp = claims.get("exp")
        if isinstance(exp, int | float) and not isinstance(exp, bool):
            expires_at = float(exp)
    else:
        jti = token_or_jti
    newly = _store().revoke_token(jti, expires_at=expires_at, reason=reason, actor=actor)
    if as_json:
        _emit_json({"jti": jti, "revoked": True, "newly_revoked": newly, "expires_at": expires_at})
        return
    click.echo(f"revoked token {jti}" + ("" if newly else " (it was already revoked)"))


@revoke.command("family", epilog=_EPILOG)
@click.argument("family_or_token")
@click.option("--tenant", "tenant_id", help="The session's tenant (read from a token if given).")
@click.option("--reason", help="Why, for the audit trail.")
@_actor_option
@_json_option
def revoke_family(
    family_or_token: str,
    tenant_id: str | None,
    reason: str | None,
    actor: str,
    as_json: bool,
) -> None:
    """Revoke one session (refresh-token family): its refresh and access tokens stop working.

    FAMILY_OR_TOKEN is a family id, or a token of the session (refresh or access; its signature
    must verify), from which the family and tenant are read.
    """
    family_id = family_or_token
    if _looks_like_jwt(family_or_token):
        try:
            _, claims = _verified_claims(family_or_token)
        except exc.TokenError as e:
            _fail(f"refusing to revoke: {e}", EXIT_USAGE)
        found = _claim(claims, "family", "fam")
        if not isinstance(found, str):
            _fail("the token carries no family (fam claim): it belongs to no session", EXIT_USAGE)
        family_id = found
        token_tenant = _claim(claims, "tenant")
        if tenant_id is not None and token_tenant != tenant_id:
            raise click.BadParameter(
                f"the token belongs to tenant {token_tenant!r}", param_hint="--tenant"
            )
        tenant_id = token_tenant
    store = _store()
    session = store.get_session(family_id, tenant_id=tenant_id)
    newly = store.revoke_family(family_id, tenant_id=tenant_id, reason=reason, actor=actor)
    if as_json:
        _emit_json(
            {
                "family_id": family_id,
                "tenant_id": tenant_id,
                "revoked": True,
                "newly_revoked": newly,
                "session_known": session is not None,
            }
        )
        return
    click.echo(f"revoked session {family_id}" + ("" if newly else " (it was already revoked)"))
    if session is None:
        where = f"tenant {tenant_id}" if tenant_id else "no tenant"
        click.echo(
            f"warning: no session record for {family_id} under {where}; check --tenant "
            "(the revocation is recorded anyway)",
            err=True,
        )


# --- jobs -------------------------------------------------------------------------------------


@cli.group(epilog=_EPILOG)
def jobs() -> None:
    """List, show and follow bulk revocation jobs."""


def _job_line(record: JobRecord) -> str:
    target = record.tenant_id or "-"
    if record.user_id:
        target += f"/{record.user_id}"
    progress = f"{record.chunks_done}/{record.chunks_total}"
    dry = " (dry run)" if record.dry_run else ""
    return (
        f"{record.id}  {record.status:<8} {record.kind:<12} {target:<24} chunks {progress:<9} "
        f"families {record.families_revoked}/{record.families_matched}  "
        f"{_when(record.created_at)}{dry}"
    )


def _job_details(record: JobRecord) -> list[str]:
    data = record.as_dict()
    lines = []
    for name, value in data.items():
        if name.endswith("_at") or name in {"issued_after", "issued_before"}:
            shown = _when(value) if isinstance(value, int | float) else "-"
            if isinstance(value, int | float):
                shown += f"  ({value})"
        else:
            shown = "-" if value is None or value == "" else str(value)
        lines.append(f"{name + ':':<18}{shown}")
    return lines


@jobs.command("list", epilog=_EPILOG)
@click.option("--status", type=click.Choice(JOB_STATUSES), help="Only jobs in this state.")
@click.option(
    "--limit", type=click.IntRange(1, 1000), default=50, show_default=True, help="At most N."
)
@_json_option
def jobs_list(status: str | None, limit: int, as_json: bool) -> None:
    """The most recent jobs, newest first."""
    from revoker.jobs import list_jobs

    records = list_jobs(limit=limit, status=status)
    if as_json:
        _emit_json([record.as_dict() for record in records])
        return
    if not records:
        click.echo("no jobs", err=True)
    for record in records:
        click.echo(_job_line(record))


@jobs.command("show", epilog=_EPILOG)
@click.argument("job_id")
@_json_option
def jobs_show(job_id: str, as_json: bool) -> None:
    """Everything recorded about job JOB_ID."""
    from revoker.jobs import get_job

    record = get_job(job_id)
    if as_json:
        _emit_json(record.as_dict())
        return
    for line in _job_details(record):
        click.echo(line)


@jobs.command("watch", epilog=_EPILOG)
@click.argument("job_id")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    help="Give up waiting after this many seconds (exit 7).",
)
@_json_option
def jobs_watch(job_id: str, timeout: float | None, as_json: bool) -> None:
    """Follow job JOB_ID with a live progress bar until it is done or failed."""
    record = _follow(job_id, timeout=timeout)
    if as_json:
        _emit_json(record.as_dict())
    _exit_for(record)


class _Progress:
    """A progress bar on stderr fed with job records, shown once the chunk count is known."""

    def __init__(self, job_id: str, stack: contextlib.ExitStack) -> None:
        self.job_id = job_id
        self.stack = stack
        self.bar: Any = None
        self.shown = 0
        self.status = ""

    def __call__(self, record: JobRecord) -> None:
        if record.status != self.status:
            self.status = record.status
            if record.status == "pending":
                click.echo(f"job {self.job_id}: pending (waiting for a worker)", err=True)
        if self.bar is None and record.chunks_total > 0:
            self.bar = self.stack.enter_context(
                click.progressbar(
                    length=record.chunks_total,
                    label=f"job {self.job_id} ({record.kind})",
                    file=sys.stderr,
                    show_pos=True,
                    show_eta=True,
                    item_show_func=lambda _: None,
                )
            )
        if self.bar is not None:
            done = min(record.chunks_done, record.chunks_total)
            if done > self.shown:
                self.bar.update(done - self.shown)
                self.shown = done


def _follow(job_id: str, *, timeout: float | None) -> JobRecord:
    from revoker.jobs import get_job, wait_for_job

    started = time.monotonic()
    record = get_job(job_id)
    if not record.finished:
        with contextlib.ExitStack() as stack:
            progress = _Progress(job_id, stack)
            progress(record)
            try:
                record = wait_for_job(job_id, timeout=timeout, on_progress=progress)
            except TimeoutError:
                _fail(
                    f"job {job_id} still {get_job(job_id).status} after {timeout}s; "
                    f"follow it with: revoker jobs watch {job_id}",
                    EXIT_TIMEOUT,
                )
            progress(record)
    elapsed = time.monotonic() - started
    verb = "would revoke" if record.dry_run else "revoked"
    click.echo(
        f"job {job_id} {record.status}: {verb} {record.families_revoked} of "
        f"{record.families_matched} matching sessions "
        f"({record.chunks_done}/{record.chunks_total} chunks, followed {elapsed:.1f}s)",
        err=True,
    )
    return record


def _exit_for(record: JobRecord) -> None:
    if record.status == "failed":
        _fail(f"job {record.id} failed: {record.error or 'no error recorded'}", EXIT_JOB_FAILED)


# --- inspection -------------------------------------------------------------------------------


def _status_dict(status: RevocationStatus) -> dict[str, Any]:
    return {
        "revoked": status.revoked,
        "rule": status.rule,
        "revoked_at": status.revoked_at,
        "reason": status.reason,
    }


_RULE_TEXT: Final = {
    "jti": "this token was revoked",
    "family": "its session (refresh family) was revoked",
    "user": "every token of its user issued before a cut-off was revoked",
    "tenant": "every token of its tenant issued before a cut-off was revoked",
    "global": "every token issued before the revocation data was found lost was revoked",
}


@cli.command("check", epilog=_EPILOG)
@click.argument("token")
@_json_option
def check(token: str, as_json: bool) -> None:
    """Say whether TOKEN is valid, revoked (by which rule, when, why) or invalid (why).

    Exit 0 when the token is valid and not revoked, 1 when it is revoked or invalid.
    """
    from revoker.tokens import get_verifier

    try:
        data = get_verifier(_settings()).decode_any(token)
    except exc.TokenError as e:
        if as_json:
            _emit_json({"valid": False, "error": type(e).__name__, "description": str(e)})
        else:
            click.echo(f"invalid: {e} ({type(e).__name__})")
        raise click.exceptions.Exit(EXIT_REVOKED_OR_INVALID) from None
    status = _store().is_revoked(data)
    claims = {
        "typ": data.typ,
        "sub": data.sub,
        "tenant": data.tenant,
        "family": data.family,
        "client": data.client,
        "jti": data.jti,
        "iat": data.iat,
        "exp": data.exp,
    }
    if as_json:
        _emit_json({"valid": not status.revoked, "claims": claims, **_status_dict(status)})
    else:
        if status.revoked:
            assert status.rule is not None
            click.echo(f"revoked: {_RULE_TEXT[status.rule]} (rule: {status.rule})")
            click.echo(f"  revoked at: {_when(status.revoked_at)}")
            click.echo(f"  reason:     {status.reason or '-'}")
        else:
            click.echo("valid: signature, claims and expiry check out; not revoked")
        click.echo(
            f"  {data.typ} token of {data.sub}"
            + (f" in tenant {data.tenant}" if data.tenant else "")
            + (f", session {data.family}" if data.family else "")
            + f", jti {data.jti}, issued {_when(data.iat)}, expires {_when(data.exp)}"
        )
    if status.revoked:
        raise click.exceptions.Exit(EXIT_REVOKED_OR_INVALID)


@cli.command("stats", epilog=_EPILOG)
@_json_option
def stats(as_json: bool) -> None:
    """Revocation counters and the audit stream's length."""
    result = _store().get_stats()
    if as_json:
        _emit_json(result)
        return
    for name, value in result.items():
        click.echo(f"{name + ':':<28}{value}")


@cli.command("health", epilog=_EPILOG)
@_json_option
def health(as_json: bool) -> None:
    """Whether Redis and the Celery broker answer, and REVOKER_DURABILITY is honoured (exit 3
    if not), whether the revocation data was lost (exit 8 until `revoker recover`), and the
    server settings that can undo a revocation (eviction, persistence, replicas: reported, not
    failed)."""
    from revoker.health import check as check_health

    settings = _settings()
    report = check_health(_store(), settings)
    broker = {name: report.broker[name] for name in ("healthy", "latency_ms", "error")}
    broker["transport"] = settings.effective_broker_url.partition("://")[0]
    durability = report.durability
    if as_json:
        _emit_json(
            {
                "healthy": report.healthy,
                "redis": report.redis,
                "broker": broker,
                "durability": durability,
                "integrity": report.integrity,
                "server": report.server,
            }
        )
    else:
        for name, result in (("redis", report.redis), ("broker", broker)):
            state = "ok" if result["healthy"] else "UNAVAILABLE"
            detail = f"{result['latency_ms']} ms" if result["healthy"] else result["error"]
            click.echo(f"{name + ':':<8}{state}  ({detail})")
        if durability is not None:
            state = "ok" if durability["honoured"] else "NOT HONOURED"
            click.echo(f"{'durability:':<12}{durability['mode']} {state}  ({durability['detail']})")
        if report.redis["healthy"]:
            data = report.integrity
            if data["healthy"]:
                click.echo(
                    f"{'data:':<8}ok  (epoch {data.get('epoch') or 'none yet'}, "
                    f"sequence {data.get('seq', 0)}, {data.get('state')})"
                )
            else:
                click.echo(f"{'data:':<8}LOST  ({data.get('problem') or data.get('error')})")
            server = report.server
            click.echo(
                f"{'server:':<8}{'ok' if server.get('safe') else 'UNSAFE'}  (maxmemory-policy "
                f"{server.get('maxmemory_policy') or 'unknown'}, appendonly "
                f"{server.get('appendonly') or 'unknown'}, appendfsync "
                f"{server.get('appendfsync') or 'unknown'}, save "
                f"{server.get('save')!r}, replicas {server.get('connected_replicas')})"
            )
            for problem in server.get("unsafe", []):
                click.echo(f"  unsafe: {problem}")
    if not report.reachable:
        raise click.exceptions.Exit(EXIT_UNAVAILABLE)
    if not report.integrity["healthy"]:
        raise click.exceptions.Exit(EXIT_DATA_LOST)


@cli.command("init", epilog=_EPILOG)
@_json_option
def init(as_json: bool) -> None:
    """Give the revocation data its identity (an epoch) before the first revocation.

    Run once per deployment, then set REVOKER_REQUIRE_INIT=true: a missing epoch is then always
    a loss, even to a process that has just started. Running it again changes nothing.
    """
    created, epoch = _store().init()
    if as_json:
        _emit_json({"epoch": epoch, "created": created})
        return
    click.echo(f"epoch {epoch}" + (" created" if created else " (already initialized)"))


@cli.command("recover", epilog=_EPILOG)
@click.option(
    "--accept",
    "mode",
    flag_value="accept",
    help="Adopt the data as it is now (after restoring what could be) as the new epoch.",
)
@click.option(
    "--cutoff",
    "mode",
    flag_value="cutoff",
    help="Write a global cut-off now (every token issued until now is revoked), then adopt.",
)
@_actor_option
@_json_option
def recover(mode: str | None, actor: str, as_json: bool) -> None:
    """End a recorded loss of the revocation data: checks stop failing closed, health is ok.

    After a loss (REVOKER_ON_DATA_LOSS), restore what you can (revocations from the audit of
    another system, a backup), then run `revoker recover --accept`; or `--cutoff` to revoke every
    token issued until now instead. Either gives the data a new epoch.
    """
    if mode is None:
        raise click.UsageError("choose --accept or --cutoff")
    observed = _store().recover(cutoff=mode == "cutoff", actor=actor)
    if as_json:
        _emit_json({"epoch": observed.epoch, "seq": observed.seq, "mode": mode})
        return
    done = "global cut-off written; " if mode == "cutoff" else ""
    click.echo(f"recovered: {done}new epoch {observed.epoch}")


# --- services ---------------------------------------------------------------------------------


@cli.command("api", epilog=_EPILOG)
@click.option("--host", help="Interface to listen on (default: the API's, loopback).")
@click.option("--port", type=click.IntRange(1, 65535), help="Port (default: the API's).")
def api(host: str | None, port: int | None) -> None:
    """Serve the admin HTTP API (revoke, introspect, jobs, health, metrics)."""
    from revoker.api import serve

    # The defaults live in serve() alone; pass only what the operator chose.
    chosen: dict[str, Any] = {"host": host, "port": port}
    serve(**{name: value for name, value in chosen.items() if value is not None})


@cli.command("demo", epilog=_EPILOG)
@click.option("--keep-running", is_flag=True, help="Leave the demo services up afterwards.")
def demo(keep_running: bool) -> None:
    """Start a throwaway Redis, a worker and a service, and revoke a tenant before your eyes."""
    from revoker.demo import main as demo_main

    code = demo_main(keep_running=keep_running)
    if code:
        raise click.exceptions.Exit(code)


def main(argv: list[str] | None = None) -> None:
    """The ``revoker`` console script."""
    cli.main(args=argv, prog_name="revoker")


if __name__ == "__main__":
    main()
