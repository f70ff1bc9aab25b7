"""``revoker revoke``: a tenant, a user (bulk jobs), one token or one session."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Final

import click

from revoker import exceptions as exc
from revoker.cli._common import (
    EPILOG,
    EXIT_USAGE,
    SIGNED_BUT_UNACCEPTABLE,
    UNIX_TIME,
    KeyId,
    actor_option,
    cli,
    cli_settings,
    cli_store,
    emit_json,
    fail,
    json_option,
    when,
)
from revoker.cli.jobs import exit_for, follow

if TYPE_CHECKING:
    from revoker.bulk import Scope
    from revoker.tokens import TokenData


__all__ = [
    "claim",
    "looks_like_jwt",
    "revoke",
    "revoke_family",
    "revoke_tenant",
    "revoke_token",
    "revoke_user",
    "verified_claims",
]


def _selector_options(f: Callable[..., Any]) -> Callable[..., Any]:
    options: list[Callable[[Callable[..., Any]], Callable[..., Any]]] = [
        click.option("--reason", required=True, help="Why, for the audit trail."),
        actor_option,
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
        json_option,
    ]
    for option in reversed(options):
        f = option(f)
    return f


@cli.group(epilog=EPILOG)
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
        fail(f"rejected: {'; '.join(problems)}", EXIT_USAGE)


def _enqueued(job_id: str, *, what: str, wait: bool, timeout: float | None, as_json: bool) -> None:
    from revoker.jobs import get_job

    if not as_json:
        # First, so a script has the id even if the wait is interrupted or times out.
        click.echo(job_id)
    record = follow(job_id, timeout=timeout) if wait else get_job(job_id)
    if as_json:
        emit_json(record.as_dict())
    else:
        if not wait:
            click.echo(f"enqueued: {what} ({record.status})", err=True)
            if record.watermark_at is not None:
                click.echo(
                    f"tokens issued up to {when(record.watermark_at)} are rejected from now on",
                    err=True,
                )
    exit_for(record)


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


@revoke.command("tenant", epilog=EPILOG)
@click.argument("tenant_id", type=KeyId("tenant id"))
@_selector_options
def revoke_tenant(tenant_id: str, **options: Any) -> None:
    """Revoke every session of tenant TENANT_ID (or the slice selected by the filters).

    Without filters the tenant's watermark is set before the command returns: every token of the
    tenant issued until now is rejected at once, and a job revokes the sessions one by one.
    """
    _revoke_scope("tenant", tenant_id=tenant_id, **options)


@revoke.command("user", epilog=EPILOG)
@click.argument("user_id", type=KeyId("user id"))
@click.option(
    "--tenant", "tenant_id", required=True, type=KeyId("tenant id"), help="The user's tenant."
)
@_selector_options
def revoke_user(user_id: str, tenant_id: str, **options: Any) -> None:
    """Revoke every session of user USER_ID in one tenant (or the slice selected by the filters)."""
    _revoke_scope("user", user_id=user_id, tenant_id=tenant_id, **options)


def looks_like_jwt(value: str) -> bool:
    return value.count(".") == 2 and all(value.split("."))


def verified_claims(token: str) -> tuple[TokenData | None, dict[str, Any]]:
    """The token's claims if its signature verifies, even when it is no longer acceptable.

    Returns the full TokenData when the token is acceptable (as an access or a refresh token),
    else None and the raw claims of a genuine but expired/odd token. Raises the TokenError of a
    token whose signature (or header, or key id) does not verify.
    """
    import jwt

    from revoker.tokens import get_verifier

    try:
        data = get_verifier(cli_settings()).decode_any(token)
    except SIGNED_BUT_UNACCEPTABLE:
        # The verifier checks the signature before any claim, so the claims are genuine.
        claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
        return None, claims
    return data, data.model_dump()


def claim(claims: dict[str, Any], *names: str) -> Any:
    for name in names:
        if claims.get(name) is not None:
            return claims[name]
    return None


@revoke.command("token", epilog=EPILOG)
@click.argument("token_or_jti")
@click.option("--reason", help="Why, for the audit trail.")
@actor_option
@click.option("--jti", "bare_jti", is_flag=True, help="Treat the argument as a jti, never a JWT.")
@json_option
def revoke_token(
    token_or_jti: str, reason: str | None, actor: str, bare_jti: bool, as_json: bool
) -> None:
    """Revoke one token, given as a JWT or as its jti.

    A JWT must carry a valid signature (it may have expired); its jti and expiry are read from it.
    """
    expires_at: float | None = None
    if not bare_jti and looks_like_jwt(token_or_jti):
        try:
            _, claims = verified_claims(token_or_jti)
        except exc.TokenError as e:
            fail(f"refusing to revoke: {e}", EXIT_USAGE)
        jti = claims.get("jti")
        if not isinstance(jti, str) or not jti:
            fail("the token carries no jti, so it cannot be revoked by jti", EXIT_USAGE)
        exp = claims.get("exp")
        if isinstance(exp, int | float) and not isinstance(exp, bool):
            expires_at = float(exp)
    else:
        jti = token_or_jti
    newly = cli_store().revoke_token(jti, expires_at=expires_at, reason=reason, actor=actor)
    if as_json:
        emit_json({"jti": jti, "revoked": True, "newly_revoked": newly, "expires_at": expires_at})
        return
    click.echo(f"revoked token {jti}" + ("" if newly else " (it was already revoked)"))


@revoke.command("family", epilog=EPILOG)
@click.argument("family_or_token")
@click.option("--tenant", "tenant_id", help="The session's tenant (read from a token if given).")
@click.option("--reason", help="Why, for the audit trail.")
@actor_option
@json_option
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
    if looks_like_jwt(family_or_token):
        try:
            _, claims = verified_claims(family_or_token)
        except exc.TokenError as e:
            fail(f"refusing to revoke: {e}", EXIT_USAGE)
        found = claim(claims, "family", "fam")
        if not isinstance(found, str):
            fail("the token carries no family (fam claim): it belongs to no session", EXIT_USAGE)
        family_id = found
        token_tenant = claim(claims, "tenant")
        if tenant_id is not None and token_tenant != tenant_id:
            raise click.BadParameter(
                f"the token belongs to tenant {token_tenant!r}", param_hint="--tenant"
            )
        tenant_id = token_tenant
    store = cli_store()
    session = store.get_session(family_id, tenant_id=tenant_id)
    newly = store.revoke_family(family_id, tenant_id=tenant_id, reason=reason, actor=actor)
    if as_json:
        emit_json(
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
