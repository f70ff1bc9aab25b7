"""The transmitter of one deployment: its settings, Redis client, registry, queues and key."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from revoker import keys as k
from revoker.events.queue import Queues
from revoker.events.signing import SigningKey, events_issuer, signing_key
from revoker.events.streams import EventsError, Registry
from revoker.settings import RevokerSettings

if TYPE_CHECKING:
    from revoker.store import SyncRedisTokenRevocationStore

__all__ = ["Transmitter"]


class Transmitter:
    """Everything the router, the delivery tasks, the API and the CLI share."""

    def __init__(self, client: Any, settings: RevokerSettings) -> None:
        self.client = client
        self.settings = settings
        self.keys = k.KeyLayout(settings.key_prefix)
        self.issuer = events_issuer(settings)
        #: ``iss`` of the users' ``iss_sub`` subjects: the issuer of the revoked tokens.
        self.user_issuer = settings.issuer or self.issuer
        self.registry = Registry(client, self.keys, issuer=self.issuer)
        self.queues = Queues(
            client,
            self.keys,
            max_held=settings.events_max_held,
            dead_max=settings.events_dead_letter_max,
        )

    @classmethod
    def for_store(cls, store: SyncRedisTokenRevocationStore) -> Transmitter:
        return cls(store.client, store.settings)

    @property
    def key(self) -> SigningKey:
        """The signing key, or EventsError 503 when REVOKER_EVENTS_SIGNING_KEY_FILE is unset."""
        key = signing_key(self.settings)
        if key is None:
            raise EventsError(
                503,
                "temporarily_unavailable",
                "events are not configured: set REVOKER_EVENTS_SIGNING_KEY_FILE",
            )
        return key

    @property
    def configured(self) -> bool:
        return self.settings.events_signing_key_file is not None

    def sign(self, kind: str, claims: dict[str, Any]) -> str:
        """The signed token of a queued event (a SET, or a logout token for ``logout``)."""
        key = self.key
        return key.sign_logout(claims) if kind == "logout" else key.sign_set(claims)
