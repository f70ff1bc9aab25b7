"""A compact set of 64-bit digests: what the mirror keeps per revoked family.

Family ids are random, so a Python string per id in a set would cost ~100 bytes each. Here an id
is a 64-bit keyed digest (:class:`Digester`: Python's own ``hash`` of a random per-mirror prefix
and the id, i.e. SipHash-1-3 keyed by the process's random hash secret; computed in C over a
whole snapshot batch with ``map``, no Python frame per id). Nobody outside the process knows the
key, so nobody can craft ids whose digests collide here; by chance, a lookup of a live family
collides with one of 1,000,000 revoked families with probability ~10**6 / 2**64 ≈ 5e-14. A
collision can only make a live token look revoked (a false 401), never admit a revoked one: the
set holds revoked families, and a digest found there revokes. (If ``PYTHONHASHSEED`` fixes the
hash secret, ``hash`` is predictable: digests are then keyed BLAKE2b of 8 bytes, computed in a
Python loop: slower, as safe. :data:`HASH_KEYED` says which.)

A digest is stored in two parts:

* the *frozen* part: one ``bytes`` buffer holding every digest's low 48 bits (6 bytes,
  little-endian), grouped by its top 16 (of the digest as an unsigned 64-bit value: 65,536
  groups, in group order), and an index of where each group starts (an ``array`` of 65,537
  uint32). The top 16 bits are implied by the group, so a digest costs 6 bytes plus a share of
  the 256 KiB index: 6.26 B each at 1,000,000. A lookup is one ``bytes.find`` over its group's
  ~15 entries (C speed, no Python loop);
* the *recent* part: a plain ``set`` of the digests added since the last merge, folded into the
  frozen part once it holds more than :data:`MERGE_AT` (or 1/64 of the frozen count) entries. A
  merge copies the buffer once (milliseconds at a million entries).

Digests are never removed one by one: a mark is useful for a refresh token's life, and a resync
(which rebuilds the set from Redis, where the expiry task pruned old marks) drops the others.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import struct
import sys
from array import array
from bisect import bisect_left
from collections.abc import Iterable, Iterator
from itertools import accumulate, islice, repeat
from operator import add
from typing import Any, Final

__all__ = ["DIGEST_SIZE", "HASH_KEYED", "MERGE_AT", "DigestSet", "DigestSetBuilder", "Digester"]

#: Bytes per digest (a signed 64-bit int: ``hash``'s range).
DIGEST_SIZE: Final = 8
#: Whether :class:`Digester` uses ``hash``: its secret is random (PYTHONHASHSEED unset, empty or
#: "random", as CPython reads it) and it is 64-bit SipHash. Otherwise keyed BLAKE2b.
HASH_KEYED: Final[bool] = (
    os.environ.get("PYTHONHASHSEED", "random") in ("", "random")
    and sys.hash_info.algorithm.startswith("siphash")
    and sys.hash_info.width == 64
)
#: Bits of a digest that name its group (implied, not stored; DigestSet.__contains__ has them as
#: literals).
_GROUP_BITS: Final = 16
_GROUPS: Final = 1 << _GROUP_BITS
_GROUP_SHIFT: Final = 64 - _GROUP_BITS
#: Bytes stored per digest in the frozen buffer (its low 48 bits, little-endian).
_STORED: Final = DIGEST_SIZE - _GROUP_BITS // 8
_MIN: Final = -(1 << 63)
_MAX: Final = (1 << 63) - 1
#: Recent digests that trigger a merge (at least; 1/64 of the frozen count for big sets, so the
#: merges of a burst cost O(n log n) in all rather than O(n) each).
MERGE_AT: Final = 4096
#: Digests from which a build gives the freed heap back to the system (below: not worth it).
_TRIM_AT: Final = 65536
#: Digests a builder holds as ints before sorting them into its parts: big enough that the 256
#: cuts per batch cost nothing per digest, small enough that the objects stay a few hundred KB.
_BATCH: Final = 16384
#: The 256 top bytes (unsigned) in the digests' signed order: 0x80..0xFF are the negatives.
_TOPS: Final = (*range(128, 256), *range(128))
#: The smallest digest of each top byte (as :data:`_TOPS`), and past the last: the cuts of a
#: sorted batch.
_CUTS: Final = (*(((top << 56) ^ (1 << 63)) - (1 << 63) for top in _TOPS), 1 << 63)
#: A recent digest: its set slot and its int (``sys.getsizeof``: 36 B at 3 digits of 30 bits,
#: as 15 in 16 digests need).
_SET_ENTRY: Final = 16 + 36
_LITTLE: Final = sys.byteorder == "little"


class Digester:
    """The mirror's keyed 64-bit digests (module docstring): ``hash`` of ``prefix`` + data when
    :data:`HASH_KEYED` (or ``keyed``), else BLAKE2b keyed by ``prefix``, of 8 bytes, read as a
    signed little-endian int. Both give ints in ``hash``'s range (signed 64-bit; ``hash`` never
    gives -1 but -2 in its place, which doubles one value's odds and changes no rate)."""

    __slots__ = ("_blake", "keyed", "prefix")

    def __init__(self, prefix: bytes, *, keyed: bool = HASH_KEYED) -> None:
        self.prefix = prefix
        self.keyed = keyed
        self._blake = hashlib.blake2b(digest_size=DIGEST_SIZE, key=prefix)

    def of(self, data: bytes) -> int:
        """The digest of ``data``."""
        if self.keyed:
            return hash(self.prefix + data)
        hasher = self._blake.copy()
        hasher.update(data)
        return int.from_bytes(hasher.digest(), "little", signed=True)

    def of_all(self, common: bytes, items: Iterable[bytes]) -> Iterator[int]:
        """The digest of ``common`` + each of ``items``, lazily: equal to :meth:`of` of the
        concatenation. Keyed by ``hash``, C code throughout (no Python frame per item)."""
        head = self.prefix + common
        if self.keyed:
            # operator.add over repeat(): a vectorcall per item, ~22% faster than the method
            # wrapper head.__add__ (measured: ~100 against ~130 ns per id with the hash).
            return map(hash, map(add, repeat(head), items))
        return self._blake_all(common, items)

    def _blake_all(self, common: bytes, items: Iterable[bytes]) -> Iterator[int]:
        base = self._blake.copy()
        base.update(common)
        copy, from_bytes = base.copy, int.from_bytes
        for item in items:
            hasher = copy()
            hasher.update(item)
            yield from_bytes(hasher.digest(), "little", signed=True)


