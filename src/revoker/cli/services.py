"""``revoker api`` and ``demo``: the long-running services."""

from __future__ import annotations

from typing import Any

import click

from revoker.cli._common import EPILOG, cli

__all__ = [
    "api",
    "demo",
]


@cli.command("api", epilog=EPILOG)
@click.option("--host", help="Interface to listen on (default: the API's, loopback).")
@click.option("--port", type=click.IntRange(1, 65535), help="Port (default: the API's).")
def api(host: str | None, port: int | None) -> None:
    """Serve the admin HTTP API (revoke, introspect, jobs, health, metrics)."""
    from revoker.api import serve

    # The defaults live in serve() alone; pass only what the operator chose.
    chosen: dict[str, Any] = {"host": host, "port": port}
    serve(**{name: value for name, value in chosen.items() if value is not None})


@cli.command("demo", epilog=EPILOG)
@click.option("--keep-running", is_flag=True, help="Leave the demo services up afterwards.")
def demo(keep_running: bool) -> None:
    """Start a throwaway Redis, a worker and a service, and revoke a tenant before your eyes."""
    from revoker.demo import main as demo_main

    code = demo_main(keep_running=keep_running)
    if code:
        raise click.exceptions.Exit(code)
