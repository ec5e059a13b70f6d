"""Channel: any Python object over a Ring; large buffers out-of-band in a shared heap, zero-copy.

A channel is a :class:`~mmipc.Ring` (records: a small channel header, the serializer's stream,
small buffers in-band) plus a heap region beside it (``_heap``; named ``<name>.heap`` or
``<path>.heap``) whose blocks carry the large buffers (layouts in ``_layout``, heap section).

Sending (under the ring's writer lock or role, which also serializes the heap's allocator):
serialize first (a failure leaves nothing reserved), reserve the ring record, allocate one heap
block per out-of-band buffer and copy the buffer into it (the only copy; none for
:meth:`Channel.reserve_array`), write the record, turn the blocks IN_FLIGHT with the record's
position, publish.

Receiving: take the record (the ring releases it at once, so held objects never stall the
ring), validate every block reference (bounds, check word, ticket), turn the blocks HELD by this
participant, rebuild the object from read-only views of the blocks, then store ``done_pos`` (the
ring position up to which every record is fully processed). When the last view of a block is
garbage collected, a weak-reference callback stores RELEASED (one store, no lock: callbacks may
run anywhere). Producers reclaim RELEASED blocks lazily, and also:

* ALLOCATED blocks of a dead participant (a producer killed mid-send: never published);
* IN_FLIGHT blocks whose record is not unreleased in the ring any more (checked by reading the
  record at the block's position: it must be a channel record naming this block and ticket) and
  that no live consumer may be about to hold (its ``done_pos`` is past the record), i.e. records
  of a producer killed before publishing, or received by a consumer killed before holding them;
* HELD blocks of a dead participant (a consumer killed while holding arrays).
"""

from __future__ import annotations

import math
import os
import pickle
import struct
import time
import weakref
from collections import deque
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from . import _layout as L
from ._broadcast import Subscriber
from ._errors import (
    ClosedError,
    CorruptionError,
    EndOfStream,
    IncompatibleRegion,
    RecordTooLarge,
    RegionNotFound,
    SerializationError,
    WouldBlock,
)
from ._heap import Heap, block_size_for
from ._liveness import Participants
from ._region import Region
from ._ring import RecordInfo, Ring, RingStats
from ._serialization import DEFAULT_COPY_THRESHOLD, PickleSerializer, Serializer, resolve_serializer
from ._views import tracked_view
from ._wait import WaitStrategy

__all__ = ["Channel", "ChannelStats"]

_HEAD = L.CHAN_HEAD
_PROTO = 0x80  # pickle's PROTO opcode: the first byte of a bare protocol-5 stream
_BUF = L.CHAN_BUFFER
_HDR = L.BLOCK_HEADER_SIZE
_IN_FLIGHT = L.BLOCK_IN_FLIGHT
_HELD = L.BLOCK_HELD
_RELEASED = L.BLOCK_RELEASED
_ROLE_RECEIVER = L.ROLE_CONSUMER

# Weak references whose callbacks return heap blocks. Module level (not on a handle) so blocks
# return even after the handle that received them was collected; the callbacks never touch this
# dict (they may run inside any operation on it), the receiving path prunes dead entries.
_block_refs: dict[int, weakref.ref[Any]] = {}
_prune_at = 1024
# Heap regions whose handle closed while this process still held blocks: they stay mapped (and
# this participant stays alive) until the process exits, so the views stay valid.
_kept_open: list[Region] = []


def _make_release(words: memoryview, index: int, held: int, ticket: int) -> Any:
    pid = os.getpid()
    ticket_index = index - L.B_STATE + L.B_TICKET

    def release(_ref: Any) -> None:
        # A fork child's copies of a parent's views must not release the parent's blocks.
        if os.getpid() == pid and words[ticket_index] == ticket and words[index] == held:
            words[index] = _RELEASED

    return release


@dataclass(frozen=True)
class ChannelStats:
    """A snapshot of a channel: object counts, its ring's counters and its heap's use."""

    name: str
    capacity: int
    heap_size: int
    objects_sent: int
    objects_received: int
    heap_used_bytes: int
    heap_blocks_in_use: int
    heap_blocks_held: int
    heap_bytes_held: int
    heap_blocks_in_flight: int
    heap_reclaimed: int
    end_of_stream: bool
    participants: int
    ring: RingStats


def _heap_location(name: str | None, path: str | os.PathLike[str] | None) -> dict[str, Any]:
    if name is not None:
        return {"name": f"{name}.heap"}
    if path is not None:
        return {"path": f"{os.fspath(path)}.heap"}
    return {}


