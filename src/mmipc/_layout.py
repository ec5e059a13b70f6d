"""Binary layouts of mmipc regions, version 1. Constants and ``struct.Struct`` s only, no I/O.

All integers are little-endian. Words that another process may read while they change are
8-byte aligned ``u64`` and are written with one ``memoryview.cast('Q')[i] = v`` store (DESIGN.md
3.1); everything else is written before it is published. ``W_*`` constants are word indices
(byte offset // 8) for the ``cast('Q')`` view of the whole mapping.

Region header (page 0, ``HEADER_SIZE`` bytes), common to every kind
====================================================================

======  ====  ===================  ==========================================================
offset  size  field                meaning
======  ====  ===================  ==========================================================
0       8     magic                ``MAGIC`` (``b"MMIPCREG"``)
8       4     layout_version       ``LAYOUT_VERSION``; ``attach`` refuses any other
12      4     kind                 ``KIND_RING`` or ``KIND_KV``
16      8     state                ``STATE_INIT`` (0) -> ``STATE_READY``; ``STATE_CLOSED`` once
                                   unlinked; ``STATE_POISONED``. Stored last at creation.
24      8     nonce                random; semaphore and memfd names derive from it
32      8     total_size           bytes of the whole mapping (the file's size)
40      8     data_offset          where the data area starts (page aligned)
48      8     data_size            bytes of the data area (the ring's capacity)
56      8     creator_pid
64      8     created_ns           ``time.time_ns()`` at creation
72      4     max_participants     slots in the participant table
76      4     slot_size            ``SLOT_SIZE``
80      8     flags                kind-specific bits (``RING_MULTI_WRITER``, ``REGION_HUGEPAGES``,
                                   ring modes and ``untether_ms``: see "Ring modes" below)
88      8     max_record           largest payload a record may carry
96      32    name                 UTF-8, NUL padded; display only (``anon:<nonce>`` if none)
128     4     header_crc           zlib.crc32 of bytes [0, 16) + [24, 128) + [132, 256)
132     4     record_align         ring: record alignment (``RECORD_ALIGN``)
136     4     record_header_size   ring: ``RECORD_HEADER_SIZE``
140     116   reserved             zero
======  ====  ===================  ==========================================================

Hot blocks (each on its own 128-byte block, DESIGN.md 3.4)
==========================================================

Ring producer block at 512, written only by the (lock-holding) producer:

    512 tail               published end position (absolute byte position, never wraps)
    520 records_written    data records published
    528 bytes_written      payload bytes published
    536 producer_waits     times a producer waited for space
    544 end_of_stream      1 once the end-of-stream record is published
    552 producer_waiting   1 while a producer sleeps waiting for space (consumer posts)
    560 writer_pid         pid of the single-writer role holder (display and errors)
    568 jump_from          a rewind: the positions jump_from .. jump_to are padding that has no
    576 jump_to            header in the data area (readers at jump_from go on at jump_to);
                           stored jump_to first, then jump_from, then published by the tail

Ring consumer block at 640, written only by the consumer:

    640 head               released position: space before it may be reused
    648 records_read
    656 bytes_read
    664 consumer_waits     times the consumer waited for a record
    672 pinned_records     records released by the consumer but still referenced by views
    680 consumer_pid       pid of the consumer role holder
    688 head_skip_pos      with head_skip: the first ``head_skip`` items of the batch record at
    696 head_skip          position ``head_skip_pos`` are released (only meaningful while it is
                           the record at ``head``)

Ring lock block at 768, written by whoever holds (or recovers) the writer semaphore:

    768 lock_owner         0, or (slot + 1) | generation << 16 of the holder
    776 recoveries         writer locks handed on after the holder died
    784 lock_suspect       1 after a dead slot was reclaimed that was at the writer lock with no
                           owner recorded (it may have died holding it); cleared once the lock is
                           seen moving
    792 writer_epoch       +1 whenever writing passes to another writer after one died or left
                           (a single writer's role claimed, a dead holder's lock recovered): a
                           gap in sequence numbers is legitimate only across such a change
    800 lock_grants        +1 by every holder right after taking the writer semaphore, and by a
                           recovery: "no grant for 0.5 s" is how waiters tell a lost lock from a
                           busy one

Participant table at ``HEADER_SIZE``: ``max_participants`` slots of ``SLOT_SIZE`` bytes:

    +0  state_word   generation << 8 | SLOT_FREE/SLOT_ACTIVE
    +8  pid
    +16 roles        bit mask of ROLE_*
    +24 lock_state   1 from "about to wait for the writer semaphore" to "released it"
    +32 attached_ns
    +40 .. +128 reserved

Each active slot is backed by an OFD lock (``fcntl`` ``F_OFD_SETLK``) on byte
``LOCK_SLOT_BASE + index`` of the region's file, held by its process for as long as it is
attached; the kernel drops it when the process dies (DESIGN.md 7). Lock bytes lie far beyond the
end of the file: they never overlap data.

Ring record (``RECORD_HEADER_SIZE`` = 32 bytes, records start ``RECORD_ALIGN``-aligned)
=====================================================================================

======  ====  ========  ===============================================================
offset  size  field     meaning
======  ====  ========  ===============================================================
0       4     length    payload bytes (padding: bytes up to the end of the data area)
4       2     type      ``REC_DATA``, ``REC_PADDING``, ``REC_END``, ``REC_BATCH`` (several
                        small items in one record: see ``BATCH_HEAD``)
6       2     flags     ``FLAG_FIRST`` / ``FLAG_LAST``: first / last record of a publish
8       8     position  the record's own absolute position (detects stale headers)
16      8     sequence  data records: 0-based sequence number; others: 0
24      8     user      reserved for upper layers (0)
======  ====  ========  ===============================================================

A record occupies ``align(RECORD_HEADER_SIZE + length, RECORD_ALIGN)`` bytes and never wraps:
when it does not fit before the end of the data area, a padding record fills the rest.
"""

