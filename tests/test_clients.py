"""Registered API clients (revoker.clients) and ``revoker clients`` / ``revoker token mint``, on
the real Redis under the test's private key prefix."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
import redis
from click.testing import CliRunner

from revoker.cli import cli
from revoker.clients import (
    INTROSPECT_SCOPE,
    REVOKE_SCOPE,
    ClientExists,
    ClientNotFound,
    ClientRegistry,
)
from revoker.settings import RevokerSettings
from revoker.store import SyncRedisTokenRevocationStore
from revoker.tokens import decode_token

pytestmark = pytest.mark.redis


@pytest.fixture
def registry(settings: RevokerSettings) -> Iterator[ClientRegistry]:
    """The client registry on the shared Redis under the test's prefix."""
    store = SyncRedisTokenRevocationStore(settings=settings)
    yield ClientRegistry(store.client, store.keys)
    store.close()


def stored_values(settings: RevokerSettings) -> list[bytes]:
    """Every value stored under the test's prefix (hash fields and set members included)."""
    client = redis.Redis.from_url(settings.redis_url)
    values: list[bytes] = []
    try:
        for key in client.scan_iter(match=f"{settings.key_prefix}:*"):
            kind = client.type(key)
            if kind == b"hash":
                values.extend(client.hgetall(key).values())
            elif kind == b"set":
                values.extend(client.smembers(key))
            elif kind == b"string":
                values.append(client.get(key) or b"")
    finally:
        client.close()
    return values


def test_the_stored_hash_is_argon2id_and_never_the_secret(
    registry: ClientRegistry, settings: RevokerSettings
) -> None:
    """Only an Argon2id hash of the secret is stored: the secret appears in no stored value."""
    record, secret = registry.add("gateway", [INTROSPECT_SCOPE])
    assert len(secret) >= 43
    assert record.secret_hash.startswith("$argon2id$")
    values = stored_values(settings)
    assert record.secret_hash.encode() in values
    assert not any(secret.encode() in value for value in values)
    assert secret not in repr(record)
    assert "secret_hash" not in record.as_dict()


def test_authenticate_accepts_the_secret_and_refuses_others(registry: ClientRegistry) -> None:
    """The right secret authenticates (twice: the remembered check too); a wrong one, another
    client's, or an unknown id do not."""
    record, secret = registry.add("gateway", [INTROSPECT_SCOPE])
    _, other_secret = registry.add("other", [INTROSPECT_SCOPE])
    assert registry.authenticate(record.client_id, secret) == record
    assert registry.authenticate(record.client_id, secret) == record
    assert registry.authenticate(record.client_id, secret + "x") is None
    assert registry.authenticate(record.client_id, other_secret) is None
    assert registry.authenticate("no-such-client", secret) is None
    assert registry.authenticate("bad id\n", secret) is None


def test_rotating_the_secret_invalidates_the_old_one_at_once(registry: ClientRegistry) -> None:
    """After rotate_secret the old secret (already verified and remembered) is refused."""
    record, old = registry.add("gateway", [INTROSPECT_SCOPE])
    assert registry.authenticate(record.client_id, old) is not None
    rotated, new = registry.rotate_secret(record.client_id)
    assert new != old
    assert rotated.secret_hash != record.secret_hash
    assert registry.authenticate(record.client_id, old) is None
    assert registry.authenticate(record.client_id, new) is not None
    with pytest.raises(ClientNotFound):
        registry.rotate_secret("no-such-client")


def test_removed_client_cannot_authenticate(registry: ClientRegistry) -> None:
    """remove() unregisters at once; a second remove says there was none."""
    record, secret = registry.add("gateway", [INTROSPECT_SCOPE])
    assert registry.authenticate(record.client_id, secret) is not None
    assert registry.remove(record.client_id) is True
    assert registry.authenticate(record.client_id, secret) is None
    assert registry.remove(record.client_id) is False
    assert registry.list() == []


