"""``revoker check``, ``stats`` and ``health``: a token, the counters, the deployment."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

import click

from revoker import exceptions as exc
from revoker.cli._common import (
    EPILOG,
    EXIT_DATA_LOST,
    EXIT_REVOKED_OR_INVALID,
    EXIT_UNAVAILABLE,
    cli,
    cli_settings,
    cli_store,
    emit_json,
    json_option,
    when,
)

if TYPE_CHECKING:
    from revoker.rules import RevocationStatus


__all__ = [
    "check",
    "health",
    "stats",
]


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


@cli.command("check", epilog=EPILOG)
@click.argument("token")
@json_option
def check(token: str, as_json: bool) -> None:
    """Say whether TOKEN is valid, revoked (by which rule, when, why) or invalid (why).

    Exit 0 when the token is valid and not revoked, 1 when it is revoked or invalid.
    """
    from revoker.tokens import get_verifier

    try:
        data = get_verifier(cli_settings()).decode_any(token)
    except exc.TokenError as e:
        if as_json:
            emit_json({"valid": False, "error": type(e).__name__, "description": str(e)})
        else:
            click.echo(f"invalid: {e} ({type(e).__name__})")
        raise click.exceptions.Exit(EXIT_REVOKED_OR_INVALID) from None
    status = cli_store().is_revoked(data)
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
        emit_json({"valid": not status.revoked, "claims": claims, **_status_dict(status)})
    else:
        if status.revoked:
            assert status.rule is not None
            click.echo(f"revoked: {_RULE_TEXT[status.rule]} (rule: {status.rule})")
            click.echo(f"  revoked at: {when(status.revoked_at)}")
            click.echo(f"  reason:     {status.reason or '-'}")
        else:
            click.echo("valid: signature, claims and expiry check out; not revoked")
        click.echo(
            f"  {data.typ} token of {data.sub}"
            + (f" in tenant {data.tenant}" if data.tenant else "")
            + (f", session {data.family}" if data.family else "")
            + f", jti {data.jti}, issued {when(data.iat)}, expires {when(data.exp)}"
        )
    if status.revoked:
        raise click.exceptions.Exit(EXIT_REVOKED_OR_INVALID)


@cli.command("stats", epilog=EPILOG)
@json_option
def stats(as_json: bool) -> None:
    """Revocation counters and the audit stream's length."""
    result = cli_store().get_stats()
    if as_json:
        emit_json(result)
        return
    for name, value in result.items():
        click.echo(f"{name + ':':<28}{value}")


@cli.command("health", epilog=EPILOG)
@json_option
def health(as_json: bool) -> None:
    """Whether Redis and the Celery broker answer, and REVOKER_DURABILITY is honoured (exit 3
    if not), whether the revocation data was lost (exit 8 until `revoker recover`), and the
    server settings that can undo a revocation (eviction, persistence, replicas: reported, not
    failed)."""
    from revoker.health import check as check_health

    settings = cli_settings()
    report = check_health(cli_store(), settings)
    broker = {name: report.broker[name] for name in ("healthy", "latency_ms", "error")}
    broker["transport"] = settings.effective_broker_url.partition("://")[0]
    durability = report.durability
    if as_json:
        emit_json(
            {
                "healthy": report.healthy,
                "redis": report.redis,
                "broker": broker,
                "durability": durability,
                "integrity": report.integrity,
                "server": report.server,
                "mirror": report.mirror,
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
        mirror = report.mirror
        click.echo(
            f"{'checks:':<8}{mirror.get('mode')}"
            + (
                f" (max lag {mirror.get('max_lag_seconds')} s, max staleness "
                f"{mirror.get('max_staleness_seconds')} s; "
                f"{len(mirror.get('mirrors', []))} mirror(s) in this process)"
                if mirror.get("mode") == "mirror"
                else ""
            )
        )
    if not report.reachable:
        raise click.exceptions.Exit(EXIT_UNAVAILABLE)
    if not report.integrity["healthy"]:
        raise click.exceptions.Exit(EXIT_DATA_LOST)
