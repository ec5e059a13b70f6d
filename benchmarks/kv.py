"""KV get / put rates against lmdb, ``Manager().dict()`` and shared-memory-dict, in one run.

``python -m benchmarks kv [--quick] [--sizes 64,4K,1M] [--keys N] [--lmdb-durable]``

Every store holds the same key set (``--keys``, default 10 000 keys of 10 bytes, ``b"key-000042"``;
64 keys for values of 1 MiB and more) with values of one size, written by the parent before the
cell's processes start. Each cell runs in fresh processes (see ``_harness``); operations go to
existing keys in a random order (the same seeded order for every store).

Groups and rows:

* ``get, <size>``: one process reads.

  - ``mmipc kv[key]``: a copy out (a new ``bytes``, like lmdb's ``txn.get``).
  - ``mmipc kv.view(key)``: ``with kv.view(key) as v:`` touch one byte (zero copy; its GB/s is
    the size the values carry, in parentheses, not a copy rate).
  - ``lmdb (1 txn per op)``: ``with env.begin() as txn: txn.get(key)`` (a new ``bytes``).
  - ``lmdb buffers=True (1 txn per op)``: the same with ``buffers=True`` (lmdb's zero-copy
    read: a memoryview into the map, valid in the transaction), touching one byte.
  - ``lmdb (batched txn)``: one read transaction for ``--batch`` gets (default: 1000
    operations per batch, at most 2 MiB of values: 1000 at 64 B, 512 at 4 KiB, 2 at 1 MiB).
  - ``Manager().dict()``: ``d[key]`` through the manager's server process.
  - ``shared-memory-dict``: ``smd[key]`` (it unpickles its whole dict on every access).

* ``put, <size>``: one process overwrites existing keys with a value of the same size.

  - ``mmipc kv[key] = value``; ``mmipc kv.batch()``: ``--batch`` puts in one
    ``with kv.batch():`` block (one lock acquisition).
  - ``lmdb (1 txn per op)``: ``with env.begin(write=True) as txn: txn.put(key, value)``;
    ``lmdb (batched txn)``: ``--batch`` puts per write transaction.
  - ``Manager().dict()``: ``d[key] = value``; ``shared-memory-dict``: ``smd[key] = value``.

* ``get while another process puts, <size>``: a reader process counts its gets per second
  (the same get as above) while a writer process puts (one operation per call, random keys)
  as fast as it can until the reader is done. The ``writes/s`` the writer managed during the
  reader's timed window is printed below the table and kept in the JSON. shared-memory-dict is
  skipped here: by default it takes no lock (``SHARED_MEMORY_USE_LOCK=1`` makes a
  ``multiprocessing.Lock`` at import, shared only by processes forked after that import), and a
  reader racing a writer unpickles torn data (tried: 34 exceptions in 3 300 reads in 2 s).

lmdb runs in a directory on ``/dev/shm`` (tmpfs, like mmipc's shared memory) opened with
``sync=False, metasync=False`` (no fsync: the fastest lmdb can commit; ``--lmdb-durable`` uses
lmdb's defaults instead) and ``lock=True`` (required with several processes). Each process opens
the environment itself (an lmdb environment must not cross a fork). mmipc's KV is anonymous
(memfd), created by the parent and pickled to the children.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import itertools
import os
import random
import shlex
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from benchmarks import _harness as H

DESCRIPTION = "KV get/put/view/batch and a concurrent reader vs lmdb, Manager().dict(), shared-memory-dict"

SIZES = (64, 4 << 10, 1 << 20)
DEFAULT_KEYS = 10_000
LARGE = 1 << 20  # values this large or larger: at most LARGE_KEYS keys (memory, prefill time)
LARGE_KEYS = 64
ORDER_LENGTH = 1 << 16  # length of the precomputed random key order (cycled)
SEED = 20261201
PEER_TIMEOUT = 120.0

MMIPC_GET = "mmipc kv[key]"
MMIPC_VIEW = "mmipc kv.view(key)"
MMIPC_PUT = "mmipc kv[key] = value"
MMIPC_BATCH = "mmipc kv.batch()"
LMDB = "lmdb (1 txn per op)"
LMDB_BUFFERS = "lmdb buffers=True (1 txn per op)"
LMDB_BATCH = "lmdb (batched txn)"
MANAGER = "Manager().dict()"
SMD = "shared-memory-dict"

BASELINES = ((LMDB, "lmdb"), (LMDB_BATCH, "lmdb batch"), (MANAGER, "Manager"))


# -- the data every store holds ----------------------------------------------------------------


def keys_for(options: dict[str, Any]) -> list[bytes]:
    return [b"key-%06d" % i for i in range(options["keys"])]


def payload_of(size: int, salt: int = 1) -> bytes:
    # Not zeros (a zero-filled source may be the kernel's zero page); salt gives a second value.
    return (bytes((salt + i) % 255 + 1 for i in range(255)) * (size // 255 + 1))[:size]


def key_stream(keys: list[bytes], count: int, seed: int) -> Iterator[bytes]:
    """``count`` keys in a seeded random order (existing keys only; a precomputed order, cycled)."""
    rng = random.Random(seed)
    order = [keys[rng.randrange(len(keys))] for _ in range(min(count, ORDER_LENGTH))]
    return itertools.islice(itertools.cycle(order), count)


def chunk_sizes(count: int, batch: int) -> list[int]:
    full, rest = divmod(count, batch)
    return [batch] * full + ([rest] if rest else [])


def _missing(module: str) -> str | None:
    return None if importlib.util.find_spec(module) is not None else f"{module} is not installed"


@dataclass(frozen=True)
class MixedSample(H.Sample):
    """A reader's sample, plus the writes the writer completed during the reader's timed window."""

    writes: int = 0
    retries: int = -1  # mmipc only: the reader's seqlock retries (KVStats.retries) in the window

    @property
    def writes_per_s(self) -> float:
        return self.writes / self.seconds if self.seconds > 0 else 0.0


# -- mmipc KV ------------------------------------------------------------------------------------


def kv_class() -> Any:
    import mmipc

    kv = getattr(mmipc, "KV", None)
    if kv is None:
        from mmipc._kv import KV as kv  # not exported yet
    return kv


def kv_unavailable() -> str | None:
    try:
        kv_class()
    except Exception as exc:
        return f"mmipc.KV is not available ({type(exc).__name__}: {exc})"
    return None


def kv_size(size: int, keys: int) -> int:
    """Room for the values about four times over (puts write new blocks before freeing old ones)."""
    return max(64 << 20, 4 * keys * (size + 128))


def _open_kv(spec: H.Spec, ctx: Any) -> H.Opened:
    keys = keys_for(spec.options)
    kv = kv_class().create(kv_size(spec.size, len(keys)), max_keys=2 * len(keys))
    value = payload_of(spec.size)
    with kv.batch():
        for key in keys:
            kv[key] = value
    return H.Opened(kv, kv.close)


def kv_get_consumer(kv: Any, spec: H.Spec, gate: H.Gate) -> H.Sample:
    keys = keys_for(spec.options)
    try:
        get = kv.__getitem__
        if get(keys[0]) != payload_of(spec.size):
            raise AssertionError("mmipc KV returned a wrong value")
        nbytes = 0
        for key in key_stream(keys, spec.warmup, SEED + 1):
            nbytes += len(get(key))
        nbytes = 0
        stream = key_stream(keys, spec.count, SEED)
        t0 = gate.wait()
        for key in stream:
            nbytes += len(get(key))
        seconds = time.perf_counter() - t0
    finally:
        kv.close()
    return H.Sample(spec.count, nbytes, seconds)


def kv_view_consumer(kv: Any, spec: H.Spec, gate: H.Gate) -> H.Sample:
    keys = keys_for(spec.options)
    try:
        view = kv.view
        with view(keys[0]) as v:
            if bytes(v) != payload_of(spec.size):
                raise AssertionError("mmipc KV view shows a wrong value")
        touched = nbytes = 0
        for key in key_stream(keys, spec.warmup, SEED + 1):
            with view(key) as v:
                touched += v[0]
        stream = key_stream(keys, spec.count, SEED)
        t0 = gate.wait()
        for key in stream:
            with view(key) as v:
                touched += v[0]
                nbytes += len(v)
        seconds = time.perf_counter() - t0
    finally:
        kv.close()
    return H.Sample(spec.count, nbytes, seconds)


def kv_put_consumer(kv: Any, spec: H.Spec, gate: H.Gate) -> H.Sample:
    keys = keys_for(spec.options)
    value = payload_of(spec.size, salt=2)
    try:
        put = kv.__setitem__
        for key in key_stream(keys, spec.warmup, SEED + 1):
            put(key, value)
        stream = key_stream(keys, spec.count, SEED)
        t0 = gate.wait()
        for key in stream:
            put(key, value)
        seconds = time.perf_counter() - t0
        if kv[keys[0]] not in (value, payload_of(spec.size)):
            raise AssertionError("mmipc KV returned a wrong value after the puts")
    finally:
        kv.close()
    return H.Sample(spec.count, spec.count * spec.size, seconds)


def kv_batch_consumer(kv: Any, spec: H.Spec, gate: H.Gate) -> H.Sample:
    keys = keys_for(spec.options)
    value = payload_of(spec.size, salt=2)
    batch_size = spec.options["batch"]
    batch = kv.batch
    put = kv.__setitem__

    def puts(count: int, seed: int) -> None:
        stream = key_stream(keys, count, seed)
        for n in chunk_sizes(count, batch_size):
            with batch():
                for key in itertools.islice(stream, n):
                    put(key, value)

    try:
        puts(spec.warmup, SEED + 1)
        t0 = gate.wait()
        puts(spec.count, SEED)
        seconds = time.perf_counter() - t0
    finally:
        kv.close()
    return H.Sample(spec.count, spec.count * spec.size, seconds)


def kv_writer(kv: Any, spec: H.Spec, gate: H.Gate, index: int) -> None:
    handle, stop, done = kv
    value = payload_of(spec.size, salt=2)
    try:
        writer_loop(handle.__setitem__, keys_for(spec.options), value, spec, gate, stop, done)
    finally:
        handle.close()


def kv_mixed_reader(kv: Any, spec: H.Spec, gate: H.Gate) -> H.Sample:
    handle, stop, done = kv
    try:
        before = handle.stats().retries
        sample = reader_loop(handle.__getitem__, keys_for(spec.options), spec, gate, stop, done)
        return dataclasses.replace(sample, retries=handle.stats().retries - before)
    finally:
        handle.close()


# -- the mixed case: one reader, one writer --------------------------------------------------------


def writer_loop(
    put: Any, keys: list[bytes], value: bytes, spec: H.Spec, gate: H.Gate, stop: Any, done: Any
) -> None:
    """Warm up, then put as fast as possible until ``stop`` is set; publish the count in ``done``."""
    for key in key_stream(keys, spec.warmup, SEED + 3):
        put(key, value)
    order = list(key_stream(keys, ORDER_LENGTH, SEED + 2))
    gate.wait()
    written = position = 0
    while not stop.value:
        for key in order[position : position + 16]:
            put(key, value)
        position = (position + 16) % ORDER_LENGTH
        written += 16
        done.value = written


def reader_loop(get: Any, keys: list[bytes], spec: H.Spec, gate: H.Gate, stop: Any, done: Any) -> MixedSample:
    """Warm up, then time ``spec.count`` gets while the writer runs; stop the writer."""
    try:
        for key in key_stream(keys, spec.warmup, SEED + 1):
            get(key)
        nbytes = 0
        stream = key_stream(keys, spec.count, SEED)
        t0 = gate.wait()
        w0 = done.value
        for key in stream:
            nbytes += len(get(key))
        seconds = time.perf_counter() - t0
        w1 = done.value
    finally:
        stop.value = 1
    return MixedSample(spec.count, nbytes, seconds, writes=w1 - w0)


def mixed_open(inner: Any) -> Any:
    """Wrap a case's ``open`` so that its handle also carries the stop flag and the write counter."""

    def open_(spec: H.Spec, ctx: Any) -> H.Opened:
        opened = inner(spec, ctx)
        return H.Opened((opened.handle, ctx.RawValue("b", 0), ctx.RawValue("q", 0)), opened.close)

    return open_


