"""The custom_ids a job's reader has claimed: an exact duplicate check in bounded memory.

Ids are kept as 8-byte blake2b digests, the same for any id length. Whether two ids collide
(about one chance in 10^7 at a million rows) depends only on the file, so a resume judges
each row as the first run did.

A table of every digest is 16 bytes an id (it doubles at half full): 270 MB at ten million
rows, with a moment at 1.5x that while it doubles. So the newest ids sit in a capped table
in memory, and a full table is sorted into a private temporary SQLite file (deleted when the
process ends; about 20 bytes an id on disk). A Bloom filter over the digests (from the first
spill on), fixed in size, keeps all but a few per cent of new ids from asking the file. A
spill then hands SQLite the table's keys and sets no bits: 0.7 s a spill instead of 0.9-1.0,
and most of it in SQLite, not in Python holding the GIL. Memory stays at
most ``SPILL_AT`` x 16 bytes plus the filter, whatever the row count: a duplicate check that
grew with the job was the largest part of a 10M-row run's RSS.
"""

from __future__ import annotations

import ctypes
import hashlib
import sqlite3
from array import array

from ..heap import trim

__all__ = ["IdSet"]

_blake2b = hashlib.blake2b  # bound once: it runs for every row
# Ids held in memory before they go to the file: a 2**20-slot table, 8 MiB.
SPILL_AT = 1 << 19
# The filter: 2**26 bits (8 MiB), two probes. At ten million spilled ids, 7 % of new ids
# are false positives that ask the file (a few µs each); at a million, 0.1 %.
_FILTER_BITS = 26
_FILTER_MASK = (1 << _FILTER_BITS) - 1
_SIGN = 1 << 63  # digests are unsigned; SQLite's integer keys are signed


def _zeros(n: int) -> array[int]:
    return array("Q", [0]) * n  # made in place: no n-byte temporary to copy from


class IdSet:
    """Claims ids; `add` answers whether an id is new. One thread at a time."""

    __slots__ = ("_db", "_filter", "_mask", "_size", "_slots", "_spill_at", "_spilled")

    def __init__(self, capacity: int = 1 << 12, *, spill_at: int = SPILL_AT) -> None:
        self._slots = _zeros(capacity)
        self._mask = capacity - 1
        self._size = 0
        self._spill_at = spill_at
        self._spilled = 0
        self._filter: bytearray | None = None
        self._db: sqlite3.Connection | None = None

    def add(self, cid: str) -> bool:
        """Claim `cid`; False when it was claimed before."""
        key = int.from_bytes(_blake2b(cid.encode(), digest_size=8).digest()) | 1  # 0: empty
        slots, mask = self._slots, self._mask
        i = key & mask
        while True:
            there = slots[i]
            if there == key:
                return False
            if not there:
                break
            i = (i + 1) & mask
        bits = self._filter
        if bits is not None:
            # Ids that spilled are in the filter; so is every id claimed since (set below),
            # so that a spill has no bits left to set.
            p, q = (key >> 32) & _FILTER_MASK, (key >> 6) & _FILTER_MASK  # _probes, inline
            if (
                (bits[p >> 3] >> (p & 7)) & 1
                and (bits[q >> 3] >> (q & 7)) & 1
                and self._in_file(key)
            ):
                return False
            bits[p >> 3] |= 1 << (p & 7)
            bits[q >> 3] |= 1 << (q & 7)
        slots[i] = key
        self._size += 1
        if self._size >= self._spill_at:
            self._spill()
        elif self._size * 2 > mask:
            self._grow()
        return True

    def __len__(self) -> int:
        return self._spilled + self._size

    def _grow(self) -> None:
        old = self._slots
        mask = self._mask = len(old) * 2 - 1
        slots = self._slots = _zeros(mask + 1)
        for key in old:
            if key:
                i = key & mask
                while slots[i]:
                    i = (i + 1) & mask
                slots[i] = key

    def _in_file(self, key: int) -> bool:
        assert self._db is not None
        row = self._db.execute("SELECT 1 FROM ids WHERE d = ?", (key - _SIGN,)).fetchone()
        return row is not None

    def _spill(self) -> None:
        if self._db is None:
            # "" is SQLite's private temporary database: a file that no other connection can
            # open, removed when it closes. The reader may run on a thread of its own.
            self._db = sqlite3.connect("", check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode = OFF")
            self._db.execute("PRAGMA synchronous = OFF")
            self._db.execute("CREATE TABLE ids (d INTEGER PRIMARY KEY)")
            self._db.execute("CREATE TABLE stage (d INTEGER)")
            bits = self._filter = bytearray(1 << (_FILTER_BITS - 3))
            for key in filter(None, self._slots):  # once: later ids set theirs as they come
                p, q = _probes(key)
                bits[p >> 3] |= 1 << (p & 7)
                bits[q >> 3] |= 1 << (q & 7)
        db = self._db
        # The keys go to SQLite without a Python frame each: the spill holds the GIL (and
        # the event loop) only while SQLite binds them.
        spilled = zip(map(_SIGN.__rsub__, filter(None, self._slots)))
        # SQLite sorts the batch (in C, in bounded memory) so that it joins the table in one
        # ordered pass; a sorted() in Python held 40 bytes an id, 20 MB at each spill.
        db.execute("BEGIN")
        db.executemany("INSERT INTO stage VALUES (?)", spilled)
        db.execute("INSERT INTO ids SELECT d FROM stage ORDER BY d")
        db.execute("DELETE FROM stage")
        db.execute("COMMIT")
        self._spilled += self._size
        # Emptied in place: a new table at each spill left the old one's 8 MiB free but
        # resident in glibc's heap (46 -> 54 MB at the second spill).
        address, length = self._slots.buffer_info()
        ctypes.memset(address, 0, length * self._slots.itemsize)
        self._size = 0
        # The sort's buffers and the rows' Python objects, freed (a few MB a spill).
        trim()


def _probes(key: int) -> tuple[int, int]:
    # Two indexes from the digest's two halves (it is a hash: the halves are independent).
    return (key >> 32) & _FILTER_MASK, (key >> 6) & _FILTER_MASK