#: A digest's 8 bytes, little-endian (struct.error: not a signed 64-bit int).
_PACK: Final = struct.Struct("<q").pack


def _suffix(digest: int) -> bytes:
    """The stored part of ``digest``: its low 48 bits, little-endian."""
    return _PACK(digest)[:_STORED]


class DigestSet:
    """64-bit digests: a frozen, grouped buffer plus a small recent set (module docstring)."""

    __slots__ = ("_buffer", "_frozen", "_index", "_recent")

    def __init__(self, digests: Iterable[int] = ()) -> None:
        self._buffer: bytes | bytearray = b""
        self._index: array[int] | None = None
        self._frozen = 0
        self._recent: set[int] = set()
        builder = DigestSetBuilder()
        builder.add_all(digests)
        builder.finish_into(self)

    def __len__(self) -> int:
        return self._frozen + len(self._recent)

    def __contains__(self, digest: object) -> bool:
        if digest in self._recent:
            return True
        index = self._index
        if index is None:
            return False
        try:
            suffix = _PACK(digest)[:6]  # _STORED bytes (literals: the hot path)
        except struct.error:  # not a signed 64-bit int: never added
            return False
        # The top 16 bits as unsigned (>> is arithmetic: the mask makes a negative's right).
        group = (digest >> 48) & 0xFFFF  # type: ignore[operator]
        start, end = index[group] * 6, index[group + 1] * 6
        buffer = self._buffer
        at = buffer.find(suffix, start, end)
        while at >= 0:
            if at % 6 == 0:  # a match straddling two entries is no match
                return True
            at = buffer.find(suffix, at + 1, end)
        return False

    def add(self, digest: int) -> None:
        """Add one digest (a no-op if present); merges when the recent part is full."""
        if not _MIN <= digest <= _MAX:
            raise ValueError(f"a digest is a signed 64-bit int, not {digest}")
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
            builder.add_all(self._recent)
            builder.finish_into(self)
            return
        groups: dict[int, list[bytes]] = {}
        for digest in self._recent:
            groups.setdefault((digest >> _GROUP_SHIFT) & (_GROUPS - 1), []).append(_suffix(digest))
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
        """Bytes held: the buffer, the index, and the recent set (~ its table plus its ints)."""
        index = self._index
        recent = len(self._recent) * _SET_ENTRY
        return (
            len(self._buffer) + (index.itemsize * len(index) if index is not None else 0) + recent
        )