from __future__ import annotations

import struct
from typing import Any

MAGIC = b"MMIPCREG"
LAYOUT_VERSION = 2  # 2: ring modes (flags), queue batch records and item cursor, rewind jumps

KIND_RING = 1
KIND_KV = 2
KIND_NAMES = {KIND_RING: "ring", KIND_KV: "kv"}

STATE_INIT = 0
STATE_READY = 1
STATE_CLOSED = 2
STATE_POISONED = 3
STATE_NAMES = {
    STATE_INIT: "init",
    STATE_READY: "ready",
    STATE_CLOSED: "closed",
    STATE_POISONED: "poisoned",
}

HEADER_SIZE = 4096
PAGE_SIZE = 4096
NAME_SIZE = 32

# The static part of the header, offsets 0..140 (state at 16 is a live word, packed as 0).
HEADER = struct.Struct("<8sIIQQQQQQQIIQQ32sIII")
assert HEADER.size == 140
CRC_OFFSET = 128
CRC = struct.Struct("<I")
CRC_RANGES = ((0, 16), (24, 128), (132, 256))

W_STATE = 16 // 8

RING_MULTI_WRITER = 1
REGION_HUGEPAGES = 1 << 8  # every process that maps the region asks for transparent huge pages

# Ring producer block
W_TAIL = 512 // 8
W_RECORDS_WRITTEN = 520 // 8
W_BYTES_WRITTEN = 528 // 8
W_PRODUCER_WAITS = 536 // 8
W_END_OF_STREAM = 544 // 8
W_PRODUCER_WAITING = 552 // 8
W_WRITER_PID = 560 // 8
W_JUMP_FROM = 568 // 8
W_JUMP_TO = 576 // 8


def past_jump(words: Any, pos: int, tail: int) -> int:
    """``pos``, or the end of the jump that starts there if ``tail`` (the caller's reading of the
    tail, taken after ``pos``) has published it: a reader at a jump needs nothing before its
    end, which occupies no byte of the data area. Comparing with the caller's tail, not the
    current one, keeps ``tail - past_jump(...)`` from going negative when a producer rewinds
    between the two reads."""
    if pos and pos == words[W_JUMP_FROM]:
        jump_to = int(words[W_JUMP_TO])
        if jump_to <= tail:
            return jump_to
    return pos


