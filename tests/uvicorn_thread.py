"""uvicorn serving an app in a thread of the test process, for tests that need a real server
(HTTP and WebSocket) but the test's own settings and stores."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn

from revoker.localredis import free_port

__all__ = ["serve_in_thread"]


@contextlib.contextmanager
def serve_in_thread(app: Any, **config: Any) -> Iterator[str]:
    """Serve ``app`` on a free loopback port (uvicorn ``config`` options beside it, websockets
    by `websockets-sansio`); yields ``host:port``, stops the server and joins its thread."""
    port = free_port()
    options: dict[str, Any] = {"log_level": "warning", "ws": "websockets-sansio", **config}
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, **options))
    thread = threading.Thread(target=srv.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not srv.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            pytest.fail("uvicorn did not start")
        time.sleep(0.01)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        srv.should_exit = True
        thread.join(10)
    assert not thread.is_alive()
