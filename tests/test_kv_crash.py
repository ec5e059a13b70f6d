"""KV crash safety: writers SIGKILLed at every shared store, dead readers, persistence, corruption."""

from __future__ import annotations

import multiprocessing
import os
import pathlib
import random
import shutil
import time
from typing import Any

import pytest

import _kvchild as child
import mmipc
from mmipc import _kv
from mmipc import _layout as L
from test_kv import assert_no_leaks, cleanup_kv, kv_kind, make_kv  # noqa: F401  (fixtures)

pytestmark = [pytest.mark.crash, pytest.mark.timeout(180)]

FORK = multiprocessing.get_context("fork")
MAX_POINTS = 24  # kill points per operation (sampled evenly over all of its stores)


def _fast_lock_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    # The next writer notices a dead holder after one check interval: keep the sweep short.
    monkeypatch.setattr(_kv, "LOCK_CHECK_INTERVAL", 0.005)


def _setup(op: str) -> tuple[mmipc.KV, Any, bytes | None]:
    """A fresh KV in the state the operation expects; returns (kv, key, value)."""
    if op == "grow":
        kv = mmipc.KV.create(4096, max_keys=16)
    elif op == "rebuild":
        kv = mmipc.KV.create(1 << 16)  # 128 slots: the 97th key rebuilds the index
    else:
        kv = mmipc.KV.create(1 << 16, max_keys=64)
    for i in range(94 if op == "rebuild" else 8):
        kv[f"base-{i}"] = bytes([i]) * (10 * i)
    kv["old"] = b"old value"
    kv["n"] = (41).to_bytes(8, "little", signed=True)
    key, value = {
        "put": ("new", b"N" * 300),
        "grow": ("big", b"G" * 20000),
        "rebuild": ("new", b"R" * 10),
        "delete": ("old", None),
        "batch": (None, b"B" * 100),
        "clear": (None, None),
        "increment": ("n", None),
    }[op]
    if op == "put":
        key = random.choice(["new", "old"])
    return kv, key, value


def _allowed(op: str, before: dict[Any, bytes], key: Any, value: bytes | None) -> list[dict[Any, bytes]]:
    """The contents the KV may have after the operation was killed: not applied, or applied."""
    after = dict(before)
    if op in ("put", "grow", "rebuild"):
        after[key] = value  # type: ignore[assignment]
        return [before, after]
    if op == "delete":
        del after[key]
        return [before, after]
    if op == "increment":
        after[key] = (42).to_bytes(8, "little", signed=True)
        return [before, after]
    if op == "clear":
        return [before, {}]
    assert op == "batch"
    states = [dict(before)]
    for i in range(4):  # a prefix of the batch, each write whole
        after[f"batch-{i}"] = value  # type: ignore[assignment]
        states.append(dict(after))
    return states