# -- lmdb --------------------------------------------------------------------------------------------


def lmdb_options(options: dict[str, Any]) -> dict[str, Any]:
    size = options["size"] * options["keys"]
    extra = {} if options["lmdb_durable"] else {"sync": False, "metasync": False}
    return {"map_size": max(1 << 30, 8 * size), "lock": True, "max_dbs": 0, **extra}


def _open_lmdb(spec: H.Spec, ctx: Any) -> H.Opened:
    import lmdb

    directory = tempfile.mkdtemp(
        prefix="mmipc-bench-lmdb-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None
    )
    options = {**spec.options, "size": spec.size}
    env = lmdb.open(directory, **lmdb_options(options))
    value = payload_of(spec.size)
    with env.begin(write=True) as txn:
        for key in keys_for(spec.options):
            txn.put(key, value)
    env.close()
    return H.Opened((directory, options), lambda: shutil.rmtree(directory, ignore_errors=True))


def _lmdb_env(handle: Any) -> Any:
    import lmdb

    directory, options = handle
    return lmdb.open(directory, **lmdb_options(options))


def lmdb_get_consumer(handle: Any, spec: H.Spec, gate: H.Gate) -> H.Sample:
    env = _lmdb_env(handle)
    keys = keys_for(spec.options)
    begin = env.begin
    try:
        with begin() as txn:
            if txn.get(keys[0]) != payload_of(spec.size):
                raise AssertionError("lmdb returned a wrong value")
        for key in key_stream(keys, spec.warmup, SEED + 1):
            with begin() as txn:
                txn.get(key)
        nbytes = 0
        stream = key_stream(keys, spec.count, SEED)
        t0 = gate.wait()
        for key in stream:
            with begin() as txn:
                nbytes += len(txn.get(key))
        seconds = time.perf_counter() - t0
    finally:
        env.close()
    return H.Sample(spec.count, nbytes, seconds)


