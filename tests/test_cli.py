"""``python -m mmipc``: ls, inspect, rm, gc (text and --json), and the demo."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import pytest

import mmipc
from mmipc import _cli
from mmipc import _layout as L
from mmipc._ring import _sem_names


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mmipc", *args], capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture
def named_ring():
    name = f"test-cli-{uuid.uuid4().hex[:12]}"
    ring = mmipc.Ring.create(1 << 16, name=name, multi_writer=True)
    try:
        yield name, ring
    finally:
        if not ring.closed:
            ring.unlink()
            ring.close()
        for sem in _sem_names(ring._region.nonce):
            mmipc._semaphore.unlink_semaphore(sem)


def test_ls_json_lists_named_ring_with_live_participant(named_ring) -> None:
    name, ring = named_ring
    ring.send(b"x" * 100)
    proc = run_cli("ls", "--json")
    assert proc.returncode == 0, proc.stderr
    regions = {r["name"]: r for r in json.loads(proc.stdout)["regions"]}
    info = regions[name]
    assert info["kind"] == "ring"
    assert info["backing"] == "named"
    assert info["alive"] == 1
    assert info["creator_pid"] == os.getpid()
    assert info["lag_bytes"] == 160  # one record of 100 bytes: 32 header + 100, aligned to 32


def test_ls_text_shows_anonymous_ring() -> None:
    with mmipc.Ring.create(1 << 16) as ring:
        proc = run_cli("ls")
        assert proc.returncode == 0, proc.stderr
        assert ring.name in proc.stdout


def test_inspect_shows_header_positions_and_participants(named_ring) -> None:
    name, ring = named_ring
    ring.send(b"abc")
    ring.recv_bytes()
    proc = run_cli("inspect", name, "--json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["header"]["layout_version"] == L.LAYOUT_VERSION == 2
    assert info["multi_writer"] is True
    assert info["records_written"] == 1 and info["records_read"] == 1
    assert info["lag_bytes"] == 0
    table = info["participant_table"]
    assert [p["pid"] for p in table] == [os.getpid()]
    assert table[0]["alive"] is True
    assert set(table[0]["roles"]) == {"writer", "consumer"}
    assert sorted(info["semaphores"]) == sorted(_sem_names(ring._region.nonce))
    text = run_cli("inspect", name)
    assert text.returncode == 0 and "participants:" in text.stdout and "alive" in text.stdout


def test_inspect_file_backed_by_path(tmp_path) -> None:
    path = tmp_path / "r.ring"
    with mmipc.Ring.create(4096, path=path) as ring:
        ring.send(b"1")
        proc = run_cli("inspect", str(path), "--json")
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)["records_written"] == 1
        ring.unlink()


def test_inspect_missing_and_foreign_give_clear_errors(tmp_path) -> None:
    proc = run_cli("inspect", f"no-such-{uuid.uuid4().hex[:8]}")
    assert proc.returncode == 1
    assert "does not exist" in proc.stderr
    foreign = tmp_path / "foreign"
    foreign.write_bytes(os.urandom(8192))
    proc = run_cli("inspect", str(foreign))
    assert proc.returncode == 1
    assert "not an mmipc region" in proc.stderr


def test_rm_removes_segment_and_semaphores(named_ring) -> None:
    name, ring = named_ring
    nonce = ring._region.nonce
    proc = run_cli("rm", name)
    assert proc.returncode == 0, proc.stderr
    assert not os.path.exists(f"/dev/shm/mmipc-{name}")
    for sem in _sem_names(nonce):
        assert not os.path.exists(f"/dev/shm/sem.{sem[1:]}")
    with pytest.raises(mmipc.RegionNotFound):
        mmipc.Ring.attach(name)


def test_gc_removes_only_dead_regions() -> None:
    dead = f"test-gc-dead-{uuid.uuid4().hex[:8]}"
    live = f"test-gc-live-{uuid.uuid4().hex[:8]}"
    # A region whose every participant died: created by a child that is then SIGKILLed.
    code = (
        f"import mmipc, os, signal; r = mmipc.Ring.create(4096, name={dead!r}); r.send(b'x'); "
        "os.kill(os.getpid(), signal.SIGKILL)"
    )
    subprocess.run([sys.executable, "-c", code], timeout=60)
    with mmipc.Ring.create(4096, name=live) as live_ring:
        try:
            dry = json.loads(run_cli("gc", "--dry-run", "--json", "test-gc-*").stdout)
            assert any(r.get("region") == dead for r in dry["removed"])
            assert os.path.exists(f"/dev/shm/mmipc-{dead}")
            result = json.loads(run_cli("gc", "--json", "test-gc-*").stdout)
            removed_regions = {r["region"] for r in result["removed"] if "region" in r}
            assert dead in removed_regions
            assert live not in removed_regions
            assert not os.path.exists(f"/dev/shm/mmipc-{dead}")
            assert os.path.exists(f"/dev/shm/mmipc-{live}")
            leftovers = [e for e in os.listdir("/dev/shm") if dead in e]
            assert leftovers == []
        finally:
            live_ring.unlink()


def test_parse_size() -> None:
    assert _cli._parse_size("1GiB") == 1 << 30
    assert _cli._parse_size("64MiB") == 64 << 20
    assert _cli._parse_size("4k") == 4096
    assert _cli._parse_size("100") == 100


def test_demo_small_run_verifies_and_prints_both_transports() -> None:
    proc = run_cli("demo", "--total", "32MiB", "--size", "1MiB", "--json", timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["count"] == 32
    transports = [r["transport"] for r in result["results"]]
    assert transports[0].startswith("mmipc.Ring") and transports[1] == "multiprocessing.Queue"
    assert all(r["verified"] and r["messages"] == 32 for r in result["results"])
