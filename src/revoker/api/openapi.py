"""The OpenAPI 3.1 document of the admin API (``GET /openapi.json``).

Request bodies and the job list's ``limit`` are described by the pydantic models that read them;
the responses, the OAuth form (read by hand, RFC 6749) and the path parameters are written here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final, get_args

from revoker.api.auth import ADMIN_SCOPE, INTROSPECT_SCOPE, REVOKE_SCOPE
from revoker.api.bodies import BODIES, PATH_IDS, JobQuery
from revoker.api.jobs import ENQUEUE_PATHS
from revoker.api.ssf import OPENAPI_PATHS as SSF_PATHS
from revoker.job_record import JobRecord, JobStatus
from revoker.keys import MAX_ID_LENGTH

if TYPE_CHECKING:
    from revoker.bulk import Scope

__all__ = ["openapi_document"]


def _error_ref(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


def _json_ref(description: str, schema: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}},
    }


_ADMIN_ERRORS: Final = {
    "401": _error_ref(
        "No valid, unrevoked bearer token (unauthorized, invalid_token), or bad client "
        "credentials (invalid_client, with a Basic challenge)."
    ),
    "403": _error_ref("The token or client lacks the scope (insufficient_scope)."),
    "503": _error_ref("Redis cannot be reached (authentication fails closed)."),
}


def _security(scope: str) -> list[dict[str, list[str]]]:
    """Either a bearer token with ``scope`` or a registered client granted it."""
    return [{"bearer": [scope]}, {"clientSecretBasic": [scope]}]


_OAUTH_FORM: Final = {
    "required": True,
    "content": {
        "application/x-www-form-urlencoded": {
            "schema": {
                "type": "object",
                "required": ["token"],
                "properties": {
                    "token": {"type": "string", "minLength": 1},
                    "token_type_hint": {
                        "type": "string",
                        "description": "access_token or refresh_token; other values ignored.",
                    },
                    "client_id": {
                        "type": "string",
                        "description": "client_secret_post (RFC 6749 §2.3.1): the client id.",
                    },
                    "client_secret": {
                        "type": "string",
                        "description": "client_secret_post: the client secret. Use this or "
                        "HTTP Basic, not both.",
                    },
                },
            }
        }
    },
}


def _job_schema() -> dict[str, Any]:
    return JobRecord.model_json_schema(ref_template="#/components/schemas/{model}")


def _query_parameter(name: str) -> dict[str, Any]:
    """The schema of the job list's query parameter ``name``, as JobQuery reads it."""
    schema = dict(JobQuery.model_json_schema()["properties"][name])
    schema.pop("title")
    return schema