def lmdb_buffers_consumer(handle: Any, spec: H.Spec, gate: H.Gate) -> H.Sample:
    env = _lmdb_env(handle)
    keys = keys_for(spec.options)
    begin = env.begin
    try:
        touched = 0
        for key in key_stream(keys, spec.warmup, SEED + 1):
            with begin(buffers=True) as txn:
                touched += txn.get(key)[0]
        nbytes = 0
        stream = key_stream(keys, spec.count, SEED)
        t0 = gate.wait()
        for key in stream:
            with begin(buffers=True) as txn:
                v = txn.get(key)
                touched += v[0]
                nbytes += len(v)
        seconds = time.perf_counter() - t0
    finally:
        env.close()
    return H.Sample(spec.count, nbytes, seconds)


def lmdb_get_batch_consumer(handle: Any, spec: H.Spec, gate: H.Gate) -> H.Sample:
    env = _lmdb_env(handle)
    keys = keys_for(spec.options)
    begin = env.begin
    batch_size = spec.options["batch"]

    def gets(count: int, seed: int) -> int:
        stream = key_stream(keys, count, seed)
        nbytes = 0
        for n in chunk_sizes(count, batch_size):
            with begin() as txn:
                get = txn.get
                for key in itertools.islice(stream, n):
                    nbytes += len(get(key))
        return nbytes

    try:
        gets(spec.warmup, SEED + 1)
        t0 = gate.wait()
        nbytes = gets(spec.count, SEED)
        seconds = time.perf_counter() - t0
    finally:
        env.close()
    return H.Sample(spec.count, nbytes, seconds)


