"""Child-process bodies and self-checking values for the KV tests.

Module level so that ``spawn`` and ``forkserver`` children can import them.

A *self-checking value* for ``(key_id, version)`` starts with ``key_id, version, length,
crc32(body)`` and is followed by ``length - 16`` deterministic bytes; a reader that sees a torn
value (a mix of two versions, or bytes of another key) finds a mismatch.
"""

from __future__ import annotations

import faulthandler
import os
import random
import signal
import struct
import time
import zlib
from typing import Any

import mmipc

HEADER = struct.Struct("<IIII")


def make_value(key_id: int, version: int, max_len: int = 2048) -> bytes:
    rng = random.Random(key_id * 1_000_003 + version)
    length = HEADER.size + rng.randrange(max_len)
    body = rng.randbytes(length - HEADER.size)
    return HEADER.pack(key_id, version, length, zlib.crc32(body)) + body


def check_value(key_id: int, data: bytes | memoryview) -> int:
    """Return the value's version; raise AssertionError if it is torn or foreign."""
    data = bytes(data)
    kid, version, length, crc = HEADER.unpack_from(data)
    assert kid == key_id, f"value of key {key_id} carries key id {kid}"
    assert length == len(data), f"value of key {key_id} v{version}: length {len(data)} != {length}"
    assert zlib.crc32(data[HEADER.size :]) == crc, f"value of key {key_id} v{version} is torn"
    assert data == make_value(key_id, version), f"value of key {key_id} v{version} differs"
    return int(version)


def put_items(kv: mmipc.KV, items: list[tuple[Any, bytes]]) -> None:
    for key, value in items:
        kv[key] = value
    kv.close()


def increment_many(kv: mmipc.KV, key: str, times: int) -> None:
    for _ in range(times):
        kv.increment(key)
    kv.close()


def read_into_queue(kv: mmipc.KV, keys: list[Any], queue: Any) -> None:
    queue.put({k: kv.get(k) for k in keys})
    kv.close()


def rewrite_values(kv: mmipc.KV, nkeys: int, rounds: int, done: Any) -> None:
    """Writer of the torn-read stress test: rewrite every key ``rounds`` times, some deletes."""
    faulthandler.dump_traceback_later(90, exit=True)  # a hang shows where, then ends
    for version in range(1, rounds + 1):
        for key_id in range(nkeys):
            key = f"key-{key_id}"
            if (key_id + version) % 7 == 0:
                kv.pop(key, None)
            else:
                kv[key] = make_value(key_id, version)
    done.value = 1
    kv.close()


def rewrite_until_killed(kv: mmipc.KV, nkeys: int, first_version: int, started: Any) -> None:
    """A writer the test SIGKILLs at a random moment: versions from ``first_version`` upward."""
    faulthandler.dump_traceback_later(90, exit=True)
    version = first_version
    while True:
        for key_id in range(nkeys):
            kv[f"key-{key_id}"] = make_value(key_id, version)
            started.set()  # after its first write
        version += 1


def verify_reads(kv: mmipc.KV, nkeys: int, done: Any, result: Any) -> None:
    """Reader of the torn-read stress test: check every get and view until the writer ends."""
    faulthandler.dump_traceback_later(90, exit=True)
    reads = 0
    last = [0] * nkeys
    try:
        while not done.value or reads < 200:
            key_id = reads % nkeys
            key = f"key-{key_id}"
            if reads % 3 == 0:
                try:
                    with kv.view(key) as view:
                        first = bytes(view)
                        time.sleep(0)  # writers run meanwhile: the view must not change
                        assert bytes(view) == first, "a view changed under its reader"
                        version = check_value(key_id, view)
                except KeyError:
                    version = -1
            elif reads % 50 == 1:
                for k, v in kv.items():  # a scan: every pair it returns is whole
                    check_value(int(str(k).rpartition("-")[2]), v)
                version = -1
            else:
                data = kv.get(key)
                version = -1 if data is None else check_value(key_id, data)
            if version >= 0:
                assert version >= last[key_id], f"key {key_id} went back from v{last[key_id]} to v{version}"
                last[key_id] = version
            reads += 1
        result.put(("ok", reads, kv.stats().retries))
    except BaseException as exc:  # report, the parent asserts
        result.put(("error", repr(exc), 0))
    finally:
        kv.close()


