"""A compact set of fixed-width digests: what the mirror keeps per revoked family.

Family ids are random, so a Python string per id in a set would cost ~100 bytes each. Here an id
is a 16-byte keyed BLAKE2b digest (the key is random per process, so nobody can craft two ids
that collide in a given process; by chance, two of 10**9 ids collide with probability ~10**-21),
stored in two parts:

* the *frozen* part: one ``bytes`` buffer holding every digest's last 14 bytes, grouped by its
  first two (65,536 groups, in group order), and an index of where each group starts (an
  ``array`` of 65,537 uint32). The first two bytes are implied by the group, so a digest costs 14
  bytes plus a share of the 256 KiB index: 14.26 B each at 1,000,000. A lookup is one
  ``bytes.find`` over its group's ~15 entries (C speed, no Python loop);
* the *recent* part: a plain ``set`` of the digests added since the last merge, folded into the
  frozen part once it holds more than :data:`MERGE_AT` (or 1/64 of the frozen count) entries. A
  merge copies the buffer once (milliseconds at a million entries).

Digests are never removed one by one: a mark is useful for a refresh token's life, and a resync
(which rebuilds the set from Redis, where the expiry task pruned old marks) drops the others.
"""

from __future__ import annotations

import ctypes
import re
from array import array
from bisect import bisect_left
from collections.abc import Iterable
from itertools import accumulate
from operator import itemgetter
from typing import Any, Final

__all__ = ["DIGEST_SIZE", "MERGE_AT", "DigestSet", "DigestSetBuilder"]

#: Bytes per digest (BLAKE2b's digest_size).
DIGEST_SIZE: Final = 16
#: Bytes of a digest that name its group (implied, not stored).
_GROUP_BYTES: Final = 2
_GROUPS: Final = 1 << (8 * _GROUP_BYTES)
#: Bytes stored per digest in the frozen buffer.
_STORED: Final = DIGEST_SIZE - _GROUP_BYTES
#: Recent digests that trigger a merge (at least; 1/64 of the frozen count for big sets, so the
#: merges of a burst cost O(n log n) in all rather than O(n) each).
MERGE_AT: Final = 4096
#: Digests from which a build gives the freed heap back to the system (below: not worth it).
_TRIM_AT: Final = 65536
#: Cuts a blob into its digests (any bytes: DOTALL).
_DIGESTS: Final = re.compile(b".{%d}" % DIGEST_SIZE, re.DOTALL)
#: A digest's second byte (the sort key within its first byte's list).
_SECOND: Final = itemgetter(1)


class DigestSet:
    """Fixed-width digests: a frozen, grouped buffer plus a small recent set (module docstring)."""

    __slots__ = ("_buffer", "_frozen", "_index", "_recent")

    def __init__(self, digests: Iterable[bytes] = ()) -> None:
        self._buffer: bytes | bytearray = b""
        self._index: array[int] | None = None
        self._frozen = 0
        self._recent: set[bytes] = set()
        builder = DigestSetBuilder()
        for digest in digests:
            builder.add(digest)
        builder.finish_into(self)

    def __len__(self) -> int:
        return self._frozen + len(self._recent)

    def __contains__(self, digest: object) -> bool:
        if digest in self._recent:
            return True
        index = self._index
        if index is None or not isinstance(digest, bytes) or len(digest) != DIGEST_SIZE:
            return False
        group = (digest[0] << 8) | digest[1]
        start, end = index[group] * _STORED, index[group + 1] * _STORED
        buffer, suffix = self._buffer, digest[_GROUP_BYTES:]
        at = buffer.find(suffix, start, end)
        while at >= 0:
            if at % _STORED == 0:  # a match straddling two entries is no match
                return True
            at = buffer.find(suffix, at + 1, end)
        return False

    def add(self, digest: bytes) -> None:
        """Add one digest (a no-op if present); merges when the recent part is full."""
        if len(digest) != DIGEST_SIZE:
            raise ValueError(f"a digest is {DIGEST_SIZE} bytes, not {len(digest)}")
        if digest in self:
            return
        self._recent.add(digest)
        if len(self._recent) >= max(MERGE_AT, self._frozen >> 6):
            self.merge()

    def merge(self) -> None:
        """Fold the recent digests into the frozen buffer (one copy of it)."""
        if not self._recent:
            return
        if self._index is None:
            builder = DigestSetBuilder()
            for digest in self._recent:
                builder.add(digest)
            builder.finish_into(self)
            return
        groups: dict[int, list[bytes]] = {}
        for digest in self._recent:
            groups.setdefault((digest[0] << 8) | digest[1], []).append(digest[_GROUP_BYTES:])
        index, buffer = self._index, memoryview(self._buffer)
        pieces: list[bytes | memoryview] = []
        copied = 0  # entries of the old buffer copied so far
        added = [0] * _GROUPS
        for group in sorted(groups):
            end = index[group + 1]  # the group's old entries, then its new ones
            pieces.append(buffer[copied * _STORED : end * _STORED])
            pieces.append(b"".join(groups[group]))
            added[group] = len(groups[group])
            copied = end
        pieces.append(buffer[copied * _STORED :])
        shift = [0, *accumulate(added)]
        self._buffer = b"".join(pieces)
        self._index = array("I", [at + by for at, by in zip(index, shift, strict=True)])
        self._frozen += len(self._recent)
        self._recent = set()

    @property
    def nbytes(self) -> int:
        """Bytes held: the buffer, the index, and the recent set (~ its table plus its bytes)."""
        index = self._index
        recent = len(self._recent) * (DIGEST_SIZE + 33 + 16)
        return (
            len(self._buffer) + (index.itemsize * len(index) if index is not None else 0) + recent
        )