def lmdb_put_consumer(handle: Any, spec: H.Spec, gate: H.Gate) -> H.Sample:
    env = _lmdb_env(handle)
    keys = keys_for(spec.options)
    value = payload_of(spec.size, salt=2)
    begin = env.begin
    try:
        for key in key_stream(keys, spec.warmup, SEED + 1):
            with begin(write=True) as txn:
                txn.put(key, value)
        stream = key_stream(keys, spec.count, SEED)
        t0 = gate.wait()
        for key in stream:
            with begin(write=True) as txn:
                txn.put(key, value)
        seconds = time.perf_counter() - t0
    finally:
        env.close()
    return H.Sample(spec.count, spec.count * spec.size, seconds)


def lmdb_put_batch_consumer(handle: Any, spec: H.Spec, gate: H.Gate) -> H.Sample:
    env = _lmdb_env(handle)
    keys = keys_for(spec.options)
    value = payload_of(spec.size, salt=2)
    begin = env.begin
    batch_size = spec.options["batch"]

    def puts(count: int, seed: int) -> None:
        stream = key_stream(keys, count, seed)
        for n in chunk_sizes(count, batch_size):
            with begin(write=True) as txn:
                put = txn.put
                for key in itertools.islice(stream, n):
                    put(key, value)

    try:
        puts(spec.warmup, SEED + 1)
        t0 = gate.wait()
        puts(spec.count, SEED)
        seconds = time.perf_counter() - t0
    finally:
        env.close()
    return H.Sample(spec.count, spec.count * spec.size, seconds)


