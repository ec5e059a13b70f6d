"""Participant slots: OFD-lock liveness, dead-slot takeover, fork re-registration, exhaustion."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import pytest

import mmipc
from mmipc import _layout as L
from mmipc._liveness import Participants


def attach_and_wait(ring: mmipc.Ring, ready: Any) -> None:
    ring.send(b"hello from child")  # claims the writer role in a participant slot
    ready.set()
    time.sleep(60)


def test_own_slot_is_alive_and_listed(make_ring) -> None:
    ring = make_ring(4096)
    table = ring._participants.table()
    assert [(p.slot, p.pid, p.alive) for p in table] == [(ring._slot, os.getpid(), True)]


def test_killed_participant_is_seen_dead_and_its_slot_reused(make_ring, mp_context) -> None:
    ring = make_ring(4096)
    ready = mp_context.Event()
    child = mp_context.Process(target=attach_and_wait, args=(ring, ready))
    child.start()
    try:
        assert ready.wait(30)
        participants: Participants = ring._participants
        entries = {p.pid: p for p in participants.table()}
        assert entries[child.pid].alive
        assert entries[child.pid].roles & L.ROLE_WRITER
        child_slot = entries[child.pid].slot
        os.kill(child.pid, signal.SIGKILL)
        child.join(30)
        assert not participants.alive(child_slot)
        assert participants.take_dead(child_slot)
        participants.release(child_slot)
        assert child_slot not in {p.slot for p in participants.table()}
        # The dead writer's role lock went with it: this process can write now.
        assert ring.recv_bytes(timeout=5) == b"hello from child"
        ring.send(b"parent writes")
        assert ring.recv_bytes(timeout=5) == b"parent writes"
    finally:
        if child.is_alive():
            child.kill()
            child.join()


def test_slots_exhausted_is_busy_error(make_ring) -> None:
    ring = make_ring(4096, kind="named", max_participants=2)
    other = mmipc.Ring.attach(ring.name)
    try:
        with pytest.raises(mmipc.BusyError, match="participant slots"):
            mmipc.Ring.attach(ring.name)
    finally:
        other.close()
    third = mmipc.Ring.attach(ring.name)  # a slot is free again
    third.close()


def test_fork_child_registers_its_own_slot_and_leaves_on_exit(make_ring) -> None:
    ring = make_ring(4096)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 1
        try:
            os.close(read)
            mine = ring._participants.mine
            os.write(write, f"{ring._slot} {sorted(mine)}".encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    reply = os.read(read, 100).decode()
    os.close(read)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    slot, mine = reply.split(" ", 1)
    assert int(slot) != ring._slot and mine == f"[{slot}]"
    alive = [p for p in ring._participants.table() if p.alive]
    assert [p.pid for p in alive] == [os.getpid()]
