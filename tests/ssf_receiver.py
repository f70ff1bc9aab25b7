"""A SET receiver for the end-to-end tests and the benchmark: ``uvicorn ssf_receiver:app``.

Every POST to ``/<name>`` is verified with PyJWT against the transmitter's JWKS
(``RX_JWKS_URL``, fetched by PyJWKClient), its ``typ`` checked, its ``aud`` required to be
``urn:rx:<name>`` (a SET) or ``web`` (a logout token), and recorded as one JSON line in
``RX_LOG``. ``/bad`` answers 400 with an RFC 8935 error; ``/slow`` takes ``RX_SLOW`` seconds;
``/bcl`` is a back-channel logout endpoint (form body, 200); the others answer 202. A token that
does not verify is answered 400 ``invalid_key`` (and so dead-lettered: the tests see it).
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any
from urllib.parse import parse_qs

import jwt
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

__all__ = ["app"]

_jwks = jwt.PyJWKClient(os.environ.get("RX_JWKS_URL", "http://127.0.0.1:1/none"), cache_keys=True)
_log_path = os.environ.get("RX_LOG", os.devnull)


def _verify(token: str, typ: str, audience: str) -> dict[str, Any]:
    header = jwt.get_unverified_header(token)
    if header.get("typ") != typ:
        raise jwt.InvalidTokenError(f"typ {header.get('typ')!r}")
    key = _jwks.get_signing_key_from_jwt(token)
    claims: dict[str, Any] = jwt.decode(
        token, key.key, algorithms=["ES256", "RS256"], audience=audience
    )
    return claims


async def receive(request: Request) -> Response:
    name = request.path_params["name"]
    if name == "bcl":
        form = parse_qs((await request.body()).decode())
        token, typ, audience = form.get("logout_token", [""])[0], "logout+jwt", "web"
    else:
        token = (await request.body()).decode()
        typ, audience = "secevent+jwt", f"urn:rx:{name}"
        if request.headers.get("content-type") != "application/secevent+jwt":
            return JSONResponse({"err": "invalid_request", "description": "type"}, 400)
    try:
        claims = await asyncio.to_thread(_verify, token, typ, audience)
    except (jwt.PyJWTError, ValueError) as e:
        return JSONResponse({"err": "invalid_key", "description": str(e)}, 400)
    if name == "bad":
        return JSONResponse({"err": "invalid_request", "description": "refused"}, 400)
    if name == "slow":
        await asyncio.sleep(float(os.environ.get("RX_SLOW", "1")))
    with open(_log_path, "a") as log:  # noqa: ASYNC230 - one short line, a test helper
        log.write(json.dumps({"name": name, "claims": claims}) + "\n")
    return Response(status_code=200 if name == "bcl" else 202)


app = Starlette(routes=[Route("/{name}", receive, methods=["POST"])])
