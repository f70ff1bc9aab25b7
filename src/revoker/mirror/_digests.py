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

from array import array
from collections.abc import Iterable
from itertools import accumulate
from typing import Final

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


class DigestSetBuilder:
    """Builds a :class:`DigestSet` from many digests without a Python object per digest: they go
    into one ``bytearray`` (one allocation, given back whole), counted by group, then each is
    copied into its group's place. A snapshot of a million families leaves no heap of small
    objects behind (the process's RSS then holds the buffer, not the garbage of building it)."""

    __slots__ = ("_blob", "_counts")

    def __init__(self) -> None:
        self._blob = bytearray()
        # C integers, not a list of int objects: building leaves no small objects behind.
        self._counts = array("I", bytes(4 * _GROUPS))

    def add(self, digest: bytes) -> None:
        """Add one digest (duplicates cost their bytes but change no answer)."""
        if len(digest) != DIGEST_SIZE:
            raise ValueError(f"a digest is {DIGEST_SIZE} bytes, not {len(digest)}")
        self._blob += digest
        self._counts[(digest[0] << 8) | digest[1]] += 1

    def __len__(self) -> int:
        return len(self._blob) // DIGEST_SIZE

    def build(self) -> DigestSet:
        """The set of every digest added."""
        made = DigestSet()
        self.finish_into(made)
        return made

    def finish_into(self, target: DigestSet) -> None:
        """Make the digests added ``target``'s frozen part (its recent part is left empty)."""
        blob, counts = self._blob, self._counts
        count = len(blob) // DIGEST_SIZE
        target._recent = set()
        if count == 0:
            target._buffer, target._index, target._frozen = b"", None, 0
            return
        starts = array("I", [0])
        starts.extend(accumulate(counts))
        out = bytearray(count * _STORED)
        view = memoryview(blob)
        place = starts[:-1]
        for at in range(0, len(blob), DIGEST_SIZE):
            group = (blob[at] << 8) | blob[at + 1]
            slot = place[group] * _STORED
            place[group] += 1
            out[slot : slot + _STORED] = view[at + _GROUP_BYTES : at + DIGEST_SIZE]
        view.release()
        target._buffer = out  # not copied into bytes: find() reads a bytearray as fast
        target._index = starts
        target._frozen = count
        self._blob, self._counts = bytearray(), array("I", bytes(4 * _GROUPS))