def bytes_after(words: Any, pos: int) -> int:
    """Bytes published after a reader position ``pos`` (read before this call), past a jump
    at ``pos``: ``used`` for ``head``, a subscriber's lag for its cursor."""
    tail = int(words[W_TAIL])  # after pos: never behind it
    return tail - past_jump(words, pos, tail)


# Ring consumer block
W_HEAD = 640 // 8
W_RECORDS_READ = 648 // 8
W_BYTES_READ = 656 // 8
W_CONSUMER_WAITS = 664 // 8
W_PINNED = 672 // 8
W_CONSUMER_PID = 680 // 8
W_HEAD_SKIP_POS = 688 // 8
W_HEAD_SKIP = 696 // 8
# Ring lock block
W_LOCK_OWNER = 768 // 8
W_RECOVERIES = 776 // 8
W_LOCK_SUSPECT = 784 // 8
W_WRITER_EPOCH = 792 // 8
W_LOCK_GRANTS = 800 // 8

# Participant slots
SLOT_SIZE = 128
SLOT_WORDS = SLOT_SIZE // 8
SLOT_FREE = 0
SLOT_ACTIVE = 1
S_STATE = 0  # word offsets inside a slot
S_PID = 1
S_ROLES = 2
S_LOCK_STATE = 3
S_ATTACHED_NS = 4
DEFAULT_MAX_PARTICIPANTS = 64

ROLE_ATTACHED = 1
ROLE_WRITER = 2
ROLE_CONSUMER = 4
ROLE_NAMES = {ROLE_WRITER: "writer", ROLE_CONSUMER: "consumer"}

# OFD lock bytes (beyond any file end)
LOCK_BASE = 1 << 40
LOCK_ATTACH = LOCK_BASE + 0  # serializes attach against the last detach
LOCK_ROLE_WRITER = LOCK_BASE + 1  # single-writer rings
LOCK_ROLE_CONSUMER = LOCK_BASE + 2  # single-consumer rings
LOCK_SLOT_BASE = LOCK_BASE + 4096

# Ring records
RECORD = struct.Struct("<IHHQQQ")
RECORD_HEADER_SIZE = RECORD.size
assert RECORD_HEADER_SIZE == 32
RECORD_ALIGN = 32
REC_DATA = 1
REC_PADDING = 2
REC_END = 3
REC_BATCH = 4
REC_TYPE_NAMES = {REC_DATA: "data", REC_PADDING: "padding", REC_END: "end-of-stream", REC_BATCH: "batch"}
# A batch record's payload: u32 item count, u32 reserved (0), the items' u32 lengths (padded to
# 8 bytes), then the items back to back. Its header's sequence number is its first item's; the
# items take consecutive numbers.
BATCH_HEAD = struct.Struct("<II")
FLAG_FIRST = 1
FLAG_LAST = 2
FLAGS_OFFSET = 6  # of the u16 flags inside a record header
FLAGS = struct.Struct("<H")
MAX_RECORD_LIMIT = (1 << 32) - 1  # the length field is a u32


def align_up(value: int, alignment: int) -> int:
    """Round ``value`` up to a multiple of ``alignment`` (a power of two)."""
    return (value + alignment - 1) & ~(alignment - 1)


def record_size(length: int) -> int:
    """Bytes a record with ``length`` payload bytes occupies in the ring."""
    return (RECORD_HEADER_SIZE + length + RECORD_ALIGN - 1) & ~(RECORD_ALIGN - 1)


def slot_word(slot: int, field: int) -> int:
    """Word index of ``field`` (``S_*``) of participant ``slot``."""
    return HEADER_SIZE // 8 + slot * SLOT_WORDS + field


def data_offset_for(max_participants: int) -> int:
    """Offset of the data area after the header and the participant table."""
    return align_up(HEADER_SIZE + max_participants * SLOT_SIZE, PAGE_SIZE)


