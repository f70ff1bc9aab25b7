"""Destinations of events: SSF streams (the stream management API's state) and back-channel logout
relying parties, stored in Redis (key layout: :mod:`revoker.keys`, the ``{ssf}`` block).

A *destination* is where one ordered queue of events goes: an SSF stream (its id) or a relying
party (``rp:<client id>``, pushed to its ``backchannel_logout_uri``). Both are delivered by the
same machinery (:mod:`revoker.events.delivery`).

Stream requests are validated here, once (:class:`StreamRequest`), for the API and the CLI. A
stream's configuration is the SSF 1.0 members (``stream_id``, ``iss``, ``aud``,
``events_supported``, ``events_requested``, ``events_delivered``, ``delivery``, ``description``)
plus one revoker extension, ``per_session_events``: a bulk job then produces one event per
revoked session, not only the user's or tenant's event. Its status (``enabled``, ``paused``,
``disabled``) and reason are stored beside it.

Relying parties are the registered API clients (:mod:`revoker.clients`) that have a
``backchannel_logout_uri`` (``revoker clients add --backchannel-logout-uri``);
:func:`relying_parties` is the one reader.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Final, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator
from redis.exceptions import ResponseError

from revoker import keys as k
from revoker.clients import ClientRegistry
from revoker.events.claims import SESSION_REVOKED, VERIFICATION
from revoker.exceptions import InvalidIdentifier, RevokerError

__all__ = [
    "EVENTS_GROUP",
    "EVENTS_SUPPORTED",
    "POLL",
    "PUSH",
    "RP_PREFIX",
    "STATUSES",
    "DeliveryRequest",
    "Destination",
    "EventsError",
    "Registry",
    "StreamRequest",
    "SubjectRequest",
    "canonical_subject",
    "relying_parties",
]

PUSH: Final = "urn:ietf:rfc:8935"
POLL: Final = "urn:ietf:rfc:8936"
STATUSES: Final = ("enabled", "paused", "disabled")
#: The events a stream can ask for (verification events are sent whatever it asks).
EVENTS_SUPPORTED: Final = (SESSION_REVOKED,)
#: Destination ids of relying parties start with this (stream ids are hex: never a clash).
RP_PREFIX: Final = "rp:"
#: The consumer group that routes revocations from the audit stream and the chunk stream.
EVENTS_GROUP: Final = "revoker-events"
#: Subject formats a stream may add (RFC 9493 and SSF's complex subject).
_SUBJECT_FORMATS: Final = frozenset(
    {"opaque", "iss_sub", "email", "phone_number", "account", "did", "uri", "aliases", "complex"}
)
_COMPLEX_MEMBERS: Final = frozenset(
    {"user", "device", "session", "application", "tenant", "org_unit", "group"}
)


class EventsError(RevokerError):
    """A request the transmitter refuses: an HTTP status, an error code and a message."""

    def __init__(self, status: int, error: str, description: str) -> None:
        super().__init__(description)
        self.status = status
        self.error = error
        self.description = description


def _http_url(value: str, what: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"{what} must be an http(s) URL")
    return value


class DeliveryRequest(BaseModel):
    """A stream's ``delivery``: push to the receiver's URL, or poll from the transmitter's."""

    model_config = ConfigDict(extra="forbid")

    method: Literal["urn:ietf:rfc:8935", "urn:ietf:rfc:8936"] = POLL
    endpoint_url: str | None = Field(None, max_length=2048)
    authorization_header: str | None = Field(None, max_length=4096)

    @field_validator("endpoint_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        return None if value is None else _http_url(value, "endpoint_url")


class StreamRequest(BaseModel):
    """The body of a stream create, update (PATCH) or replace (PUT). Read-only members a
    receiver echoes back (``iss``, ``events_supported``...) are accepted and ignored."""

    model_config = ConfigDict(extra="forbid")

    stream_id: str | None = Field(None, max_length=64)
    delivery: DeliveryRequest | None = None
    events_requested: list[str] | None = Field(None, max_length=32)
    description: str | None = Field(None, max_length=512)
    aud: str | list[str] | None = None
    per_session_events: bool | None = None
    # Transmitter-supplied members, ignored on input.
    iss: Any = None
    events_supported: Any = None
    events_delivered: Any = None
    min_verification_interval: Any = None
    inactivity_timeout: Any = None

    @field_validator("aud")
    @classmethod
    def _aud(cls, value: str | list[str] | None) -> str | list[str] | None:
        items = [value] if isinstance(value, str) else value or []
        if any(not item or len(item) > 512 for item in items) or (value is not None and not items):
            raise ValueError("aud must be a non-empty string or list of them (512 characters each)")
        return value


class SubjectRequest(BaseModel):
    """The body of add/remove subject: ``stream_id`` and an RFC 9493 ``subject``."""

    model_config = ConfigDict(extra="forbid")

    stream_id: str = Field(max_length=64)
    subject: dict[str, Any]
    verified: bool | None = None

    @field_validator("subject")
    @classmethod
    def _subject(cls, value: dict[str, Any]) -> dict[str, Any]:
        canonical_subject(value)  # raises ValueError for a malformed subject
        return value


def canonical_subject(subject: Any) -> str:
    """One text per subject (sorted-key JSON), or ValueError for a malformed one."""
    if not isinstance(subject, dict) or not isinstance(subject.get("format"), str):
        raise ValueError("a subject is an object with a string format (RFC 9493)")  # noqa: TRY004 - pydantic reports ValueErrors
    fmt = subject["format"]
    if fmt not in _SUBJECT_FORMATS:
        raise ValueError(f"subject format {fmt!r} is not one of {sorted(_SUBJECT_FORMATS)}")
    if fmt == "complex":
        members = {name: value for name, value in subject.items() if name != "format"}
        if not members or not set(members) <= _COMPLEX_MEMBERS:
            raise ValueError(f"a complex subject has members among {sorted(_COMPLEX_MEMBERS)}")
        for value in members.values():
            canonical_subject(value)
    text = json.dumps(subject, sort_keys=True, separators=(",", ":"))
    if len(text) > 2048:
        raise ValueError("the subject is longer than 2048 characters")
    return text


def _subject_entries(subject: dict[str, Any]) -> list[str]:
    """What an added subject is stored as: ``*=<simple>`` matches that subject in any member,
    ``<member>=<simple>`` only in that member of a complex subject."""
    if subject["format"] != "complex":
        return [f"*={canonical_subject(subject)}"]
    return [
        f"{name}={canonical_subject(value)}" for name, value in subject.items() if name != "format"
    ]


@dataclass(slots=True)
class Destination:
    """Where one queue of events goes, as the router and the delivery tasks read it."""

    id: str
    #: ``set`` (an SSF stream: SETs) or ``logout`` (a relying party: logout tokens).
    kind: Literal["set", "logout"]
    method: str
    endpoint_url: str | None
    authorization_header: str | None
    status: str
    aud: str | list[str]
    per_session: bool
    events_delivered: tuple[str, ...]
    client_id: str | None = None
    subjects: frozenset[str] = field(default_factory=frozenset)

    def matches(self, members: dict[str, dict[str, Any]]) -> bool:
        """Whether a stream that added subjects wants an event naming ``members`` (member name
        -> simple subject); a stream without subjects wants every event."""
        if not self.subjects:
            return True
        for name, value in members.items():
            text = canonical_subject(value)
            if f"*={text}" in self.subjects or f"{name}={text}" in self.subjects:
                return True
        return False


def _config_view(config: dict[str, Any]) -> dict[str, Any]:
    """The stream configuration a receiver reads: the authorization header is write-only (a
    placeholder echoed back by a read-modify-replace would overwrite it)."""
    out = {key: value for key, value in config.items() if key not in ("status", "reason")}
    delivery = dict(out.get("delivery") or {})
    delivery.pop("authorization_header", None)
    out["delivery"] = delivery
    return out


class Registry:
    """Streams and relying parties over one synchronous Redis client (the API runs it in a
    thread pool: stream management is rare; one implementation serves the API, CLI and tasks)."""

    def __init__(self, client: Any, keys: k.KeyLayout, *, issuer: str) -> None:
        self.client = client
        self.keys = keys
        self.issuer = issuer

    # --- streams ---------------------------------------------------------------------------------

    def _load(self, stream_id: str) -> dict[str, Any]:
        _check_id(stream_id)
        raw = self.client.hget(self.keys.events_streams, stream_id)
        if raw is None:
            raise EventsError(404, "not_found", f"no stream {stream_id!r}")
        config: dict[str, Any] = json.loads(raw)
        return config

    def _save(self, config: dict[str, Any]) -> None:
        self.client.hset(
            self.keys.events_streams, config["stream_id"], json.dumps(config, sort_keys=True)
        )
        self.refresh_wanted()

    def create(self, request: StreamRequest, *, poll_url: str) -> dict[str, Any]:
        """A new stream, enabled; a poll stream's endpoint is ``poll_url`` + its id."""
        stream_id = secrets.token_hex(11)
        config = self._build(stream_id, request, poll_url=poll_url, previous=None)
        self.ensure_groups()
        self._save(config)
        return _config_view(config)

    def _build(
        self,
        stream_id: str,
        request: StreamRequest,
        *,
        poll_url: str,
        previous: dict[str, Any] | None,
    ) -> dict[str, Any]:
        base = previous or {}
        delivery_request = request.delivery
        if delivery_request is None:
            delivery = dict(base.get("delivery") or {"method": POLL})
        else:
            delivery = delivery_request.model_dump(exclude_none=True)
        if delivery["method"] == PUSH:
            if not delivery.get("endpoint_url"):
                raise EventsError(400, "invalid_request", "push delivery needs an endpoint_url")
        else:
            # RFC 8936: the transmitter supplies the poll endpoint.
            delivery = {"method": POLL, "endpoint_url": f"{poll_url.rstrip('/')}/{stream_id}"}
        requested = request.events_requested
        if requested is None:
            requested = list(base.get("events_requested") or EVENTS_SUPPORTED)
        aud = request.aud if request.aud is not None else base.get("aud", stream_id)
        description = (
            request.description if request.description is not None else base.get("description")
        )
        per_session = (
            request.per_session_events
            if request.per_session_events is not None
            else bool(base.get("per_session_events", False))
        )
        config: dict[str, Any] = {
            "stream_id": stream_id,
            "iss": self.issuer,
            "aud": aud,
            "events_supported": list(EVENTS_SUPPORTED),
            "events_requested": requested,
            "events_delivered": [e for e in requested if e in EVENTS_SUPPORTED],
            "delivery": delivery,
            "per_session_events": per_session,
            "status": base.get("status", "enabled"),
            "reason": base.get("reason"),
        }
        if description is not None:
            config["description"] = description
        return config

    def get(self, stream_id: str) -> dict[str, Any]:
        return _config_view(self._load(stream_id))

    def all_streams(self) -> list[dict[str, Any]]:
        raw = self.client.hgetall(self.keys.events_streams)
        return [_config_view(json.loads(value)) for _, value in sorted(raw.items())]

    def update(self, request: StreamRequest, *, poll_url: str, replace: bool) -> dict[str, Any]:
        """PATCH (members given change) or PUT (members not given go back to their defaults)."""
        if request.stream_id is None:
            raise EventsError(400, "invalid_request", "stream_id is required")
        previous = self._load(request.stream_id)
        base = (
            {"status": previous["status"], "reason": previous.get("reason")}
            if replace
            else previous
        )
        config = self._build(request.stream_id, request, poll_url=poll_url, previous=base)
        self._save(config)
        return _config_view(config)

    def delete(self, stream_id: str) -> None:
        self._load(stream_id)
        self.client.hdel(self.keys.events_streams, stream_id)
        self._forget_queue(stream_id)
        self.client.delete(self.keys.events_subjects(stream_id))
        self.refresh_wanted()

    def _forget_queue(self, dest: str) -> None:
        self.client.delete(
            self.keys.events_queue(dest),
            self.keys.events_queue_index(dest),
            self.keys.events_attempts(dest),
        )

    def status(self, stream_id: str) -> dict[str, Any]:
        config = self._load(stream_id)
        out = {"stream_id": stream_id, "status": config["status"]}
        if config.get("reason"):
            out["reason"] = config["reason"]
        return out

    def set_status(self, stream_id: str, status: str, reason: str | None) -> dict[str, Any]:
        """enabled delivers, paused holds (bounded), disabled drops what is held and what comes."""
        if status not in STATUSES:
            raise EventsError(400, "invalid_request", f"status must be one of {list(STATUSES)}")
        if reason is not None and (not isinstance(reason, str) or len(reason) > 512):
            raise EventsError(400, "invalid_request", "reason must be a string (512 characters)")
        config = self._load(stream_id)
        config["status"], config["reason"] = status, reason
        self._save(config)
        if status == "disabled":
            self._forget_queue(stream_id)
        return self.status(stream_id)

    def add_subject(self, request: SubjectRequest) -> None:
        self._load(request.stream_id)
        self.client.sadd(
            self.keys.events_subjects(request.stream_id), *_subject_entries(request.subject)
        )

    def remove_subject(self, request: SubjectRequest) -> None:
        self._load(request.stream_id)
        self.client.srem(
            self.keys.events_subjects(request.stream_id), *_subject_entries(request.subject)
        )

    # --- what the router and delivery read ---------------------------------------------------

    def destinations(self) -> list[Destination]:
        """Every stream and relying party, with the subjects each stream added."""
        streams = {
            (key.decode() if isinstance(key, bytes) else key): json.loads(value)
            for key, value in self.client.hgetall(self.keys.events_streams).items()
        }
        out = [_stream_destination(config) for config in streams.values()]
        if out:
            pipe = self.client.pipeline(transaction=False)
            for dest in out:
                pipe.smembers(self.keys.events_subjects(dest.id))
            for dest, members in zip(out, pipe.execute(), strict=True):
                dest.subjects = frozenset(
                    m.decode() if isinstance(m, bytes) else m for m in members
                )
        out += [_rp_destination(rp) for rp in relying_parties(self)]
        return out

    def destination(self, dest_id: str) -> Destination | None:
        """One destination, or None when it is gone."""
        if dest_id.startswith(RP_PREFIX):
            record = ClientRegistry(self.client, self.keys).get(dest_id[len(RP_PREFIX) :])
            if record is None or record.backchannel_logout_uri is None:
                return None
            return _rp_destination(
                {
                    "client_id": record.client_id,
                    "backchannel_logout_uri": record.backchannel_logout_uri,
                }
            )
        raw = self.client.hget(self.keys.events_streams, dest_id)
        return None if raw is None else _stream_destination(json.loads(raw))

    def refresh_wanted(self, dests: list[Destination] | None = None) -> None:
        """Set the per-session flag while a live stream asks for per-session events or a relying
        party exists (the router refreshes it every run, with the destinations it read)."""
        if dests is None:
            dests = self.destinations()
        wanted = any(d.per_session and d.status != "disabled" for d in dests)
        if wanted:
            self.client.set(self.keys.events_wanted, str(int(time.time())))
        else:
            self.client.delete(self.keys.events_wanted)

    def ensure_groups(self) -> None:
        """The router's consumer group on the audit and chunk streams, from now on (``$``)."""
        for source in (self.keys.audit, self.keys.events_chunks):
            try:
                self.client.xgroup_create(source, EVENTS_GROUP, id="$", mkstream=True)
            except ResponseError as e:
                if "BUSYGROUP" not in str(e):
                    raise


def relying_parties(registry: Registry) -> list[dict[str, Any]]:
    """Every back-channel logout relying party: the registered clients with a
    ``backchannel_logout_uri`` (``client_id``, ``backchannel_logout_uri``)."""
    return [
        {"client_id": r.client_id, "backchannel_logout_uri": r.backchannel_logout_uri}
        for r in ClientRegistry(registry.client, registry.keys).list()
        if r.backchannel_logout_uri
    ]


def _stream_destination(config: dict[str, Any]) -> Destination:
    delivery = config.get("delivery") or {}
    return Destination(
        id=config["stream_id"],
        kind="set",
        method=delivery.get("method", POLL),
        endpoint_url=delivery.get("endpoint_url"),
        authorization_header=delivery.get("authorization_header"),
        status=config.get("status", "enabled"),
        aud=config.get("aud", config["stream_id"]),
        per_session=bool(config.get("per_session_events")),
        events_delivered=(*config.get("events_delivered", ()), VERIFICATION),
    )


def _rp_destination(rp: dict[str, Any]) -> Destination:
    return Destination(
        id=RP_PREFIX + rp["client_id"],
        kind="logout",
        method=PUSH,
        endpoint_url=rp["backchannel_logout_uri"],
        authorization_header=None,
        status="enabled",
        aud=rp["client_id"],
        per_session=True,
        events_delivered=(),
        client_id=rp["client_id"],
    )


def _check_id(stream_id: object) -> None:
    if not isinstance(stream_id, str) or not stream_id:
        raise EventsError(400, "invalid_request", "stream_id is required")
    try:
        k.escape_id(stream_id, "stream id")
    except InvalidIdentifier as e:
        raise EventsError(400, "invalid_request", str(e)) from None