def lmdb_writer(handle: Any, spec: H.Spec, gate: H.Gate, index: int) -> None:
    inner, stop, done = handle
    env = _lmdb_env(inner)
    begin = env.begin
    value = payload_of(spec.size, salt=2)

    def put(key: bytes, value: bytes) -> None:
        with begin(write=True) as txn:
            txn.put(key, value)

    try:
        writer_loop(put, keys_for(spec.options), value, spec, gate, stop, done)
    finally:
        env.close()


def lmdb_mixed_reader(handle: Any, spec: H.Spec, gate: H.Gate) -> H.Sample:
    inner, stop, done = handle
    env = _lmdb_env(inner)
    begin = env.begin

    def get(key: bytes) -> bytes:
        with begin() as txn:
            return txn.get(key)  # type: ignore[no-any-return]

    try:
        return reader_loop(get, keys_for(spec.options), spec, gate, stop, done)
    finally:
        env.close()


# -- multiprocessing.Manager().dict() --------------------------------------------------------------


def _open_manager(spec: H.Spec, ctx: Any) -> H.Opened:
    manager = ctx.Manager()
    d = manager.dict()
    value = payload_of(spec.size)
    keys = keys_for(spec.options)
    for start in range(0, len(keys), 1000):  # a few large messages, not one per key
        d.update(dict.fromkeys(keys[start : start + 1000], value))
    return H.Opened(d, manager.shutdown)


def manager_get_consumer(d: Any, spec: H.Spec, gate: H.Gate) -> H.Sample:
    keys = keys_for(spec.options)
    get = d.__getitem__
    if get(keys[0]) != payload_of(spec.size):
        raise AssertionError("Manager().dict() returned a wrong value")
    for key in key_stream(keys, spec.warmup, SEED + 1):
        get(key)
    nbytes = 0
    stream = key_stream(keys, spec.count, SEED)
    t0 = gate.wait()
    for key in stream:
        nbytes += len(get(key))
    return H.Sample(spec.count, nbytes, time.perf_counter() - t0)


def manager_put_consumer(d: Any, spec: H.Spec, gate: H.Gate) -> H.Sample:
    keys = keys_for(spec.options)
    value = payload_of(spec.size, salt=2)
    put = d.__setitem__
    for key in key_stream(keys, spec.warmup, SEED + 1):
        put(key, value)
    stream = key_stream(keys, spec.count, SEED)
    t0 = gate.wait()
    for key in stream:
        put(key, value)
    return H.Sample(spec.count, spec.count * spec.size, time.perf_counter() - t0)


def manager_writer(handle: Any, spec: H.Spec, gate: H.Gate, index: int) -> None:
    d, stop, done = handle
    writer_loop(d.__setitem__, keys_for(spec.options), payload_of(spec.size, salt=2), spec, gate, stop, done)


def manager_mixed_reader(handle: Any, spec: H.Spec, gate: H.Gate) -> H.Sample:
    d, stop, done = handle
    return reader_loop(d.__getitem__, keys_for(spec.options), spec, gate, stop, done)


# -- shared-memory-dict --------------------------------------------------------------------------------


def smd_size(size: int, keys: int) -> int:
    return 2 * keys * (size + 64) + (1 << 20)


