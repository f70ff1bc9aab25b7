"""The ``celery -A revoker.worker ...`` commands with a bad REVOKER_* setting: one line on stderr
naming the setting, exit 2 (revoker's usage/configuration code), no traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("celery")

CELERY = str(Path(sys.executable).with_name("celery"))


def _run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("REVOKER_")}
    return subprocess.run(
        [CELERY, "-A", "revoker.worker", *args],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("command", "name", "value"),
    [
        (("worker", "--pool", "solo"), "REVOKER_DURABILITY", "replicas:zero"),
        (("worker", "--pool", "solo"), "REVOKER_REDIS_URL", "redis+sentinel:///mymaster"),
        (("beat",), "REVOKER_REDIS_TIMEOUT", "soon"),
    ],
)
def test_a_bad_setting_is_one_line_and_exit_2(
    command: tuple[str, ...], name: str, value: str
) -> None:
    """The worker (and beat) refuse a bad setting before starting: exit 2, one stderr line that
    names it, no traceback (it used to be Celery's 26-frame traceback and exit 1)."""
    result = _run(*command, **{name: value})
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: invalid revoker configuration:"), lines
    assert name in lines[0]
    assert "Traceback" not in result.stderr + result.stdout


def test_a_library_caller_still_gets_the_exception(monkeypatch: pytest.MonkeyPatch) -> None:
    """Outside the celery command (an application publishing a job) the configuration error is
    raised as ConfigurationError, not turned into an exit."""
    from revoker import worker
    from revoker.exceptions import ConfigurationError
    from revoker.settings import reset_settings

    monkeypatch.setenv("REVOKER_DURABILITY", "bogus")
    reset_settings()
    try:
        with pytest.raises(ConfigurationError, match="REVOKER_DURABILITY"):
            worker._configuration()
    finally:
        monkeypatch.delenv("REVOKER_DURABILITY")
        reset_settings()