# ============================================================================================
# Heap regions and channel records, version 1 (appended section; see ``_heap`` and ``_channel``)
# ============================================================================================
#
# A channel is a ring (records: headers, pickle streams, small buffers) plus a *heap region*
# (``KIND_HEAP``): a region whose data area starts with a heap control page and continues with
# the arena of heap blocks that carry large out-of-band buffers.
#
# Heap control page (offsets relative to the region's ``data_offset``; one page)
#
#     0   heap_magic       ``HEAP_MAGIC``
#     8   heap_version     ``HEAP_VERSION``; attach refuses any other
#     16  arena_offset     offset of the arena from data_offset (``HEAP_CONTROL_SIZE``)
#     24  arena_size       bytes of the arena (a multiple of ``BLOCK_ALIGN``)
#     32  next_ticket      allocation counter; every block gets a unique ticket
#     40  rover            next-fit start (arena-relative)
#     48  copy_threshold   channel: buffers below it travel in-band, in the ring record
#     56  serializer_id    channel: ``SER_PICKLE``, ``SER_RAW``, ``SER_CUSTOM``
#     64  allocations      blocks allocated
#     72  reclaimed        blocks taken back from dead participants or never published
#     80  released         blocks returned by receivers (garbage-collected views)
#
# Heap block (``BLOCK_HEADER_SIZE`` = 64 bytes, then the payload; blocks are 64-aligned)
#
#     +0  size        bytes of the whole block, header included (allocator only)
#     +8  state_word  state | owner << 8; owner = (slot + 1) | generation << 16 of a heap
#                     participant slot. One store per transition (DESIGN.md 3.1).
#     +16 ticket      unique per allocation (next_ticket)
#     +24 ref         channel: absolute ring position of the record that names the block
#     +32 nbytes      payload bytes requested
#     +40 check       ``BLOCK_CHECK ^ arena-relative offset`` (detects a bogus reference)
#     +48 reserved
#
# Block states: FREE -> ALLOCATED (producer writing, under the writer lock) -> IN_FLIGHT (named
# by a record about to be / already published) -> HELD (a receiver's views) -> RELEASED (stored by
# the receiver's GC callback, nothing else) -> FREE (allocator, lazily).
#
# Heap participant slot: words 0..4 as in every region (``S_*``); word 5 (``S_DONE_POS``):
# the consumer's "every record before this ring position is fully processed" mark.
#
# Channel record payload (inside a ring data record): either a bare pickle protocol-5 stream
# (first byte 0x80, pickle's PROTO opcode: an object with no out-of-band buffers, channels with
# the pickle serializer; this saves a concatenation on send and a slice on receive), or
#
#     0   u16 magic     ``CHAN_MAGIC``
#     2   u8  format    ``FMT_OBJECT`` (serializer stream), ``FMT_ARRAY`` (reserve_array)
#     3   u8  serializer  ``SER_*``
#     4   u32 nbuffers  out-of-band buffers in the heap
#     8   nbuffers x (u64 block offset, u64 ticket, u64 nbytes)
#     ..  the serializer's stream (FMT_ARRAY: u8 ndim, dtype str, shape as u64s)

KIND_HEAP = 3
KIND_NAMES[KIND_HEAP] = "heap"

HEAP_MAGIC = 0x50414548_4350494D  # b"MIPCHEAP" little-endian
HEAP_VERSION = 1
HEAP_CONTROL_SIZE = PAGE_SIZE
H_MAGIC = 0
H_VERSION = 1
H_ARENA_OFFSET = 2
H_ARENA_SIZE = 3
H_NEXT_TICKET = 4
H_ROVER = 5
H_COPY_THRESHOLD = 6
H_SERIALIZER = 7
H_ALLOCATIONS = 8
H_RECLAIMED = 9
H_RELEASED = 10

BLOCK_HEADER_SIZE = 64
BLOCK_ALIGN = 64
MIN_BLOCK = 128
BLOCK_CHECK = 0x6B636F6C_42504D4D
B_SIZE = 0
B_STATE = 1
B_TICKET = 2
B_REF = 3
B_NBYTES = 4
B_CHECK = 5

BLOCK_FREE = 0
BLOCK_ALLOCATED = 1
BLOCK_IN_FLIGHT = 2
BLOCK_HELD = 3
BLOCK_RELEASED = 4
BLOCK_STATE_NAMES = {
    BLOCK_FREE: "free",
    BLOCK_ALLOCATED: "allocated",
    BLOCK_IN_FLIGHT: "in-flight",
    BLOCK_HELD: "held",
    BLOCK_RELEASED: "released",
}