def _smd_attach(name: str, size: int) -> Any:
    from shared_memory_dict import SharedMemoryDict  # type: ignore[import-untyped, unused-ignore]

    # Attaching registers the name with the resource tracker the whole process tree shares (a
    # set: the parent registered it already); the parent's unlink unregisters it.
    return SharedMemoryDict(name=name, size=size)


def _open_smd(spec: H.Spec, ctx: Any) -> H.Opened:
    from shared_memory_dict import SharedMemoryDict  # type: ignore[import-untyped, unused-ignore]

    keys = keys_for(spec.options)
    name = f"mmipc-bench-{uuid.uuid4().hex[:12]}"
    size = smd_size(spec.size, len(keys))
    smd = SharedMemoryDict(name=name, size=size)
    smd.update(dict.fromkeys(keys, payload_of(spec.size)))

    def close() -> None:
        smd.shm.close()
        smd.shm.unlink()

    return H.Opened((name, size), close)


def smd_get_consumer(handle: Any, spec: H.Spec, gate: H.Gate) -> H.Sample:
    smd = _smd_attach(*handle)
    keys = keys_for(spec.options)
    get = smd.__getitem__
    try:
        if get(keys[0]) != payload_of(spec.size):
            raise AssertionError("shared-memory-dict returned a wrong value")
        for key in key_stream(keys, spec.warmup, SEED + 1):
            get(key)
        nbytes = 0
        stream = key_stream(keys, spec.count, SEED)
        t0 = gate.wait()
        for key in stream:
            nbytes += len(get(key))
        seconds = time.perf_counter() - t0
    finally:
        smd.shm.close()
    return H.Sample(spec.count, nbytes, seconds)


def smd_put_consumer(handle: Any, spec: H.Spec, gate: H.Gate) -> H.Sample:
    smd = _smd_attach(*handle)
    keys = keys_for(spec.options)
    value = payload_of(spec.size, salt=2)
    put = smd.__setitem__
    try:
        for key in key_stream(keys, spec.warmup, SEED + 1):
            put(key, value)
        stream = key_stream(keys, spec.count, SEED)
        t0 = gate.wait()
        for key in stream:
            put(key, value)
        seconds = time.perf_counter() - t0
    finally:
        smd.shm.close()
    return H.Sample(spec.count, spec.count * spec.size, seconds)


# -- the benchmark -------------------------------------------------------------------------------------

GET, PUT, MIXED = "get", "put", "get while another process puts"


def cases() -> dict[str, list[H.Case]]:
    lmdb_missing = lambda: _missing("lmdb")  # noqa: E731
    smd_missing = lambda: _missing("shared_memory_dict")  # noqa: E731
    return {
        GET: [
            H.Case(MMIPC_GET, _open_kv, kv_get_consumer, unavailable=kv_unavailable, max_producers=0),
            H.Case(
                MMIPC_VIEW,
                _open_kv,
                kv_view_consumer,
                unavailable=kv_unavailable,
                max_producers=0,
                logical_bytes=True,
            ),
            H.Case(LMDB, _open_lmdb, lmdb_get_consumer, unavailable=lmdb_missing, max_producers=0),
            H.Case(
                LMDB_BUFFERS,
                _open_lmdb,
                lmdb_buffers_consumer,
                unavailable=lmdb_missing,
                max_producers=0,
                logical_bytes=True,
            ),
            H.Case(
                LMDB_BATCH, _open_lmdb, lmdb_get_batch_consumer, unavailable=lmdb_missing, max_producers=0
            ),
            H.Case(MANAGER, _open_manager, manager_get_consumer, max_producers=0),
            H.Case(SMD, _open_smd, smd_get_consumer, unavailable=smd_missing, max_producers=0),
        ],
        PUT: [
            H.Case(MMIPC_PUT, _open_kv, kv_put_consumer, unavailable=kv_unavailable, max_producers=0),
            H.Case(MMIPC_BATCH, _open_kv, kv_batch_consumer, unavailable=kv_unavailable, max_producers=0),
            H.Case(LMDB, _open_lmdb, lmdb_put_consumer, unavailable=lmdb_missing, max_producers=0),
            H.Case(
                LMDB_BATCH, _open_lmdb, lmdb_put_batch_consumer, unavailable=lmdb_missing, max_producers=0
            ),
            H.Case(MANAGER, _open_manager, manager_put_consumer, max_producers=0),
            H.Case(SMD, _open_smd, smd_put_consumer, unavailable=smd_missing, max_producers=0),
        ],
        MIXED: [
            H.Case(MMIPC_GET, mixed_open(_open_kv), kv_mixed_reader, kv_writer, unavailable=kv_unavailable),
            H.Case(LMDB, mixed_open(_open_lmdb), lmdb_mixed_reader, lmdb_writer, unavailable=lmdb_missing),
            H.Case(MANAGER, mixed_open(_open_manager), manager_mixed_reader, manager_writer),
            H.Case(
                SMD,
                _open_smd,
                smd_get_consumer,
                unavailable=lambda: "no lock by default: a reader racing a writer unpickles torn data",
            ),
        ],
    }


