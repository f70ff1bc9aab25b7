"""What one mirror holds, and the check's decision from it. Pure: no I/O.

A :class:`MirrorState` is built by a snapshot (:mod:`revoker.mirror._snapshot`) and kept current
by applying feed entries (:meth:`MirrorState.apply`). The decision is :func:`revoker.rules.decide`
itself, given the values the round-trip check would have read: the mirror only answers "which
keys exist and with what time", never "what that means".

Memory (the process's RSS, measured by ``bench/mirror.py``):

* a revoked family is a 64-bit keyed digest (:class:`~revoker.mirror._digests.Digester`) of
  its tenant tag and id in a :class:`~revoker.mirror._digests.DigestSet` (6.26 B held each at
  a million, ~7.2 B of RSS). Its revocation time and reason are not kept (a token of a revoked
  family is revoked whatever they are): a family decision reports no ``revoked_at``;
* a revoked jti is a dict entry from its digest (an int) to one int packing the revocation time
  (µs) and the expiry (unix s), forgotten once the expiry passed (:meth:`MirrorState.sweep`);
* user and tenant watermarks and the global cut-off: a dict entry each (they are few).

A digest collision (~5e-14 per lookup at a million families) can only make a live token look
revoked, never admit a revoked one: what is held is what revokes.
"""

from __future__ import annotations

import itertools
import secrets
from collections.abc import Iterable
from typing import Final, TypeAlias

from revoker.keys import FeedEntry, encode_mark, tenant_tag
from revoker.mirror._digests import HASH_KEYED, Digester, DigestSet, DigestSetBuilder
from revoker.rules import NOT_REVOKED, RevocationStatus, decide, to_us
from revoker.tokens import TokenData

__all__ = ["LOOKUPS", "Lookup", "MirrorState", "StateBuilder", "family_key", "user_key"]

#: The revocation time of a packed value (µs, < 2**53: keys.MAX_TIME); the expiry sits above it.
_TIME_BITS: Final = 53
_TIME_MASK: Final = (1 << _TIME_BITS) - 1
#: A revoked family's value for rules.decide: present, time unknown (decide reports None).
_FAMILY_MARK: Final = b"|"
#: Tokens whose lookup keys a state remembers (~300 B each): the tokens in use at once.
LOOKUPS: Final = 1024
#: Bytes per dict entry beyond its key and value objects (table slot and index; CPython 3.11).
_DICT_ENTRY: Final = 40
#: Version numbers: every state takes one when made and another at each change (never reused,
#: across states too), so a version names one state as it was at one moment.
_VERSIONS: Final = itertools.count(1)
#: A digest's int (``sys.getsizeof``: 3 digits of 30 bits, as 15 in 16 digests need) and a
#: packed value's (an expiry above 53 bits of time: 3 digits too).
_INT: Final = 36

#: What a token is looked up by: its jti's digest, its family's (None: no family), its user
#: watermark's key, its tenant's tag (None: no tenant) and its iat in µs. A pure function of
#: the token's ids and the state's key: a token recurring does not pay for it again.
Lookup: TypeAlias = tuple[int, int | None, str, str | None, int]


def family_key(tag: str, family_id: str) -> bytes:
    """What a revoked family's digest is taken of: its tenant's tag and its id (the tag holds no
    NUL, so no two pairs give the same bytes)."""
    return f"{tag}\0{family_id}".encode("utf-8", "surrogatepass")


def user_key(tag: str, user_id: str) -> str:
    """The key of a user watermark: the tenant's tag and the user id."""
    return f"{tag}\0{user_id}"


def _pack(at_us: int, expires: int) -> int:
    return (expires << _TIME_BITS) | (at_us & _TIME_MASK)


def _mark(packed: int | None) -> str | None:
    return None if packed is None else encode_mark(packed & _TIME_MASK)