def _give_back() -> None:
    """Give the heap memory freed by a build back to the system (glibc's ``malloc_trim``; a
    no-op elsewhere). The parts a build fills grow in the middle of the heap, which glibc
    otherwise keeps once they are freed: several bytes per family of RSS at a million."""
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
    """Builds a :class:`DigestSet` from many digests with no Python loop over them. Digests are
    taken in batches (:meth:`add_all`, ~16,000 ints at a time): a batch is sorted (C code) and
    cut at its 256 top bytes (``bisect``), each slice appended to that byte's ``array('q')``
    part, 8 bytes a digest, no object per digest kept. :meth:`finish_into` then, part by part,
    sorts it (a merge of the batches' sorted runs; ~4,000 at a million, ~1 ms of GIL, so the
    event loop keeps serving), finds its 256 groups in its second-top bytes and writes their low
    6 bytes into the one preallocated buffer with 6 strided slice assignments. At most one
    batch's or one part's digests are objects at a time."""

    __slots__ = ("_count", "_parts", "_pending")

    def __init__(self) -> None:
        self._parts: list[array[int]] | None = None
        self._pending: list[int] = []
        self._count = 0

    def add(self, digest: int) -> None:
        """Add one digest (duplicates cost their bytes but change no answer)."""
        self.add_all((digest,))

    def add_all(self, digests: Iterable[int]) -> None:
        """Add each of ``digests`` (signed 64-bit ints, as :class:`Digester` makes them)."""
        items = iter(digests)
        while True:
            # At most a batch at a time, whatever the caller hands in: the ints held and the
            # GIL held by one sort stay bounded.
            pending = self._pending
            pending.extend(islice(items, _BATCH - len(pending)))
            if len(pending) < _BATCH:
                return
            self._flush()

    def _flush(self) -> None:
        batch = self._pending
        if not batch:
            return
        self._pending = []
        batch.sort()
        if batch[0] < _MIN or batch[-1] > _MAX:
            raise ValueError("a digest is a signed 64-bit int")
        values = array("q", batch)  # C: one conversion, then the slices are copies
        if self._parts is None:
            self._parts = [array("q") for _ in range(256)]
        parts = self._parts
        lo = 0
        for top, cut in zip(_TOPS, _CUTS[1:], strict=True):
            hi = bisect_left(batch, cut, lo)
            if hi > lo:
                parts[top] += values[lo:hi]
            lo = hi
        self._count += len(batch)

    def __len__(self) -> int:
        return self._count + len(self._pending)

    def build(self) -> DigestSet:
        """The set of every digest added."""
        made = DigestSet()
        self.finish_into(made)
        return made

    def finish_into(self, target: DigestSet) -> None:
        """Make the digests added ``target``'s frozen part (its recent part is left empty)."""
        self._flush()
        parts, count = self._parts, self._count
        self._parts, self._count = None, 0
        target._recent = set()
        if parts is None or count == 0:
            target._buffer, target._index, target._frozen = b"", None, 0
            return
        # Made at their full sizes, written in place: nothing grown, nothing left in the heap.
        starts = array("I", bytes(4 * (_GROUPS + 1)))
        stored = bytearray(count * _STORED)
        at = 0
        for top in range(256):
            # One top byte: one sign, so the signed order is the unsigned one.
            part = array("q", sorted(parts[top]))
            parts[top] = array("q")
            if not _LITTLE:
                part.byteswap()
            whole = part.tobytes()
            del part
            seconds = whole[_STORED::DIGEST_SIZE]  # the second-top byte of each, ascending
            # The groups top<<8 | second, in order: where each starts in the buffer.
            starts[top << 8 : (top + 1) << 8] = array(
                "I", [at + bisect_left(seconds, second) for second in range(256)]
            )
            end = at + len(seconds)
            for byte in range(_STORED):
                stored[at * _STORED + byte : end * _STORED : _STORED] = whole[byte::DIGEST_SIZE]
            at = end
        starts[_GROUPS] = at
        target._buffer = stored
        target._index = starts
        if at >= _TRIM_AT:
            _give_back()
        target._frozen = at
