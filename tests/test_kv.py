"""KV: mapping protocol, views, atomic updates, growth, objects, read-only handles, processes."""

from __future__ import annotations

import multiprocessing
import os
import pathlib
import pickle
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

import _kvchild as child
import mmipc
from mmipc import _layout as L
from mmipc import _semaphore
from mmipc._kv import _sem_names

pytestmark = pytest.mark.timeout(120)

SPAWN = multiprocessing.get_context("spawn")


def cleanup_kv(kv: mmipc.KV) -> None:
    nonce = kv._region.nonce
    try:
        if not kv.closed:
            try:
                if not kv.readonly:
                    kv.unlink()
            except mmipc.MmipcError:
                pass
            kv.close()
    finally:
        for sem in _sem_names(nonce):
            _semaphore.unlink_semaphore(sem)


def assert_no_leaks(kv: mmipc.KV) -> None:
    """Every in-use heap block is the index, the deferred list, a live entry or deferred."""
    w = kv._words
    assert w is not None
    blocks = kv._walk()
    base, _cap, n = kv._deferred()
    deferred = [int(w[base + 3 * i]) for i in range(n)]
    assert len(deferred) == len(set(deferred)), "a block is deferred twice"
    referenced = {int(w[L.W_KV_INDEX_BLOCK]), (base - 8) * 8}
    kv._load_index()
    for i in range(kv._idx_mask + 1):
        off = int(w[kv._idx_base + 4 * i + 2])
        if off >= 2:
            referenced.add(off)
    in_use = {off for off, (_size, state) in blocks.items() if state & 0xFF == L.BLOCK_IN_FLIGHT}
    assert in_use == referenced | set(deferred), (in_use - referenced - set(deferred), referenced - in_use)
    assert not referenced & set(deferred)


@pytest.fixture
def make_kv(tmp_path: pathlib.Path) -> Iterator[Callable[..., mmipc.KV]]:
    """``make_kv(size, kind="anonymous"|"named"|"file", **kwargs)``; cleaned up after."""
    made: list[mmipc.KV] = []

    def make(size: int = 1 << 16, kind: str = "anonymous", **kwargs: Any) -> mmipc.KV:
        if kind == "named":
            kwargs.setdefault("name", f"test-{uuid.uuid4().hex[:12]}")
        elif kind == "file":
            kwargs.setdefault("path", str(tmp_path / f"kv-{uuid.uuid4().hex[:8]}.mmipc"))
        kv = mmipc.KV.create(size, **kwargs)
        made.append(kv)
        return kv

    yield make
    for kv in made:
        cleanup_kv(kv)


@pytest.fixture(params=["anonymous", "named", "file"])
def kv_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


# -- the mapping protocol ---------------------------------------------------------------------


def test_mapping_protocol(make_kv: Any, kv_kind: str) -> None:
    kv = make_kv(kind=kv_kind)
    kv["a"] = b"1"
    kv[b"a"] = bytearray(b"22")
    kv["c"] = memoryview(b"333")
    assert kv["a"] == b"1" and kv[b"a"] == b"22" and kv["c"] == b"333"
    assert type(kv["a"]) is bytes
    assert len(kv) == 3
    assert "a" in kv and b"a" in kv and "b" not in kv and 5 not in kv
    assert kv.get("zz") is None and kv.get("zz", b"d") == b"d"
    assert sorted(kv, key=repr) == sorted(["a", b"a", "c"], key=repr)
    assert dict(kv.items()) == {"a": b"1", b"a": b"22", "c": b"333"}
    assert sorted(kv.values()) == [b"1", b"22", b"333"]
    del kv["a"]
    with pytest.raises(KeyError):
        del kv["a"]
    with pytest.raises(KeyError):
        kv["a"]
    assert kv.pop("c") == b"333" and kv.pop("c", None) is None
    with pytest.raises(KeyError):
        kv.pop("c")
    assert kv.setdefault("s", b"first") == b"first" and kv.setdefault("s", b"second") == b"first"
    kv.update({"u1": b"x"}, u2=b"y")
    kv.update([("u3", b"z")])
    assert kv["u1"] + kv["u2"] + kv["u3"] == b"xyz"
    assert len(kv) == 5
    kv.clear()
    assert len(kv) == 0 and list(kv) == [] and "u1" not in kv
    kv["after"] = b""
    assert kv["after"] == b"" and len(kv) == 1