class MirrorState:
    """Revoked jtis and families, watermarks, and the feed position they reflect."""

    __slots__ = (
        "_digester",
        "_lookups",
        "epoch",
        "families",
        "global_cutoff",
        "jtis",
        "key",
        "last_id",
        "seq",
        "tenants",
        "users",
        "version",
    )

    def __init__(self, key: bytes | None = None, *, keyed: bool = HASH_KEYED) -> None:
        #: The digests' key (the :class:`Digester`'s prefix). Random per mirror: nobody can
        #: craft ids whose digests collide here. A :data:`Lookup` made by a state is valid for
        #: every state of the same key (``keyed``, the digest's kind, is the process's own:
        #: :data:`HASH_KEYED`; tests choose it).
        self.key = key or secrets.token_bytes(16)
        self._digester = Digester(self.key, keyed=keyed)
        self.families = DigestSet()
        #: digest of the jti -> packed (expiry, revocation time).
        self.jtis: dict[int, int] = {}
        #: user_key -> packed (expiry, watermark); tenant tag -> the same.
        self.users: dict[str, int] = {}
        self.tenants: dict[str, int] = {}
        self.global_cutoff: int | None = None
        #: (jti, tenant, sub, family) -> what they are looked up by (:meth:`_lookup_of`): two
        #: keyed digests and two keys a token recurring does not pay for again. Pure functions
        #: of the ids and this state's key, so never stale; emptied when LOOKUPS are held.
        self._lookups: dict[tuple[str, str | None, str, str | None], Lookup] = {}
        #: The last feed entry id reflected ("0-0": none), the epoch and sequence seen.
        self.last_id = "0-0"
        self.epoch: str | None = None
        self.seq = 0
        #: Changes with anything a check reads here (:data:`_VERSIONS`): a check that admitted
        #: a token at this version would admit it again (check.RevocationChecker.check_now).
        self.version = next(_VERSIONS)

    def digest(self, data: bytes) -> int:
        """The keyed digest of ``data``."""
        return self._digester.of(data)

    # --- the decision ------------------------------------------------------------------------

    def lookup_of(self, token: TokenData) -> Lookup:
        """What ``token`` is looked up by (:data:`Lookup`)."""
        tag = tenant_tag(token.tenant)
        of = self._digester.of
        return (
            of(token.jti.encode("utf-8", "surrogatepass")),
            None if token.family is None else of(family_key(tag, token.family)),
            user_key(tag, token.sub),
            None if token.tenant is None else tag,
            to_us(token.iat),
        )

    def admits(self, lookup: Lookup) -> bool:
        """Whether nothing here revokes the token of ``lookup``: no revoked jti or family, and
        issued after every watermark that applies (the common answer, without a mark string
        per level). False: :meth:`status` says what does (``rules.decide``).

        decide reads each watermark back to the same integer (keys.decode_mark of encode_mark)
        and revokes only at or before the latest, so a token issued after all of them is
        NOT_REVOKED there too. (A cut-off below 0 reads back as 0: max() keeps that; -1 stands
        for "none".)"""
        jti_digest, family_digest, user_watermark, tag, issued_us = lookup
        if jti_digest in self.jtis or (
            family_digest is not None and family_digest in self.families
        ):
            return False
        latest = -1
        user = self.users.get(user_watermark)
        if user is not None:
            latest = user & _TIME_MASK
        if tag is not None:
            tenant = self.tenants.get(tag)
            if tenant is not None and tenant & _TIME_MASK > latest:
                latest = tenant & _TIME_MASK
        cutoff = self.global_cutoff
        if cutoff is not None and max(cutoff, 0) > latest:
            latest = max(cutoff, 0)
        return latest < 0 or issued_us > latest

    def status(self, token: TokenData) -> RevocationStatus:
        """The round-trip check's decision for ``token`` (rules.decide on the same values)."""
        ids = (token.jti, token.tenant, token.sub, token.family)
        found = self._lookups.get(ids)
        if found is None:
            found = self.lookup_of(token)
            if len(self._lookups) >= LOOKUPS:
                self._lookups.clear()
            self._lookups[ids] = found
        if self.admits(found):
            return NOT_REVOKED
        jti_digest, family_digest, user_watermark, tag, _ = found
        cutoff = self.global_cutoff
        return decide(
            token.iat,
            (
                _mark(self.jtis.get(jti_digest)),
                _FAMILY_MARK
                if family_digest is not None and family_digest in self.families
                else None,
                _mark(self.users.get(user_watermark)),
                None if tag is None else _mark(self.tenants.get(tag)),
                None if cutoff is None else encode_mark(cutoff),
            ),
        )

    # --- changes -----------------------------------------------------------------------------

    def add_jti(self, jti: str, at_us: int, expires: int) -> None:
        """A revoked jti: the earliest time and the latest expiry stay (as Redis keeps them)."""
        digest = self.digest(jti.encode("utf-8", "surrogatepass"))
        old = self.jtis.get(digest)
        if old is not None:
            at_us = min(at_us, old & _TIME_MASK) if at_us else old & _TIME_MASK
            expires = max(expires, old >> _TIME_BITS)
        self.jtis[digest] = _pack(at_us, expires)
        self.version = next(_VERSIONS)

    def add_family(self, tag: str, family_id: str) -> None:
        self.families.add(self.digest(family_key(tag, family_id)))
        self.version = next(_VERSIONS)

    def _raise(self, table: dict[str, int], key: str, at_us: int, expires: int) -> None:
        """A watermark only moves forward (set_watermark.lua keeps the later one)."""
        old = table.get(key)
        if old is not None:
            at_us = max(at_us, old & _TIME_MASK)
            expires = max(expires, old >> _TIME_BITS)
        table[key] = _pack(at_us, expires)
        self.version = next(_VERSIONS)

    def add_user(self, tag: str, user_id: str, at_us: int, expires: int) -> None:
        self._raise(self.users, user_key(tag, user_id), at_us, expires)

    def add_tenant(self, tag: str, at_us: int, expires: int) -> None:
        self._raise(self.tenants, tag, at_us, expires)

    def add_global(self, at_us: int) -> None:
        self.global_cutoff = at_us if self.global_cutoff is None else max(at_us, self.global_cutoff)
        self.version = next(_VERSIONS)

    def apply(self, entry: FeedEntry, now: float) -> bool:
        """Apply one feed entry; False for an ``epoch`` entry (the mirror must resync instead).
        An entry whose expiry has passed changes nothing a check could see: skipped."""
        kind = entry.kind
        if kind == "epoch":
            return False
        if entry.seq is not None and entry.seq > self.seq:
            self.seq = entry.seq
        expires = entry.expires
        if expires and expires < now:
            return True
        if kind == "global":
            self.add_global(entry.value_us)
            return True
        tag = tenant_tag(entry.tenant_id)
        if kind == "tenant":
            self.add_tenant(tag, entry.value_us, expires)
            return True
        for one in entry.ids:
            if kind == "jti":
                self.add_jti(one, entry.value_us, expires)
            elif kind == "family":
                self.add_family(tag, one)
            elif kind == "user":
                self.add_user(tag, one, entry.value_us, expires)
        return True

    def sweep(self, now: float) -> int:
        """Forget jtis and watermarks whose expiry passed (0: never); how many went."""
        jtis = [key for key, packed in self.jtis.items() if 0 < (packed >> _TIME_BITS) < now]
        for digest in jtis:
            del self.jtis[digest]
        gone = len(jtis)
        for table in (self.users, self.tenants):
            expired = [key for key, packed in table.items() if 0 < (packed >> _TIME_BITS) < now]
            for key in expired:
                del table[key]
            gone += len(expired)
        if gone:
            self.version = next(_VERSIONS)
        return gone

    # --- size --------------------------------------------------------------------------------

    def entries(self) -> dict[str, int]:
        """Entries held, by kind."""
        return {
            "jti": len(self.jtis),
            "family": len(self.families),
            "user": len(self.users),
            "tenant": len(self.tenants),
            "global": int(self.global_cutoff is not None),
        }

    @property
    def nbytes(self) -> int:
        """An estimate of the bytes held (the families exactly; dict entries by their parts)."""
        jti = len(self.jtis) * (_DICT_ENTRY + _INT + _INT)
        users = sum(len(k) + 49 + 36 + _DICT_ENTRY for k in self.users)
        tenants = sum(len(k) + 49 + 36 + _DICT_ENTRY for k in self.tenants)
        return self.families.nbytes + jti + users + tenants


class StateBuilder:
    """Builds a state from a snapshot's rows without an object per revoked family."""

    def __init__(self, key: bytes | None = None, *, keyed: bool = HASH_KEYED) -> None:
        self.state = MirrorState(key, keyed=keyed)
        self._families = DigestSetBuilder()

    def add_families(self, tag: str, family_ids: Iterable[str]) -> None:
        """Revoked families (raw ids) of the tenant ``tag``."""
        self.add_family_fields(
            tag, (family_id.encode("utf-8", "surrogatepass") for family_id in family_ids)
        )

    def add_family_fields(self, tag: str, fields: Iterable[bytes]) -> None:
        """Revoked families of the tenant ``tag`` as their mark buckets name them (each field is
        the id's UTF-8 bytes: the digest is :func:`family_key`'s, without a string per id, and
        with ``hash``, without a Python frame per id)."""
        self._families.add_all(self.state._digester.of_all(f"{tag}\0".encode(), fields))

    def build(self) -> MirrorState:
        self._families.finish_into(self.state.families)
        return self.state