def hold_view_then_die(kv: mmipc.KV, key: str, ready: Any) -> None:
    """Pin a view and get killed inside it."""
    with kv.view(key) as view:
        ready.set()
        while True:
            time.sleep(0.05)
            assert len(view) >= 0


def wait_for_change_child(kv: mmipc.KV, since: int, result: Any) -> None:
    try:
        result.put(("ok", kv.wait_for_change(timeout=30, since=since)))
    except BaseException as exc:
        result.put(("error", repr(exc)))
    finally:
        kv.close()


class _KillingWords:
    """Stands in for ``kv._words``: SIGKILLs this process at its ``kill_at``-th store."""

    def __init__(self, words: memoryview, counter: list[int], kill_at: int) -> None:
        self._words = words
        self._counter = counter
        self._kill_at = kill_at

    def __getitem__(self, index: Any) -> Any:
        return self._words[index]

    def __setitem__(self, index: Any, value: Any) -> None:
        self._counter[0] += 1
        if self._counter[0] == self._kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        self._words[index] = value

    def __len__(self) -> int:
        return len(self._words)

    def release(self) -> None:
        self._words.release()


def run_op(kv: mmipc.KV, op: str, key: Any, value: bytes | None, kill_at: int) -> int:
    """Run one write, SIGKILLed at the ``kill_at``-th shared-word store after the lock is taken
    (0: never); return how many stores it made."""
    counter = [0]
    real_acquire = kv._acquire
    real_remap = kv._remap

    def remap(size: int) -> None:
        real_remap(size)
        kv._words = _KillingWords(kv._region.words, counter, kill_at)  # type: ignore[arg-type,assignment]
        kv._heap._words = _KillingWords(kv._region.words, counter, kill_at)  # type: ignore[arg-type,assignment]

    def acquire() -> None:
        real_acquire()
        if not isinstance(kv._words, _KillingWords):
            kv._words = _KillingWords(kv._words, counter, kill_at)  # type: ignore[arg-type,assignment]
            kv._heap._words = _KillingWords(kv._heap._words, counter, kill_at)  # type: ignore[assignment]
            kv._remap = remap  # type: ignore[method-assign]

    kv._acquire = acquire  # type: ignore[method-assign]
    try:
        if op in ("put", "grow", "rebuild"):
            kv[key] = value
        elif op == "delete":
            del kv[key]
        elif op == "batch":
            with kv.batch():
                for i in range(4):
                    kv[f"batch-{i}"] = value  # type: ignore[assignment]
        elif op == "clear":
            kv.clear()
        elif op == "increment":
            kv.increment(key)
        else:
            raise ValueError(op)
    finally:
        kv._acquire = real_acquire  # type: ignore[method-assign]
        kv._remap = real_remap  # type: ignore[method-assign]
        if isinstance(kv._words, _KillingWords):
            kv._words = kv._region.words
        kv._heap.refresh()
    return counter[0]


def killed_writer(kv: mmipc.KV, op: str, key: Any, value: bytes | None, kill_at: int) -> None:
    """``run_op`` in a child: exits 0 if the operation completed before the ``kill_at``-th store."""
    run_op(kv, op, key, value, kill_at)
    os._exit(0)


def killed_writer_by_path(path: str, op: str, key: Any, value: bytes | None, kill_at: int) -> None:
    """Open a file-backed KV alone, then run ``killed_writer``."""
    kv = mmipc.KV.attach(path=path)
    killed_writer(kv, op, key, value, kill_at)


def hold_lock_then_die(kv: mmipc.KV, ready: Any) -> None:
    """Take the writer lock (a batch) and get killed holding it."""
    with kv.batch():
        kv["held"] = b"1"
        ready.set()
        time.sleep(60)
