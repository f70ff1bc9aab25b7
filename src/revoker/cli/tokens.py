"""``revoker token mint``: an access token for an operator or a script (e.g. a bearer token with
``revoker:admin`` for the admin API), signed with the configured key.

Signing needs what issuing services have: ``REVOKER_JWT_SECRET`` (HS*) or
``REVOKER_JWT_PRIVATE_KEY_FILE``. Long-lived automation should rather be a registered client
(``revoker clients add``): its secret can be rotated and removed, a token only revoked.
"""

from __future__ import annotations

import re
import time
from typing import Any, Final

import click

from revoker.cli._common import EPILOG, KeyId, cli, cli_settings, emit_json, json_option

__all__ = ["Duration", "mint", "token"]

_DURATION: Final = re.compile(r"(\d+)([smhd]?)")
_UNIT_SECONDS: Final = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


class Duration(click.ParamType[int]):
    """Seconds, or a number with a unit: ``900``, ``15m``, ``2h``, ``1d``."""

    name = "DURATION"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int) and not isinstance(value, bool):
            seconds = value
        else:
            match = _DURATION.fullmatch(str(value).strip())
            if match is None:
                self.fail(f"{value!r} is not a duration such as 900, 15m, 2h or 1d", param, ctx)
            seconds = int(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        if seconds < 1:
            self.fail("the lifetime must be at least one second", param, ctx)
        return seconds


@cli.group("token", epilog=EPILOG)
def token() -> None:
    """Mint tokens with the configured signing key (operators, scripts, tests)."""


@token.command("mint", epilog=EPILOG)
@click.option("--sub", required=True, type=KeyId("sub"), help="The subject (who the token is).")
@click.option(
    "--scope",
    "scopes",
    multiple=True,
    help="A scope (repeatable), e.g. revoker:admin, revoker:revoke, revoker:introspect.",
)
@click.option(
    "--ttl",
    type=Duration(),
    help="Lifetime (900, 15m, 2h, 1d); default REVOKER_ACCESS_TOKEN_TTL.",
)
@click.option("--tenant", type=KeyId("tenant id"), help="The token's tenant claim.")
@click.option("--client-id", type=KeyId("client id"), help="The token's client_id claim.")
@json_option
def mint(
    sub: str,
    scopes: tuple[str, ...],
    ttl: int | None,
    tenant: str | None,
    client_id: str | None,
    as_json: bool,
) -> None:
    """Print a new signed access token for --sub (the token alone, for `$(...)`)."""
    from revoker.tokens import create_access_token, decode_token

    settings = cli_settings()
    try:
        signed, jti = create_access_token(
            sub,
            tenant_id=tenant,
            scopes=scopes,
            client_id=client_id,
            expires_delta=ttl,
            settings=settings,
        )
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--scope") from None
    if as_json:
        data = decode_token(signed, settings=settings)
        emit_json(
            {
                "access_token": signed,
                "token_type": "Bearer",
                "expires_in": max(0, data.exp - int(time.time())),
                "scope": " ".join(data.scopes),
                "jti": jti,
                "exp": data.exp,
            }
        )
        return
    click.echo(signed)