def test_bad_keys_and_values(make_kv: Any) -> None:
    kv = make_kv()
    with pytest.raises(TypeError, match="str or bytes"):
        kv[1] = b"x"
    with pytest.raises(TypeError, match="bytes-like"):
        kv["k"] = "text"
    with pytest.raises(TypeError, match="bytes-like"):
        kv["k"] = 12
    assert len(kv) == 0


def test_numpy_values_and_non_byte_formats(make_kv: Any) -> None:
    np = pytest.importorskip("numpy")
    kv = make_kv(1 << 20)
    arr = np.arange(1000, dtype=np.int32)
    kv["arr"] = arr
    assert kv["arr"] == arr.tobytes()
    with kv.view("arr") as view:
        back = np.frombuffer(view, dtype=np.int32)
        assert (back == arr).all() and not back.flags.writeable
        del back


def test_many_keys_grow_the_index_and_the_heap(make_kv: Any) -> None:
    kv = make_kv(4096)  # an index of 128 slots to begin with
    model = {}
    for i in range(3000):
        key = f"key-{i}"
        model[key] = os.urandom(i % 200)
        kv[key] = model[key]
    for i in range(0, 3000, 3):
        del kv[f"key-{i}"]
        del model[f"key-{i}"]
    assert len(kv) == len(model)
    assert dict(kv.items()) == model
    stats = kv.stats()
    assert stats.keys == len(model)
    assert stats.bytes_live == sum(len(k) + len(v) for k, v in model.items())
    assert stats.index_capacity >= 2 * len(model)
    assert stats.size > 4096 + 8192
    kv._check(repair=False, verify=True)
    assert_no_leaks(kv)


def test_full_error_names_sizes_and_loses_nothing(make_kv: Any) -> None:
    kv = make_kv(8192, max_size=64 << 10)
    kv["keep"] = b"k" * 100
    written = 0
    with pytest.raises(mmipc.KVFull, match=r"max_size is 65536 bytes") as info:
        for i in range(1000):
            kv[f"k{i}"] = b"v" * 1000
            written += 1
    assert isinstance(info.value, mmipc.NoSpaceError)
    assert f"k{written}" not in kv
    assert kv["keep"] == b"k" * 100 and len(kv) == written + 1
    # Replacing a key with a value that cannot fit keeps the old value.
    with pytest.raises(mmipc.KVFull):
        kv["keep"] = b"x" * (1 << 20)
    assert kv["keep"] == b"k" * 100
    # Deleting makes room again.
    for i in range(written):
        del kv[f"k{i}"]
    kv["after"] = b"v" * 1000
    assert kv["after"] == b"v" * 1000


def test_max_keys_is_a_limit(make_kv: Any) -> None:
    kv = make_kv(1 << 16, max_keys=3)
    kv.update(a=b"1", b=b"2", c=b"3")
    with pytest.raises(mmipc.KVFull, match="3 keys, its max_keys"):
        kv["d"] = b"4"
    kv["a"] = b"replaced"  # replacing is not a new key
    del kv["b"]
    kv["d"] = b"4"
    assert dict(kv.items()) == {"a": b"replaced", "c": b"3", "d": b"4"}
    assert kv.stats().max_keys == 3


def test_create_arguments_are_checked(make_kv: Any) -> None:
    with pytest.raises(ValueError, match="size"):
        mmipc.KV.create(-1)
    with pytest.raises(ValueError, match="max_size"):
        mmipc.KV.create(1 << 16, max_size=4096)
    with pytest.raises(ValueError, match="max_keys"):
        mmipc.KV.create(1 << 16, max_keys=0)
    with pytest.raises(ValueError):
        mmipc.KV.attach()


def test_name_collisions_and_missing(make_kv: Any, tmp_path: pathlib.Path) -> None:
    kv = make_kv(kind="named")
    with pytest.raises(mmipc.RegionExists):
        mmipc.KV.create(4096, name=kv.name)
    with pytest.raises(mmipc.RegionNotFound):
        mmipc.KV.attach(f"missing-{uuid.uuid4().hex[:8]}")
    with pytest.raises(mmipc.RegionNotFound):
        mmipc.KV.attach(path=tmp_path / "nope")


