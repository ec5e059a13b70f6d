"""KV: a key-value store in a shared region; lock-free readers, zero-copy values, crash repair.

Protocol (DESIGN.md 8; byte layouts in ``_layout``, KV section):

* The data area is a heap (``_heap``). The index, the deferred-free list and every entry (key
  bytes, then the value, 8-byte aligned) are heap blocks. A block in use by the KV is IN_FLIGHT
  with owner 0; a block being filled is ALLOCATED by its writer, so the heap reclaims it if the
  writer dies before publishing it.
* The index is open addressing with linear probing over 32-byte slots ``seq, tag, offset,
  lens``. A writer never changes a published entry in place: it fills a new block, then
  publishes it in the slot between two bumps of the slot's sequence word (odd while being
  written). Readers take no lock: they read the sequence word, the fields, the key and the
  value, and retry when the sequence word changed (counted in :attr:`KVStats.retries`). The
  index descriptor (block, capacity) is a seqlock of its own, so a reader that raced an index
  rebuild retries too. Every offset a reader derives is bounds-checked against its mapping
  before it is used, so a reader that raced a writer never faults. A handle remembers where it
  last read each key (slot, slot and index sequence words, value bounds): while both sequence
  words are unchanged the slot still names the same, unchanged block, so the next read of that
  key copies the value and re-checks them, without probing or comparing the key.
* Replaced and deleted blocks are *retired*: they go to the deferred-free list tagged with the
  reclamation epoch, which each reclamation pass bumps first. A :meth:`KV.view` pins the epoch
  it saw in its participant slot; a retired block is released to the heap only when every live
  pin is newer than its tag (and it has been retired for at least ``RECLAIM_GRACE_NS``: pure Python has no
  store-load fence, DESIGN.md 3.3, and the grace covers a pin store still in flight). A pin of
  a dead process is ignored (OFD liveness), so a reader killed inside ``view()`` blocks nothing.
* Writers are serialized by a named semaphore with the ring's dead-holder recovery. Each write
  records its intent in a one-word journal before touching the index (a put names its new
  block, whose header holds the slot, tag, lengths and target sequence); a writer that finds
  the journal busy when it takes the lock (its predecessor died) rolls the operation forward,
  then sweeps: every IN_FLIGHT block that nothing references goes to the deferred list,
  counters are recomputed. Roll-forward is always possible because the journal is written
  only after the new block is complete.
* A writer keeps, in its own memory, the blocks it released by size; it reuses one without a
  heap walk while the shared ``heap_walks`` counter shows that no walk (the only thing that
  merges or hands out released blocks) happened since. Overwrites of same-size values thus
  cost no allocator walk.
* Inside ``batch()`` (the lock held throughout) a put does not retire the block it replaced at
  once: it keeps it in a private list, recorded in the deferred list every ``RECLAIM_EVERY``
  puts and when the batch ends (tagged then, with a later epoch and time: the reuse only waits
  longer), and it leaves the journal naming its completed block instead of clearing it (its
  roll-forward changes nothing). While the private list is not empty the journal is therefore
  never idle: if the process dies, the next writer sweeps, and the sweep finds the unrecorded
  blocks. Every other write, and growth, records the private list first.
* ``kv[key] = value`` and ``kv[key]`` have inlined fast paths (``__setitem__``,
  ``__getitem__``); everything unusual falls back to the general code before changing anything.
* Growth: when the heap has no room, the writer ``ftruncate`` s the file, maps it larger, adds
  the new space to the heap and publishes the new size; other processes map the larger file
  when they meet an offset beyond their mapping (readers) or take the lock (writers). Old
  mappings stay alive while views made from them exist.
* Memory order: readers rely on x86-64 keeping loads in order and writers' stores in order
  (DESIGN.md 3.2); pure Python has no fences. Writers among themselves are ordered by the
  semaphore on every CPU.
* Persistence: the first process to open a region nobody else has open checks it (journal,
  heap walk, every index slot, each key's tag, each value's crc32 when the region is
  file-backed) and repairs or raises :class:`CorruptionError`.
"""

from __future__ import annotations

import array
import errno
import hashlib
import math
import mmap
import os
import pickle
import secrets
import struct
import time
import zlib
from collections.abc import Callable, ItemsView, Iterable, Iterator, Mapping, MutableMapping, ValuesView
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeAlias

from . import _layout as L
from ._errors import (
    ClosedError,
    CorruptionError,
    IncompatibleRegion,
    KVFull,
    MmipcError,
    NoSpaceError,
    ReadOnlyError,
    RegionNotFound,
    SerializationError,
    WaitTimeout,
)
from ._heap import Heap, block_size_for
from ._liveness import Participants
from ._region import Region
from ._semaphore import SLICE, Semaphore, semaphore_name, unlink_semaphore
from ._serialization import PickleSerializer

__all__ = ["KV", "KVObjects", "KVStats"]

Key: TypeAlias = str | bytes

LOCK_CHECK_INTERVAL = 0.05
LOCK_STALE_AFTER = 0.5
RECLAIM_GRACE_NS = 1_000_000
RECLAIM_EVERY = 64
INITIAL_DEFERRED_SHIFT = 8
INITIAL_INDEX_MAX = 1 << 20  # slots (32 MiB); a larger max_keys grows the index when needed
KEY_CACHE_MAX = 1 << 16
RELEASED_CACHE_MAX = 4096
SPINS_BEFORE_CHECK = 2000
STUCK_READ_TIMEOUT = 5.0
OUT_OF_BAND_MIN = 4096

_HDR = L.BLOCK_HEADER_SIZE
_HDR_WORDS = _HDR // 8
_STR = L.KV_STR_KEY
_VMASK = L.KV_VLEN_MASK
_HIMASK = ~_VMASK & ((1 << 64) - 1)
_IN_FLIGHT = L.BLOCK_IN_FLIGHT
_RELEASED = L.BLOCK_RELEASED
_W_IDX_SEQ = L.W_KV_INDEX_SEQ
_W_COMMIT = L.W_KV_COMMIT
_W_EPOCH = L.W_KV_EPOCH
_W_JOURNAL = L.W_J_STATE
_W_LIVE_BYTES = L.W_KV_LIVE_BYTES
_W_DEFERRED_COUNT = L.W_KV_DEFERRED_COUNT
_W_HEAP_WALKS = L.W_KV_HEAP_WALKS
_J_PUT = L.J_PUT
_ALLOCATED = L.BLOCK_ALLOCATED
_DESC_MASK = (1 << 56) - 1
_DEFERRED_ENTRY = struct.Struct("<QQQ")  # block offset, epoch, retire time (writer-private list)
_DEFERRED_PACK = _DEFERRED_ENTRY.pack_into
_monotonic_ns = time.monotonic_ns
_SLOT_UNPACK = struct.Struct("<QQQQ").unpack_from  # seq, tag, offset, lens of an index slot
_MISSING: Any = object()
# Word indices and constants of the hot paths, bound once (a module global is cheaper than
# ``L.NAME``, an attribute of a module global).
_W_FLAGS = L.W_KV_FLAGS
_CHECKSUMS = L.KV_CHECKSUMS
_W_MAX_KEYS = L.W_KV_MAX_KEYS
_W_LIVE_KEYS = L.W_KV_LIVE_KEYS
_W_USED_SLOTS = L.W_KV_USED_SLOTS
_W_DEFERRED_DESC = L.W_KV_DEFERRED_DESC
_W_WAITERS = L.W_KV_WAITERS
_W_MAPPED = L.W_KV_MAPPED
_W_LOCK_OWNER = L.W_LOCK_OWNER
_W_LOCK_GRANTS = L.W_LOCK_GRANTS
_B_STATE = L.B_STATE
_B_TAG = L.KV_B_TAG
_B_LENS = L.KV_B_LENS
_B_SLOT = L.KV_B_SLOT
_B_SEQ = L.KV_B_SEQ
_ALIGN_MASK = L.BLOCK_ALIGN - 1
_MIN_BLOCK = L.MIN_BLOCK
_LIST_ENTRY = L.KV_DEFERRED_ENTRY_WORDS * 8  # bytes of a deferred-list entry
assert _DEFERRED_ENTRY.size == _LIST_ENTRY

#: A key as the hot paths use it (cached per handle): key bytes, tag, high bits of the lens
#: word (str flag and key length), key length, key length padded to 8.
_Entry: TypeAlias = tuple[bytes, int, int, int, int]
_NO_PIN = 1 << 64  # "no view pins an epoch": above every epoch
_W_FIRST_PIN = L.slot_word(0, L.S_KV_PIN)


def _always_needed(*_args: Any) -> bool:
    return True


def _sem_names(nonce: int) -> tuple[str, str]:
    """The writer-lock and change semaphores of a KV region."""
    return semaphore_name(nonce, "kw"), semaphore_name(nonce, "kc")


def _fmt_size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError


@dataclass(frozen=True)
class KVStats:
    """A snapshot of a KV region (``KV.stats()``).

    ``bytes_live``: key + value bytes of the live entries; ``bytes_free``: free heap bytes;
    ``fragmentation``: ``1 - largest free block / bytes_free`` (0 when all free space is one
    block); ``retries``: reads of this handle that raced a writer and went again;
    ``recoveries``: writer locks taken back from dead holders; ``repairs``: half-done writes
    finished by a successor or on open; ``deferred_blocks``: retired blocks that wait for
    readers' views to end.
    """

    name: str
    keys: int
    bytes_live: int
    bytes_free: int
    heap_size: int
    size: int
    max_size: int | None
    max_keys: int | None
    fragmentation: float
    index_capacity: int
    index_used: int
    deferred_blocks: int
    retries: int
    recoveries: int
    repairs: int
    commit_seq: int
    participants: int


class _View:
    """``KV.view(key)``: pins the reclamation epoch and yields a read-only zero-copy view."""

    __slots__ = ("_key", "_kv", "_mv")

    def __init__(self, kv: KV, key: Key) -> None:
        self._kv = kv
        self._key = key
        self._mv: memoryview | None = None

    def __enter__(self) -> memoryview:
        kv = self._kv
        if kv._readonly:
            self._mv = memoryview(kv[self._key])  # no pin possible: a private copy (documented)
            return self._mv
        w = kv._words
        if kv._pins or w is None or kv._slot is None:
            kv._pin()
        else:  # _pin, inline
            w[kv._pin_word] = w[_W_EPOCH] + 1
            kv._pins = 1
        try:
            key = self._key
            entry = kv._keycache.get(key)
            if entry is None:
                entry = kv._key(key)
            off, end = kv._lookup_range(entry, key)
            self._mv = mv = kv._rbuf[off:end]  # type: ignore[index]
        except BaseException:
            kv._unpin()
            raise
        return mv

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        mv = self._mv
        self._mv = None
        if mv is not None:
            try:
                mv.release()
            except BufferError:
                pass  # something made from the view is alive: documented as invalid past the block
        kv = self._kv
        if not kv._readonly:  # _unpin, inline
            kv._pins -= 1
            if kv._pins == 0 and kv._words is not None:
                kv._words[kv._pin_word] = 0


class _Batch:
    """``KV.batch()``: hold the writer lock across many writes."""

    __slots__ = ("_kv",)

    def __init__(self, kv: KV) -> None:
        self._kv = kv

    def __enter__(self) -> KV:
        kv = self._kv
        kv._acquire()
        kv._batch_depth += 1
        return kv

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        kv = self._kv
        if kv._batch_depth == 1:
            kv._end_batch()
        else:
            kv._batch_depth -= 1


class _KVItems(ItemsView[Key, bytes]):
    def __iter__(self) -> Iterator[tuple[Key, bytes]]:
        kv: KV = self._mapping  # type: ignore[attr-defined]
        return iter(kv._scan(True))  # type: ignore[arg-type]


class _KVValues(ValuesView[bytes]):
    def __iter__(self) -> Iterator[bytes]:
        kv: KV = self._mapping  # type: ignore[attr-defined]
        return iter([v for _k, v in kv._scan(True)])  # type: ignore[misc]