def _give_back() -> None:
    """Give the heap memory freed by a build back to the system (glibc's ``malloc_trim``; a
    no-op elsewhere). The blobs a build fills grow in the middle of the heap, which glibc
    otherwise keeps once they are freed: ~6 B per family of RSS at a million, for nothing."""
    global _trim
    if _trim is None:
        try:
            _trim = ctypes.CDLL(None).malloc_trim
        except (OSError, AttributeError):
            _trim = False
    if _trim:
        _trim(0)


_trim: Any = None


class DigestSetBuilder:
    """Builds a :class:`DigestSet` from many digests, with no Python loop over them but the one
    that hashes them. A digest is appended to one of 256 ``bytearray`` blobs by its first byte (so
    the appends stay in cache, and no object per digest outlives its append); :meth:`finish_into`
    then, blob by blob, cuts it into its digests (one regex call), sorts them by their second
    byte (C code; ~4,000 at a million, ~1 ms of GIL, so the event loop keeps serving) and
    writes their last 14 bytes into the one preallocated buffer with 14 strided slice
    assignments. At most one blob's digests are objects at a time."""

    __slots__ = ("_blobs", "_count")

    def __init__(self) -> None:
        self._blobs: list[bytearray] | None = None
        self._count = 0

    def _all(self) -> list[bytearray]:
        if self._blobs is None:
            self._blobs = [bytearray() for _ in range(256)]
        return self._blobs

    def add(self, digest: bytes) -> None:
        """Add one digest (duplicates cost their bytes but change no answer)."""
        if len(digest) != DIGEST_SIZE:
            raise ValueError(f"a digest is {DIGEST_SIZE} bytes, not {len(digest)}")
        self._all()[digest[0]] += digest
        self._count += 1

    def add_hashed(self, base: Any, data: Iterable[bytes]) -> None:
        """Add the digest of each of ``data`` by ``base`` (a hashlib object of DIGEST_SIZE bytes
        holding the key and any common prefix: each digest is that of ``base``'s input followed by
        the item). The one loop of a snapshot per revoked family."""
        if base.digest_size != DIGEST_SIZE:
            raise ValueError(f"a digest is {DIGEST_SIZE} bytes, not {base.digest_size}")
        blobs, copy, count = self._all(), base.copy, 0
        for item in data:
            hasher = copy()
            hasher.update(item)
            digest = hasher.digest()
            blobs[digest[0]] += digest
            count += 1
        self._count += count

    def __len__(self) -> int:
        return self._count

    def build(self) -> DigestSet:
        """The set of every digest added."""
        made = DigestSet()
        self.finish_into(made)
        return made

    def finish_into(self, target: DigestSet) -> None:
        """Make the digests added ``target``'s frozen part (its recent part is left empty)."""
        blobs, count = self._blobs, self._count
        self._blobs, self._count = None, 0
        target._recent = set()
        if blobs is None or count == 0:
            target._buffer, target._index, target._frozen = b"", None, 0
            return
        # Made at their full sizes, written in place: nothing grown, nothing left in the heap.
        starts = array("I", bytes(4 * (_GROUPS + 1)))
        stored = bytearray(count * _STORED)
        at = 0
        for first in range(256):
            part = _DIGESTS.findall(blobs[first])
            blobs[first] = bytearray()
            part.sort(key=_SECOND)
            whole = b"".join(part)
            del part
            seconds = whole[1::DIGEST_SIZE]
            # The groups first<<8 | second, in order: where each starts in the buffer.
            starts[first << 8 : (first + 1) << 8] = array(
                "I", [at + bisect_left(seconds, second) for second in range(256)]
            )
            end = at + len(seconds)
            for byte in range(_STORED):
                stored[at * _STORED + byte : end * _STORED : _STORED] = whole[
                    _GROUP_BYTES + byte :: DIGEST_SIZE
                ]
            at = end
        starts[_GROUPS] = at
        target._buffer = stored
        target._index = starts
        if at >= _TRIM_AT:
            _give_back()
        target._frozen = at