@pytest.mark.parametrize("op", ["put", "delete", "increment", "batch", "clear", "grow", "rebuild"])
def test_writer_killed_at_any_store_is_finished_or_rolled_back(
    op: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fast_lock_checks(monkeypatch)
    random.seed(op)
    kv, key, value = _setup(op)
    try:
        total = child.run_op(kv, op, key, value, 0)  # a dry run counts the stores
    finally:
        cleanup_kv(kv)
    assert total > 10
    step = max(1, total // MAX_POINTS)
    points = sorted(set(range(1, total + 1, step)) | {total})
    killed = 0
    for kill_at in points:
        kv, key, value = _setup(op)
        try:
            before = dict(kv.items())
            p = FORK.Process(target=child.killed_writer, args=(kv, op, key, value, kill_at))
            p.start()
            p.join(60)
            assert p.exitcode in (0, -9), p.exitcode
            killed += p.exitcode == -9
            # Readers first: a half-written entry must not be visible (nor hang the reader).
            seen = {
                k: kv.get(k) for k in set(before) | {key} | {f"batch-{i}" for i in range(4)} if k is not None
            }
            seen = {k: v for k, v in seen.items() if v is not None}
            allowed = _allowed(op, before, key, value)
            assert seen in allowed, f"killed at store {kill_at}/{total}: {seen}"
            # The next writer repairs and carries on.
            kv["probe"] = b"p" * 50
            del kv["probe"]
            contents = dict(kv.items())
            assert contents in allowed, f"killed at store {kill_at}/{total}"
            # The repair may finish the operation after a reader saw it not applied, never undo
            # what a reader saw applied.
            assert allowed.index(contents) >= allowed.index(seen)
            kv._check(repair=False, verify=True)
            assert_no_leaks(kv)
            stats = kv.stats()
            assert stats.keys == len(contents)
            assert stats.bytes_live == sum(len(k) + len(v) for k, v in contents.items())
            # Space is not lost: overwrite everything a few times within a bounded region.
            for _ in range(3):
                for k in list(contents):
                    kv[k] = contents[k]
            assert dict(kv.items()) == contents
        finally:
            cleanup_kv(kv)
    assert killed >= len(points) - 2


_REPLACED = 6


def _replacements() -> list[tuple[str, bytes]]:
    return [(f"k{i}", (b"v%d-%d" % (r, i)) * (3 + r)) for r in range(1, 4) for i in range(_REPLACED)]


def _replacing_batch(kv: mmipc.KV, kill_at: int) -> int:
    """A batch that replaces every key three times (its old blocks wait in the batch's private
    retirement list, flushed every RECLAIM_EVERY puts), deletes one and puts it back; SIGKILLed
    at the ``kill_at``-th shared store (0: never). Returns the number of stores."""
    counter = [0]
    real_acquire = kv._acquire

    def acquire() -> None:
        real_acquire()
        if not isinstance(kv._words, child._KillingWords):
            kv._words = child._KillingWords(kv._words, counter, kill_at)  # type: ignore[arg-type,assignment]
            kv._heap._words = child._KillingWords(kv._heap._words, counter, kill_at)  # type: ignore[assignment]

    kv._acquire = acquire  # type: ignore[method-assign]
    try:
        with kv.batch():
            for k, v in _replacements():
                kv[k] = v
                time.sleep(0.0003)  # grace periods pass: reclaims happen inside the batch
            del kv["k0"]
            kv["k0"] = b"again"
    finally:
        kv._acquire = real_acquire  # type: ignore[method-assign]
        kv._words = kv._region.words
        kv._heap.refresh()
    return counter[0]


def _killed_replacing_batch(kv: mmipc.KV, kill_at: int, every: int) -> None:
    _kv.RECLAIM_EVERY = every
    _replacing_batch(kv, kill_at)
    os._exit(0)


@pytest.mark.parametrize("every", [1, 64])
def test_batch_of_replacements_killed_at_any_store(every: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Replaced blocks retired at the end of a batch (not one by one) are neither leaked nor
    freed under a reader when the writer dies anywhere in the batch."""
    _fast_lock_checks(monkeypatch)
    monkeypatch.setattr(_kv, "RECLAIM_EVERY", every)

    def setup() -> mmipc.KV:
        kv = mmipc.KV.create(1 << 16, max_keys=64)
        for i in range(_REPLACED):
            kv[f"k{i}"] = b"v0-%d" % i * 3
        return kv

    states = [{f"k{i}": b"v0-%d" % i * 3 for i in range(_REPLACED)}]
    for k, v in _replacements():
        states.append({**states[-1], k: v})
    states.append({k: v for k, v in states[-1].items() if k != "k0"})
    states.append({**states[-1], "k0": b"again"})
    kv = setup()
    try:
        total = _replacing_batch(kv, 0)
        assert dict(kv.items()) == states[-1]
    finally:
        cleanup_kv(kv)
    step = max(1, total // (2 * MAX_POINTS))
    killed = 0
    for kill_at in sorted(set(range(1, total + 1, step)) | {total}):
        kv = setup()
        try:
            p = FORK.Process(target=_killed_replacing_batch, args=(kv, kill_at, every))
            p.start()
            p.join(60)
            assert p.exitcode in (0, -9), p.exitcode
            killed += p.exitcode == -9
            seen = {k: v for k in states[0] if (v := kv.get(k)) is not None}
            assert seen in states, f"killed at store {kill_at}/{total}: {seen}"
            kv["probe"] = b"p"
            del kv["probe"]
            contents = dict(kv.items())
            assert contents in states and states.index(contents) >= states.index(seen)
            kv._check(repair=False, verify=True)
            assert_no_leaks(kv)
            stats = kv.stats()
            assert stats.keys == len(contents)
            assert stats.bytes_live == sum(len(k) + len(v) for k, v in contents.items())
            for _ in range(3):
                for k in list(contents):
                    kv[k] = contents[k]
            assert dict(kv.items()) == contents
        finally:
            cleanup_kv(kv)
    assert killed >= 2 * MAX_POINTS - 2


@pytest.mark.stress
def test_readers_never_see_torn_values_while_writers_are_killed(make_kv: Any, mp_context: Any) -> None:  # noqa: F811
    """Readers verify every read while writer after writer is SIGKILLed mid-stream."""
    kv = make_kv(1 << 16)
    nkeys = 30
    for key_id in range(nkeys):
        kv[f"key-{key_id}"] = child.make_value(key_id, 0)
    done = mp_context.Value("i", 0)
    result = mp_context.Queue()
    readers = [
        mp_context.Process(target=child.verify_reads, args=(kv, nkeys, done, result)) for _ in range(2)
    ]
    for r in readers:
        r.start()
    rng = random.Random(3)
    for round_ in range(4):
        started = mp_context.Event()
        writer = mp_context.Process(
            target=child.rewrite_until_killed, args=(kv, nkeys, 1000 * (round_ + 1), started)
        )
        writer.start()
        assert started.wait(60)
        time.sleep(rng.uniform(0.05, 0.3))
        writer.kill()
        writer.join(30)
    done.value = 1
    for r in readers:
        r.join(100)
    assert [r.exitcode for r in readers] == [0, 0]
    outcomes = [result.get(timeout=10) for _ in readers]
    assert all(o[0] == "ok" for o in outcomes), outcomes
    kv["after"] = b"x"  # the last killed writer's lock and half-done write are recovered
    versions = [child.check_value(key_id, kv[f"key-{key_id}"]) for key_id in range(nkeys)]
    # A writer starved of CPU may be killed before its first pass reaches every key.
    assert all(v == 0 or v >= 1000 for v in versions), versions
    assert max(versions) >= 1000
    kv._check(repair=False, verify=True)
    assert_no_leaks(kv)


def test_writer_killed_holding_the_lock_is_recovered(make_kv: Any, mp_context: Any) -> None:  # noqa: F811
    kv = make_kv()
    ready = mp_context.Event()
    p = mp_context.Process(target=child.hold_lock_then_die, args=(kv, ready))
    p.start()
    assert ready.wait(60)
    p.kill()
    p.join(30)
    kv["after"] = b"1"
    assert kv["held"] == b"1" and kv["after"] == b"1"
    assert kv.stats().recoveries == 1


def test_reader_killed_inside_view_does_not_block_reuse(make_kv: Any, mp_context: Any) -> None:  # noqa: F811
    kv = make_kv(1 << 16, max_size=1 << 18)
    kv["k"] = b"0" * 1000
    ready = mp_context.Event()
    p = mp_context.Process(target=child.hold_view_then_die, args=(kv, "k", ready))
    p.start()
    assert ready.wait(60)
    words = kv._words
    assert words is not None
    pinned = [s for s in range(kv._participants.capacity) if words[L.slot_word(s, L.S_KV_PIN)]]
    assert len(pinned) == 1
    p.kill()
    p.join(30)
    # 2 MB of rewrites through a region of at most 256 KiB: only possible if the dead pin is ignored.
    for i in range(2000):
        kv["k"] = bytes([i % 256]) * 1000
    assert kv["k"] == bytes([1999 % 256]) * 1000


def test_live_view_holds_retired_memory(make_kv: Any) -> None:  # noqa: F811
    kv = make_kv(1 << 16, max_size=1 << 17)
    kv["k"] = b"0" * 1000
    with kv.view("k") as view:
        with pytest.raises(mmipc.KVFull):
            for i in range(2000):
                kv["k"] = bytes([i % 256]) * 1000
        assert bytes(view) == b"0" * 1000
    for i in range(2000):  # the view ended: its memory comes back
        kv["k"] = bytes([i % 256]) * 1000


# -- persistence --------------------------------------------------------------------------------


def test_file_kv_persists_and_reopens(tmp_path: pathlib.Path, mp_context: Any) -> None:
    path = tmp_path / "store.kv"
    kv = mmipc.KV.create(1 << 16, path=path)
    items = [(f"c{i}", os.urandom(100)) for i in range(50)]
    p = mp_context.Process(target=child.put_items, args=(kv, items))
    p.start()
    p.join(60)
    assert p.exitcode == 0
    for i in range(3000):  # grow it too
        kv[f"g{i}"] = b"%d" % i
    kv.flush()
    kv.close()
    again = mmipc.KV.attach(path=path)
    try:
        assert all(again[k] == v for k, v in items)
        assert again["g2999"] == b"2999" and len(again) == 3050
        assert again.stats().repairs == 0
        again["more"] = b"m"
    finally:
        again.close()
    third = mmipc.KV.attach(path=path, readonly=True)
    try:
        assert third["more"] == b"m" and len(third) == 3051
    finally:
        third.close()
    os.unlink(path)


@pytest.mark.parametrize("op", ["put", "delete", "grow"])
def test_file_kv_killed_alone_is_repaired_on_reopen(tmp_path: pathlib.Path, op: str) -> None:
    """Every process is gone (the writer was killed mid-write): the next open repairs the file."""
    random.seed(op)
    path = str(tmp_path / "alone.kv")
    kv, key, value = _setup(op)
    total = child.run_op(kv, op, key, value, 0)
    cleanup_kv(kv)
    refused = 0
    for kill_at in range(2, total, max(1, total // 8)):
        if os.path.exists(path):
            os.unlink(path)
        template, key, value = _setup(op)
        kv = mmipc.KV.create(4096 if op == "grow" else 1 << 16, path=path, max_keys=16)
        kv.update(template.items())
        before = dict(kv.items())
        cleanup_kv(template)
        kv.close()  # the writer child is alone
        p = FORK.Process(target=child.killed_writer_by_path, args=(path, op, key, value, kill_at))
        p.start()
        p.join(60)
        assert p.exitcode in (0, -9)
        try:  # a read-only open cannot repair: it refuses a half-done write, or reads a sound file
            with mmipc.KV.attach(path=path, readonly=True) as ro:
                assert dict(ro.items()) in _allowed(op, before, key, value)
        except mmipc.IncompatibleRegion as exc:
            assert "open it once without readonly=True" in str(exc)
            refused += 1
        again = mmipc.KV.attach(path=path)
        try:
            contents = dict(again.items())
            assert contents in _allowed(op, before, key, value), f"killed at {kill_at}/{total}"
            again._check(repair=False, verify=True)
            assert_no_leaks(again)
            again["after"] = b"x"
            assert again["after"] == b"x"
        finally:
            cleanup_kv(again)
    assert refused >= 1


# -- corrupted files ------------------------------------------------------------------------------


def _pristine(tmp_path: pathlib.Path) -> tuple[pathlib.Path, dict[Any, bytes]]:
    path = tmp_path / "pristine.kv"
    kv = mmipc.KV.create(1 << 14, path=path, max_keys=64)
    rng = random.Random(7)
    for i in range(60):
        kv[f"key-{i}"] = rng.randbytes(rng.randrange(300))
    for i in range(0, 60, 4):
        del kv[f"key-{i}"]
    kv[b"bytes-key"] = b"b" * 5000
    contents = dict(kv.items())
    kv.close()
    return path, contents


def _attach_corrupt(path: pathlib.Path, contents: dict[Any, bytes]) -> str:
    """Attach a corrupted copy: a clear mmipc error, or exactly the original contents."""
    try:
        kv = mmipc.KV.attach(path=path, timeout=0.2)
    except mmipc.MmipcError:
        return "rejected"
    try:
        try:
            got = dict(kv.items())
            kv["write-after"] = b"w"
        except mmipc.MmipcError:
            return "rejected later"
        assert got == contents
        return "intact"
    finally:
        cleanup_kv(kv)


def test_random_bytes_in_a_closed_file_are_caught(tmp_path: pathlib.Path) -> None:
    path, contents = _pristine(tmp_path)
    size = path.stat().st_size
    rng = random.Random(11)
    outcomes: dict[str, int] = {}
    live_region = [(512, 1100), (4096, 4096 + 64 * 128), (8192, size)]
    for trial in range(60):
        copy = tmp_path / f"corrupt-{trial}.kv"
        shutil.copy(path, copy)
        with open(copy, "r+b") as f:
            lo, hi = live_region[trial % 3]
            for _ in range(1 + trial % 4):
                offset = rng.randrange(lo, hi)
                f.seek(offset)
                f.write(rng.randbytes(rng.choice([1, 8, 64])))
        outcome = _attach_corrupt(copy, contents)
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
        if copy.exists():
            os.unlink(copy)
    assert outcomes.get("rejected", 0) >= 10, outcomes


@pytest.mark.parametrize(
    "damage",
    [
        "all random",
        "zero length",
        "truncated header",
        "truncated data",
        "header byte",
        "index",
        "value",
        "journal",
    ],
)
def test_damaged_files_give_a_clear_error(tmp_path: pathlib.Path, damage: str) -> None:
    path, _contents = _pristine(tmp_path)
    size = path.stat().st_size
    data = bytearray(path.read_bytes())
    kv = mmipc.KV.attach(path=path)
    assert kv._words is not None
    index_block = int(kv._words[L.W_KV_INDEX_BLOCK])
    start, _end = kv._lookup_range(kv._key(b"bytes-key"), b"bytes-key")
    kv.close()
    if damage == "all random":
        data = bytearray(random.Random(1).randbytes(size))
    elif damage == "zero length":
        data = bytearray()
    elif damage == "truncated header":
        data = data[:1000]
    elif damage == "truncated data":
        data = data[: size // 2]
    elif damage == "header byte":
        data[40] ^= 0xFF
    elif damage == "index":
        for i in range(16):
            data[index_block + 64 + 32 * i + 16] ^= 0x5A  # the offset words of the first slots
    elif damage == "value":
        data[start + 100] ^= 0x01
    elif damage == "journal":
        data[L.W_J_STATE * 8] = 7
    path.write_bytes(bytes(data))
    with pytest.raises(mmipc.MmipcError) as info:
        mmipc.KV.attach(path=path, timeout=0.2)
    assert isinstance(info.value, (mmipc.IncompatibleRegion, mmipc.CorruptionError))
    assert str(path) in str(info.value) or "kv" in str(info.value).lower()


def test_corrupted_file_rejected_by_a_readonly_open(tmp_path: pathlib.Path) -> None:
    path, _contents = _pristine(tmp_path)
    kv = mmipc.KV.attach(path=path)
    start, _end = kv._lookup_range(kv._key("key-1"), "key-1")
    kv.close()
    data = bytearray(path.read_bytes())
    data[start] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(mmipc.CorruptionError, match="checksum"):
        mmipc.KV.attach(path=path, readonly=True)