S_DONE_POS = 5

CHAN_MAGIC = 0xC4A7
CHAN_HEAD = struct.Struct("<HBBI")
CHAN_BUFFER = struct.Struct("<QQQ")
FMT_OBJECT = 1
FMT_ARRAY = 2
SER_PICKLE = 1
SER_RAW = 2
SER_CUSTOM = 3


# ============================================================================================
# KV regions, KV layout version 1 (appended section; see ``_kv``)
# ============================================================================================
#
# A KV region (``KIND_KV``) has the common header page and participant table, then a data area
# that is a heap (heap control page + arena, see the heap section). Everything of the KV lives
# in heap blocks: the index, the deferred-free list, and one block per key (key bytes, then the
# value 8-byte aligned). Blocks in use by the KV are IN_FLIGHT with owner 0; a block being
# filled by a writer is ALLOCATED by that writer (the heap reclaims it if the writer dies).
# The region grows by ``ftruncate``: the header's total_size stays the creation size, the
# published size is ``kv_mapped_size`` below and the heap's ``arena_size``.
#
# KV writer block in the header page (written under the writer semaphore):
#
#     512 kv_magic          ``KV_MAGIC``
#     520 kv_version        ``KV_VERSION``; attach refuses any other
#     528 commit_seq        +1 after every completed write (wait_for_change sleeps on it)
#     536 index_seq         seqlock of the index descriptor: odd while it is being replaced
#     544 index_block       block offset (absolute) of the index; slots start 64 bytes later
#     552 index_capacity    slots in the index (a power of two)
#     560 live_keys
#     568 used_slots        live + tombstones
#     576 live_bytes        key + value bytes of live entries
#     584 mapped_size       published size of the region (the file's size once grown)
#     592 max_size          growth limit in bytes (0: none)
#     600 seed              key of the blake2b tag hash (random at creation)
#     608 kv_flags          ``KV_CHECKSUMS``: every value block carries a crc32 (file-backed)
#     616 waiters           1 while a process may sleep in wait_for_change (writers then count
#                           the slots' wait words and post the change semaphore)
#     624 clean             1 when the last participant left with everything consistent
#     632 epoch             reclamation epoch: +1 at every reclamation pass; a retired block is
#                           tagged with it, a view pins it
#     640 deferred_desc     block offset | log2(capacity) << 56 of the deferred-free list
#     648 deferred_count    entries in the list (each 3 words: block offset, epoch, retire time
#                           ns; the list is read and written only under the writer lock)
#     656 repairs           half-done writes of dead writers finished by a successor (or on open)
#     664 heap_walks        +1 before every heap walk (a writer's cache of blocks it released
#                           is valid while this is unchanged)
#     672 max_keys          the most keys the KV may hold (0: no limit)
#
# The writer lock block at 768 is the ring's (``W_LOCK_OWNER`` .. ``W_LOCK_GRANTS``).
#
# KV journal block at 1024 (the intent of the write in progress; idle = 0):
#
#     1024 j_state     the operation in its low 3 bits (``J_OP_MASK``) and its argument:
#                      ``J_PUT | entry block offset`` (the block header says where it goes),
#                      ``J_DELETE | slot word << 3``, ``J_INDEX | new index block offset``,
#                      ``J_GROW`` (see the next two words), ``J_LIST`` (deferred list being
#                      changed: sweep), ``J_IDLE`` (0)
#     1048 j_offset    J_GROW: the new mapped size
#     1056 j_lens      J_GROW: the new arena size
#
# Entry block header words used by the KV (written before the block is published, read only
# by a repair): +16 tag (``KV_B_TAG``), +24 crc, +32 lens (``KV_B_LENS``), +48 the slot word it
# goes to (``KV_B_SLOT``), +56 the slot's sequence word once written (``KV_B_SEQ``, even). An
# index block keeps its capacity at +48 (``KV_B_CAPACITY``).
#
# Index slot (``KV_SLOT_SIZE`` = 32 bytes, 4 words):
#
#     +0  seq     even: stable; odd: being written. +2 per write, never reset.
#     +8  tag     64-bit keyed blake2b of the key (never 0)
#     +16 offset  0: empty, ``SLOT_TOMBSTONE``: deleted, else the block offset (absolute)
#     +24 lens    bit 63: key is str (UTF-8); bits 40..62: key length; bits 0..39: value length
#
# Value block payload: key bytes, padding to 8 (zeros when checksummed), value bytes. The block's ``ref`` word holds
# ``crc32(payload) | 1 << 32`` when ``KV_CHECKSUMS`` is set.
#
# Participant slot word 5 (``S_KV_PIN``): epoch + 1 while the participant holds a view, else 0;
# word 6 (``S_KV_WAIT``): 1 while it sleeps in wait_for_change.