def test_add_refuses_taken_ids_unknown_scopes_and_bad_uris(registry: ClientRegistry) -> None:
    """A chosen id is claimed once; scopes and the back-channel logout URI are checked."""
    record, _ = registry.add(
        "web", [REVOKE_SCOPE], client_id="web", backchannel_logout_uri="https://rp.test/logout"
    )
    assert registry.get("web") == record
    assert record.backchannel_logout_uri == "https://rp.test/logout"
    with pytest.raises(ClientExists):
        registry.add("web again", [REVOKE_SCOPE], client_id="web")
    with pytest.raises(ValueError, match="unknown scope"):
        registry.add("x", ["read"])
    with pytest.raises(ValueError, match="at least one scope"):
        registry.add("x", [])
    with pytest.raises(ValueError, match="backchannel_logout_uri"):
        registry.add("x", [REVOKE_SCOPE], backchannel_logout_uri="javascript:alert(1)")
    with pytest.raises(ValueError, match="client id"):
        registry.add("x", [REVOKE_SCOPE], client_id="a b")
    assert [r.client_id for r in registry.list()] == ["web"]


def test_cli_add_list_rotate_remove(settings: RevokerSettings, registry: ClientRegistry) -> None:
    """`revoker clients`: add prints the secret once (--json too), list never shows it,
    rotate-secret prints a new one, remove unregisters; unknown ids exit 4, bad scopes 2."""
    runner = CliRunner()
    added = runner.invoke(cli, ["clients", "add", "gateway", "--scope", INTROSPECT_SCOPE, "--json"])
    assert added.exit_code == 0, added.output
    shown = json.loads(added.stdout)
    client_id, secret = shown["client_id"], shown["client_secret"]
    assert shown["scopes"] == [INTROSPECT_SCOPE]
    assert registry.authenticate(client_id, secret) is not None

    listed = runner.invoke(cli, ["clients", "list", "--json"])
    assert listed.exit_code == 0
    assert [c["client_id"] for c in json.loads(listed.stdout)] == [client_id]
    assert secret not in listed.output
    assert "argon2" not in listed.output
    text = runner.invoke(cli, ["clients", "list"])
    assert client_id in text.output
    assert "gateway" in text.output

    rotated = runner.invoke(cli, ["clients", "rotate-secret", client_id])
    assert rotated.exit_code == 0
    assert f"client_id:     {client_id}" in rotated.output
    new_secret = rotated.output.split("client_secret: ", 1)[1].split()[0]
    assert registry.authenticate(client_id, secret) is None
    assert registry.authenticate(client_id, new_secret) is not None

    assert runner.invoke(cli, ["clients", "remove", client_id]).exit_code == 0
    assert runner.invoke(cli, ["clients", "remove", client_id]).exit_code == 4
    assert runner.invoke(cli, ["clients", "rotate-secret", client_id]).exit_code == 4
    assert runner.invoke(cli, ["clients", "add", "x", "--scope", "read"]).exit_code == 2
    bad_id = runner.invoke(
        cli, ["clients", "add", "x", "--scope", REVOKE_SCOPE, "--client-id", "a b"]
    )
    assert bad_id.exit_code == 2
    assert "Traceback" not in bad_id.output


def test_cli_token_mint(settings: RevokerSettings) -> None:
    """`revoker token mint` prints a verifiable access token with the subject, scopes and TTL."""
    runner = CliRunner()
    minted = runner.invoke(
        cli, ["token", "mint", "--sub", "ops-alice", "--scope", "revoker:admin", "--ttl", "2h"]
    )
    assert minted.exit_code == 0, minted.output
    data = decode_token(minted.stdout.strip(), settings=settings)
    assert data.sub == "ops-alice"
    assert data.scopes == ("revoker:admin",)
    assert abs(data.exp - (time.time() + 7200)) < 60
    as_json = runner.invoke(cli, ["token", "mint", "--sub", "bot", "--ttl", "90", "--json"])
    body = json.loads(as_json.stdout)
    assert body["token_type"] == "Bearer"
    assert 0 < body["expires_in"] <= 91
    assert decode_token(body["access_token"], settings=settings).jti == body["jti"]
    assert runner.invoke(cli, ["token", "mint", "--sub", "x", "--ttl", "soon"]).exit_code == 2
    assert runner.invoke(cli, ["token", "mint", "--sub", "x", "--scope", "a b"]).exit_code == 2
