"""Participant slots and dead-peer detection (DESIGN.md 7).

Every handle attached to a region holds one slot of the header's participant table, backed by
an OFD lock on the slot's lock byte for as long as the handle is open. POSIX semaphores have no
owner, PIDs get reused, but the kernel drops an OFD lock when its last descriptor closes, i.e.
when the process exits or dies: ``F_OFD_GETLK`` then tells anyone that the holder is gone
(~1 us). Whoever wins the dead slot's lock (a new participant claiming it, or a peer recovering a
resource the dead one held) runs the cleanup, exactly once.

A fork child re-opens the region's descriptor (``_region``) and so holds none of its parent's
slots or roles; it claims its own when it first acts.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from . import _layout as L
from ._errors import BusyError
from ._region import Region

__all__ = ["Participant", "Participants"]

ATTACH_LOCK_TIMEOUT = 10.0


@dataclass(frozen=True)
class Participant:
    """One live participant slot, as seen in the table."""

    slot: int
    pid: int
    roles: int
    attached_ns: int
    alive: bool


class Participants:
    """The participant table of one region, seen through one handle."""

    def __init__(self, region: Region) -> None:
        self.region = region
        assert region.buf is not None
        self.capacity: int = L.HEADER.unpack_from(region.buf, 0)[10]
        self.mine: set[int] = set()

    def _word(self, slot: int, field: int) -> int:
        return L.slot_word(slot, field)

    @contextmanager
    def attach_lock(self) -> Iterator[None]:
        """Serialize attach (open or create semaphores) against the last detach (remove them)."""
        self.region.lock_with_timeout(L.LOCK_ATTACH, ATTACH_LOCK_TIMEOUT, "attach")
        try:
            yield
        finally:
            self.region.unlock(L.LOCK_ATTACH)

    def claim(self, roles: int, cleanup: Callable[[int], None]) -> int:
        """Claim a free (or dead) slot and return its index.

        ``cleanup(slot)`` runs first if the slot's previous holder died without releasing it.
        Raises :class:`BusyError` if every slot is held by a live process.
        """
        words = self.region.words
        assert words is not None
        for slot in range(self.capacity):
            if slot in self.mine or not self.region.lock(L.LOCK_SLOT_BASE + slot):
                continue
            state_word = words[self._word(slot, L.S_STATE)]
            if state_word & 0xFF == L.SLOT_ACTIVE:
                cleanup(slot)
            generation = (state_word >> 8) + 1
            words[self._word(slot, L.S_PID)] = os.getpid()
            words[self._word(slot, L.S_ROLES)] = roles
            words[self._word(slot, L.S_LOCK_STATE)] = 0
            words[self._word(slot, L.S_ATTACHED_NS)] = time.time_ns()
            words[self._word(slot, L.S_STATE)] = generation << 8 | L.SLOT_ACTIVE
            self.mine.add(slot)
            return slot
        raise BusyError(
            f"all {self.capacity} participant slots of {self.region.display_name!r} are held by "
            "live processes (raise max_participants at creation)"
        )

    def release(self, slot: int) -> None:
        """Mark ``slot`` free and drop its lock (ours, or a dead one we won)."""
        words = self.region.words
        if words is not None:
            state_word = words[self._word(slot, L.S_STATE)]
            words[self._word(slot, L.S_ROLES)] = 0
            words[self._word(slot, L.S_LOCK_STATE)] = 0
            words[self._word(slot, L.S_PID)] = 0
            words[self._word(slot, L.S_STATE)] = (state_word >> 8) << 8 | L.SLOT_FREE
        self.mine.discard(slot)
        self.region.unlock(L.LOCK_SLOT_BASE + slot)

    def generation(self, slot: int) -> int:
        words = self.region.words
        assert words is not None
        return int(words[self._word(slot, L.S_STATE)] >> 8)

    def set_field(self, slot: int, field: int, value: int) -> None:
        words = self.region.words
        assert words is not None
        words[self._word(slot, field)] = value

    def get_field(self, slot: int, field: int) -> int:
        words = self.region.words
        assert words is not None
        return int(words[self._word(slot, field)])

    def alive(self, slot: int) -> bool:
        """Whether the slot's holder is a live process (this handle counts as live)."""
        return slot in self.mine or self.region.locked_elsewhere(L.LOCK_SLOT_BASE + slot)

    def take_dead(self, slot: int) -> bool:
        """Win the right to clean up a dead, still-active slot (then call :meth:`release`)."""
        if slot in self.mine or not self.region.lock(L.LOCK_SLOT_BASE + slot):
            return False
        words = self.region.words
        assert words is not None
        if words[self._word(slot, L.S_STATE)] & 0xFF != L.SLOT_ACTIVE:
            self.region.unlock(L.LOCK_SLOT_BASE + slot)  # already cleaned up by someone else
            return False
        return True

    def table(self) -> list[Participant]:
        """Every active slot with its liveness."""
        words = self.region.words
        assert words is not None
        out = []
        for slot in range(self.capacity):
            state_word = words[self._word(slot, L.S_STATE)]
            if state_word & 0xFF != L.SLOT_ACTIVE:
                continue
            out.append(
                Participant(
                    slot=slot,
                    pid=int(words[self._word(slot, L.S_PID)]),
                    roles=int(words[self._word(slot, L.S_ROLES)]),
                    attached_ns=int(words[self._word(slot, L.S_ATTACHED_NS)]),
                    alive=self.alive(slot),
                )
            )
        return out

    def others_alive(self) -> bool:
        """Whether any slot other than this handle's is held by a live process."""
        return any(p.alive and p.slot not in self.mine for p in self.table())

    def forget_after_fork(self) -> None:
        """In a fork child: the parent's slots are the parent's."""
        self.mine.clear()