def group_name(kind: str, size: int) -> str:
    return f"{kind}, {H.format_size(size)}"


def keys_for_size(size: int, keys: int) -> int:
    return min(keys, LARGE_KEYS) if size >= LARGE else keys


def batch_for(size: int) -> int:
    """Operations per transaction / ``kv.batch()`` block: 1000, fewer for large values (<= 2 MiB).

    2 MiB, i.e. 2 values of 1 MiB: lmdb's batched puts of 1 MiB values slow down ~4x from 4
    values per transaction up (measured in one process: 1 per txn 3.7k puts/s, 2: 4.1k, 4 and
    16: 1.1k), so a larger batch would make lmdb's batched baseline look worse than it is.
    """
    return max(1, min(1000, (2 << 20) // size))


def initial_count(case: str, size: int, quick: bool) -> int:
    """The first pilot's operation count (~0.05 s for the fast cases; pilots grow it).

    shared-memory-dict copies and unpickles its whole store on every operation (tens of ms with
    10 000 values of 4 KiB): its pilot starts at 4 operations, the Manager's at 1 000.
    """
    if case == SMD:
        return 4
    first = max(4, min(5_000 if quick else 20_000, (64 << 20) // size // 16))
    return min(first, 1_000) if case == MANAGER else first


def targets(results: H.Results, sizes: list[int]) -> list[H.Target]:
    def rate(kind: str, size: int, case: str) -> float | None:
        return results.rate(group_name(kind, size), case)

    mib1 = 1 << 20
    found = [
        H.ratio_target(
            "get, 64 B: kv[key] >= 0.8x lmdb (1 txn per get)",
            rate(GET, 64, MMIPC_GET),
            rate(GET, 64, LMDB),
            0.8,
        ),
        H.ratio_target(
            "get, 1 MiB: kv.view(key) >= 20x kv[key] (copying the value out)",
            rate(GET, mib1, MMIPC_VIEW),
            rate(GET, mib1, MMIPC_GET),
            20.0,
        ),
    ]
    for size in sizes:
        s = H.format_size(size)
        found.append(
            H.ratio_target(
                f"put, {s}: kv[key] = value >= 2x lmdb (1 txn per put)",
                rate(PUT, size, MMIPC_PUT),
                rate(PUT, size, LMDB),
                2.0,
            )
        )
        found.append(
            H.ratio_target(
                f"put, {s}: kv.batch() >= 0.7x lmdb (batched txn)",
                rate(PUT, size, MMIPC_BATCH),
                rate(PUT, size, LMDB_BATCH),
                0.7,
            )
        )
    for size in sizes:
        s = H.format_size(size)
        found.append(
            H.ratio_target(
                f"get, {s}: kv[key] >= 50x Manager().dict()",
                rate(GET, size, MMIPC_GET),
                rate(GET, size, MANAGER),
                50.0,
            )
        )
        found.append(
            H.ratio_target(
                f"put, {s}: kv[key] = value >= 50x Manager().dict()",
                rate(PUT, size, MMIPC_PUT),
                rate(PUT, size, MANAGER),
                50.0,
            )
        )
    return found


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--sizes",
        type=lambda text: [H.parse_size(part) for part in text.split(",")],
        default=list(SIZES),
        help="comma-separated value sizes (default 64,4K,1M)",
    )
    parser.add_argument(
        "--keys",
        type=int,
        default=DEFAULT_KEYS,
        help=f"keys in every store (default %(default)s; at most {LARGE_KEYS} for values >= 1 MiB)",
    )
    parser.add_argument("--batch", type=int, default=None, help="operations per batch / transaction")
    parser.add_argument(
        "--lmdb-durable",
        action="store_true",
        help="open lmdb with its defaults (sync=True, metasync=True) instead of sync=False, metasync=False",
    )
    parser.add_argument(
        "--kinds",
        default="get,put,mixed",
        help="comma-separated groups to run: get, put, mixed (default all)",
    )


def mixed_lines(measurements: list[H.Measurement]) -> str:
    lines = []
    for m in measurements:
        if not m.group.startswith(MIXED) or not m.ok or m.best is None:
            continue
        best = m.best
        writes = best.writes_per_s if isinstance(best, MixedSample) else 0.0
        retries = best.retries if isinstance(best, MixedSample) else -1
        shown = f"; reader retries {retries} in {best.messages} gets" if retries >= 0 else ""
        lines.append(
            f"  [{m.group}] {m.case}: writer {H._si(writes)} writes/s during the best read sample{shown}"
        )
    text = "writes completed by the writer process while the reader was timed:\n" + "\n".join(lines) + "\n"
    print(text, flush=True)
    return text


def run(args: argparse.Namespace) -> int:
    settings = H.Settings.from_args(args, "kv")
    ctx = H.make_context(settings, preload=["benchmarks.kv", "mmipc", "lmdb", "shared_memory_dict"])
    info = H.machine_info(("mmipc", "lmdb", "shared-memory-dict"))
    command = "python -m benchmarks " + shlex.join(sys.argv[1:])
    print(f"$ {command}")
    H.print_machine(info, settings)
    lmdb_note = (
        "lmdb defaults (sync=True, metasync=True)" if args.lmdb_durable else "sync=False, metasync=False"
    )
    print(f"lmdb: a directory on /dev/shm, {lmdb_note}, lock=True; one process per get/put cell")
    missing = kv_unavailable()
    if missing is not None:
        print(f"FAIL  {missing}: the mmipc rows are skipped", flush=True)
    kinds = {w.strip() for w in args.kinds.split(",") if w.strip()}
    kinds = {MIXED if k == "mixed" else k for k in kinds}
    measurements: list[H.Measurement] = []
    all_cases = cases()
    for kind in (GET, PUT, MIXED):
        if kind not in kinds:
            continue
        for size in args.sizes:
            options = {
                "keys": keys_for_size(size, args.keys),
                "batch": args.batch or batch_for(size),
                "lmdb_durable": args.lmdb_durable,
            }
            for case in all_cases[kind]:
                if not settings.selected(case.name):
                    continue
                measurements.append(
                    H.measure(
                        ctx,
                        case,
                        group=group_name(kind, size),
                        size=size,
                        producers=1 if kind == MIXED else 0,
                        settings=settings,
                        initial_count=initial_count(case.name, size, settings.quick),
                        options=options,
                    )
                )
    results = H.Results(measurements)
    table = H.print_table(results, BASELINES, rate_title="ops/s")
    mixed = mixed_lines(measurements)
    checks = targets(results, list(args.sizes))
    H.evaluate_targets(checks)
    H.write_json(
        settings.json_path,
        {
            "benchmark": "kv",
            "command": command,
            "machine": info,
            "settings": {
                "quick": settings.quick,
                "repeat": settings.repeat,
                "seconds": settings.seconds,
                "start_method": settings.start_method,
                "sizes": args.sizes,
                "keys": {str(size): keys_for_size(size, args.keys) for size in args.sizes},
                "batch": {str(size): args.batch or batch_for(size) for size in args.sizes},
                "lmdb": lmdb_note,
                "statistic": "best of repeats (highest ops/s)",
            },
            "measurements": [m.to_json() for m in measurements],
            "targets": [t.to_json() for t in checks],
            "table": table,
            "mixed_writes": mixed,
        },
    )
    failed = [m for m in measurements if m.note.startswith("failed")]
    return 1 if failed or missing is not None else 0
