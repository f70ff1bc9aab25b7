"""Settings: every documented REVOKER_ variable is read, and bad configuration fails by name."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from conftest import TEST_SECRET
from revoker.exceptions import ConfigurationError
from revoker.settings import (
    RevokerSettings,
    configure,
    get_settings,
    load_settings,
    reset_settings,
)


@pytest.fixture(autouse=True)
def _no_dotenv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run in an empty directory so no developer .env file is read."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def pem_files(tmp_path: Path) -> tuple[Path, Path]:
    """An EC private and public key as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    private = tmp_path / "private.pem"
    public = tmp_path / "public.pem"
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return private, public


def test_every_documented_hmac_variable_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """REVOKER_* variables of an HMAC deployment land in the matching fields."""
    env = {
        "REVOKER_REDIS_URL": "redis://10.0.0.1:6380/2",
        "REVOKER_BROKER_URL": "redis://10.0.0.2:6379/1",
        "REVOKER_JWT_ALGORITHM": "HS512",
        "REVOKER_JWT_SECRET": "s" * 64,
        "REVOKER_ISSUER": "https://id.example",
        "REVOKER_AUDIENCE": "api",
        "REVOKER_ACCESS_TOKEN_TTL": "600",
        "REVOKER_REFRESH_TOKEN_TTL": "86400",
        "REVOKER_LEEWAY": "5",
        "REVOKER_FAIL_OPEN": "false",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    s = get_settings()
    assert s.redis_url == "redis://10.0.0.1:6380/2"
    assert s.broker_url == s.effective_broker_url == "redis://10.0.0.2:6379/1"
    assert s.jwt_algorithm == "HS512"
    assert s.jwt_secret is not None
    assert s.jwt_secret.get_secret_value() == "s" * 64
    assert (s.issuer, s.audience) == ("https://id.example", "api")
    assert (s.access_token_ttl, s.refresh_token_ttl, s.leeway) == (600, 86400, 5)
    assert s.fail_open is False
    assert s.longest_token_ttl == 86400


def test_every_documented_key_file_variable_is_read(
    monkeypatch: pytest.MonkeyPatch, pem_files: tuple[Path, Path]
) -> None:
    """REVOKER_JWT_PRIVATE_KEY_FILE and REVOKER_JWT_PUBLIC_KEY_FILE are read as paths."""
    private, public = pem_files
    monkeypatch.setenv("REVOKER_JWT_ALGORITHM", "ES256")
    monkeypatch.setenv("REVOKER_JWT_PRIVATE_KEY_FILE", str(private))
    monkeypatch.setenv("REVOKER_JWT_PUBLIC_KEY_FILE", str(public))
    s = load_settings()
    assert (s.jwt_private_key_file, s.jwt_public_key_file) == (private, public)


def test_jwks_url_variable_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """REVOKER_JWKS_URL configures a verify-only service."""
    monkeypatch.setenv("REVOKER_JWT_ALGORITHM", "RS256")
    monkeypatch.setenv("REVOKER_JWKS_URL", "https://id.example/jwks.json")
    assert load_settings().jwks_url == "https://id.example/jwks.json"


def test_defaults_without_environment() -> None:
    """With only a secret set, defaults are the documented ones and broker falls back to Redis."""
    s = load_settings(jwt_secret=TEST_SECRET)
    assert s.redis_url == "redis://127.0.0.1:6379/0"
    assert s.effective_broker_url == s.effective_result_backend == s.redis_url
    assert (s.jwt_algorithm, s.access_token_ttl, s.fail_open) == ("HS256", 900, True)


def test_session_buckets_variable_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """REVOKER_SESSION_BUCKETS sets the buckets per tenant (default 8192, at most 65536)."""
    assert load_settings(jwt_secret=TEST_SECRET).session_buckets == 8192
    monkeypatch.setenv("REVOKER_JWT_SECRET", TEST_SECRET)
    monkeypatch.setenv("REVOKER_SESSION_BUCKETS", "16")
    assert load_settings().session_buckets == 16
    # The largest count still fits a family id's 1-4 hex digit bucket prefix.
    assert load_settings(session_buckets=65_536).session_buckets == 65_536


def test_overrides_beat_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keyword overrides take precedence over REVOKER_ variables."""
    monkeypatch.setenv("REVOKER_JWT_SECRET", TEST_SECRET)
    monkeypatch.setenv("REVOKER_LEEWAY", "7")
    assert load_settings(leeway=3).leeway == 3


def test_dotenv_file_is_read(tmp_path: Path) -> None:
    """A .env file in the working directory is read (the environment is empty)."""
    (tmp_path / ".env").write_text(f"REVOKER_JWT_SECRET={TEST_SECRET}\nREVOKER_LEEWAY=9\n")
    assert load_settings().leeway == 9


def test_short_hmac_secret_names_the_variable() -> None:
    """A secret under 32 bytes is a ConfigurationError naming REVOKER_JWT_SECRET."""
    with pytest.raises(ConfigurationError, match="REVOKER_JWT_SECRET") as info:
        load_settings(jwt_secret="short-secret")
    assert "32 bytes" in str(info.value)
    assert "short-secret" not in str(info.value)


def test_hmac_secret_length_counts_bytes_not_characters() -> None:
    """32 bytes is enough even when written as fewer (multi-byte) characters."""
    assert load_settings(jwt_secret="é" * 16).jwt_secret is not None
    with pytest.raises(ConfigurationError, match="REVOKER_JWT_SECRET"):
        load_settings(jwt_secret="é" * 15 + "a")


def test_missing_secret_for_hmac_names_the_variable() -> None:
    """HS256 without a secret names REVOKER_JWT_SECRET."""
    with pytest.raises(ConfigurationError, match="REVOKER_JWT_SECRET is required"):
        load_settings()


@pytest.mark.parametrize("name", ["jwt_private_key_file", "jwt_public_key_file"])
def test_missing_key_file_names_the_variable(tmp_path: Path, name: str) -> None:
    """A key file that does not exist is a ConfigurationError naming its variable."""
    missing = tmp_path / "nope.pem"
    with pytest.raises(ConfigurationError, match=f"REVOKER_{name.upper()}") as info:
        load_settings(jwt_algorithm="RS256", **{name: missing})
    assert "no such file" in str(info.value)


def test_secret_with_an_asymmetric_algorithm_is_refused(pem_files: tuple[Path, Path]) -> None:
    """A secret set together with RS256 is an error naming REVOKER_JWT_SECRET."""
    with pytest.raises(ConfigurationError, match="REVOKER_JWT_SECRET is for HS"):
        load_settings(
            jwt_algorithm="RS256", jwt_secret=TEST_SECRET, jwt_public_key_file=pem_files[1]
        )


def test_asymmetric_algorithm_without_any_key_is_refused() -> None:
    """RS256 with neither key file nor JWKS URL names the three variables."""
    with pytest.raises(ConfigurationError, match="REVOKER_JWKS_URL"):
        load_settings(jwt_algorithm="RS256")


def test_key_files_with_hmac_are_refused(pem_files: tuple[Path, Path]) -> None:
    """HS256 with a key file is refused (the file would silently be ignored)."""
    with pytest.raises(ConfigurationError, match="REVOKER_JWT_SECRET only"):
        load_settings(jwt_secret=TEST_SECRET, jwt_public_key_file=pem_files[1])


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("REVOKER_ACCESS_TOKEN_TTL", "abc"),
        ("REVOKER_ACCESS_TOKEN_TTL", "0"),
        ("REVOKER_REFRESH_TOKEN_TTL", "-1"),
        ("REVOKER_LEEWAY", "-1"),
        ("REVOKER_FAIL_OPEN", "perhaps"),
        ("REVOKER_JWT_ALGORITHM", "none"),
        ("REVOKER_REDIS_URL", "localhost:6379"),
        ("REVOKER_BROKER_URL", "localhost"),
        ("REVOKER_KEY_PREFIX", "a{b}"),
        ("REVOKER_SESSION_BUCKETS", "0"),
        ("REVOKER_SESSION_BUCKETS", "65537"),
        ("REVOKER_SESSION_BUCKETS", "many"),
    ],
)
def test_invalid_value_names_its_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    """Each invalid value fails with a ConfigurationError that names the variable."""
    monkeypatch.setenv("REVOKER_JWT_SECRET", TEST_SECRET)
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigurationError, match=variable) as info:
        get_settings()
    assert str(info.value).startswith("invalid revoker configuration:")


def test_configure_and_reset(monkeypatch: pytest.MonkeyPatch) -> None:
    """configure() replaces the process settings; reset_settings() rereads the environment."""
    monkeypatch.setenv("REVOKER_JWT_SECRET", TEST_SECRET)
    first = get_settings()
    assert get_settings() is first
    replaced = configure(jwt_secret=TEST_SECRET, leeway=1)
    assert get_settings() is replaced
    assert replaced.leeway == 1
    reset_settings()
    assert get_settings().leeway == 30


def test_settings_are_frozen() -> None:
    """A settings object cannot be changed after validation skipped it."""
    s = load_settings(jwt_secret=TEST_SECRET)
    with pytest.raises(ValueError, match="frozen"):
        s.leeway = 0


def test_nothing_is_read_at_import_time(tmp_path: Path) -> None:
    """Importing every module under a broken environment succeeds; get_settings then fails."""
    script = textwrap.dedent(
        """
        import importlib, pkgutil, revoker
        for info in pkgutil.walk_packages(revoker.__path__, "revoker."):
            if not info.name.endswith("__main__"):  # running it is not importing it
                importlib.import_module(info.name)
        from revoker.exceptions import ConfigurationError
        from revoker.settings import get_settings
        try:
            get_settings()
        except ConfigurationError as e:
            print(str(e))
        else:
            raise SystemExit("broken settings were accepted")
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("REVOKER_")}
    env |= {
        "REVOKER_JWT_SECRET": "short",
        "REVOKER_ACCESS_TOKEN_TTL": "soon",
        "REVOKER_REDIS_URL": "nowhere",
        "REVOKER_JWT_PUBLIC_KEY_FILE": str(tmp_path / "missing.pem"),
    }
    result = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "REVOKER_ACCESS_TOKEN_TTL" in result.stdout
    assert "REVOKER_REDIS_URL" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr


def test_direct_construction_still_validates() -> None:
    """RevokerSettings(...) validates too (load_settings only rewords the error)."""
    with pytest.raises(ValueError, match="JWT_SECRET"):
        RevokerSettings(_env_file=None, jwt_secret="x")  # type: ignore[call-arg,arg-type]