def test_attach_to_a_ring_is_refused(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "ring"
    ring = mmipc.Ring.create(4096, path=path)
    try:
        with pytest.raises(mmipc.IncompatibleRegion, match="ring region, not a kv"):
            mmipc.KV.attach(path=path)
    finally:
        ring.unlink()
        ring.close()


def test_closed_handle(make_kv: Any) -> None:
    kv = make_kv()
    kv["a"] = b"1"
    kv.close()
    kv.close()
    for call in (lambda: kv["a"], lambda: kv.__setitem__("a", b"2"), lambda: len(kv), kv.stats, kv.flush):
        with pytest.raises(mmipc.ClosedError):
            call()
    with pytest.raises(mmipc.ClosedError):
        pickle.dumps(kv)
    assert "closed" in repr(kv)


def test_repr_and_stats(make_kv: Any) -> None:
    kv = make_kv(kind="named")
    kv["x"] = b"12345"
    assert kv.name in repr(kv) and "keys=1" in repr(kv)
    stats = kv.stats()
    assert isinstance(stats, mmipc.KVStats)
    assert (stats.keys, stats.bytes_live, stats.participants, stats.commit_seq) == (1, 6, 1, 1)
    assert 0.0 <= stats.fragmentation < 1.0
    assert stats.max_size is None


# -- views ------------------------------------------------------------------------------------


def test_view_is_zero_copy_and_stable_while_writers_replace(make_kv: Any) -> None:
    kv = make_kv(1 << 16)
    kv["k"] = b"A" * 1000
    with kv.view("k") as view:
        assert view.readonly and bytes(view) == b"A" * 1000
        # The view points into the mapping (no copy).
        start = kv._lookup_range(kv._key("k"), "k")[0]
        assert view.tobytes() == kv._buf[start : start + 1000].tobytes()
        for i in range(200):  # replace and delete many times: memory must not be reused
            kv["k"] = bytes([i % 250]) * 1000
            kv[f"filler{i}"] = b"F" * 1000
            del kv[f"filler{i}"]
        del kv["k"]
        assert bytes(view) == b"A" * 1000
        assert kv.stats().deferred_blocks >= 1
    kv["again"] = b"x"
    with pytest.raises(KeyError), kv.view("k"):
        pass
    assert kv._pins == 0 and kv._words is not None and kv._words[kv._pin_word] == 0


def test_retired_blocks_are_reused_after_views_end(make_kv: Any) -> None:
    kv = make_kv(1 << 16, max_size=1 << 17)
    for i in range(2000):  # 2 MB through a region of at most 128 KiB
        kv["k"] = bytes([i % 256]) * 1000
    assert kv["k"] == bytes([1999 % 256]) * 1000
    assert kv.stats().size <= 1 << 17


# -- atomic updates, batch, wait_for_change ----------------------------------------------------


def test_compare_and_set_and_increment(make_kv: Any) -> None:
    kv = make_kv()
    assert kv.compare_and_set("k", None, b"1")
    assert not kv.compare_and_set("k", None, b"2")
    assert not kv.compare_and_set("k", b"0", b"2")
    assert kv.compare_and_set("k", b"1", b"2") and kv["k"] == b"2"
    assert kv.compare_and_set("k", b"2", None) and "k" not in kv
    assert kv.increment("n") == 1 and kv.increment("n", 10) == 11 and kv.increment("n", -20) == -9
    assert int.from_bytes(kv["n"], "little", signed=True) == -9
    kv["bad"] = b"abc"
    with pytest.raises(ValueError, match="not an 8-byte counter"):
        kv.increment("bad")
    kv["max"] = (2**63 - 1).to_bytes(8, "little", signed=True)
    with pytest.raises(ValueError, match="overflow"):
        kv.increment("max")
    assert kv["bad"] == b"abc"


def test_increment_is_atomic_across_processes(make_kv: Any, mp_context: Any) -> None:
    kv = make_kv()
    procs = [mp_context.Process(target=child.increment_many, args=(kv, "n", 200)) for _ in range(3)]
    for p in procs:
        p.start()
    for _ in range(200):
        kv.increment("n")
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert int.from_bytes(kv["n"], "little", signed=True) == 800


def test_batch_holds_the_lock_and_applies_everything(make_kv: Any) -> None:
    kv = make_kv()
    with kv.batch() as same:
        assert same is kv
        for i in range(100):
            kv[f"b{i}"] = b"%d" % i
        assert kv["b5"] == b"5"
        assert kv._sem_lock.value == 0
    assert kv._sem_lock.value == 1
    assert [kv[f"b{i}"] for i in range(100)] == [b"%d" % i for i in range(100)]
    with pytest.raises(RuntimeError), kv.batch():
        kv["inside"] = b"1"
        raise RuntimeError("user error")
    assert kv["inside"] == b"1" and kv._sem_lock.value == 1


def test_wait_for_change(make_kv: Any, mp_context: Any) -> None:
    kv = make_kv()
    since = kv.commit_seq
    with pytest.raises(mmipc.WaitTimeout):
        kv.wait_for_change(timeout=0.05)
    result = mp_context.Queue()
    p = mp_context.Process(target=child.wait_for_change_child, args=(kv, since, result))
    p.start()
    kv["wake"] = b"1"
    assert result.get(timeout=60) == ("ok", since + 1)
    p.join(30)
    assert kv.wait_for_change(since=since) == since + 1


# -- objects ----------------------------------------------------------------------------------


def test_objects_roundtrip_and_out_of_band(make_kv: Any) -> None:
    kv = make_kv(1 << 20)
    objects = kv.objects
    objects["small"] = {"a": [1, 2, (3, "x")]}
    objects["blob"] = b"z" * 100_000
    assert objects["small"] == {"a": [1, 2, (3, "x")]}
    assert objects["blob"] == b"z" * 100_000
    assert "small" in objects and len(objects) == 2 and sorted(objects) == ["blob", "small"]
    with objects.view("blob") as blob:
        assert isinstance(blob, memoryview) and blob.readonly and bytes(blob) == b"z" * 100_000
    del objects["small"]
    assert "small" not in kv
    with pytest.raises(mmipc.SerializationError):
        objects["bad"] = lambda: None
    assert "bad" not in kv


def test_objects_numpy_zero_copy(make_kv: Any) -> None:
    np = pytest.importorskip("numpy")
    kv = make_kv(1 << 22)
    arr = np.arange(100_000, dtype=np.float64)
    kv.objects["arr"] = {"arr": arr, "meta": 1}
    got = kv.objects["arr"]
    assert (got["arr"] == arr).all() and got["arr"].flags.writeable
    with kv.objects.view("arr") as obj:
        assert (obj["arr"] == arr).all() and not obj["arr"].flags.writeable
        assert obj["meta"] == 1


# -- read-only handles --------------------------------------------------------------------------


def test_readonly_attach(make_kv: Any, kv_kind: str) -> None:
    if kv_kind == "anonymous":
        kv = make_kv()
        ro = pickle.loads(pickle.dumps(kv))
        ro.close()
        from mmipc._kv import _rebuild_kv

        ro = _rebuild_kv(kv._region.descriptor(), True)
    else:
        kv = make_kv(kind=kv_kind)
        ro = mmipc.KV.attach(kv.name if kv_kind == "named" else None, path=kv._region.path, readonly=True)
    try:
        kv["a"] = b"1"
        assert ro.readonly and ro["a"] == b"1" and len(ro) == 1 and list(ro) == ["a"]
        with ro.view("a") as view:
            assert bytes(view) == b"1"
        for write in (
            lambda: ro.__setitem__("a", b"2"),
            lambda: ro.__delitem__("a"),
            lambda: ro.increment("n"),
            ro.clear,
            ro.unlink,
        ):
            with pytest.raises(mmipc.ReadOnlyError):
                write()
        with pytest.raises(TypeError):  # the mapping itself is read-only memory
            ro._buf[0] = 1  # type: ignore[index]
        for i in range(2000):  # the writer grows the region: the reader follows
            kv[f"k{i}"] = b"v" * 100
        assert ro["k1999"] == b"v" * 100 and ro.stats().keys == 2001
    finally:
        ro.close()
    assert kv["a"] == b"1"


# -- processes ----------------------------------------------------------------------------------


def test_children_share_the_kv_under_every_start_method(make_kv: Any, mp_context: Any, kv_kind: str) -> None:
    kv = make_kv(1 << 16, kind=kv_kind)
    kv["from-parent"] = b"p"
    items = [(f"c{i}", os.urandom(50)) for i in range(100)]
    p = mp_context.Process(target=child.put_items, args=(kv, items))
    p.start()
    p.join(60)
    assert p.exitcode == 0
    assert all(kv[k] == v for k, v in items)
    queue = mp_context.Queue()
    p = mp_context.Process(target=child.read_into_queue, args=(kv, ["from-parent", "c3", "none"], queue))
    p.start()
    assert queue.get(timeout=60) == {"from-parent": b"p", "c3": items[3][1], "none": None}
    p.join(60)
    assert kv.stats().participants == 1


def test_growth_in_a_child_is_followed_by_the_parent(make_kv: Any, mp_context: Any) -> None:
    kv = make_kv(4096)
    size = kv.stats().size
    items = [(f"g{i}", bytes([i % 256]) * 3000) for i in range(300)]
    p = mp_context.Process(target=child.put_items, args=(kv, items))
    p.start()
    p.join(60)
    assert p.exitcode == 0
    assert kv.stats().size > size
    assert all(kv[k] == v for k, v in items)
    kv["parent-after"] = b"x" * 5000
    assert kv["parent-after"] == b"x" * 5000


def test_views_survive_growth_by_another_process(make_kv: Any, mp_context: Any) -> None:
    kv = make_kv(4096)
    kv["held"] = b"H" * 2000
    with kv.view("held") as view:
        items = [(f"g{i}", bytes([i % 256]) * 5000) for i in range(200)]  # ~1 MB: many growths
        p = mp_context.Process(target=child.put_items, args=(kv, [*items, ("held", b"new")]))
        p.start()
        p.join(60)
        assert p.exitcode == 0
        assert bytes(view) == b"H" * 2000  # the old mapping stays alive under the view
        assert kv["g199"] == bytes([199]) * 5000 and kv["held"] == b"new"
    kv["after"] = b"a" * 100_000
    assert kv["after"] == b"a" * 100_000


def test_readonly_wait_for_change_polls(make_kv: Any) -> None:
    kv = make_kv(kind="named")
    ro = mmipc.KV.attach(kv.name, readonly=True)
    try:
        since = ro.commit_seq
        with pytest.raises(mmipc.WaitTimeout):
            ro.wait_for_change(timeout=0.02)
        kv["x"] = b"1"
        assert ro.wait_for_change(timeout=5, since=since) == since + 1
        with pytest.raises(mmipc.SerializationError, match="not an object"):
            ro.objects["x"]  # plain bytes, not written through kv.objects
        kv.objects["o"] = [1, 2]
        assert ro.objects["o"] == [1, 2]
    finally:
        ro.close()


@pytest.mark.stress
def test_readers_never_see_torn_values(make_kv: Any, mp_context: Any) -> None:
    """A writer rewrites self-checking values while readers in other processes verify every read."""
    kv = make_kv(1 << 16)
    nkeys, rounds = 40, 60
    for key_id in range(nkeys):
        kv[f"key-{key_id}"] = child.make_value(key_id, 0)
    done = mp_context.Value("i", 0)
    result = mp_context.Queue()
    readers = [
        mp_context.Process(target=child.verify_reads, args=(kv, nkeys, done, result)) for _ in range(2)
    ]
    for r in readers:
        r.start()
    writer = mp_context.Process(target=child.rewrite_values, args=(kv, nkeys, rounds, done))
    writer.start()
    writer.join(100)
    assert writer.exitcode == 0
    for r in readers:
        r.join(100)
    assert [r.exitcode for r in readers] == [0, 0]
    outcomes = [result.get(timeout=10) for _ in readers]
    assert all(o[0] == "ok" for o in outcomes), outcomes
    for key_id in range(nkeys):
        data = kv.get(f"key-{key_id}")
        if (key_id + rounds) % 7 == 0:
            assert data is None
        else:
            assert data is not None and child.check_value(key_id, data) == rounds


# -- model-based test -------------------------------------------------------------------------

KEYS = st.sampled_from(["a", "b", "c", b"a", "long-" + "k" * 40, "é", b"\x00"]) | st.text("xyz", max_size=4)
VALUES = st.binary(max_size=300)


class KVMachine(RuleBasedStateMachine):
    """Every operation on a small KV (that must grow) mirrors a plain dict."""

    def __init__(self) -> None:
        super().__init__()
        self.kv = mmipc.KV.create(256)  # an index of 32 slots: it must grow (and shed tombstones)
        self.model: dict[Any, bytes] = {}

    @rule(key=KEYS, value=VALUES)
    def put(self, key: Any, value: bytes) -> None:
        self.kv[key] = value
        self.model[key] = value

    @rule(key=KEYS)
    def delete(self, key: Any) -> None:
        if key in self.model:
            del self.kv[key]
            del self.model[key]
        else:
            with pytest.raises(KeyError):
                del self.kv[key]

    @rule(key=KEYS)
    def pop(self, key: Any) -> None:
        assert self.kv.pop(key, None) == self.model.pop(key, None)

    @rule(key=KEYS, value=VALUES)
    def setdefault(self, key: Any, value: bytes) -> None:
        assert self.kv.setdefault(key, value) == self.model.setdefault(key, value)

    @rule(key=KEYS, expected=st.none() | VALUES, new=st.none() | VALUES)
    def compare_and_set(self, key: Any, expected: bytes | None, new: bytes | None) -> None:
        ok = self.model.get(key) == expected
        assert self.kv.compare_and_set(key, expected, new) == ok
        if ok:
            if new is None:
                self.model.pop(key, None)
            else:
                self.model[key] = new

    @rule(key=KEYS)
    def view(self, key: Any) -> None:
        if key in self.model:
            with self.kv.view(key) as view:
                assert bytes(view) == self.model[key]
        else:
            with pytest.raises(KeyError), self.kv.view(key):
                pass

    @rule(items=st.lists(st.tuples(KEYS, VALUES), max_size=5))
    def update(self, items: list[tuple[Any, bytes]]) -> None:
        self.kv.update(items)
        self.model.update(items)

    @rule(key=KEYS, delta=st.integers(-1000, 1000))
    def increment(self, key: Any, delta: int) -> None:
        current = self.model.get(key)
        if current is not None and len(current) != 8:
            with pytest.raises(ValueError):
                self.kv.increment(key, delta)
            return
        value = delta + (0 if current is None else int.from_bytes(current, "little", signed=True))
        assert self.kv.increment(key, delta) == value
        self.model[key] = value.to_bytes(8, "little", signed=True)

    @rule(key=KEYS, obj=st.recursive(st.none() | st.integers() | st.text(max_size=5), st.lists, max_leaves=5))
    def objects(self, key: Any, obj: Any) -> None:
        self.kv.objects[key] = obj
        assert self.kv.objects[key] == obj
        self.model[key] = self.kv[key]

    @rule()
    def clear(self) -> None:
        self.kv.clear()
        self.model.clear()

    @invariant()
    def same_contents(self) -> None:
        assert len(self.kv) == len(self.model)
        for key, value in self.model.items():
            assert self.kv[key] == value
        assert dict(self.kv.items()) == self.model

    def teardown(self) -> None:
        self.kv._check(repair=False, verify=True)
        assert_no_leaks(self.kv)
        self.kv.close()


KVMachine.TestCase.settings = settings(max_examples=40, stateful_step_count=30, deadline=None)
test_kv_model = KVMachine.TestCase


def test_layout_constants_do_not_overlap() -> None:
    kv_words = [v for k, v in vars(L).items() if k.startswith(("W_KV_", "W_J_"))]
    assert len(kv_words) == len(set(kv_words))
    ring_lock = {L.W_LOCK_OWNER, L.W_RECOVERIES, L.W_LOCK_SUSPECT, L.W_WRITER_EPOCH, L.W_LOCK_GRANTS}
    assert not ring_lock & set(kv_words)
    assert max(kv_words) * 8 < L.HEADER_SIZE