def _job_post(kind: Scope) -> dict[str, Any]:
    body = BODIES[kind].__name__
    return {
        "post": {
            "summary": f"Enqueue a bulk revocation of a {kind}'s tokens",
            "operationId": f"enqueue_{kind}_revocation",
            "security": _security(REVOKE_SCOPE),
            "parameters": [
                {
                    "name": PATH_IDS[kind],
                    "in": "path",
                    "required": True,
                    "schema": {"type": "string", "minLength": 1, "maxLength": MAX_ID_LENGTH},
                }
            ],
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": {"$ref": f"#/components/schemas/{body}"}}
                },
            },
            "responses": {
                "202": _json_ref("Accepted: the job record.", "JobRecord"),
                "400": _error_ref("The body is not JSON."),
                "409": _error_ref("An identical job is pending or running (job_id names it)."),
                "413": _error_ref("The body is too large."),
                "415": _error_ref("The body is not application/json."),
                "422": _error_ref("The body or the id is invalid."),
                **_ADMIN_ERRORS,
            },
        }
    }


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 description of every endpoint."""
    schemas: dict[str, Any] = {
        "Error": {
            "type": "object",
            "required": ["error", "error_description"],
            "properties": {
                "error": {"type": "string"},
                "error_description": {"type": "string"},
            },
        },
        "Introspection": {
            "type": "object",
            "required": ["active"],
            "properties": {
                "active": {"type": "boolean"},
                "sub": {"type": "string"},
                "jti": {"type": "string"},
                "exp": {"type": "integer"},
                "iat": {"type": "integer"},
                "nbf": {"type": "integer"},
                "token_type": {
                    "type": "string",
                    "enum": ["Bearer"],
                    "description": "RFC 6749 §5.1; access tokens only.",
                },
                "token_use": {"type": "string", "enum": ["access_token", "refresh_token"]},
                "username": {"type": "string"},
                "scope": {"type": "string"},
                "client_id": {"type": "string"},
                "tenant": {"type": "string"},
                "family": {"type": "string"},
                "iss": {"type": "string"},
                "aud": {"oneOf": [{"type": "string"}, {"type": "array"}]},
            },
        },
        "AuthorizationServerMetadata": {
            "type": "object",
            "description": "RFC 8414 §2.",
            "required": ["issuer", "revocation_endpoint", "introspection_endpoint"],
            "properties": {
                "issuer": {"type": "string"},
                "revocation_endpoint": {"type": "string"},
                "revocation_endpoint_auth_methods_supported": {"type": "array"},
                "introspection_endpoint": {"type": "string"},
                "introspection_endpoint_auth_methods_supported": {"type": "array"},
                "scopes_supported": {"type": "array"},
                "response_types_supported": {"type": "array"},
                "jwks_uri": {"type": "string"},
            },
        },
        "JobRecord": _job_schema(),
        "JobList": {
            "type": "object",
            "required": ["jobs"],
            "properties": {
                "jobs": {"type": "array", "items": {"$ref": "#/components/schemas/JobRecord"}}
            },
        },
        "Health": {
            "type": "object",
            "required": ["status", "redis", "broker"],
            "properties": {
                "status": {"type": "string", "enum": ["ok", "unavailable"]},
                "redis": {"type": "object"},
                "broker": {"type": "object"},
                "integrity": {"type": "object"},
                "server": {"type": "object"},
                "durability": {"type": "object"},
            },
        },
    }
    for model in BODIES.values():
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    schemas.update(schemas["JobRecord"].pop("$defs", {}))
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "revoker admin API",
            "version": _version(),
            "description": "Revoke JWTs (RFC 7009), introspect them (RFC 7662), run bulk "
            "revocation jobs. Callers authenticate with a bearer token issued by revoker or "
            "with the credentials of a registered client (`revoker clients add`): HTTP Basic "
            "(client_secret_basic) or, on the form endpoints, client_id and client_secret in "
            f"the form (client_secret_post). Scopes: {INTROSPECT_SCOPE} (introspection), "
            f"{REVOKE_SCOPE} (revoke any token, enqueue and read jobs), {ADMIN_SCOPE} "
            "(everything).",
        },
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
                "clientSecretBasic": {
                    "type": "http",
                    "scheme": "basic",
                    "description": "A registered client's id and secret (client_secret_basic); "
                    "client_secret_post puts them in the form instead.",
                },
            },
        },
        "paths": {
            "/oauth/revoke": {
                "post": {
                    "summary": "Revoke a token (RFC 7009); a refresh token revokes its session",
                    "operationId": "revoke",
                    "description": "Holding a token is enough to revoke it. A request with "
                    "client credentials is that client's (RFC 7009 §2.1): the token must have "
                    f"been issued to it (client_id claim) unless it holds {REVOKE_SCOPE}.",
                    "security": [{}, {"clientSecretBasic": []}],
                    "requestBody": _OAUTH_FORM,
                    "responses": {
                        "200": {"description": "Revoked, already revoked, expired or unknown."},
                        "400": _error_ref(
                            "The form is malformed or lacks the token (invalid_request), or the "
                            "token was issued to another client (unauthorized_client)."
                        ),
                        "401": _error_ref("Bad client credentials (invalid_client)."),
                        "413": _error_ref("The body is too large."),
                        "503": _error_ref("Redis cannot be reached; nothing was revoked."),
                    },
                }
            },
            "/oauth/introspect": {
                "post": {
                    "summary": "Introspect a token (RFC 7662)",
                    "operationId": "introspect",
                    "security": _security(INTROSPECT_SCOPE),
                    "requestBody": _OAUTH_FORM,
                    "responses": {
                        "200": _json_ref(
                            '{"active": false} alone for any invalid, expired or revoked '
                            "token; the claims of an active one.",
                            "Introspection",
                        ),
                        "400": _error_ref("The form is malformed or lacks the token."),
                        "413": _error_ref("The body is too large."),
                        **_ADMIN_ERRORS,
                    },
                }
            },
            **{path: _job_post(scope) for scope, path in ENQUEUE_PATHS.items()},
            # The SSF transmitter and event admin endpoints (revoker.api.ssf).
            **SSF_PATHS,
            "/jobs/{job_id}": {
                "get": {
                    "summary": "One bulk job: status and progress",
                    "operationId": "get_job",
                    "security": _security(REVOKE_SCOPE),
                    "parameters": [
                        {
                            "name": "job_id",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string", "minLength": 1},
                        }
                    ],
                    "responses": {
                        "200": _json_ref("The job record.", "JobRecord"),
                        "404": _error_ref("No such job (or it expired)."),
                        "422": _error_ref("The id is invalid."),
                        **_ADMIN_ERRORS,
                    },
                }
            },
            "/jobs": {
                "get": {
                    "summary": "Recent bulk jobs, newest first",
                    "operationId": "list_jobs",
                    "security": _security(REVOKE_SCOPE),
                    "parameters": [
                        {
                            "name": "limit",
                            "in": "query",
                            "schema": _query_parameter("limit"),
                        },
                        {
                            "name": "status",
                            "in": "query",
                            "schema": {"type": "string", "enum": list(get_args(JobStatus))},
                        },
                    ],
                    "responses": {
                        "200": _json_ref("The jobs.", "JobList"),
                        "422": _error_ref("Invalid query parameters."),
                        **_ADMIN_ERRORS,
                    },
                }
            },
            "/audit": _AUDIT_PATH,
            "/health": {
                "get": {
                    "summary": "Redis and broker reachability",
                    "operationId": "health",
                    "responses": {
                        "200": _json_ref("Both reachable.", "Health"),
                        "503": _json_ref(
                            "Redis or the broker cannot be reached, or the revocation data was "
                            "lost (until `revoker recover`).",
                            "Health",
                        ),
                    },
                }
            },
            "/.well-known/oauth-authorization-server": {
                "get": {
                    "summary": "Authorization server metadata (RFC 8414)",
                    "operationId": "authorization_server_metadata",
                    "responses": {
                        "200": _json_ref("The metadata.", "AuthorizationServerMetadata"),
                    },
                }
            },
            "/.well-known/jwks.json": {
                "get": {
                    "summary": "The public key tokens are verified with (RFC 7517)",
                    "operationId": "jwks",
                    "responses": {
                        "200": {
                            "description": "The key set (asymmetric algorithms only).",
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        },
                        "404": _error_ref("Tokens are HMAC-signed, or their keys are remote."),
                    },
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics",
                    "operationId": "metrics",
                    "responses": {
                        "200": {
                            "description": "Prometheus text exposition format.",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        }
                    },
                }
            },
        },
    }


def _audit_parameter(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "schema": schema, "description": description}


_TIME: Final = {"oneOf": [{"type": "number", "minimum": 0}, {"type": "string"}]}
#: ``GET /audit`` (revoker.api.audit; the query is revoker.audit.AuditQuery).
_AUDIT_PATH: Final = {
    "get": {
        "summary": "The audit trail, filtered, a page at a time",
        "operationId": "read_audit",
        "security": _security(ADMIN_SCOPE),
        "parameters": [
            _audit_parameter("since", _TIME, "From this time: unix seconds or ISO 8601."),
            _audit_parameter("until", _TIME, "Up to this time, inclusive."),
            _audit_parameter("tenant", {"type": "string", "minLength": 1}, "Only this tenant."),
            _audit_parameter("user", {"type": "string", "minLength": 1}, "Only this user."),
            _audit_parameter("actor", {"type": "string", "minLength": 1}, "Only this actor."),
            _audit_parameter("kind", {"type": "string"}, "Kinds, comma-separated."),
            _audit_parameter(
                "limit", {"type": "integer", "minimum": 1, "maximum": 1000}, "Entries per page."
            ),
            _audit_parameter(
                "order", {"type": "string", "enum": ["asc", "desc"]}, "Oldest or newest first."
            ),
            _audit_parameter("cursor", {"type": "string"}, "A page's next_cursor."),
        ],
        "responses": {
            "200": {
                "description": "Matching entries and the next page's cursor (null at the end).",
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "required": ["entries", "next_cursor"],
                            "properties": {
                                "entries": {"type": "array", "items": {"type": "object"}},
                                "next_cursor": {"type": ["string", "null"]},
                            },
                        }
                    }
                },
            },
            "422": _error_ref("Invalid query parameters."),
            **_ADMIN_ERRORS,
        },
    }
}


def _version() -> str:
    from revoker import __version__

    return __version__
