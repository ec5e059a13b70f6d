"""Regions: backings, permissions, header validation (foreign, version, kind, init, truncated, crc)."""

from __future__ import annotations

import os
import pathlib
import struct
import threading
import time

import pytest

import mmipc
from mmipc import _layout as L
from mmipc._region import Region, header_crc


@pytest.fixture
def region_file(tmp_path: pathlib.Path):
    """A valid file-backed ring (every handle closed; the file stays)."""
    path = tmp_path / "r.mmipc"
    mmipc.Ring.create(4096, path=path).close()  # the last close removes its semaphores
    return path


def rewrite(path: pathlib.Path, offset: int, data: bytes, fix_crc: bool = False) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)
        if fix_crc:
            f.seek(0)
            head = bytearray(f.read(L.HEADER_SIZE))
            struct.pack_into("<I", head, L.CRC_OFFSET, header_crc(head))
            f.seek(0)
            f.write(head)


def test_file_region_header_fields(region_file) -> None:
    region = Region.attach(L.KIND_RING, path=region_file)
    try:
        header = region.header()
        assert header["kind"] == "ring" and header["state"] == "ready"
        assert header["data_size"] == 4096
        assert header["data_offset"] % L.PAGE_SIZE == 0
        assert header["creator_pid"] == os.getpid()
        assert region.size == header["data_offset"] + 4096 == os.path.getsize(region_file)
        assert region.backing == "file"
    finally:
        region.close()


def test_foreign_file_is_rejected(tmp_path) -> None:
    path = tmp_path / "foreign"
    path.write_bytes(b"#!/bin/sh\necho not a region\n" + bytes(8192))
    with pytest.raises(mmipc.IncompatibleRegion, match="not an mmipc region"):
        mmipc.Ring.attach(path=path)


def test_small_file_is_rejected(tmp_path) -> None:
    path = tmp_path / "small"
    path.write_bytes(b"x" * 100)
    with pytest.raises(mmipc.IncompatibleRegion, match="smaller than"):
        mmipc.Ring.attach(path=path)


def test_directory_is_rejected(tmp_path) -> None:
    with pytest.raises(mmipc.IncompatibleRegion):
        mmipc.Ring.attach(path=tmp_path)


def test_wrong_version_is_rejected(region_file) -> None:
    rewrite(region_file, 8, struct.pack("<I", L.LAYOUT_VERSION + 1), fix_crc=True)
    with pytest.raises(mmipc.IncompatibleRegion, match=f"layout version {L.LAYOUT_VERSION + 1}"):
        mmipc.Ring.attach(path=region_file)


def test_kind_mismatch_is_rejected(tmp_path) -> None:
    path = tmp_path / "kv"
    Region.create(L.KIND_KV, 4096, path=path).close()
    with pytest.raises(mmipc.IncompatibleRegion, match="is a kv region, not a ring"):
        mmipc.Ring.attach(path=path)


def test_truncated_file_is_rejected(region_file) -> None:
    os.truncate(region_file, os.path.getsize(region_file) - 1024)
    with pytest.raises(mmipc.IncompatibleRegion, match="truncated"):
        mmipc.Ring.attach(path=region_file)


def test_checksum_mismatch_is_corruption(region_file) -> None:
    rewrite(region_file, 48, struct.pack("<Q", 1 << 20))  # data_size, crc not fixed
    with pytest.raises(mmipc.CorruptionError, match="checksum"):
        mmipc.Ring.attach(path=region_file)


def test_inconsistent_geometry_is_corruption(region_file) -> None:
    rewrite(region_file, 48, struct.pack("<Q", 8192), fix_crc=True)
    with pytest.raises(mmipc.MmipcError, match=r"geometry|truncated"):
        mmipc.Ring.attach(path=region_file)


def test_region_still_initializing_times_out(region_file) -> None:
    rewrite(region_file, 16, struct.pack("<Q", L.STATE_INIT))
    start = time.monotonic()
    with pytest.raises(mmipc.IncompatibleRegion, match="still initializing"):
        mmipc.Ring.attach(path=region_file, timeout=0.1)
    assert time.monotonic() - start >= 0.1


def test_attach_waits_for_initialization_to_finish(region_file) -> None:
    rewrite(region_file, 16, struct.pack("<Q", L.STATE_INIT))
    timer = threading.Timer(0.1, rewrite, (region_file, 16, struct.pack("<Q", L.STATE_READY)))
    timer.start()
    try:
        ring = mmipc.Ring.attach(path=region_file, timeout=10)
    finally:
        timer.join()
    try:
        ring.send(b"ok")
        assert ring.recv_bytes() == b"ok"
    finally:
        ring.unlink()
        ring.close()


def test_empty_file_counts_as_initializing(tmp_path) -> None:
    path = tmp_path / "empty"
    path.touch()
    with pytest.raises(mmipc.IncompatibleRegion, match="still initializing"):
        mmipc.Ring.attach(path=path, timeout=0.05)


def test_unlinked_and_poisoned_states(region_file) -> None:
    rewrite(region_file, 16, struct.pack("<Q", L.STATE_CLOSED))
    with pytest.raises(mmipc.IncompatibleRegion, match="unlinked"):
        mmipc.Ring.attach(path=region_file)
    rewrite(region_file, 16, struct.pack("<Q", L.STATE_POISONED))
    with pytest.raises(mmipc.CorruptionError, match="poisoned"):
        mmipc.Ring.attach(path=region_file)


def test_create_on_existing_file_refuses_and_keeps_it(region_file) -> None:
    before = region_file.read_bytes()
    with pytest.raises(mmipc.RegionExists):
        mmipc.Ring.create(4096, path=region_file)
    assert region_file.read_bytes() == before


def test_create_in_missing_directory(tmp_path) -> None:
    with pytest.raises(mmipc.RegionNotFound, match="directory missing"):
        mmipc.Ring.create(4096, path=tmp_path / "no" / "such" / "dir")


def test_anonymous_region_is_a_memfd_invisible_in_dev_shm(make_ring) -> None:
    before = {e for e in os.listdir("/dev/shm") if e.startswith("mmipc-")}
    ring = make_ring(4096)
    after = {e for e in os.listdir("/dev/shm") if e.startswith("mmipc-")}
    assert after == before
    assert os.readlink(f"/proc/self/fd/{ring._region.fd}").startswith("/memfd:mmipc-")
    assert os.fstat(ring._region.fd).st_mode & 0o777 == 0o600


def test_space_is_reserved_at_creation(make_ring) -> None:
    ring = make_ring(8 << 20, kind="named")
    st = os.stat(f"/dev/shm/mmipc-{ring.name}")
    assert st.st_blocks * 512 >= 8 << 20  # posix_fallocate: the pages exist now, no later SIGBUS


def test_name_with_slash_is_rejected() -> None:
    with pytest.raises(ValueError):
        mmipc.Ring.create(4096, name="a/b")