class Channel:
    """Send and receive Python objects between processes; large buffers travel zero-copy.

    Create with :meth:`create`, open by name or path with :meth:`attach`, or pass a handle to a
    child process (it pickles, under fork, spawn and forkserver). One handle per thread.
    """

    __module__ = "mmipc"

    def __init__(
        self,
        ring: Ring,
        heap_region: Region | None,
        serializer: Serializer,
        copy_threshold: int,
        *,
        _token: object = None,
    ) -> None:
        if _token is not _PRIVATE:
            raise TypeError("use Channel.create(...) or Channel.attach(...)")
        self._ring = ring
        self._mode: str = getattr(ring, "mode", "single")
        self._queue = self._mode == "queue"
        if self._queue:
            # One record per object: a queue channel rebuilds an object before releasing its
            # record, so an object whose receiver dies is redelivered; batch items cannot be.
            ring._pack_items = False  # type: ignore[attr-defined]
        self._subscriber = isinstance(ring, Subscriber)
        self._serializer = serializer
        self._copy_threshold = copy_threshold
        self._closed = False
        self._heap_region = heap_region
        self._heap: Heap | None = None
        self._heap_slot: int | None = None
        self._receiver = False
        # In-band records: with the pickle serializer, the bare protocol-5 stream (its first byte
        # is PROTO, 0x80, never the first byte of CHAN_MAGIC); otherwise a channel header first.
        self._bare_pickle = type(serializer) is PickleSerializer
        self._head0 = (
            b"" if self._bare_pickle else _HEAD.pack(L.CHAN_MAGIC, L.FMT_OBJECT, serializer.serializer_id, 0)
        )
        # Receiving: records taken from the ring but not rebuilt yet (a recv_many batch after a
        # record that failed), and the error of that record, raised by the next call.
        self._pending: deque[bytes] = deque()
        self._deferred_error: BaseException | None = None
        self._done_index: int | None = None  # word of this handle's S_DONE_POS in the heap
        # Sending with the default serializer: one reusable buffer callback and list.
        self._oob: list[Any] = []
        self._pickle_fast = type(serializer) is PickleSerializer and heap_region is not None
        if heap_region is not None:
            participants = Participants(heap_region)
            self._heap = heap = Heap(heap_region, participants, still_needed=self._still_needed)
            heap._begin_scan = self._begin_scan  # type: ignore[method-assign]
            self._hwords = heap_region.words
            self._hmm = heap_region.mm
            with participants.attach_lock():
                self._heap_slot = participants.claim(L.ROLE_ATTACHED, lambda slot: None)
            heap_region.fork_callbacks.append(_weak_callback(self._after_fork_in_child))
        self._scan_head = 0
        self._scan_tail = 0

    # -- construction -------------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        capacity: int,
        *,
        name: str | None = None,
        path: str | os.PathLike[str] | None = None,
        multi_writer: bool = False,
        serializer: Any = None,
        heap_size: int | None = None,
        copy_threshold: int | None = None,
        mode: str | int | None = None,
        untether_after: float | None = None,
        permissions: int | None = None,
        max_participants: int = L.DEFAULT_MAX_PARTICIPANTS,
        hugepages: bool = False,
        wait: str | WaitStrategy | None = None,
    ) -> Channel:
        """Create a channel: a ring of ``capacity`` bytes plus a heap of ``heap_size`` bytes.

        ``mode``: ``"single"`` (default: one receiver at a time), ``"queue"`` (each object to
        exactly one of many receiving processes; an object whose receiver died before it was
        rebuilt is delivered again, see :attr:`last_record`) or ``"broadcast"`` (every
        :meth:`subscribe` r receives every object; ``untether_after`` as for
        :meth:`Ring.create`). Broadcast channels carry everything in-band (no heap: a heap
        block cannot be lent to many receivers at once), so every subscriber gets its own copy.
        ``permissions`` of the created objects default to ``0o600`` (an ``int`` given as
        ``mode`` is accepted as permissions, as before).

        ``capacity`` holds records (serialized streams, small buffers); ``heap_size`` (default:
        ``capacity``) holds buffers of at least ``copy_threshold`` bytes (default
        :data:`DEFAULT_COPY_THRESHOLD`, 64 KiB) while they travel and while receivers hold them.
        ``heap_size=0``: no heap, everything travels in-band. ``serializer``: ``"pickle"``
        (default, protocol 5), ``"raw"`` (bytes-like only, never runs code on receive), a
        :class:`Serializer` or a ``(dumps, loads)`` pair. Regions are created with permissions ``0600``.
        ``name``/``path``/``multi_writer``/``hugepages``/``wait`` as for :meth:`Ring.create`.
        """
        ser = resolve_serializer(serializer)
        if isinstance(mode, int) and not isinstance(mode, bool):
            if permissions is not None:
                raise ValueError("give the permissions once (permissions=), not also as mode=")
            permissions, mode = mode, None
        perms = 0o600 if permissions is None else permissions
        if mode == "broadcast":
            if heap_size:
                raise ValueError(
                    "broadcast channels carry objects in-band (every subscriber gets a copy): "
                    f"heap_size must be 0, got {heap_size!r}"
                )
            heap_size = 0
        if heap_size is None:
            heap_size = capacity if isinstance(capacity, int) else 0
        if not isinstance(heap_size, int) or heap_size < 0:
            raise ValueError(f"heap_size must be an int >= 0, got {heap_size!r}")
        threshold = DEFAULT_COPY_THRESHOLD if copy_threshold is None else int(copy_threshold)
        if threshold < 1:
            raise ValueError(f"copy_threshold must be >= 1, got {copy_threshold!r}")
        heap_region = None
        if heap_size:
            heap_region = Region.create(
                L.KIND_HEAP,
                Heap.region_size_for(heap_size),
                mode=perms,
                max_participants=max_participants,
                hugepages=hugepages,
                **_heap_location(name, path),
            )
            Heap.format(heap_region, copy_threshold=threshold, serializer_id=ser.serializer_id)
        try:
            ring = Ring.create(
                capacity,
                name=name,
                path=path,
                multi_writer=multi_writer,
                mode=mode,
                untether_after=untether_after,
                permissions=perms,
                max_participants=max_participants,
                hugepages=hugepages,
                wait=wait,
            )
        except BaseException:
            if heap_region is not None:
                heap_region.unlink_name()
                heap_region.close()
            raise
        try:
            return cls(ring, heap_region, ser, threshold, _token=_PRIVATE)
        except BaseException:
            ring.unlink()
            ring.close()
            if heap_region is not None:
                heap_region.unlink_name()
                heap_region.close()
            raise

    @classmethod
    def attach(
        cls,
        name: str | None = None,
        *,
        path: str | os.PathLike[str] | None = None,
        serializer: Any = None,
        timeout: float = 2.0,
        wait: str | WaitStrategy | None = None,
    ) -> Channel:
        """Open an existing channel by ``name`` or ``path``.

        The serializer is the one recorded at creation (pickle or raw); a channel created with
        a custom pair needs the same ``serializer`` here. Raises :class:`RegionNotFound`,
        :class:`IncompatibleRegion` (for example a plain ring, without a heap),
        :class:`CorruptionError`.
        """
        ring = Ring.attach(name, path=path, timeout=timeout, wait=wait)
        try:
            try:
                heap_region = Region.attach(L.KIND_HEAP, timeout=timeout, **_heap_location(name, path))
            except RegionNotFound:
                heap_region = None
            try:
                ser_id = L.SER_PICKLE
                threshold = DEFAULT_COPY_THRESHOLD
                if heap_region is not None:
                    assert heap_region.words is not None and heap_region.buf is not None
                    c = L.HEADER.unpack_from(heap_region.buf, 0)[6] // 8
                    if heap_region.words[c + L.H_MAGIC] != L.HEAP_MAGIC:
                        raise IncompatibleRegion(f"heap of channel {ring.name!r} is not formatted")
                    ser_id = int(heap_region.words[c + L.H_SERIALIZER])
                    threshold = int(heap_region.words[c + L.H_COPY_THRESHOLD])
                if serializer is None:
                    if ser_id == L.SER_CUSTOM:
                        raise ValueError(
                            f"channel {ring.name!r} uses a custom serializer: pass the same one to attach"
                        )
                    serializer = "raw" if ser_id == L.SER_RAW else "pickle"
                ser = resolve_serializer(serializer)
                if heap_region is not None and ser.serializer_id != ser_id:
                    raise ValueError(
                        f"channel {ring.name!r} was created with serializer id {ser_id}, not {ser.name!r}"
                    )
                return cls(ring, heap_region, ser, threshold, _token=_PRIVATE)
            except BaseException:
                if heap_region is not None:
                    heap_region.close()
                raise
        except BaseException:
            ring.close()
            raise

    def __reduce__(self) -> tuple[Any, ...]:
        if self._closed:
            raise ClosedError(f"channel {self.name!r} is closed and cannot be pickled")
        if self._subscriber:
            raise TypeError(
                f"a subscriber of channel {self.name!r} does not pickle: pass the channel to the "
                "other process and subscribe there"
            )
        heap = self._heap_region.descriptor() if self._heap_region is not None else None
        return (_rebuild_channel, (self._ring, heap, self._serializer, self._copy_threshold))

    # -- properties, repr, close --------------------------------------------------------------

    @property
    def name(self) -> str:
        return self._ring.name

    @property
    def capacity(self) -> int:
        """Bytes of ring (record) space."""
        return self._ring.capacity

    @property
    def heap_size(self) -> int:
        """Bytes of heap (out-of-band buffer) space; 0 without a heap."""
        return self._heap.arena_size if self._heap is not None else 0

    @property
    def copy_threshold(self) -> int:
        return self._copy_threshold

    @property
    def serializer(self) -> Serializer:
        return self._serializer

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def wait(self) -> str:
        """This handle's wait strategy (``"block"``, ``"adaptive"``, ``"spin"``; settable)."""
        return self._ring.wait

    @wait.setter
    def wait(self, wait: str | WaitStrategy) -> None:
        self._ring.wait = wait  # type: ignore[assignment]

    @property
    def mode(self) -> str:
        """``"single"``, ``"queue"`` or ``"broadcast"`` (fixed at creation)."""
        return self._mode

    @property
    def last_record(self) -> RecordInfo | None:
        """Queue and broadcast receivers: ring position, sequence number and ``redelivered``
        flag of the record of the object received last (by :meth:`recv`)."""
        return getattr(self._ring, "last_record", None)

    def __repr__(self) -> str:
        if self._closed:
            return f"<mmipc.Channel {self.name!r} closed>"
        what = "Channel subscriber" if self._subscriber else "Channel"
        mode = "" if self._mode == "single" else f" mode={self._mode}"
        return (
            f"<mmipc.{what} {self.name!r}{mode} capacity={self.capacity} heap_size={self.heap_size} "
            f"serializer={self._serializer.name} copy_threshold={self._copy_threshold}>"
        )

    def __enter__(self) -> Channel:
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

    def close(self) -> None:
        """Leave the channel (idempotent). Objects received earlier stay valid.

        If this process still holds received views of heap blocks, the heap stays mapped and
        this participant stays registered until those views are collected... or the process
        exits: blocks are never reused under a live view.
        """
        if self._closed or not hasattr(self, "_ring"):
            return
        self._closed = True
        try:
            self._ring.close()
        finally:
            self._close_heap()

    def _close_heap(self) -> None:
        region = self._heap_region
        if region is None or region.closed or self._heap is None:
            return
        if self._heap_slot is not None and self._holds_blocks():
            # Stay registered (the held blocks are ours while this process lives) but stop being
            # a receiver: this handle can never take a record again, so its stale done mark must
            # not make producers keep a dead producer's unpublished blocks.
            participants = self._heap.participants
            slot = self._heap_slot
            participants.set_field(slot, L.S_ROLES, participants.get_field(slot, L.S_ROLES) & ~_ROLE_RECEIVER)
            self._done_index = None
            _kept_open.append(region)
            return
        participants = self._heap.participants
        try:
            with participants.attach_lock():
                if self._heap_slot is not None:
                    participants.release(self._heap_slot)
                    self._heap_slot = None
        finally:
            self._hwords = None
            self._hmm = None
            region.close()

    def _holds_blocks(self) -> bool:
        assert self._heap is not None and self._heap_slot is not None
        owner = self._heap.owner_of(self._heap_slot)
        return any(
            b.state == "held"
            and b.owner_slot == self._heap_slot
            and self._heap.state_word(b.offset) >> 8 == owner
            for b in self._heap.blocks()
        )

    def unlink(self) -> None:
        """Remove the channel's names or files (ring, heap) and semaphores; handles stay usable."""
        self._check_open()
        self._ring.unlink()
        if self._heap_region is not None:
            self._heap_region.mark_closed_state()
            self._heap_region.unlink_name()

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError(f"channel {self.name!r} is closed")

    def stats(self) -> ChannelStats:
        """A snapshot of the channel's counters and heap use (a subscriber: its own counters,
        ``objects_sent`` being what was published while it was subscribed)."""
        self._check_open()
        if self._subscriber:
            sub = self._ring.stats()
            return ChannelStats(
                name=self.name,
                capacity=self.capacity,
                heap_size=0,
                objects_sent=int(self._ring.next_sequence),  # type: ignore[attr-defined]
                objects_received=sub.records_read,
                heap_used_bytes=0,
                heap_blocks_in_use=0,
                heap_blocks_held=0,
                heap_bytes_held=0,
                heap_blocks_in_flight=0,
                heap_reclaimed=0,
                end_of_stream=False,
                participants=0,
                ring=sub,  # type: ignore[arg-type]
            )
        ring = self._ring.stats()
        hs = self._heap.stats() if self._heap is not None else None
        return ChannelStats(
            name=self.name,
            capacity=self.capacity,
            heap_size=self.heap_size,
            objects_sent=ring.records_written,
            objects_received=ring.records_read,
            heap_used_bytes=hs.used_bytes if hs else 0,
            heap_blocks_in_use=hs.blocks_in_use if hs else 0,
            heap_blocks_held=hs.held_blocks if hs else 0,
            heap_bytes_held=hs.held_bytes if hs else 0,
            heap_blocks_in_flight=hs.in_flight_blocks if hs else 0,
            heap_reclaimed=hs.reclaimed if hs else 0,
            end_of_stream=ring.end_of_stream,
            participants=ring.participants,
            ring=ring,
        )

    def _after_fork_in_child(self) -> None:
        if self._heap is not None:
            self._heap.participants.forget_after_fork()
        self._heap_slot = None
        self._receiver = False

    def _owner(self) -> int:
        heap = self._heap
        assert heap is not None
        if self._heap_slot is None:
            with heap.participants.attach_lock():
                self._heap_slot = heap.participants.claim(L.ROLE_ATTACHED, lambda slot: None)
        return heap.owner_of(self._heap_slot)

    # -- the heap's reclaim policy ------------------------------------------------------------

    def _begin_scan(self) -> None:
        words = self._ring._words
        assert words is not None
        # head before tail before any block state (x86-64 keeps loads in order): a block seen
        # IN_FLIGHT after head passed its record was not yet held when head moved (see _recv).
        self._scan_head = int(words[L.W_HEAD])
        self._scan_tail = int(words[L.W_TAIL])

    def _record_names(self, ref: int, offset: int, ticket: int) -> bool:
        """Whether the unreleased ring record at position ``ref`` names block ``offset``/``ticket``."""
        if not self._scan_head <= ref < self._scan_tail:
            return False
        ring = self._ring
        mm = ring._mm
        assert mm is not None
        cap = ring._capacity
        off = ref % cap
        base = ring._data_offset + off
        length, rtype, _flags, rpos, _seq, _user = L.RECORD.unpack_from(mm, base)
        if rtype != L.REC_DATA or rpos != ref or length < _HEAD.size or off + 32 + length > cap:
            return False
        magic, _fmt, _ser, nbufs = _HEAD.unpack_from(mm, base + 32)
        if magic != L.CHAN_MAGIC or _HEAD.size + nbufs * _BUF.size > length:
            return False
        for k in range(nbufs):
            boff, bticket, _n = _BUF.unpack_from(mm, base + 32 + _HEAD.size + k * _BUF.size)
            if boff == offset and bticket == ticket:
                return True
        return False

    def _still_needed(self, state: int, offset: int, ticket: int, ref: int, owner_alive: bool) -> bool:
        if self._record_names(ref, offset, ticket):
            return True  # still to be received (again, if its receiver died)
        if state == _IN_FLIGHT and ref < self._scan_head:
            # Released from the ring: a live receiver may be between taking it and holding it.
            heap = self._heap
            assert heap is not None
            participants = heap.participants
            for p in participants.table():
                if p.alive and p.roles & _ROLE_RECEIVER:
                    if participants.get_field(p.slot, L.S_DONE_POS) <= ref:
                        return True
        return False

    # -- sending --------------------------------------------------------------------------------

    def _buffer_callback(self, buffer: pickle.PickleBuffer) -> bool:
        """pickle's ``buffer_callback``: large buffers go to the heap (False: out-of-band)."""
        raw = buffer.raw()
        if raw.nbytes < self._copy_threshold:
            return True
        self._oob.append(raw)
        return False

    def _serialize(self, obj: Any) -> tuple[Any, list[Any]]:
        buffers: list[Any] = []
        self._oob = buffers
        callback = self._buffer_callback if self._heap is not None else None
        try:
            stream = self._serializer.dumps(obj, callback)
        except SerializationError:
            raise
        except Exception as exc:
            raise SerializationError(f"cannot serialize {type(obj).__name__} object: {exc}") from exc
        finally:
            self._oob = []
        return stream, buffers

    def send(self, obj: Any, timeout: float | None = None, *, wait: str | WaitStrategy | None = None) -> None:
        """Send one object. Waits at most ``timeout`` seconds (``None``: no limit) for space.

        Serialization happens first: an object that cannot be serialized raises
        :class:`SerializationError` and nothing is sent. Raises :class:`RecordTooLarge` (the
        message names the size and the capacity or heap_size needed), :class:`WaitTimeout`
        (ring full), :class:`HeapExhausted` (the heap stayed full: it says who holds it),
        :class:`EndOfStream`, :class:`ClosedError`. ``wait``: this call's wait strategy.
        """
        if wait is not None:
            self._ring._with_wait(wait, self.send, obj, timeout)
            return
        if self._closed:
            raise ClosedError(f"channel {self.name!r} is closed")
        if self._pickle_fast and type(obj) not in _SLOW_TYPES:
            # The common case inlined: one pickle call, no intermediate list when in-band.
            oob = self._oob
            try:
                stream = _pickle_dumps(obj, 5, buffer_callback=self._buffer_callback)
            except Exception as exc:
                del oob[:]
                raise SerializationError(f"cannot pickle {type(obj).__name__} object: {exc}") from exc
            if oob:
                self._oob = []
                self._send_buffers(L.FMT_OBJECT, stream, oob, timeout, False)
                return
        else:
            stream, buffers = self._serialize(obj)
            if buffers:
                self._send_buffers(L.FMT_OBJECT, stream, buffers, timeout, False)
                return
        try:
            self._ring.send(self._head0 + stream, timeout)
        except RecordTooLarge:
            raise self._too_large(len(stream), 0) from None

    def send_nowait(self, obj: Any) -> None:
        """:meth:`send` that raises :class:`WouldBlock` instead of waiting."""
        self._check_open()
        stream, buffers = self._serialize(obj)
        if buffers:
            self._send_buffers(L.FMT_OBJECT, stream, buffers, 0.0, True)
            return
        try:
            self._ring.send_nowait(self._head0 + stream)
        except RecordTooLarge:
            raise self._too_large(len(stream), 0) from None

    def send_many(self, objects: Iterable[Any], timeout: float | None = None) -> int:
        """Send many objects; small ones share ring records (``Ring.send_many``). Returns the count.

        Every object is serialized before anything is sent.
        """
        self._check_open()
        prepared = [self._serialize(obj) for obj in objects]
        head0 = self._head0
        sent = 0
        run: list[Any] = []
        for stream, buffers in prepared:
            if not buffers:
                run.append(head0 + stream)
                continue
            if run:
                sent += self._send_run(run, timeout)
                run = []
            self._send_buffers(L.FMT_OBJECT, stream, buffers, timeout, False)
            sent += 1
        if run:
            sent += self._send_run(run, timeout)
        return sent

    def _send_run(self, payloads: list[Any], timeout: float | None) -> int:
        try:
            return self._ring.send_many(payloads, timeout)
        except RecordTooLarge:
            raise self._too_large(max(len(p) for p in payloads) - _HEAD.size, 0) from None

    def _too_large(self, stream_bytes: int, buffer_bytes: int) -> RecordTooLarge:
        need = L.record_size(_HEAD.size + stream_bytes) + L.RECORD_ALIGN
        extra = f" plus {buffer_bytes} bytes of out-of-band buffers" if buffer_bytes else ""
        hint = "" if self._heap is not None else " (or give it a heap for large buffers)"
        return RecordTooLarge(
            f"object serializes to {stream_bytes} bytes in-band{extra}; channel {self.name!r} "
            f"holds records of up to {self._ring.max_record - _HEAD.size} bytes: create it with "
            f"capacity >= {need}{hint}"
        )

    def _check_heap_fits(self, sizes: list[int], stream_bytes: int) -> None:
        heap = self._heap
        assert heap is not None
        total = sum(block_size_for(n) for n in sizes)
        if total > heap.arena_size:
            raise RecordTooLarge(
                f"object has {len(sizes)} out-of-band buffers of {sum(sizes)} bytes in all "
                f"(largest {max(sizes)}); the heap of channel {self.name!r} holds "
                f"{heap.arena_size} bytes: create it with heap_size >= {total}"
            )
        length = _HEAD.size + len(sizes) * _BUF.size + stream_bytes
        if length > self._ring.max_record:
            raise self._too_large(length - _HEAD.size, sum(sizes))

    def _send_buffers(
        self, fmt: int, stream: Any, buffers: list[Any], timeout: float | None, nowait: bool
    ) -> None:
        heap = self._heap
        assert heap is not None
        sizes = [b.nbytes for b in buffers]
        stream_bytes = len(stream) if isinstance(stream, bytes) else memoryview(stream).nbytes
        self._check_heap_fits(sizes, stream_bytes)
        table_end = _HEAD.size + len(buffers) * _BUF.size
        length = table_end + stream_bytes
        deadline = None if timeout is None else time.monotonic() + timeout
        owner = self._owner()
        reservation = self._ring.reserve_nowait(length) if nowait else self._ring.reserve(length, timeout)
        with reservation as view:
            pos: int = reservation._pos  # the record's ring position (names it in block headers)
            blocks: list[int] = []
            try:
                mm = self._hmm
                assert mm is not None
                flat: list[int] = []
                for buffer, n in zip(buffers, sizes, strict=True):
                    left = None if deadline is None else max(0.0, deadline - time.monotonic())
                    offset = heap.alloc(n, owner, timeout=left, nowait=nowait)
                    blocks.append(offset)
                    mm[offset + _HDR : offset + _HDR + n] = buffer
                    flat += (offset, heap.ticket(offset), n)
                view[: _HEAD.size] = _HEAD.pack(
                    L.CHAN_MAGIC, fmt, self._serializer.serializer_id, len(buffers)
                )
                view[_HEAD.size : table_end] = struct.pack(f"<{len(flat)}Q", *flat)
                view[table_end:] = stream
                for offset in blocks:
                    heap.set_ref(offset, pos)
                    heap.set_state(offset, _IN_FLIGHT, owner)
            except BaseException:
                for offset in blocks:
                    heap.free(offset)
                raise

    @contextmanager
    def reserve_array(
        self, shape: Any, dtype: Any = "float64", timeout: float | None = None
    ) -> Iterator[Any]:
        """Build a numpy array in place, in shared memory; it is sent when the block exits.

        ``with chan.reserve_array((1024, 1024), "float32") as arr: arr[...] = ...``. The payload
        is never copied: the receiver gets a read-only view of the same memory. An exception in
        the block discards the array (nothing is sent). The writer lock (or role) is held for
        the whole block; do not use ``arr`` after it. Only plain dtypes (``dtype.str`` round
        trips, no Python objects). Needs a heap.
        """
        import numpy as np

        self._check_open()
        dt = np.dtype(dtype)
        if dt.hasobject or np.dtype(dt.str) != dt:
            raise ValueError(f"reserve_array needs a plain dtype, not {dt!r}")
        shape = (int(shape),) if isinstance(shape, int) else tuple(int(n) for n in shape)
        if any(n < 0 for n in shape):
            raise ValueError(f"negative dimension in shape {shape}")
        nbytes = math.prod(shape) * dt.itemsize
        descr = dt.str.encode()
        stream = struct.pack(f"<BB{len(descr)}s{len(shape)}Q", len(shape), len(descr), descr, *shape)
        head = _HEAD.pack(L.CHAN_MAGIC, L.FMT_ARRAY, self._serializer.serializer_id, 0)
        if nbytes == 0 or self._heap is None:
            if self._heap is None and nbytes:
                raise ValueError(f"channel {self.name!r} has no heap: reserve_array needs heap_size > 0")
            yield np.zeros(shape, dt)
            self._ring.send(head + stream, timeout)
            return
        heap = self._heap
        self._check_heap_fits([nbytes], len(stream))
        deadline = None if timeout is None else time.monotonic() + timeout
        owner = self._owner()
        length = _HEAD.size + _BUF.size + len(stream)
        reservation = self._ring.reserve(length, timeout)
        with reservation as view:
            pos: int = reservation._pos
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            offset = heap.alloc(nbytes, owner, timeout=left)
            try:
                yield np.ndarray(shape, dt, buffer=self._hmm, offset=offset + _HDR)
                view[: _HEAD.size] = _HEAD.pack(L.CHAN_MAGIC, L.FMT_ARRAY, self._serializer.serializer_id, 1)
                view[_HEAD.size : _HEAD.size + _BUF.size] = _BUF.pack(offset, heap.ticket(offset), nbytes)
                view[_HEAD.size + _BUF.size :] = stream
                heap.set_ref(offset, pos)
                heap.set_state(offset, _IN_FLIGHT, owner)
            except BaseException:
                heap.free(offset)
                raise

    def end_stream(self, timeout: float | None = None) -> None:
        """Mark the end: receivers drain what was sent, then get :class:`EndOfStream`."""
        self._check_open()
        self._ring.end_stream(timeout)

    # -- receiving ------------------------------------------------------------------------------

    def _become_receiver(self) -> None:
        heap = self._heap
        if heap is None:
            self._receiver = True
            return
        self._owner()  # a slot of our own
        slot = self._heap_slot
        assert slot is not None and self._ring._words is not None
        participants = heap.participants
        participants.set_field(slot, L.S_DONE_POS, int(self._ring._words[L.W_HEAD]))
        participants.set_field(slot, L.S_ROLES, participants.get_field(slot, L.S_ROLES) | _ROLE_RECEIVER)
        self._done_index = L.slot_word(slot, L.S_DONE_POS)
        self._receiver = True

    def _mark_done(self) -> None:
        """Publish that every record taken from the ring so far is processed (its blocks held).

        Producers reclaim an IN_FLIGHT block whose record the ring has released only once this
        mark is past the record: until then this receiver may be about to hold it. Records kept
        in ``_pending`` are not processed yet, so the mark waits for them.
        """
        index = self._done_index
        if index is not None and not self._pending:
            words, hwords = self._ring._words, self._hwords
            if words is not None and hwords is not None:
                hwords[index] = words[L.W_HEAD]

    def _start_recv(self) -> None:
        if self._closed:
            raise ClosedError(f"channel {self.name!r} is closed")
        if not self._receiver:
            self._become_receiver()
        error = self._deferred_error
        if error is not None:
            self._deferred_error = None
            raise error

    def recv(
        self, timeout: float | None = None, *, copy: bool = False, wait: str | WaitStrategy | None = None
    ) -> Any:
        """Receive the next object, waiting at most ``timeout`` seconds (``None``: no limit).

        Large buffers come back as read-only views of shared memory (numpy arrays with
        ``flags.writeable == False``), valid while referenced; ``copy=True`` returns owned,
        writable objects instead. Raises :class:`WaitTimeout`, :class:`EndOfStream` once the
        stream was ended and drained, :class:`CorruptionError` for a malformed record and
        :class:`SerializationError` for one that does not unpickle (the record is consumed;
        the channel stays usable), :class:`ClosedError`.
        """
        if wait is not None:
            return self._ring._with_wait(wait, self.recv, timeout, copy=copy)
        if self._queue:
            return self._recv_claimed(timeout, copy, False)
        self._start_recv()
        pending = self._pending
        data = pending.popleft() if pending else self._ring.recv_bytes(timeout)
        try:
            return self._rebuild(data, copy)
        finally:
            # Inlined _mark_done: every record, in-band ones too, moves the done mark, or a dead
            # producer's unpublished block behind it would look "about to be held" forever.
            index = self._done_index
            if index is not None and not pending:
                hwords, words = self._hwords, self._ring._words
                if hwords is not None and words is not None:
                    hwords[index] = words[L.W_HEAD]

    def recv_nowait(self, *, copy: bool = False) -> Any:
        """:meth:`recv` that raises :class:`WouldBlock` if nothing is ready."""
        if self._queue:
            return self._recv_claimed(None, copy, True)
        self._start_recv()
        data = self._pending.popleft() if self._pending else self._ring.recv_bytes_nowait()
        try:
            return self._rebuild(data, copy)
        finally:
            self._mark_done()

    def recv_many(
        self,
        max_objects: int = 1024,
        timeout: float | None = None,
        *,
        copy: bool = False,
        wait: str | WaitStrategy | None = None,
    ) -> list[Any]:
        """Receive up to ``max_objects`` objects, waiting only for the first.

        Objects rebuilt before a record that fails are returned; that record's error is raised
        by the next receive call, and nothing after it is lost.
        """
        if wait is not None:
            return self._ring._with_wait(wait, self.recv_many, max_objects, timeout, copy=copy)  # type: ignore[no-any-return]
        if max_objects < 1:
            raise ValueError(f"max_objects must be >= 1, got {max_objects}")
        if self._queue:
            return self._recv_many_claimed(max_objects, timeout, copy)
        self._start_recv()
        pending = self._pending
        if not pending:
            pending.extend(self._ring.recv_many(max_objects, timeout))
        out: list[Any] = []
        rebuild = self._rebuild
        try:
            while pending and len(out) < max_objects:
                out.append(rebuild(pending.popleft(), copy))
        except Exception as exc:
            if not out:
                raise
            self._deferred_error = exc
        finally:
            self._mark_done()
        return out

    def _recv_claimed(self, timeout: float | None, copy: bool, nowait: bool) -> Any:
        """Queue mode: rebuild the object (its blocks held) *before* the record is released, so
        a receiver killed in between leaves the record to be delivered again, flagged."""
        self._start_recv()
        ring = self._ring
        received = ring.recv_nowait() if nowait else ring.recv(timeout)
        try:
            with received as view:
                return self._rebuild(view.tobytes(), copy)
        finally:
            self._mark_done()

    def _recv_held(self, timeout: float | None) -> tuple[Any, Any]:
        """Queue mode: the next object and a function that releases its record.

        Until the function is called, the record stays claimed by this receiver: if it dies,
        the record goes to another receiver, flagged ``redelivered`` (request/reply uses this to
        learn that the server holding a request died). Call the function exactly once.
        """
        if not self._queue:
            raise ValueError(f"channel {self.name!r}: held receives need a queue channel")
        self._start_recv()
        received = self._ring.recv(timeout)
        view = received.__enter__()
        try:
            obj = self._rebuild(view.tobytes(), False)
        except BaseException:
            received.__exit__(None, None, None)
            raise
        finally:
            del view
            self._mark_done()

        def release() -> None:
            received.__exit__(None, None, None)

        return obj, release

    def _recv_many_claimed(self, max_objects: int, timeout: float | None, copy: bool) -> list[Any]:
        out = [self._recv_claimed(timeout, copy, False)]
        while len(out) < max_objects:
            try:
                out.append(self._recv_claimed(None, copy, True))
            except (WouldBlock, EndOfStream):
                break  # EndOfStream: the next call raises it
            except Exception as exc:
                self._deferred_error = exc  # returned objects first; the error on the next call
                break
        return out

    def subscribe(self, start: str = "next", *, timeout: float | None = None) -> Channel:
        """Join a broadcast channel: the subscriber receives every object from ``start`` on.

        ``start="next"`` or ``"oldest"`` (the oldest object still retained), as for
        :meth:`Ring.subscribe`. The subscriber is a separate handle with the receive API
        (``recv``, ``recv_many``, ``_nowait``, iteration, ``last_record``, ``close``); it does
        not pickle: pass the channel to another process and subscribe there.
        """
        self._check_open()
        if self._mode != "broadcast":
            raise ValueError(
                f"channel {self.name!r} is a {self._mode} channel: only broadcast channels have subscribers"
            )
        sub = self._ring.subscribe(start, timeout=timeout)  # type: ignore[attr-defined]
        try:
            return Channel(sub, None, self._serializer, self._copy_threshold, _token=_PRIVATE)
        except BaseException:
            sub.close()
            raise

    def __iter__(self) -> Iterator[Any]:
        """Yield objects until the end of the stream."""
        while True:
            try:
                yield self.recv()
            except EndOfStream:
                return

    def _rebuild(self, data: bytes, copy: bool) -> Any:
        if data and data[0] == _PROTO and self._bare_pickle:
            # The common case: a bare pickle stream (no out-of-band buffers).
            try:
                return _pickle_loads(data)
            except Exception as exc:
                raise SerializationError(
                    f"channel {self.name!r}: cannot unpickle the object: {exc!r}"
                ) from exc
        if len(data) < _HEAD.size:
            raise CorruptionError(f"channel {self.name!r}: record of {len(data)} bytes has no channel header")
        magic, fmt, ser_id, nbufs = _HEAD.unpack_from(data)
        if magic != L.CHAN_MAGIC or fmt not in (L.FMT_OBJECT, L.FMT_ARRAY):
            raise CorruptionError(
                f"channel {self.name!r}: record is not a channel record (magic {magic:#x}, format {fmt})"
            )
        table_end = _HEAD.size + nbufs * _BUF.size
        if table_end > len(data):
            raise CorruptionError(
                f"channel {self.name!r}: record of {len(data)} bytes announces {nbufs} buffers"
            )
        buffers: list[Any] = []
        if nbufs:
            try:
                buffers = self._take_blocks(data, nbufs, copy)
            finally:
                self._mark_done()
        stream = memoryview(data)[table_end:]
        if fmt == L.FMT_ARRAY:
            return self._rebuild_array(stream, buffers)
        if ser_id != self._serializer.serializer_id:
            raise SerializationError(
                f"channel {self.name!r}: record was written with serializer id {ser_id}, this "
                f"handle uses {self._serializer.name!r}"
            )
        try:
            return self._serializer.loads(stream, buffers, copy)
        except Exception as exc:
            raise SerializationError(f"channel {self.name!r}: cannot rebuild the object: {exc!r}") from exc

    def _take_blocks(self, data: bytes, nbufs: int, copy: bool) -> list[Any]:
        heap = self._heap
        if heap is None:
            raise CorruptionError(f"channel {self.name!r}: record names heap blocks but there is no heap")
        refs: list[tuple[int, int, int]] = [
            _BUF.unpack_from(data, _HEAD.size + k * _BUF.size) for k in range(nbufs)
        ]
        owner = self._owner()
        held = _HELD | owner << 8
        for offset, ticket, n in refs:
            state = heap.check_block(offset, ticket, n) & 0xFF
            if state not in (_IN_FLIGHT, _HELD):
                raise CorruptionError(
                    f"channel {self.name!r}: block at offset {offset} is "
                    f"{L.BLOCK_STATE_NAMES.get(state, state)}, not in flight"
                )
        for offset, _ticket, _n in refs:
            heap.set_state(offset, _HELD, owner)
        mm = self._hmm
        words = self._hwords
        assert mm is not None and words is not None
        out: list[Any] = []
        global _prune_at
        if len(_block_refs) > _prune_at:
            for key in [key for key, r in list(_block_refs.items()) if r() is None]:
                del _block_refs[key]
            _prune_at = max(1024, 2 * len(_block_refs))
        for offset, ticket, n in refs:
            start = offset + _HDR
            if copy:
                out.append(bytearray(mm[start : start + n]))
                heap.set_state(offset, _RELEASED)
                continue
            view, ref = tracked_view(mm, start, n)
            assert ref is not None
            exporter = ref()
            block_ref = weakref.ref(exporter, _make_release(words, offset // 8 + L.B_STATE, held, ticket))
            _block_refs[id(block_ref)] = block_ref
            del exporter
            out.append(view)
        return out

    def _rebuild_array(self, stream: memoryview, buffers: list[Any]) -> Any:
        import numpy as np

        try:
            ndim, dlen = struct.unpack_from("<BB", stream)
            (descr,) = struct.unpack_from(f"<{dlen}s", stream, 2)
            shape = struct.unpack_from(f"<{ndim}Q", stream, 2 + dlen)
            dt = np.dtype(descr.decode())
        except (struct.error, TypeError, ValueError) as exc:
            raise CorruptionError(f"channel {self.name!r}: malformed array record ({exc})") from None
        if not buffers:
            return np.zeros(shape, dt)
        if math.prod(shape) * dt.itemsize != len(buffers[0]):
            raise CorruptionError(f"channel {self.name!r}: array record size does not match its buffer")
        return np.frombuffer(buffers[0], dtype=dt).reshape(shape)


_PRIVATE = object()
_pickle_dumps = pickle.dumps
_pickle_loads = pickle.loads
# Top-level objects the pickle serializer treats specially (large bytes out-of-band, memoryview).
_SLOW_TYPES = (bytes, bytearray, memoryview)


def _weak_callback(method: Any) -> Any:
    ref = weakref.WeakMethod(method)

    def call() -> None:
        bound = ref()
        if bound is not None:
            bound()

    return call


def _rebuild_channel(
    ring: Ring, heap_descriptor: tuple[str, Any] | None, serializer: Serializer, threshold: int
) -> Channel:
    heap_region = Region.from_descriptor(L.KIND_HEAP, heap_descriptor) if heap_descriptor else None
    try:
        return Channel(ring, heap_region, serializer, threshold, _token=_PRIVATE)
    except BaseException:
        ring.close()
        if heap_region is not None:
            heap_region.close()
        raise