KV_MAGIC = 0x3156_4B43_5049_4D4D  # b"MMIPCKV1" little-endian
KV_VERSION = 1
W_KV_MAGIC = 512 // 8
W_KV_VERSION = 520 // 8
W_KV_COMMIT = 528 // 8
W_KV_INDEX_SEQ = 536 // 8
W_KV_INDEX_BLOCK = 544 // 8
W_KV_INDEX_CAP = 552 // 8
W_KV_LIVE_KEYS = 560 // 8
W_KV_USED_SLOTS = 568 // 8
W_KV_LIVE_BYTES = 576 // 8
W_KV_MAPPED = 584 // 8
W_KV_MAX_SIZE = 592 // 8
W_KV_SEED = 600 // 8
W_KV_FLAGS = 608 // 8
W_KV_WAITERS = 616 // 8
W_KV_CLEAN = 624 // 8
W_KV_EPOCH = 632 // 8
W_KV_DEFERRED_DESC = 640 // 8
W_KV_DEFERRED_COUNT = 648 // 8
W_KV_REPAIRS = 656 // 8
W_KV_HEAP_WALKS = 664 // 8
W_KV_MAX_KEYS = 672 // 8
KV_CHECKSUMS = 1

W_J_STATE = 1024 // 8
W_J_OFFSET = 1048 // 8
W_J_LENS = 1056 // 8
J_OP_MASK = 7
KV_B_TAG = 2
KV_B_LENS = 4
KV_B_SLOT = 6
KV_B_SEQ = 7
KV_B_CAPACITY = 6
J_IDLE = 0
J_PUT = 1
J_DELETE = 2
J_INDEX = 3
J_GROW = 4
J_LIST = 5

KV_SLOT_SIZE = 32
KV_SLOT_WORDS = 4
SLOT_TOMBSTONE = 1
KV_STR_KEY = 1 << 63
KV_KLEN_SHIFT = 40
KV_VLEN_MASK = (1 << 40) - 1
KV_KLEN_MASK = (1 << 23) - 1
KV_DEFERRED_ENTRY_WORDS = 3
S_KV_PIN = 5
S_KV_WAIT = 6