class KV(MutableMapping[Key, bytes]):
    """A dictionary of bytes shared between processes, in shared memory or a file.

    Keys are ``str`` or ``bytes`` (``"a"`` and ``b"a"`` are different keys); values are any
    bytes-like object and come back as ``bytes``. Reads take no lock and never see a torn value;
    writes are serialized between processes by a semaphore and survive a writer killed at any
    point. :meth:`view` gives a zero-copy view, :attr:`objects` stores any picklable object.
    A handle is not thread-safe: use one handle per thread (``KV.attach`` or pickling).
    """

    __module__ = "mmipc"

    #: Seconds a write waits for the writer lock (``None``: as long as it takes; a dead holder
    #: is detected and replaced meanwhile). Raises :class:`WaitTimeout` when exceeded.
    timeout: float | None = None

    def __init__(self, region: Region, *, readonly: bool = False, _token: object = None) -> None:
        if _token is not _PRIVATE:
            raise TypeError("use KV.create(...) or KV.attach(...)")
        self._region = region
        self._closed = True
        self._readonly = readonly
        self._words: memoryview | None = region.words
        self._buf: memoryview | None = region.buf
        self._mm: mmap.mmap | None = region.mm
        self._rbuf: memoryview | None = None if region.buf is None else region.buf.toreadonly()
        self._size = region.size
        self._participants = Participants(region)
        self._heap = Heap(region, self._participants, still_needed=_always_needed)
        self._slot: int | None = None
        self._pin_word = 0
        self._lock_state_word = 0
        self._owner = 0
        self._owned = _ALLOCATED  # the state word of a block this writer allocated
        self._fast_max = _VMASK  # the largest value of a fast put (-1 with checksums: none)
        self._pins = 0
        self._retries = 0
        self._keycache: dict[Key, _Entry] = {}
        # key -> (slot word, slot seq, value start, value end, index seq) of its last read
        self._hot: dict[Key, tuple[int, int, int, int, int]] = {}
        self._seed = b""
        self._idx_seen = -1
        self._idx_base = 0
        self._idx_mask = 0
        self._batch_depth = 0
        # Blocks the puts of the current batch replaced, not yet in the deferred list (the
        # journal is not idle meanwhile: a successor's sweep finds them if this process dies).
        self._pending: list[int] = []
        self._batch_journal = 0  # the journal word the batch's last completed put left
        self._sem_lock: Semaphore | None = None
        self._sem_change: Semaphore | None = None
        self._lock_owner_value = 0
        self._unknown_owner_since: float | None = None
        self._stale_grants = 0
        self._reclaim_at = RECLAIM_EVERY
        self._released: dict[int, list[int]] = {}  # block size -> blocks this writer released
        self._walks_seen = -1
        self._objects: KVObjects | None = None
        region.fork_callbacks.append(_weak_callback(self._after_fork_in_child))

    # -- construction -------------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        size: int,
        *,
        name: str | None = None,
        path: str | os.PathLike[str] | None = None,
        max_keys: int | None = None,
        max_size: int | None = None,
        mode: int = 0o600,
        max_participants: int = L.DEFAULT_MAX_PARTICIPANTS,
    ) -> KV:
        """Create a KV region with room for ``size`` bytes of entries.

        Each entry takes its key and value bytes plus a 64-byte block header, rounded up to 64.
        ``name``: a POSIX shared-memory object ``/dev/shm/mmipc-<name>``; ``path``: a file whose
        contents persist (values carry a crc32, checked when the file is reopened); neither:
        anonymous, shared with child processes by pickling the handle. ``max_keys``: the most
        keys the KV holds (``None``: no limit); the index is sized for them up front (at most
        ``INITIAL_INDEX_MAX`` slots; without ``max_keys``, for ``size // 1024`` keys, at least 16)
        and grows when full. The region grows when the heap is full, up to ``max_size`` bytes in
        all (``None``: no limit but the backing store). Past either limit a write raises
        :class:`KVFull` and changes nothing.

        Raises :class:`RegionExists`, :class:`NoSpaceError`, ``ValueError``.
        """
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ValueError(f"size must be an int >= 0 bytes, got {size!r}")
        if max_keys is not None and (not isinstance(max_keys, int) or max_keys < 1):
            raise ValueError(f"max_keys must be an int >= 1, got {max_keys!r}")
        expected = max(16, min(size // 1024, 1 << 16)) if max_keys is None else max_keys
        capacity = min(1 << max(4, math.ceil(math.log2(expected * 4 / 3 + 1))), INITIAL_INDEX_MAX)
        arena = (
            block_size_for(capacity * L.KV_SLOT_SIZE)
            + block_size_for((1 << INITIAL_DEFERRED_SHIFT) * L.KV_DEFERRED_ENTRY_WORDS * 8)
            + L.align_up(max(size, L.MIN_BLOCK), L.BLOCK_ALIGN)
        )
        data_size = L.HEAP_CONTROL_SIZE + arena
        total = L.data_offset_for(max_participants) + data_size
        if max_size is not None:
            if not isinstance(max_size, int) or max_size < total:
                raise ValueError(
                    f"max_size {max_size!r} is smaller than the initial region of {total} bytes "
                    f"(size {size} + index of {capacity} slots + header)"
                )
        region = Region.create(
            L.KIND_KV, data_size, name=name, path=path, mode=mode, max_participants=max_participants
        )
        try:
            Heap.format(region)
            kv = cls(region, _token=_PRIVATE)
            kv._format(capacity, max_size or 0, max_keys or 0, checksums=path is not None)
            kv._join(create_mode=mode)
            # Published last: an attacher waits for it, so it never finds the region without
            # its creator (it would take itself for the first opener).
            region.words[L.W_KV_MAGIC] = L.KV_MAGIC  # type: ignore[index]
        except BaseException:
            region.unlink_name()
            for sem in _sem_names(region.nonce):
                unlink_semaphore(sem)
            region.close()
            raise
        return kv

    def _format(self, capacity: int, max_size: int, max_keys: int, checksums: bool) -> None:
        w = self._words
        assert w is not None
        heap = self._heap
        index = heap.try_alloc(capacity * L.KV_SLOT_SIZE, 0)
        deferred = heap.try_alloc((1 << INITIAL_DEFERRED_SHIFT) * L.KV_DEFERRED_ENTRY_WORDS * 8, 0)
        assert index > 0 and deferred > 0
        heap.set_state(index, _IN_FLIGHT)
        heap.set_state(deferred, _IN_FLIGHT)
        w[L.W_KV_VERSION] = L.KV_VERSION
        w[L.W_KV_INDEX_BLOCK] = index
        w[L.W_KV_INDEX_CAP] = capacity
        w[L.W_KV_MAPPED] = self._size
        w[L.W_KV_MAX_SIZE] = max_size
        w[L.W_KV_MAX_KEYS] = max_keys
        w[L.W_KV_SEED] = secrets.randbits(64)
        w[L.W_KV_FLAGS] = L.KV_CHECKSUMS if checksums else 0
        w[_W_EPOCH] = 1
        w[L.W_KV_DEFERRED_DESC] = deferred | INITIAL_DEFERRED_SHIFT << 56

    @classmethod
    def attach(
        cls,
        name: str | None = None,
        *,
        path: str | os.PathLike[str] | None = None,
        readonly: bool = False,
        timeout: float = 2.0,
    ) -> KV:
        """Open an existing KV region by ``name`` or ``path``.

        ``readonly=True`` maps the data read-only: this handle cannot write (a write raises
        :class:`ReadOnlyError`) nor corrupt the store by mistake; its :meth:`view` returns a
        private copy (a read-only handle cannot pin memory). Waits up to ``timeout`` seconds for
        a region still being created. The first process to open a region nobody else has open
        checks it and repairs what a crashed writer left; raises :class:`RegionNotFound`,
        :class:`IncompatibleRegion` or :class:`CorruptionError`.
        """
        if (name is None) == (path is None):
            raise ValueError("KV.attach needs a name or a path (anonymous KVs travel by pickling)")
        region = Region.attach(L.KIND_KV, name=name, path=path, timeout=timeout, readonly=readonly)
        return cls._from_region(region, readonly, timeout)

    @classmethod
    def _from_region(cls, region: Region, readonly: bool, timeout: float = 2.0) -> KV:
        try:
            words = region.words
            assert words is not None
            deadline = time.monotonic() + timeout
            while words[L.W_KV_MAGIC] != L.KV_MAGIC:
                if words[L.W_KV_MAGIC] != 0:
                    raise CorruptionError(
                        f"KV {region.display_name!r}: bad KV magic {words[L.W_KV_MAGIC]:#x}"
                    )
                if time.monotonic() >= deadline:
                    raise IncompatibleRegion(
                        f"KV {region.display_name!r} is still initializing after {timeout} s"
                    )
                time.sleep(0.002)
            if words[L.W_KV_VERSION] != L.KV_VERSION:
                raise IncompatibleRegion(
                    f"KV {region.display_name!r} has KV layout version {words[L.W_KV_VERSION]}; "
                    f"this mmipc reads version {L.KV_VERSION}"
                )
            mapped = int(words[L.W_KV_MAPPED])
            if mapped > region.size:
                st = os.fstat(region.fd).st_size
                if mapped > st:
                    raise CorruptionError(
                        f"KV {region.display_name!r} is truncated: its size is {mapped} bytes, the file has {st}"
                    )
                region._unmap()
                region._map(st)
            kv = cls(region, readonly=readonly, _token=_PRIVATE)
            kv._join(create_mode=None)
        except BaseException:
            region.close()
            raise
        return kv

    def _join(self, create_mode: int | None) -> None:
        """Open the semaphores, claim a slot; the first one in checks and repairs the region."""
        region = self._region
        w = self._words
        assert w is not None
        self._seed = int(w[L.W_KV_SEED]).to_bytes(8, "little")
        self._fast_max = -1 if w[_W_FLAGS] & _CHECKSUMS else _VMASK
        self._hash_bytes = hashlib.blake2b(digest_size=8, key=self._seed, person=b"b")
        self._hash_str = hashlib.blake2b(digest_size=8, key=self._seed, person=b"s")
        lock_name, change_name = _sem_names(region.nonce)
        if self._readonly:
            try:
                self._sem_change = Semaphore.open(change_name)
            except (RegionNotFound, MmipcError):
                self._sem_change = None
            if not self._participants.others_alive():
                if w[L.W_J_STATE] != L.J_IDLE:
                    raise IncompatibleRegion(
                        f"KV {self.name!r} was left mid-write by a writer that died: open it once "
                        "without readonly=True to repair it"
                    )
                self._check(repair=False, verify=True)
            self._closed = False
            return
        with self._participants.attach_lock():
            first = create_mode is not None or not self._participants.others_alive()
            mode = create_mode if create_mode is not None else os.fstat(region.fd).st_mode & 0o777
            if first:
                # Nobody else is here: semaphores left by processes that died are stale.
                for sem in (lock_name, change_name):
                    unlink_semaphore(sem)
                self._sem_lock = Semaphore.create(lock_name, 1, mode)
                self._sem_change = Semaphore.create(change_name, 0, mode)
                for word in (L.W_LOCK_OWNER, L.W_LOCK_SUSPECT, L.W_KV_WAITERS):
                    w[word] = 0
            else:
                self._sem_lock, _ = Semaphore.open_or_create(lock_name, 1, mode)
                self._sem_change, _ = Semaphore.open_or_create(change_name, 0, mode)
            if first and create_mode is None:
                # Every slot's holder is dead: start the table afresh (it may hold garbage).
                table = L.slot_word(0, 0)
                for word in range(table, table + self._participants.capacity * L.SLOT_WORDS):
                    w[word] = 0
                w[L.W_LOCK_GRANTS] = 0
            self._claim_slot()
            self._closed = False
            if first and create_mode is None:
                try:
                    self._check(repair=True, verify=True, first=True)
                except BaseException:
                    self._closed = True
                    self._release_slot()
                    for handle in (self._sem_lock, self._sem_change):
                        handle.close()
                        handle.unlink()
                    raise
                w[L.W_KV_CLEAN] = 0

    def _claim_slot(self) -> None:
        slot = self._participants.claim(L.ROLE_ATTACHED, self._cleanup_dead_slot)
        w = self._words
        assert w is not None
        self._slot = slot
        self._pin_word = L.slot_word(slot, L.S_KV_PIN)
        self._lock_state_word = L.slot_word(slot, L.S_LOCK_STATE)
        w[self._pin_word] = 0
        w[L.slot_word(slot, L.S_KV_WAIT)] = 0
        self._owner = self._heap.owner_of(slot)
        self._owned = _ALLOCATED | self._owner << 8
        self._lock_owner_value = self._participants.generation(slot) << 16 | (slot + 1)

    def _release_slot(self) -> None:
        if self._slot is not None:
            w = self._words
            if w is not None:
                w[self._pin_word] = 0
                w[L.slot_word(self._slot, L.S_KV_WAIT)] = 0
            self._participants.release(self._slot)
            self._slot = None

    # -- properties, repr, pickling, close ----------------------------------------------------

    @property
    def name(self) -> str:
        """The KV's name, path, or ``anon:<nonce>``."""
        return self._region.display_name

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def readonly(self) -> bool:
        return self._readonly

    @property
    def commit_seq(self) -> int:
        """The number of writes completed so far (the value :meth:`wait_for_change` waits on)."""
        return int(self._w()[_W_COMMIT])

    @property
    def objects(self) -> KVObjects:
        """A mapping view of this KV that stores any picklable object (see :class:`KVObjects`)."""
        if self._objects is None:
            self._objects = KVObjects(self)
        return self._objects

    def __repr__(self) -> str:
        backing = self._region.backing
        if self._closed:
            return f"<mmipc.KV {self.name!r} {backing} closed>"
        w = self._w()
        return (
            f"<mmipc.KV {self.name!r} {backing} keys={w[L.W_KV_LIVE_KEYS]} "
            f"live={_fmt_size(int(w[L.W_KV_LIVE_BYTES]))} size={_fmt_size(int(w[L.W_KV_MAPPED]))}"
            f"{' readonly' if self._readonly else ''}>"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        if self._closed:
            raise ClosedError(f"KV {self.name!r} is closed and cannot be pickled")
        return (_rebuild_kv, (self._region.descriptor(), self._readonly))

    def __enter__(self) -> KV:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    __hash__ = None  # type: ignore[assignment]

    def close(self) -> None:
        """Leave the KV: drop the participant slot, unmap. Idempotent.

        Views made from this handle must not be used afterwards (the memory may be reused). The
        last participant to leave removes the semaphores (the next ``attach`` re-creates them)
        and marks a file-backed region clean.
        """
        if self._closed or not hasattr(self, "_region"):
            return
        self._closed = True
        region = self._region
        try:
            if not self._readonly and not region.closed:
                if self._batch_depth:
                    self._end_batch()
                with self._participants.attach_lock():
                    self._release_slot()
                    if not self._participants.others_alive():
                        w = self._words
                        if w is not None and w[L.W_J_STATE] == L.J_IDLE:
                            w[L.W_KV_CLEAN] = 1
                        for name in _sem_names(region.nonce):
                            unlink_semaphore(name)
        finally:
            for sem in (self._sem_lock, self._sem_change):
                if sem is not None:
                    sem.close()
            self._words = self._buf = self._mm = self._rbuf = None
            region.close()

    def unlink(self) -> None:
        """Remove the KV's name or file and its semaphores.

        Processes still attached keep working; nobody can attach any more. The handle stays
        open: :meth:`close` it too.
        """
        self._check_open()
        if self._readonly:
            raise ReadOnlyError(f"KV {self.name!r} is attached read-only and cannot be unlinked")
        self._region.mark_closed_state()
        self._region.unlink_name()
        for name in _sem_names(self._region.nonce):
            unlink_semaphore(name)

    def flush(self) -> None:
        """Write the mapping back to its file (``msync``): a file-backed KV's contents are then
        durable against a machine crash (they survive process exits without it)."""
        self._check_open()
        self._region.flush()

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError(f"KV {self.name!r} is closed")

    def _w(self) -> memoryview:
        w = self._words
        if w is None:
            raise ClosedError(f"KV {self.name!r} is closed")
        return w

    def _after_fork_in_child(self) -> None:
        self._participants.forget_after_fork()
        self._slot = None
        self._pins = 0
        self._batch_depth = 0
        self._pending = []  # the parent's: it holds the lock, not this child
        self._batch_journal = 0
        self._lock_owner_value = 0
        if self._closed or self._readonly:
            return
        try:
            with self._participants.attach_lock():
                self._claim_slot()
        except Exception:
            self._closed = True  # cannot take part: the handle is unusable in this child

    # -- keys ---------------------------------------------------------------------------------

    def _key(self, key: Any) -> _Entry:
        """``(key bytes, tag, high bits of the lens word, key length, padded key length)``;
        cached per handle."""
        entry = self._keycache.get(key) if type(key) in (str, bytes) else None
        if entry is not None:
            return entry
        if isinstance(key, str):
            kb, flag = key.encode(), _STR
        elif isinstance(key, bytes):
            kb, flag = bytes(key), 0
        else:
            raise TypeError(f"KV keys are str or bytes, not {type(key).__name__}")
        klen = len(kb)
        if klen > L.KV_KLEN_MASK:
            raise ValueError(f"key of {klen} bytes exceeds the KV limit of {L.KV_KLEN_MASK} bytes")
        hasher = (self._hash_str if flag else self._hash_bytes).copy()
        hasher.update(kb)
        tag = int.from_bytes(hasher.digest(), "little")
        entry = (kb, tag or 1, flag | klen << L.KV_KLEN_SHIFT, klen, (klen + 7) & ~7)
        cache = self._keycache
        if len(cache) >= KEY_CACHE_MAX:
            cache.clear()
        cache[key] = entry
        return entry

    # -- reading (no lock) --------------------------------------------------------------------

    def _load_index(self) -> int:
        """Cache the index descriptor; return the index seqlock value it belongs to."""
        w = self._w()
        spins = 0
        while True:
            s0 = int(w[_W_IDX_SEQ])
            if s0 == self._idx_seen:
                return s0
            if s0 & 1:
                spins += 1
                w = self._wait_stable(spins)
                continue
            block = int(w[L.W_KV_INDEX_BLOCK])
            cap = int(w[L.W_KV_INDEX_CAP])
            if w[_W_IDX_SEQ] != s0:
                continue
            if cap & (cap - 1) or cap < 2 or block + _HDR + cap * L.KV_SLOT_SIZE > self._size or block % 64:
                if self._maybe_remap():
                    w = self._w()
                    continue
                raise CorruptionError(
                    f"KV {self.name!r}: index descriptor out of bounds ({block}, {cap} slots)"
                )
            self._idx_base = block // 8 + _HDR_WORDS
            self._idx_mask = cap - 1
            self._idx_seen = s0
            return s0

    def _wait_stable(self, spins: int) -> memoryview:
        """A slot or the index stays odd (being written): a writer is at work, or died there."""
        if spins < SPINS_BEFORE_CHECK:
            return self._w()
        self._retries += 1
        if not self._readonly and self._batch_depth == 0:
            # Taking the lock detects a dead holder and repairs its half-done write.
            self._acquire()
            self._release()
        else:
            time.sleep(0.001)
            if spins > SPINS_BEFORE_CHECK + STUCK_READ_TIMEOUT * 1000:
                raise WaitTimeout(
                    f"KV {self.name!r}: an entry stayed half-written for {STUCK_READ_TIMEOUT} s "
                    "(its writer died; a writable handle repairs it)"
                )
        return self._w()

    def _maybe_remap(self) -> bool:
        """Map the region again if it grew; return whether it did."""
        w = self._w()
        mapped = int(w[L.W_KV_MAPPED])
        if mapped > self._size:
            self._remap(mapped)
            return True
        return False

    def _remap(self, size: int) -> None:
        region = self._region
        st = os.fstat(region.fd).st_size
        if st < size:
            raise CorruptionError(f"KV {self.name!r}: published size {size} but the file has {st} bytes")
        old_words, old_buf, old_mm = region.words, region.buf, region.mm
        region._map(size)
        for view in (self._rbuf, old_words, old_buf):
            if view is not None:
                view.release()
        if old_mm is not None:
            try:
                old_mm.close()
            except BufferError:
                pass  # views made from the old mapping are alive: it goes with the last of them
        self._words = region.words
        self._buf = region.buf
        self._mm = region.mm
        self._rbuf = None if region.buf is None else region.buf.toreadonly()
        self._size = region.size
        self._heap.refresh()
        self._idx_seen = -1

    def _lookup(self, entry: _Entry) -> tuple[int, int, int, int, int]:
        """Find a key: ``(slot word, slot seq, index seq, value start, value end)``; the caller
        re-checks ``slot seq`` and ``index seq`` after using the value. ``value start`` is -1 if
        the key is absent (validated)."""
        kb, tag, hi, klen, kpad = entry
        vstart_rel = _HDR + kpad
        spins = 0
        while True:
            s0 = self._load_index()
            w = self._words
            buf = self._buf
            assert w is not None and buf is not None
            base = self._idx_base
            mask = self._idx_mask
            i = tag & mask
            probes = 0
            while True:
                j = base + (i << 2)
                seq = w[j]
                if seq & 1:
                    spins += 1
                    self._retries += 1
                    self._wait_stable(spins)
                    break
                off = w[j + 2]
                if off == 0:
                    if w[j] == seq and w[_W_IDX_SEQ] == s0:
                        return j, seq, s0, -1, -1
                    self._retries += 1
                    break
                if off != 1 and w[j + 1] == tag:
                    lens = w[j + 3]
                    if lens & _HIMASK == hi:
                        start = off + vstart_rel
                        end = start + (lens & _VMASK)
                        if end > self._size:
                            if w[j] == seq and not self._maybe_remap() and w[_W_IDX_SEQ] == s0:
                                raise CorruptionError(
                                    f"KV {self.name!r}: entry at offset {off} runs past the region ({end} > {self._size})"
                                )
                            self._retries += 1
                            break
                        p = off + _HDR
                        if self._mm[p : p + klen] == kb:  # type: ignore[index]
                            return j, seq, s0, start, end
                    if w[j] != seq:
                        self._retries += 1
                        break
                i = (i + 1) & mask
                probes += 1
                if probes > mask:
                    if w[_W_IDX_SEQ] == s0:
                        raise CorruptionError(f"KV {self.name!r}: index has no empty slot")
                    break

    def _lookup_range(self, entry: _Entry, key: Any) -> tuple[int, int]:
        """Value bounds of a key, validated (the caller has pinned the epoch)."""
        w = self._words
        hot = self._hot.get(key)
        if hot is not None and w is not None:
            j, seq, start, end, s0 = hot  # see __getitem__: the slot still names the block
            if w[_W_IDX_SEQ] == s0 and w[j] == seq:
                return start, end
        if w is not None:
            # Fast path: __getitem__'s, returning the bounds instead of a copy.
            s0 = w[_W_IDX_SEQ]
            if s0 == self._idx_seen:
                mm = self._mm
                kb, tag, hi, klen, kpad = entry
                mask = self._idx_mask
                i = tag & mask
                while True:
                    j = self._idx_base + (i << 2)
                    seq, slot_tag, off, lens = _SLOT_UNPACK(mm, j << 3)  # type: ignore[arg-type]
                    if slot_tag == tag and lens & _HIMASK == hi:
                        p = off + _HDR
                        start = p + kpad
                        end = start + (lens & _VMASK)
                        if (
                            end <= self._size
                            and mm[p : p + klen] == kb  # type: ignore[index]
                            and w[j] == seq
                            and not seq & 1
                            and w[_W_IDX_SEQ] == s0
                        ):
                            if len(self._hot) >= KEY_CACHE_MAX:
                                self._hot.clear()
                            self._hot[key] = (j, seq, start, end, s0)
                            return start, end
                        break
                    if off == 0 or seq & 1:
                        break
                    i = (i + 1) & mask
        while True:
            j, seq, s0, start, end = self._lookup(entry)
            if start < 0:
                raise KeyError(key)
            w = self._w()
            if w[j] == seq and w[_W_IDX_SEQ] == s0:
                return start, end
            self._retries += 1

    def __getitem__(self, key: Key) -> bytes:
        w = self._words
        try:
            # Where this handle last read the key: its slot, the slot's sequence word then, the
            # value's bounds and the index's sequence word. While both sequence words are
            # unchanged, the slot still names the same block, and a published block is never
            # changed in place (nor reused while its slot still names it): copy the value and
            # re-check both (the seqlock protocol, without the probe and the key comparison).
            j, seq, start, end, s0 = self._hot[key]
        except KeyError:
            pass
        else:
            if w is not None and w[_W_IDX_SEQ] == s0 and w[j] == seq:
                data: bytes = self._mm[start:end]  # type: ignore[index]
                if w[j] == seq and w[_W_IDX_SEQ] == s0:
                    return data
        try:
            entry = self._keycache[key]
        except KeyError:
            entry = self._key(key)
        if w is not None:
            # Fast path (the general loop in _get_slow handles everything unusual): index
            # descriptor unchanged, probe (a slot is read with one unpack: the sequence word
            # re-read afterwards validates it), compare the key, copy, re-check both sequences.
            s0 = w[_W_IDX_SEQ]
            if s0 == self._idx_seen:
                mm = self._mm
                kb, tag, hi, klen, kpad = entry
                mask = self._idx_mask
                i = tag & mask
                while True:
                    j = self._idx_base + (i << 2)
                    seq, slot_tag, off, lens = _SLOT_UNPACK(mm, j << 3)  # type: ignore[arg-type]
                    if slot_tag == tag and lens & _HIMASK == hi:
                        # (Tags are never 0: an empty slot or a tombstone does not match.)
                        p = off + _HDR
                        start = p + kpad
                        end = start + (lens & _VMASK)
                        if end <= self._size and mm[p : p + klen] == kb:  # type: ignore[index]
                            data = mm[start:end]  # type: ignore[index]
                            if w[j] == seq and not seq & 1 and w[_W_IDX_SEQ] == s0:
                                hot = self._hot
                                if len(hot) >= KEY_CACHE_MAX:
                                    hot.clear()
                                hot[key] = (j, seq, start, end, s0)
                                return data
                        break
                    if off == 0 or seq & 1:
                        break
                    i = (i + 1) & mask
        return self._get_slow(key, entry)

    def _get_slow(self, key: Key, entry: _Entry) -> bytes:
        if self._words is None:
            self._check_open()
        while True:
            j, seq, s0, start, end = self._lookup(entry)
            if start < 0:
                raise KeyError(key)
            data = self._buf[start:end].tobytes()  # type: ignore[index]
            w = self._words
            if w[j] == seq and w[_W_IDX_SEQ] == s0:  # type: ignore[index]
                return data
            self._retries += 1

    def get(self, key: Key, default: Any = None) -> Any:
        """The value of ``key`` (a copy), or ``default``."""
        try:
            return self[key]
        except KeyError:
            return default

    def __contains__(self, key: object) -> bool:
        if type(key) not in (str, bytes) and not isinstance(key, (str, bytes)):
            return False
        entry = self._key(key)
        if self._words is None:
            self._check_open()
        while True:
            j, seq, s0, start, _end = self._lookup(entry)
            w = self._words
            if start < 0 or (w[j] == seq and w[_W_IDX_SEQ] == s0):  # type: ignore[index]
                return start >= 0
            self._retries += 1

    def __len__(self) -> int:
        return int(self._w()[L.W_KV_LIVE_KEYS])

    def __iter__(self) -> Iterator[Key]:
        """Iterate over a snapshot of the keys (each one was live while the scan ran)."""
        return iter([k for k, _v in self._scan(False)])

    def items(self) -> ItemsView[Key, bytes]:
        """Items, read from a snapshot scan when iterated (each pair was live during the scan)."""
        return _KVItems(self)

    def values(self) -> ValuesView[bytes]:
        return _KVValues(self)

    def _scan(self, values: bool) -> list[tuple[Key, bytes | None]]:
        """Every live entry, each read consistently (retrying a slot that changed meanwhile)."""
        while True:
            s0 = self._load_index()
            w = self._words
            buf = self._buf
            assert w is not None and buf is not None
            base, cap = self._idx_base, self._idx_mask + 1
            out: list[tuple[Key, bytes | None]] = []
            restart = False
            for i in range(cap):
                j = base + (i << 2)
                spins = 0
                while True:
                    seq = w[j]
                    if seq & 1:
                        spins += 1
                        self._wait_stable(spins)
                        w = self._words
                        buf = self._buf
                        assert w is not None and buf is not None
                        if w[_W_IDX_SEQ] != s0:
                            restart = True
                            break
                        continue
                    off = w[j + 2]
                    if off < 2:
                        break
                    lens = w[j + 3]
                    klen = (lens >> L.KV_KLEN_SHIFT) & L.KV_KLEN_MASK
                    start = off + _HDR + ((klen + 7) & ~7)
                    end = start + (lens & _VMASK)
                    if end > self._size:
                        if w[j] == seq and not self._maybe_remap() and w[_W_IDX_SEQ] == s0:
                            raise CorruptionError(
                                f"KV {self.name!r}: entry at offset {off} runs past the region"
                            )
                        restart = True
                        break
                    kb = buf[off + _HDR : off + _HDR + klen].tobytes()
                    value = buf[start:end].tobytes() if values else None
                    if w[j] == seq:
                        out.append((kb.decode(errors="surrogateescape") if lens & _STR else kb, value))
                        break
                    self._retries += 1
                if restart:
                    break
            if not restart and w[_W_IDX_SEQ] == s0:
                return out
            self._retries += 1

    def view(self, key: Key) -> _View:
        """A context manager yielding a read-only zero-copy ``memoryview`` of the value.

        Its bytes stay valid and unchanged while the ``with`` block runs, even if writers
        replace or delete the key meanwhile (the block's memory is not reused until the view
        ends). Do not keep the view, or anything made from it (a numpy array), past the block.
        Raises ``KeyError``. On a read-only handle the view is of a private copy.
        """
        if self._closed:
            self._check_open()
        return _View(self, key)

    def _pin(self) -> None:
        if self._pins == 0:
            w = self._w()
            if self._slot is None:
                raise ClosedError(f"KV {self.name!r} has no participant slot in this process")
            w[self._pin_word] = w[_W_EPOCH] + 1
        self._pins += 1

    def _unpin(self) -> None:
        self._pins -= 1
        if self._pins == 0 and self._words is not None:
            self._words[self._pin_word] = 0

    # -- waiting for a change -----------------------------------------------------------------

    def wait_for_change(self, timeout: float | None = None, since: int | None = None) -> int:
        """Sleep until a write completes; return the new :attr:`commit_seq`.

        Waits until ``commit_seq`` differs from ``since`` (default: its value at the call), so
        ``seq = kv.wait_for_change(since=seq)`` in a loop misses nothing. Raises
        :class:`WaitTimeout` after ``timeout`` seconds.
        """
        w = self._w()
        target = int(w[_W_COMMIT]) if since is None else since
        now = int(w[_W_COMMIT])
        if now != target:
            return now
        deadline = None if timeout is None else time.monotonic() + timeout
        sem = self._sem_change
        wait_word = None if self._readonly or self._slot is None else L.slot_word(self._slot, L.S_KV_WAIT)
        try:
            while True:
                if wait_word is not None:
                    w[wait_word] = 1
                    w[L.W_KV_WAITERS] = 1
                now = int(w[_W_COMMIT])
                if now != target:
                    return now
                slice_ = SLICE
                if deadline is not None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise WaitTimeout(
                            f"no write to KV {self.name!r} within {timeout} s (commit_seq {target})"
                        )
                    slice_ = min(slice_, left)
                if sem is not None and wait_word is not None:
                    sem.acquire(slice_)
                else:
                    time.sleep(min(slice_, 0.001))
                w = self._w()
        finally:
            if wait_word is not None and self._words is not None:
                self._words[wait_word] = 0

    def _notify(self) -> None:
        """Wake the processes sleeping in wait_for_change (writer, under the lock)."""
        w = self._words
        sem = self._sem_change
        assert w is not None and sem is not None
        waiting = 0
        first = L.slot_word(0, L.S_KV_WAIT)
        for slot in range(self._participants.capacity):
            if w[first + slot * L.SLOT_WORDS]:
                waiting += 1
        if not waiting:
            w[L.W_KV_WAITERS] = 0
            return
        for _ in range(max(0, waiting - sem.value)):
            sem.release()

    # -- the writer lock ----------------------------------------------------------------------

    def _acquire(self) -> None:
        if self._batch_depth:
            return
        if self._closed or self._readonly or self._slot is None:
            self._acquire_checks()
        # The ring's protocol (``Ring._lock_writer``): lock_state = 1 before the acquire, so
        # that dying between the acquire and the owner store stays recoverable.
        w: memoryview = self._words  # type: ignore[assignment]
        w[self._lock_state_word] = 1
        if not self._sem_lock.try_acquire():  # type: ignore[union-attr]
            self._lock_wait(self.timeout)
        w[_W_LOCK_GRANTS] += 1
        w[_W_LOCK_OWNER] = self._lock_owner_value
        if w[_W_MAPPED] > self._size or w[_W_JOURNAL]:
            try:
                mapped = w[_W_MAPPED]
                if mapped > self._size:
                    self._remap(int(mapped))
                if self._words[_W_JOURNAL] != L.J_IDLE:  # type: ignore[index]
                    self._check(repair=True, verify=False)
            except BaseException:
                self._release()
                raise

    def _acquire_checks(self) -> None:
        if self._closed:
            raise ClosedError(f"KV {self.name!r} is closed")
        if self._readonly:
            raise ReadOnlyError(f"KV {self.name!r} is attached read-only")
        if self._slot is None:
            with self._participants.attach_lock():
                self._claim_slot()

    def _release(self) -> None:
        if self._batch_depth:
            return
        w: memoryview = self._words  # type: ignore[assignment]
        w[_W_LOCK_OWNER] = 0
        self._sem_lock.release()  # type: ignore[union-attr]
        w[self._lock_state_word] = 0

    def _end_batch(self) -> None:
        """Leave the outermost batch: record its pending blocks, settle the journal, unlock."""
        try:
            if self._pending:
                self._flush_pending()
            w = self._words
            if w is not None and self._batch_journal and w[_W_JOURNAL] == self._batch_journal:
                # The journal still names the batch's last put, which completed. (Anything else
                # there is a write cut short by an exception: it stays for the repair.)
                w[_W_JOURNAL] = 0
        finally:
            self._batch_journal = 0
            self._batch_depth = 0
            self._release()

    def _flush_pending(self) -> None:
        """Record the blocks the batch's puts replaced in the deferred list (lock held).

        The puts kept room for them. Tagged with the epoch and time of now, later than their
        replacement: their reuse waits longer, never less.
        """
        pending = self._pending
        k = len(pending)
        w = self._words
        assert w is not None
        # Cut short by an exception, the list is left for the repair: the journal stays.
        completed, self._batch_journal = self._batch_journal, 0
        base, cap, n = self._deferred()
        if n + k > cap:
            raise CorruptionError(f"KV {self.name!r}: deferred-free list overflow ({n} + {k} of {cap})")
        entries = [0, int(w[_W_EPOCH]), _monotonic_ns()] * k
        entries[0::3] = pending
        e = base + n * 3
        w[e : e + 3 * k] = array.array("Q", entries)  # writer-private words: the count publishes
        w[_W_DEFERRED_COUNT] = n + k
        pending.clear()
        if n + k >= self._reclaim_at:
            self._reclaim()
            self._reclaim_at = int(self._w()[_W_DEFERRED_COUNT]) + RECLAIM_EVERY
        self._batch_journal = completed

    def _lock_wait(self, timeout: float | None) -> None:
        """The semaphore is taken: wait for it in slices, handing it on if its holder died."""
        sem = self._sem_lock
        w = self._words
        slot = self._slot
        assert sem is not None and w is not None and slot is not None
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            wait = LOCK_CHECK_INTERVAL
            if deadline is not None:
                wait = min(wait, deadline - time.monotonic())
                if wait <= 0:
                    w[L.slot_word(slot, L.S_LOCK_STATE)] = 0
                    raise WaitTimeout(
                        f"writer lock of KV {self.name!r} still held by "
                        f"{self._owner_description()} after {timeout} s"
                    )
            if sem.acquire(wait):
                break
            self._check_lock_holder()
        self._unknown_owner_since = None

    def _owner_description(self) -> str:
        owner = self._w()[L.W_LOCK_OWNER]
        if not owner:
            return "an unrecorded holder"
        slot = (owner & 0xFFFF) - 1
        if not 0 <= slot < self._participants.capacity:
            return f"bad owner {owner:#x}"
        return f"process {self._participants.get_field(slot, L.S_PID)} (slot {slot})"

    def _check_lock_holder(self) -> None:
        """Called while waiting for the writer lock: hand it on if its holder died (ring's rule)."""
        words = self._words
        sem = self._sem_lock
        assert words is not None and sem is not None
        owner = words[L.W_LOCK_OWNER]
        participants = self._participants
        if owner:
            self._unknown_owner_since = None
            if words[L.W_LOCK_SUSPECT]:
                words[L.W_LOCK_SUSPECT] = 0
            slot = (owner & 0xFFFF) - 1
            if 0 <= slot < participants.capacity and not participants.alive(slot):
                if participants.take_dead(slot):
                    try:
                        self._cleanup_dead_slot(slot)
                    finally:
                        participants.release(slot)
            return
        if sem.value > 0:
            self._unknown_owner_since = None
            if words[L.W_LOCK_SUSPECT]:
                words[L.W_LOCK_SUSPECT] = 0
            return
        now = time.monotonic()
        grants = words[L.W_LOCK_GRANTS]
        if self._unknown_owner_since is None or grants != self._stale_grants:
            self._unknown_owner_since = now
            self._stale_grants = grants
            return
        if now - self._unknown_owner_since < LOCK_STALE_AFTER:
            return
        self._unknown_owner_since = None
        with participants.attach_lock():
            if words[L.W_LOCK_GRANTS] != grants or words[L.W_LOCK_OWNER] != 0 or sem.value != 0:
                return
            dead_slot = None
            for p in participants.table():
                if (
                    not p.alive
                    and participants.get_field(p.slot, L.S_LOCK_STATE) == 1
                    and participants.take_dead(p.slot)
                ):
                    dead_slot = p.slot
                    break
            if dead_slot is None and not words[L.W_LOCK_SUSPECT]:
                return
            try:
                words[L.W_LOCK_SUSPECT] = 0
                words[L.W_LOCK_GRANTS] = grants + 1
                words[L.W_RECOVERIES] += 1
                sem.release()
            finally:
                if dead_slot is not None:
                    self._clear_slot_words(dead_slot)
                    participants.release(dead_slot)

    def _clear_slot_words(self, slot: int) -> None:
        w = self._words
        assert w is not None
        w[L.slot_word(slot, L.S_KV_PIN)] = 0
        w[L.slot_word(slot, L.S_KV_WAIT)] = 0

    def _cleanup_dead_slot(self, slot: int) -> None:
        """Run by whoever won a dead participant's slot lock."""
        words = self._words
        assert words is not None
        self._clear_slot_words(slot)
        owner = words[L.W_LOCK_OWNER]
        if owner and owner == (self._participants.generation(slot) << 16 | (slot + 1)):
            # It died holding the writer lock: the next holder repairs what the journal says.
            words[L.W_LOCK_OWNER] = 0
            words[L.W_RECOVERIES] += 1
            assert self._sem_lock is not None
            self._sem_lock.release()
        elif not owner and self._participants.get_field(slot, L.S_LOCK_STATE) == 1:
            words[L.W_LOCK_SUSPECT] = 1

    # -- writing (under the lock) -------------------------------------------------------------

    def batch(self) -> _Batch:
        """``with kv.batch():`` holds the writer lock across many writes (one acquisition).

        Each write inside stays atomic on its own; readers may see some of the batch's writes
        before the others (a batch is not a transaction). Reads inside the block work as usual.
        """
        self._check_open()
        return _Batch(self)

    def __setitem__(self, key: Key, value: Any) -> None:
        try:
            entry = self._keycache[key]
        except KeyError:
            entry = self._key(key)
        if type(value) is bytes:
            n = len(value)
        else:
            value = _as_bytes_view(value)
            n = value.nbytes
        locked = not self._batch_depth  # in a batch, the lock is held (and checked) already
        if locked:
            self._acquire()
        try:
            # _put_locked of one value, inlined for the common case: the replacement of a key,
            # or a new key that needs no index growth, with a block from this writer's cache of
            # released blocks (else one _alloc). Everything else (a stale index descriptor,
            # checksums, max_keys or index growth, a full deferred list) goes to _put_locked
            # before anything is changed. The shared stores and their order are _put_locked's.
            w: memoryview = self._words  # type: ignore[assignment]
            if w[_W_IDX_SEQ] != self._idx_seen or n > self._fast_max:
                self._put_locked(entry, (value,), n)
                return
            kb, tag, hi, klen, kpad = entry
            mm: mmap.mmap = self._mm  # type: ignore[assignment]
            mask = self._idx_mask
            # Find the slot (under the lock nothing changes it: one unpack reads it whole).
            i = tag & mask
            tomb = -1
            probes = 0
            while True:
                j = self._idx_base + (i << 2)
                seq, slot_tag, old, old_lens = _SLOT_UNPACK(mm, j << 3)
                if old == 0:  # a new key
                    max_keys = w[_W_MAX_KEYS]
                    if max_keys and w[_W_LIVE_KEYS] >= max_keys:
                        self._put_locked(entry, (value,), n)  # KVFull
                        return
                    if tomb >= 0:
                        j = tomb
                        seq, slot_tag, old, old_lens = _SLOT_UNPACK(mm, j << 3)
                    elif (w[_W_USED_SLOTS] + 1) * 4 > (mask + 1) * 3:
                        self._put_locked(entry, (value,), n)  # grows the index
                        return
                    break
                if old == 1:
                    if tomb < 0:
                        tomb = j
                elif (
                    slot_tag == tag and old_lens & _HIMASK == hi and mm[old + _HDR : old + _HDR + klen] == kb
                ):
                    break
                i = (i + 1) & mask
                probes += 1
                if probes > mask:
                    self._put_locked(entry, (value,), n)  # raises: no empty slot
                    return
            desc = w[_W_DEFERRED_DESC]
            count = w[_W_DEFERRED_COUNT]
            pending = self._pending  # empty outside a batch
            if count + len(pending) + 2 > 1 << (desc >> 56):
                self._put_locked(entry, (value,), n)  # makes room in the deferred list
                return
            # From here on the journal word is not a completed put of this batch (see _end_batch).
            self._batch_journal = 0
            # A block: one this writer released, unchanged since (no heap walk), else _alloc.
            nbytes = kpad + n
            need = (nbytes + _HDR + _ALIGN_MASK) & ~_ALIGN_MASK
            if need < _MIN_BLOCK:
                need = _MIN_BLOCK
            off = 0
            cached = self._released.get(need)
            if cached and w[_W_HEAP_WALKS] == self._walks_seen:
                while cached:
                    o = cached.pop()
                    b = o >> 3
                    if w[b + 1] == _RELEASED and w[b] == need:
                        w[b + 1] = self._owned
                        off = o
                        break
            if not off:
                # May flush the pending blocks or reclaim (the count changes), or grow and remap.
                off = self._alloc(nbytes)
                w = self._words  # type: ignore[assignment]
                mm = self._mm  # type: ignore[assignment]
                count = w[_W_DEFERRED_COUNT]
            p = off + _HDR
            mm[p : p + klen] = kb
            q = p + kpad
            mm[q : q + n] = value
            lens = hi | n
            bi = off >> 3
            # The block says where it goes: the journal is one store (the roll-forward reads it).
            w[bi + _B_TAG] = tag
            w[bi + _B_LENS] = lens
            w[bi + _B_SLOT] = j
            w[bi + _B_SEQ] = seq + 2
            w[_W_JOURNAL] = off | _J_PUT
            w[bi + _B_STATE] = _IN_FLIGHT
            w[j] = seq + 1
            if slot_tag != tag:
                w[j + 1] = tag
            w[j + 2] = off
            if old_lens != lens:
                w[j + 3] = lens
            w[j] = seq + 2
            if old >= 2:
                if old_lens != lens:
                    w[_W_LIVE_BYTES] += n - (old_lens & _VMASK)
                if not locked:
                    # In a batch the old block waits in a private list, recorded in the deferred
                    # list every RECLAIM_EVERY puts and at the end (tagged then: a later epoch
                    # and time only make its reuse wait longer). Meanwhile the journal keeps the
                    # last put (completed: its roll-forward changes nothing), so a successor of
                    # a process killed here sweeps, and the sweep finds the pending blocks.
                    pending.append(old)
                else:
                    # Retire the old block (inline _retire: the list is read and written only
                    # by the lock holder, so its entries are plain packed stores; the count
                    # publishes them). Nothing since the check above moved the list (desc).
                    _DEFERRED_PACK(
                        mm,
                        (desc & _DESC_MASK) + _HDR + count * _LIST_ENTRY,
                        old,
                        w[_W_EPOCH],
                        _monotonic_ns(),
                    )
                    w[_W_DEFERRED_COUNT] = count + 1
                    if count >= self._reclaim_at:
                        self._reclaim()
                        w = self._words  # type: ignore[assignment]
                        self._reclaim_at = int(w[_W_DEFERRED_COUNT]) + RECLAIM_EVERY
            else:
                w[_W_LIVE_KEYS] += 1
                w[_W_LIVE_BYTES] += klen + n
                if old == 0:
                    w[_W_USED_SLOTS] += 1
            if locked:
                w[_W_JOURNAL] = 0
            else:
                self._batch_journal = off | _J_PUT  # the batch's end clears it
            w[_W_COMMIT] += 1
            if w[_W_WAITERS]:
                self._notify()
            if len(pending) >= RECLAIM_EVERY:
                self._flush_pending()
        finally:
            if locked:  # _release, inline
                w = self._words  # type: ignore[assignment]
                w[_W_LOCK_OWNER] = 0
                self._sem_lock.release()  # type: ignore[union-attr]
                w[self._lock_state_word] = 0

    def _find_for_write(self, entry: _Entry) -> tuple[int, int]:
        """(slot word, current offset: 0 empty, 1 tombstone, else the entry's block)."""
        kb, tag, hi, klen, _kpad = entry
        w = self._words
        mm = self._mm
        assert w is not None and mm is not None
        if w[_W_IDX_SEQ] != self._idx_seen:
            self._load_index()
        base, mask = self._idx_base, self._idx_mask
        i = tag & mask
        tomb = -1
        for _ in range(mask + 1):
            j = base + (i << 2)
            off = w[j + 2]
            if off == 0:
                return (tomb, 1) if tomb >= 0 else (j, 0)
            if off == 1:
                if tomb < 0:
                    tomb = j
            elif w[j + 1] == tag and w[j + 3] & _HIMASK == hi and mm[off + _HDR : off + _HDR + klen] == kb:
                return j, int(off)
            i = (i + 1) & mask
        if tomb >= 0:
            return tomb, 1
        raise CorruptionError(f"KV {self.name!r}: index of {mask + 1} slots has no empty slot")

    def _put_locked(self, entry: _Entry, parts: tuple[Any, ...], n: int) -> None:
        if self._pending:
            self._flush_pending()  # before the journal goes idle again
        self._batch_journal = 0
        kb, tag, hi, klen, kpad = entry
        if n > _VMASK:
            raise ValueError(f"value of {n} bytes exceeds the KV limit of {_VMASK} bytes")
        klen = len(kb)
        j, old = self._find_for_write(entry)
        w = self._words
        assert w is not None
        if old < 2:
            max_keys = w[L.W_KV_MAX_KEYS]
            if max_keys and w[L.W_KV_LIVE_KEYS] >= max_keys:
                raise KVFull(
                    f"KV {self.name!r} is full: it holds {w[L.W_KV_LIVE_KEYS]} keys, its max_keys; "
                    f"a new key ({klen}-byte key, {n}-byte value) does not fit"
                )
            if old == 0 and (w[L.W_KV_USED_SLOTS] + 1) * 4 > (self._idx_mask + 1) * 3:
                self._grow_index(1)
                j, old = self._find_for_write(entry)
                w = self._words
                assert w is not None
        desc = w[L.W_KV_DEFERRED_DESC]
        if w[L.W_KV_DEFERRED_COUNT] + 2 > 1 << (desc >> 56):
            self._ensure_deferred_room(2)
        kpad = (klen + 7) & ~7
        off = self._alloc(kpad + n)
        w = self._words
        buf = self._buf
        assert w is not None and buf is not None
        p = off + _HDR
        buf[p : p + klen] = kb
        q = p + kpad
        for part in parts:
            m = len(part) if type(part) is bytes else part.nbytes
            buf[q : q + m] = part
            q += m
        bi = off >> 3
        if w[L.W_KV_FLAGS] & L.KV_CHECKSUMS:
            buf[p + klen : p + kpad] = bytes(kpad - klen)
            w[bi + L.B_REF] = zlib.crc32(buf[p:q]) | 1 << 32
        lens = hi | n
        seq = w[j]
        # The block says where it goes: the journal is one store (the roll-forward reads it).
        w[bi + L.KV_B_TAG] = tag
        w[bi + L.KV_B_LENS] = lens
        w[bi + L.KV_B_SLOT] = j
        w[bi + L.KV_B_SEQ] = seq + 2
        w[_W_JOURNAL] = off | _J_PUT
        w[bi + 1] = _IN_FLIGHT  # B_STATE
        old_lens = w[j + 3]
        w[j] = seq + 1
        if w[j + 1] != tag:
            w[j + 1] = tag
        w[j + 2] = off
        if old_lens != lens:
            w[j + 3] = lens
        w[j] = seq + 2
        if old >= 2:
            if old_lens != lens:
                w[_W_LIVE_BYTES] += (lens & _VMASK) - (old_lens & _VMASK)
            # Retire the old block (inline _retire: the list is read and written only by the
            # lock holder, so its entries are plain packed stores; the count publishes them).
            count = w[_W_DEFERRED_COUNT]
            desc = w[L.W_KV_DEFERRED_DESC]
            _DEFERRED_ENTRY.pack_into(
                buf, (desc & _DESC_MASK) + _HDR + count * 24, old, w[_W_EPOCH], _monotonic_ns()
            )
            w[_W_DEFERRED_COUNT] = count + 1
            if count >= self._reclaim_at:
                self._reclaim()
                w = self._words
                assert w is not None
                self._reclaim_at = int(w[_W_DEFERRED_COUNT]) + RECLAIM_EVERY
        else:
            w[L.W_KV_LIVE_KEYS] += 1
            w[_W_LIVE_BYTES] += klen + n
            if old == 0:
                w[L.W_KV_USED_SLOTS] += 1
        w[_W_JOURNAL] = 0
        w[_W_COMMIT] += 1
        if w[L.W_KV_WAITERS]:
            self._notify()

    def __delitem__(self, key: Key) -> None:
        entry = self._key(key)
        self._acquire()
        try:
            if not self._delete_locked(entry):
                raise KeyError(key)
        finally:
            self._release()

    def _delete_locked(self, entry: _Entry) -> bool:
        if self._pending:
            self._flush_pending()  # before the journal goes idle again
        self._batch_journal = 0
        j, old = self._find_for_write(entry)
        if old < 2:
            return False
        self._ensure_deferred_room(2)
        w = self._words
        assert w is not None
        seq = w[j]
        old_lens = w[j + 3]
        w[L.W_J_STATE] = j << 3 | L.J_DELETE
        w[j] = seq + 1
        w[j + 1] = 0
        w[j + 2] = L.SLOT_TOMBSTONE
        w[j + 3] = 0
        w[j] = seq + 2
        w[L.W_KV_LIVE_KEYS] -= 1
        w[L.W_KV_LIVE_BYTES] -= ((old_lens >> L.KV_KLEN_SHIFT) & L.KV_KLEN_MASK) + (old_lens & _VMASK)
        self._retire(old)
        w[L.W_J_STATE] = L.J_IDLE
        w[_W_COMMIT] += 1
        if w[L.W_KV_WAITERS]:
            self._notify()
        return True

    def _read_locked(self, entry: _Entry) -> bytes | None:
        """The current value (under the lock nothing changes it), or None."""
        j, old = self._find_for_write(entry)
        if old < 2:
            return None
        w = self._words
        buf = self._buf
        assert w is not None and buf is not None
        lens = w[j + 3]
        klen = (lens >> L.KV_KLEN_SHIFT) & L.KV_KLEN_MASK
        start = old + _HDR + ((klen + 7) & ~7)
        return buf[start : start + (lens & _VMASK)].tobytes()

    def pop(self, key: Key, default: Any = _MISSING) -> Any:
        """Remove ``key`` and return its value (atomically), or ``default`` if absent."""
        entry = self._key(key)
        self._acquire()
        try:
            value = self._read_locked(entry)
            if value is not None:
                self._delete_locked(entry)
        finally:
            self._release()
        if value is None:
            if default is _MISSING:
                raise KeyError(key)
            return default
        return value

    def setdefault(self, key: Key, default: Any = b"") -> bytes:  # type: ignore[override]
        """The value of ``key``; if absent, store ``default`` first (atomically) and return it."""
        entry = self._key(key)
        mv = _as_bytes_view(default)
        self._acquire()
        try:
            value = self._read_locked(entry)
            if value is None:
                self._put_locked(entry, (mv,), mv.nbytes)
                value = mv.tobytes()
        finally:
            self._release()
        return value

    def update(self, other: Any = (), /, **kwargs: Any) -> None:
        """Store many items under one lock acquisition (each write atomic on its own)."""
        items: Iterable[tuple[Any, Any]]
        if isinstance(other, Mapping):
            items = other.items()
        elif hasattr(other, "keys"):
            items = ((k, other[k]) for k in other.keys())  # noqa: SIM118 (a keys() protocol object)
        else:
            items = other
        with self.batch():
            for key, value in items:
                self[key] = value
            for key, value in kwargs.items():
                self[key] = value

    def clear(self) -> None:
        """Remove every key (one index swap under the lock)."""
        self._acquire()
        try:
            self._load_index()
            self._rebuild_index(self._idx_mask + 1, keep=False)
        finally:
            self._release()

    def compare_and_set(self, key: Key, expected: Any, new: Any) -> bool:
        """Store ``new`` if the current value equals ``expected`` (``None``: key absent).

        ``new=None`` deletes the key. Returns whether it stored. Atomic against every writer.
        """
        entry = self._key(key)
        new_mv = None if new is None else _as_bytes_view(new)
        expected_bytes = None if expected is None else _as_bytes_view(expected).tobytes()
        self._acquire()
        try:
            current = self._read_locked(entry)
            if current != expected_bytes:
                return False
            if new_mv is None:
                if current is not None:
                    self._delete_locked(entry)
            else:
                self._put_locked(entry, (new_mv,), new_mv.nbytes)
            return True
        finally:
            self._release()

    def increment(self, key: Key, delta: int = 1) -> int:
        """Add ``delta`` to an integer counter and return its new value (atomically).

        A counter is stored as 8 bytes, little-endian, signed (``int.from_bytes(kv[key],
        "little", signed=True)``); an absent key counts as 0. Raises ``ValueError`` if the
        current value is not 8 bytes or the result does not fit 64 bits.
        """
        entry = self._key(key)
        self._acquire()
        try:
            current = self._read_locked(entry)
            if current is None:
                value = delta
            elif len(current) != 8:
                raise ValueError(
                    f"KV {self.name!r}: value of {key!r} has {len(current)} bytes, not an 8-byte counter"
                )
            else:
                value = int.from_bytes(current, "little", signed=True) + delta
            try:
                data = value.to_bytes(8, "little", signed=True)
            except OverflowError:
                raise ValueError(
                    f"KV {self.name!r}: counter {key!r} would overflow 64 bits ({value})"
                ) from None
            self._put_locked(entry, (data,), 8)
            return value
        finally:
            self._release()

    # -- allocation, growth, retirement (under the lock) --------------------------------------

    def _alloc(self, nbytes: int) -> int:
        """A block for ``nbytes`` of payload, ALLOCATED to this writer (caller holds the lock)."""
        if self._pending:
            self._flush_pending()  # growth sets the journal idle
        need = (nbytes + _HDR + L.BLOCK_ALIGN - 1) & ~(L.BLOCK_ALIGN - 1)
        if need < L.MIN_BLOCK:
            need = L.MIN_BLOCK
        w = self._words
        assert w is not None
        cached = self._released.get(need)
        if cached:
            # Fast path: a block this writer released, still released and unchanged (no heap
            # walk since, which is the only thing that merges or hands out released blocks).
            if w[_W_HEAP_WALKS] == self._walks_seen:
                owned = self._owned
                while cached:
                    off = cached.pop()
                    i = off >> 3
                    if w[i + 1] == _RELEASED and w[i] == need:
                        w[i + 1] = owned
                        return off
            else:
                self._released.clear()
        off = self._walk_alloc(nbytes)
        if off >= 0:
            return off
        if self._reclaim():
            off = self._walk_alloc(nbytes)
            if off >= 0:
                return off
        if self._deferred()[2]:
            # Blocks retired less than the grace period ago: wait it out once before growing.
            time.sleep(RECLAIM_GRACE_NS / 1e9)
            if self._reclaim():
                off = self._walk_alloc(nbytes)
                if off >= 0:
                    return off
        self._grow(need)
        off = self._walk_alloc(nbytes)
        if off < 0:
            raise KVFull(f"KV {self.name!r}: no block of {nbytes} bytes after growing to {self._size} bytes")
        return off

    def _walk_alloc(self, nbytes: int) -> int:
        """The heap's allocation walk (it may merge released blocks: caches are dropped)."""
        w = self._words
        assert w is not None
        walks = w[_W_HEAP_WALKS] + 1
        w[_W_HEAP_WALKS] = walks
        self._walks_seen = walks
        self._released.clear()
        return self._heap.try_alloc(nbytes, self._owner)

    def _grow(self, need: int) -> None:
        w = self._words
        assert w is not None
        cur = self._size
        max_size = int(w[L.W_KV_MAX_SIZE])
        target = L.align_up(max(cur * 2, cur + need + L.PAGE_SIZE), L.PAGE_SIZE)
        if max_size:
            limit = max_size & ~(L.PAGE_SIZE - 1)
            target = min(target, limit)
            if target < cur + need:
                raise KVFull(
                    f"KV {self.name!r} is full: a write needs a block of {need} bytes; the region has "
                    f"{cur} bytes ({int(w[L.W_KV_LIVE_BYTES])} bytes live in {int(w[L.W_KV_LIVE_KEYS])} keys) "
                    f"and max_size is {max_size} bytes"
                )
        arena = (target - self._heap.arena_start) & ~(L.BLOCK_ALIGN - 1)
        w[L.W_J_OFFSET] = target
        w[L.W_J_LENS] = arena
        w[L.W_J_STATE] = L.J_GROW
        try:
            self._apply_grow(target, arena)
        except NoSpaceError:
            self._w()[L.W_J_STATE] = L.J_IDLE
            raise
        self._w()[L.W_J_STATE] = L.J_IDLE

    def _apply_grow(self, target: int, arena: int) -> None:
        region = self._region
        st = os.fstat(region.fd).st_size
        published = min(self._size, int(self._w()[L.W_KV_MAPPED]))
        if st < target or st > published:
            if st < target:
                os.ftruncate(region.fd, target)
            try:
                # From the published size: a growth cut short may have left pages unreserved.
                os.posix_fallocate(region.fd, published, target - published)
            except OSError as exc:
                if exc.errno == errno.ENOSPC:
                    os.ftruncate(region.fd, st)
                    raise KVFull(
                        f"KV {self.name!r}: cannot grow from {st} to {target} bytes: the backing "
                        "store is full"
                    ) from None
                if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                    os.ftruncate(region.fd, st)
                    raise
        if target > self._size:
            self._remap(target)
        self._heap.extend(arena)
        w = self._words
        assert w is not None
        if w[L.W_KV_MAPPED] < target:
            w[L.W_KV_MAPPED] = target

    def _grow_index(self, extra: int) -> None:
        w = self._words
        assert w is not None
        cap = self._idx_mask + 1
        live = int(w[L.W_KV_LIVE_KEYS])
        new_cap = cap
        while (live + extra) * 2 > new_cap:
            new_cap *= 2
        self._rebuild_index(new_cap, keep=True)

    def _rebuild_index(self, new_cap: int, keep: bool) -> None:
        """Copy the live entries (or none) into a new index block and publish it."""
        if self._pending:
            self._flush_pending()  # before the journal goes idle again
        self._batch_journal = 0
        self._load_index()
        w = self._words
        assert w is not None
        old_block = int(w[L.W_KV_INDEX_BLOCK])
        old_base, old_cap = self._idx_base, self._idx_mask + 1
        entries = []
        for i in range(old_cap):
            j = old_base + (i << 2)
            off = w[j + 2]
            if off >= 2:
                entries.append((int(w[j + 1]), int(off), int(w[j + 3])))
        self._ensure_deferred_room(len(entries) + 2 if not keep else 2)
        nbytes = new_cap * L.KV_SLOT_SIZE
        block = self._alloc(nbytes)
        w = self._words
        buf = self._buf
        assert w is not None and buf is not None
        p = block + _HDR
        buf[p : p + nbytes] = bytes(nbytes)
        live_bytes = 0
        if keep:
            base = p // 8
            mask = new_cap - 1
            for tag, off, lens in entries:
                i = tag & mask
                while w[base + (i << 2) + 2]:
                    i = (i + 1) & mask
                j = base + (i << 2)
                w[j + 1] = tag
                w[j + 2] = off
                w[j + 3] = lens
                live_bytes += ((lens >> L.KV_KLEN_SHIFT) & L.KV_KLEN_MASK) + (lens & _VMASK)
        w[block // 8 + L.KV_B_CAPACITY] = new_cap
        w[L.W_J_STATE] = block | L.J_INDEX
        self._heap.set_state(block, _IN_FLIGHT)
        self._publish_index(block, new_cap)
        count = len(entries) if keep else 0
        w[L.W_KV_USED_SLOTS] = count
        w[L.W_KV_LIVE_KEYS] = count
        w[L.W_KV_LIVE_BYTES] = live_bytes
        self._retire(old_block)
        if not keep:
            for _tag, off, _lens in entries:
                self._retire(off)
        w[L.W_J_STATE] = L.J_IDLE
        w[_W_COMMIT] += 1
        if w[L.W_KV_WAITERS]:
            self._notify()

    def _publish_index(self, block: int, cap: int) -> None:
        w = self._words
        assert w is not None
        s = int(w[_W_IDX_SEQ])
        if not s & 1:
            s += 1
            w[_W_IDX_SEQ] = s
        w[L.W_KV_INDEX_BLOCK] = block
        w[L.W_KV_INDEX_CAP] = cap
        w[_W_IDX_SEQ] = s + 1
        self._idx_seen = -1

    def _deferred(self) -> tuple[int, int, int]:
        """(first word of the list, capacity, count)."""
        w = self._words
        assert w is not None
        desc = int(w[L.W_KV_DEFERRED_DESC])
        return (desc & ((1 << 56) - 1)) // 8 + _HDR_WORDS, 1 << (desc >> 56), int(w[L.W_KV_DEFERRED_COUNT])

    def _retire(self, offset: int) -> None:
        """Queue a block that readers may still view; free it once no view can reach it."""
        w = self._words
        buf = self._buf
        assert w is not None and buf is not None
        base, cap, n = self._deferred()
        if n >= cap:
            raise CorruptionError(f"KV {self.name!r}: deferred-free list overflow ({n} of {cap})")
        _DEFERRED_ENTRY.pack_into(buf, (base + n * 3) * 8, offset, w[_W_EPOCH], _monotonic_ns())
        w[_W_DEFERRED_COUNT] = n + 1
        if n + 1 >= self._reclaim_at:
            self._reclaim()
            self._reclaim_at = int(w[_W_DEFERRED_COUNT]) + RECLAIM_EVERY

    def _oldest_pin(self) -> int:
        """The oldest epoch a live participant's view pins (``_NO_PIN`` if none)."""
        w = self._words
        assert w is not None
        oldest = _NO_PIN
        participants = self._participants
        first = _W_FIRST_PIN
        # One strided read of every slot's pin word (each an aligned 8-byte load).
        pins = w[first : first + participants.capacity * L.SLOT_WORDS : L.SLOT_WORDS].tolist()
        if any(pins):
            for slot, pin in enumerate(pins):
                if pin and pin - 1 < oldest and participants.alive(slot):
                    oldest = pin - 1
        return oldest

    def _reclaim(self) -> bool:
        """Release the retired blocks no view can reach; return whether any was.

        The epoch moves on first: views pinned from now on cannot reach anything retired
        before, so a block tagged ``t`` is free once every live pin is newer than ``t``.
        """
        w = self._words
        assert w is not None
        base, _cap, n = self._deferred()
        if not n:
            return False
        w[_W_EPOCH] += 1
        oldest = self._oldest_pin()
        limit = _monotonic_ns() - RECLAIM_GRACE_NS
        # The reclaimable prefix: entries (offset, epoch, retire time) in retire order.
        e = base + 1
        end = base + n * 3
        if oldest == _NO_PIN:  # no view anywhere: only the grace period counts
            while e < end and w[e + 1] <= limit:
                e += 3
        else:
            while e < end and w[e] < oldest and w[e + 1] <= limit:
                e += 3
        k = (e - base) // 3
        if not k:
            return False
        saved = w[_W_JOURNAL]
        if saved == L.J_IDLE:
            w[_W_JOURNAL] = L.J_LIST
        released = self._released
        if w[_W_HEAP_WALKS] != self._walks_seen:
            released.clear()
            self._walks_seen = int(w[_W_HEAP_WALKS])
        for off in w[base : base + k * 3 : 3].tolist():
            i = off >> 3
            w[i + 1] = _RELEASED
            size = w[i]
            cached = released.get(size)
            if cached is None:
                released[size] = [off]
            elif len(cached) < RELEASED_CACHE_MAX:
                cached.append(off)
        rest = (n - k) * 3
        if rest:
            w[base : base + rest] = memoryview(w[base + k * 3 : base + n * 3].tobytes()).cast("Q")
        w[_W_DEFERRED_COUNT] = n - k
        if saved == L.J_IDLE:
            w[_W_JOURNAL] = L.J_IDLE
        return True

    def _ensure_deferred_room(self, k: int) -> None:
        """Make room for ``k`` more retired blocks (before the journal of a write is set)."""
        _base, cap, n = self._deferred()
        if n + k <= cap:
            return
        self._reclaim()
        _base, cap, n = self._deferred()
        if n + k <= cap:
            return
        # Entries younger than the grace period, or pinned by a long view: a longer list (it
        # settles at about the writes of one grace period) rather than a wait.
        shift = max(INITIAL_DEFERRED_SHIFT, (2 * (n + k)).bit_length())
        self._replace_deferred(shift)

    def _replace_deferred(self, shift: int) -> None:
        """Move the deferred list to a block of ``1 << shift`` entries."""
        block = self._alloc((1 << shift) * L.KV_DEFERRED_ENTRY_WORDS * 8)
        w = self._words
        assert w is not None
        base, _cap, n = self._deferred()
        old_block = (base - _HDR_WORDS) * 8
        new_base = block // 8 + _HDR_WORDS
        if n:
            w[new_base : new_base + n * 3] = w[base : base + n * 3]
        saved = w[L.W_J_STATE]
        if saved == L.J_IDLE:
            w[L.W_J_STATE] = L.J_LIST
        self._heap.set_state(block, _IN_FLIGHT)
        w[L.W_KV_DEFERRED_DESC] = block | shift << 56
        self._heap.set_state(old_block, _RELEASED)  # only writers read the list: no grace needed
        if saved == L.J_IDLE:
            w[L.W_J_STATE] = L.J_IDLE

    # -- checking and repair ------------------------------------------------------------------

    def _check(self, *, repair: bool, verify: bool, first: bool = False) -> None:
        """Check the whole region; with ``repair`` finish a dead writer's operation and sweep.

        ``verify`` also recomputes every key's tag and every checksummed value's crc32;
        ``first``: nobody else has the region open (blocks being filled are garbage). Raises
        :class:`CorruptionError` naming the first inconsistency.
        """
        if self._pending:
            self._flush_pending()  # a sweep must not find them unrecorded
        w = self._w()
        name = self.name
        heap = self._heap
        limit = 1 << 62
        for word, what in (
            (_W_COMMIT, "commit_seq"),
            (_W_EPOCH, "epoch"),
            (_W_IDX_SEQ, "index_seq"),
            (L.W_KV_REPAIRS, "repairs"),
            (L.W_RECOVERIES, "recoveries"),
        ):
            if w[word] >= limit:
                raise CorruptionError(f"KV {name!r}: counter {what} holds {w[word]:#x}")
        max_size = int(w[L.W_KV_MAX_SIZE])
        if max_size and max_size < self._region.header()["total_size"]:
            raise CorruptionError(f"KV {name!r}: max_size {max_size} is below the creation size")
        if first and not self._readonly:
            heap.set_control(L.H_ROVER, 0)
        raw_journal = int(w[L.W_J_STATE])
        journal = raw_journal & L.J_OP_MASK
        if journal not in (L.J_IDLE, L.J_PUT, L.J_DELETE, L.J_INDEX, L.J_GROW, L.J_LIST) or (
            journal in (L.J_IDLE, L.J_GROW, L.J_LIST) and raw_journal != journal
        ):
            raise CorruptionError(f"KV {name!r}: journal word {raw_journal:#x} is not a known operation")
        if journal == L.J_GROW and repair:
            target, arena = int(w[L.W_J_OFFSET]), int(w[L.W_J_LENS])
            max_size = int(w[L.W_KV_MAX_SIZE])
            if (
                target % L.PAGE_SIZE
                or target < int(w[L.W_KV_MAPPED])
                or (max_size and target > max_size)
                or arena != (target - heap.arena_start) & ~(L.BLOCK_ALIGN - 1)
            ):
                raise CorruptionError(f"KV {name!r}: journal records an impossible growth to {target} bytes")
            self._apply_grow(target, arena)
            w = self._w()
        mapped = int(w[L.W_KV_MAPPED])
        if mapped > self._size:
            self._remap(mapped)
            w = self._w()
        try:
            heap.refresh()
        except CorruptionError:
            raise CorruptionError(f"KV {name!r}: the heap arena runs past the region") from None
        if heap.arena_start + heap.arena_size > mapped:
            raise CorruptionError(
                f"KV {name!r}: heap arena ({heap.arena_size} bytes) exceeds the size {mapped}"
            )
        blocks = self._walk()

        def block_of(offset: int, nbytes: int, what: str, states: tuple[int, ...] = (_IN_FLIGHT,)) -> None:
            info = blocks.get(offset)
            if info is None:
                raise CorruptionError(f"KV {name!r}: {what} names offset {offset}, which is not a heap block")
            if info[1] & 0xFF not in states:
                raise CorruptionError(
                    f"KV {name!r}: {what} at offset {offset} is in state "
                    f"{L.BLOCK_STATE_NAMES.get(info[1] & 0xFF, info[1] & 0xFF)}"
                )
            if info[0] - _HDR < nbytes:
                raise CorruptionError(
                    f"KV {name!r}: {what} at offset {offset} needs {nbytes} bytes, its block has {info[0] - _HDR}"
                )

        # The index: a journaled replacement is rolled forward first.
        if journal == L.J_INDEX:
            block = raw_journal & ~(L.BLOCK_ALIGN - 1)
            if block not in blocks:
                raise CorruptionError(f"KV {name!r}: journal names index block {block}, not a heap block")
            cap = int(w[block // 8 + L.KV_B_CAPACITY])
            if cap < 2 or cap & (cap - 1):
                raise CorruptionError(f"KV {name!r}: journal records an index of {cap} slots")
            block_of(block, cap * L.KV_SLOT_SIZE, "journaled index", (_IN_FLIGHT, L.BLOCK_ALLOCATED))
            if repair:
                heap.set_state(block, _IN_FLIGHT)
                blocks[block] = (blocks[block][0], _IN_FLIGHT)
                if w[L.W_KV_INDEX_BLOCK] != block or w[_W_IDX_SEQ] & 1:
                    self._publish_index(block, cap)
        if w[_W_IDX_SEQ] & 1:
            raise CorruptionError(
                f"KV {name!r}: the index descriptor is half-written and no journal explains it"
            )
        index_block, cap = int(w[L.W_KV_INDEX_BLOCK]), int(w[L.W_KV_INDEX_CAP])
        if cap < 2 or cap & (cap - 1):
            raise CorruptionError(f"KV {name!r}: index capacity {cap} is not a power of two")
        block_of(index_block, cap * L.KV_SLOT_SIZE, "index")
        desc = int(w[L.W_KV_DEFERRED_DESC])
        list_block, list_cap = desc & ((1 << 56) - 1), 1 << min(desc >> 56, 40)
        block_of(list_block, list_cap * L.KV_DEFERRED_ENTRY_WORDS * 8, "deferred-free list")
        n_deferred = int(w[L.W_KV_DEFERRED_COUNT])
        if n_deferred > list_cap:
            raise CorruptionError(
                f"KV {name!r}: deferred-free list claims {n_deferred} of {list_cap} entries"
            )
        base = index_block // 8 + _HDR_WORDS
        if journal in (L.J_PUT, L.J_DELETE):
            if journal == L.J_PUT:
                new_off = raw_journal & ~(L.BLOCK_ALIGN - 1)
                if new_off not in blocks:
                    raise CorruptionError(
                        f"KV {name!r}: journal names entry block {new_off}, not a heap block"
                    )
                bi = new_off // 8
                new_tag, lens = int(w[bi + L.KV_B_TAG]), int(w[bi + L.KV_B_LENS])
                j, target_seq = int(w[bi + L.KV_B_SLOT]), int(w[bi + L.KV_B_SEQ])
                klen = (lens >> L.KV_KLEN_SHIFT) & L.KV_KLEN_MASK
                need = ((klen + 7) & ~7) + (lens & _VMASK)
                block_of(new_off, need, "journaled entry", (_IN_FLIGHT, L.BLOCK_ALLOCATED))
            else:
                new_off, new_tag, lens = L.SLOT_TOMBSTONE, 0, 0
                j = raw_journal >> 3
                target_seq = int(w[j]) + 1 if base <= j < base + cap * 4 else 0
            if not base <= j < base + cap * 4 or (j - base) % 4:
                raise CorruptionError(f"KV {name!r}: journal names slot word {j}, outside the index")
            if target_seq & 1 or not target_seq - 2 <= w[j] <= target_seq:
                if journal == L.J_DELETE and not w[j] & 1:
                    target_seq = int(w[j])  # not started or finished: nothing to do
                else:
                    raise CorruptionError(
                        f"KV {name!r}: journal sequence {target_seq} does not match slot ({w[j]})"
                    )
            if repair:
                if journal == L.J_PUT:
                    heap.set_state(new_off, _IN_FLIGHT)
                    blocks[new_off] = (blocks[new_off][0], _IN_FLIGHT)
                if w[j] != target_seq:
                    w[j] = target_seq - 1
                    w[j + 1] = new_tag
                    w[j + 2] = new_off
                    w[j + 3] = lens
                    w[j] = target_seq
        # Every slot.
        buf = self._buf
        assert buf is not None
        seed = self._seed
        checksums = bool(w[L.W_KV_FLAGS] & L.KV_CHECKSUMS)
        referenced = {index_block, list_block}
        live = used = live_bytes = 0
        for i in range(cap):
            j = base + i * 4
            seq, tag, off, lens = int(w[j]), int(w[j + 1]), int(w[j + 2]), int(w[j + 3])
            if seq & 1:
                raise CorruptionError(
                    f"KV {name!r}: index slot {i} is half-written and no journal explains it"
                )
            if off == 0:
                continue
            used += 1
            if off == L.SLOT_TOMBSTONE:
                continue
            klen = (lens >> L.KV_KLEN_SHIFT) & L.KV_KLEN_MASK
            vlen = lens & _VMASK
            kpad = (klen + 7) & ~7
            block_of(off, kpad + vlen, f"index slot {i}")
            if off in referenced:
                raise CorruptionError(f"KV {name!r}: block at offset {off} is referenced twice (slot {i})")
            referenced.add(off)
            live += 1
            live_bytes += klen + vlen
            p = off + _HDR
            if verify:
                kb = buf[p : p + klen].tobytes()
                person = b"s" if lens & _STR else b"b"
                expect = int.from_bytes(
                    hashlib.blake2b(kb, digest_size=8, key=seed, person=person).digest(), "little"
                )
                if (expect or 1) != tag:
                    raise CorruptionError(f"KV {name!r}: index slot {i}: the key does not match its tag")
                if lens & _STR:
                    try:
                        kb.decode()
                    except UnicodeDecodeError:
                        raise CorruptionError(f"KV {name!r}: index slot {i}: str key is not UTF-8") from None
                if checksums:
                    crc = int(w[off // 8 + L.B_REF])
                    if crc >> 32 != 1 or zlib.crc32(buf[p : p + kpad + vlen]) != crc & 0xFFFFFFFF:
                        raise CorruptionError(
                            f"KV {name!r}: the value of key {kb[:40]!r} fails its checksum (offset {off})"
                        )
        if used >= cap:
            raise CorruptionError(f"KV {name!r}: index of {cap} slots has no empty slot")
        if not repair:
            return
        if first:
            # Nobody is alive: a block still being filled belongs to a writer that died.
            for off, (size, state) in list(blocks.items()):
                if state & 0xFF == L.BLOCK_ALLOCATED:
                    heap.set_state(off, _RELEASED)
                    blocks[off] = (size, _RELEASED)
        # Sweep: every in-use block that nothing references waits in the deferred list.
        orphans = [
            off
            for off, (_size, state) in blocks.items()
            if state & 0xFF == _IN_FLIGHT and off not in referenced
        ]
        w[L.W_J_STATE] = L.J_LIST
        w[L.W_KV_DEFERRED_COUNT] = 0
        if len(orphans) > list_cap:
            self._replace_deferred(max(INITIAL_DEFERRED_SHIFT, (2 * len(orphans)).bit_length()))
            w = self._w()
        lbase, _lcap, _n = self._deferred()
        epoch = int(w[_W_EPOCH])
        now = time.monotonic_ns()
        for x, off in enumerate(orphans):
            e = lbase + x * 3
            w[e] = off
            w[e + 1] = epoch
            w[e + 2] = now
        w[L.W_KV_DEFERRED_COUNT] = len(orphans)
        w[_W_EPOCH] = epoch + 1
        w[L.W_KV_LIVE_KEYS] = live
        w[L.W_KV_USED_SLOTS] = used
        w[L.W_KV_LIVE_BYTES] = live_bytes
        if journal != L.J_IDLE:
            w[L.W_KV_REPAIRS] += 1
        w[L.W_J_STATE] = L.J_IDLE
        self._idx_seen = -1

    def _walk(self) -> dict[int, tuple[int, int]]:
        """Every heap block: offset -> (size, state word); raises on a torn or foreign block."""
        w = self._w()
        heap = self._heap
        start, end = heap.arena_start, heap.arena_end
        out: dict[int, tuple[int, int]] = {}
        offset = start
        while offset < end:
            i = offset // 8
            size = int(w[i + L.B_SIZE])
            if size < _HDR or size % L.BLOCK_ALIGN or offset + size > end:
                raise CorruptionError(f"KV {self.name!r}: heap block at offset {offset} has size {size}")
            if w[i + L.B_CHECK] != L.BLOCK_CHECK ^ (offset - start):
                raise CorruptionError(f"KV {self.name!r}: heap block at offset {offset} has a bad check word")
            state = int(w[i + L.B_STATE])
            if state & 0xFF not in L.BLOCK_STATE_NAMES:
                raise CorruptionError(
                    f"KV {self.name!r}: heap block at offset {offset} has state {state & 0xFF}"
                )
            out[offset] = (size, state)
            offset += size
        return out

    # -- statistics ---------------------------------------------------------------------------

    def stats(self) -> KVStats:
        """A snapshot of the shared counters and the heap (walks the heap: not for hot loops)."""
        self._check_open()
        self._maybe_remap()
        w = self._w()
        self._heap.refresh()
        free = largest = 0
        for block in self._heap.blocks():
            if block.state in ("free", "released"):
                free += block.size
                largest = max(largest, block.size)
        max_size = int(w[L.W_KV_MAX_SIZE])
        return KVStats(
            name=self.name,
            keys=int(w[L.W_KV_LIVE_KEYS]),
            bytes_live=int(w[L.W_KV_LIVE_BYTES]),
            bytes_free=free,
            heap_size=self._heap.arena_size,
            size=int(w[L.W_KV_MAPPED]),
            max_size=max_size or None,
            max_keys=int(w[L.W_KV_MAX_KEYS]) or None,
            fragmentation=0.0 if not free else 1.0 - largest / free,
            index_capacity=int(w[L.W_KV_INDEX_CAP]),
            index_used=int(w[L.W_KV_USED_SLOTS]),
            deferred_blocks=int(w[L.W_KV_DEFERRED_COUNT]),
            retries=self._retries,
            recoveries=int(w[L.W_RECOVERIES]),
            repairs=int(w[L.W_KV_REPAIRS]),
            commit_seq=int(w[_W_COMMIT]),
            participants=sum(1 for p in self._participants.table() if p.alive),
        )


def _as_bytes_view(value: Any) -> memoryview:
    """A contiguous byte view of a bytes-like value (``TypeError`` otherwise)."""
    if isinstance(value, str):
        raise TypeError("KV values are bytes-like, not str (encode it, or use kv.objects)")
    try:
        mv = memoryview(value)
    except TypeError:
        raise TypeError(
            f"KV values are bytes-like, not {type(value).__name__} (use kv.objects for other objects)"
        ) from None
    if not mv.c_contiguous:
        raise TypeError("KV values must be C-contiguous buffers")
    if mv.format != "B" or mv.ndim != 1:
        mv = mv.cast("B")
    return mv


# -- objects ----------------------------------------------------------------------------------

_OBJ_MAGIC = b"\x00KVO"


class _ObjectView:
    __slots__ = ("_key", "_objects", "_view")

    def __init__(self, objects: KVObjects, key: Key) -> None:
        self._objects = objects
        self._key = key
        self._view: _View | None = None

    def __enter__(self) -> Any:
        self._view = self._objects._kv.view(self._key)
        data = self._view.__enter__()
        try:
            return self._objects._decode(data)
        except BaseException:
            self._view.__exit__(None, None, None)
            raise

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._view is not None:
            self._view.__exit__(exc_type, exc, tb)
            self._view = None


class KVObjects(MutableMapping[Key, Any]):
    """``kv.objects``: the same KV, storing any picklable object (pickle protocol 5).

    Buffers of at least ``out_of_band_min`` bytes (numpy arrays, large bytes) are stored
    out-of-band, after the pickle stream, without an extra copy; ``objects[key]`` rebuilds them
    over one private copy of the value, and ``objects.view(key)`` rebuilds them as zero-copy
    read-only views of shared memory, valid inside the ``with`` block. Security: unpickling runs
    code chosen by whoever wrote the value; regions are mode 0600 (same user only).
    """

    __module__ = "mmipc"

    def __init__(self, kv: KV, out_of_band_min: int = OUT_OF_BAND_MIN) -> None:
        self._kv = kv
        self.out_of_band_min = out_of_band_min
        self._serializer = PickleSerializer()

    def __repr__(self) -> str:
        return f"<mmipc.KVObjects of {self._kv!r}>"

    def _encode(self, obj: Any) -> tuple[list[Any], int]:
        buffers: list[memoryview] = []
        threshold = self.out_of_band_min

        def callback(buffer: pickle.PickleBuffer) -> bool:
            raw = buffer.raw()
            if raw.nbytes < threshold:
                return True
            buffers.append(raw)
            return False

        stream = self._serializer.dumps(obj, callback)
        if not buffers:
            return [stream], len(stream)
        head = bytearray(_OBJ_MAGIC)
        head += len(buffers).to_bytes(4, "little") + len(stream).to_bytes(8, "little")
        for b in buffers:
            head += b.nbytes.to_bytes(8, "little")
        parts: list[Any] = [bytes(head), stream]
        total = len(head) + len(stream)
        pad = -total % 8
        if pad:
            parts.append(bytes(pad))
            total += pad
        for b in buffers:
            parts.append(b)
            total += b.nbytes
            pad = -total % 8
            if pad:
                parts.append(bytes(pad))
                total += pad
        return parts, total

    def _decode(self, data: Any) -> Any:
        mv = memoryview(data)
        if mv[:4] != _OBJ_MAGIC:
            try:
                return self._serializer.loads(mv, [])
            except Exception as exc:
                raise SerializationError(
                    f"KV {self._kv.name!r}: value is not an object written through kv.objects ({exc!r})"
                ) from exc
        try:
            count = int.from_bytes(mv[4:8], "little")
            slen = int.from_bytes(mv[8:16], "little")
            pos = 16 + 8 * count
            sizes = [int.from_bytes(mv[16 + 8 * k : 24 + 8 * k], "little") for k in range(count)]
            stream = mv[pos : pos + slen]
            pos += slen
            pos += -pos % 8
            buffers = []
            for size in sizes:
                if pos + size > mv.nbytes:
                    raise ValueError("buffer past the end")
                buffers.append(mv[pos : pos + size])
                pos += size
                pos += -pos % 8
        except ValueError as exc:
            raise SerializationError(f"KV {self._kv.name!r}: malformed object value ({exc})") from None
        return self._serializer.loads(stream, buffers)

    def __setitem__(self, key: Key, obj: Any) -> None:
        kv = self._kv
        entry = kv._key(key)
        parts, total = self._encode(obj)
        kv._acquire()
        try:
            kv._put_locked(entry, tuple(parts), total)
        finally:
            kv._release()

    def __getitem__(self, key: Key) -> Any:
        data = self._kv[key]
        return self._decode(bytearray(data))  # writable buffers, like a fresh unpickle

    def view(self, key: Key) -> _ObjectView:
        """A context manager yielding the object with its out-of-band buffers as zero-copy
        read-only views, valid inside the ``with`` block only."""
        self._kv._check_open()
        return _ObjectView(self, key)

    def __delitem__(self, key: Key) -> None:
        del self._kv[key]

    def __contains__(self, key: object) -> bool:
        return key in self._kv

    def __iter__(self) -> Iterator[Key]:
        return iter(self._kv)

    def __len__(self) -> int:
        return len(self._kv)


_PRIVATE = object()


def _weak_callback(method: Any) -> Callable[[], None]:
    import weakref

    ref = weakref.WeakMethod(method)

    def call() -> None:
        bound = ref()
        if bound is not None:
            bound()

    return call


def _rebuild_kv(descriptor: tuple[str, Any], readonly: bool = False) -> KV:
    backing, value = descriptor
    if backing == "named":
        region = Region.attach(L.KIND_KV, name=value, readonly=readonly)
    elif backing == "file":
        region = Region.attach(L.KIND_KV, path=value, readonly=readonly)
    else:
        region = Region.attach(L.KIND_KV, fd=value.detach(), readonly=readonly)
    return KV._from_region(region, readonly)