# ============================================================================================
# Ring modes: broadcast and work queue (appended section; see ``_broadcast`` and ``_workqueue``)
# ============================================================================================
#
# The mode is fixed at creation and stored in the header's ``flags`` (offset 80, covered by the
# header checksum, written before the state word turns READY, so no process ever sees a ring
# without its mode):
#
#     bit 0       RING_MULTI_WRITER    many producers (the writer semaphore serializes them)
#     bit 1       RING_BROADCAST       every subscriber sees every record
#     bit 2       RING_QUEUE           each record goes to exactly one consumer
#     bit 8       REGION_HUGEPAGES
#     bits 32-63  untether_ms          broadcast: a subscriber that blocks the producer for this
#                                      many milliseconds is cut loose (0: back-pressure, never)
#
# ``Ring.attach`` refuses a ring whose flags carry bits it does not know (RING_KNOWN_FLAGS).
# Records are the same in every mode; the queue mode uses the record header's ``user`` word
# (offset 24, written by consumers with one aligned store after the record is published):
#
#     0                       unclaimed (as written by the producer)
#     (slot+1) | gen << 16    claimed by that consumer slot (generation ``gen``)
#     Q_REDELIVER             its consumer died: deliver it again (flagged redelivered)
#     Q_RELEASED              released: the head may pass it
#
# Mode block at 896 (queue; written only under the claim lock, an OFD lock on LOCK_QUEUE_CLAIM):
#
#     896 claim              next unclaimed position (head <= claim <= tail)
#     904 redeliver_pending  records marked Q_REDELIVER and not yet claimed again (a hint: it
#                            may over-count after a crash in recovery, never under-count)
#     912 redelivered        records delivered again after their consumer died
#     920 consumers_recovered  dead consumers whose records were recovered
#     928 q_item             items of the batch record at ``q_item_pos`` already taken (valid
#     936 q_item_pos         only while ``q_item_pos == claim``; stored count first, then position)
#
# Batch records (``send_many``) in a queue ring are taken item by item, by many consumers, in
# order: a taker copies the items and releases them in the same hold (a batch record has no owner
# to redeliver for); the one who takes the last item stores ``Q_RELEASED`` in its ``user`` word
# and then moves ``claim`` past it.
#
# Broadcast block at 1024 (written by producers and joiners, under the writer semaphore):
#
#     1024 sub_epoch         +1 per subscription (join or rejoin); a subscriber's state word
#                            carries the epoch of its join, so producers post only to the
#                            subscription that is live in a slot
#     1032 lapped_total      subscribers cut loose so far
#
# Ring participant slot, words 5.. (the common words 0..4 are described above):
#
#     +40  cursor        broadcast: the subscriber's released position (it needs nothing before)
#     +48  sub_state     broadcast: SUB_TETHERED / SUB_UNTETHERING / SUB_LAPPED | join epoch << 8
#     +56  views         broadcast: zero-copy views the subscriber holds (never cut loose while > 0)
#     +64  behind_since  broadcast: CLOCK_MONOTONIC ns when a producer first found this
#                        subscriber holding it back (0: not behind); untethering grace start
#     +72  records_read  subscriber / queue consumer: records received through this slot
#     +80  bytes_read
#     +88  waits         times this receiver waited for a record
#     +96  pinned        records released by this receiver but still referenced by views
#
# Subscriber semaphores: ``/mmipc-<nonce>-b<slot>``, one per subscriber, posted by producers once
# per published group while the subscription is tethered (so its count stays bounded by the
# groups it has not read); removed when the subscriber leaves or its death is cleaned up.

RING_BROADCAST = 1 << 1
RING_QUEUE = 1 << 2
RING_MODE_MASK = RING_BROADCAST | RING_QUEUE
RING_UNTETHER_SHIFT = 32
RING_KNOWN_FLAGS = RING_MULTI_WRITER | RING_MODE_MASK | REGION_HUGEPAGES | (0xFFFFFFFF << RING_UNTETHER_SHIFT)

W_Q_CLAIM = 896 // 8
W_Q_REDELIVER_PENDING = 904 // 8
W_Q_REDELIVERED = 912 // 8
W_Q_CONSUMERS_RECOVERED = 920 // 8
W_Q_ITEM = 928 // 8
W_Q_ITEM_POS = 936 // 8
W_B_SUB_EPOCH = 1024 // 8
W_B_LAPPED_TOTAL = 1032 // 8

RECORD_USER_OFFSET = 24  # of the u64 ``user`` word inside a record header
Q_RELEASED = 1 << 63
Q_REDELIVER = 1 << 62

S_CURSOR = 5
S_SUB_STATE = 6
S_VIEWS = 7
S_BEHIND_SINCE = 8
S_RECORDS_READ = 9
S_BYTES_READ = 10
S_WAITS = 11
S_PINNED = 12

SUB_TETHERED = 1
SUB_UNTETHERING = 2
SUB_LAPPED = 3
SUB_STATE_NAMES = {0: "left", SUB_TETHERED: "tethered", SUB_UNTETHERING: "untethering", SUB_LAPPED: "lapped"}

ROLE_SUBSCRIBER = 8
ROLE_QUEUE_CONSUMER = 16
ROLE_NAMES[ROLE_SUBSCRIBER] = "subscriber"
ROLE_NAMES[ROLE_QUEUE_CONSUMER] = "queue-consumer"

LOCK_QUEUE_CLAIM = LOCK_BASE + 3  # queue consumers claim records under this OFD lock
