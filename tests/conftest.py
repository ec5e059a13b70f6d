"""Shared fixtures: start methods, rings that are always cleaned up, and the /dev/shm leak check.

The leak check runs once, in the controlling process (not in xdist workers), after the whole
session: any mmipc object in ``/dev/shm`` that was not there when the session started fails the run.
"""

from __future__ import annotations

import multiprocessing
import os
import pathlib
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import mmipc
from mmipc import _semaphore
from mmipc._ring import _sem_names

START_METHODS = ["fork", "spawn", "forkserver"]

_SHM = pathlib.Path("/dev/shm")
_BEFORE_KEY = "_mmipc_shm_before"


def mmipc_shm_entries() -> set[str]:
    """Names of mmipc regions and semaphores currently in /dev/shm."""
    try:
        return {entry for entry in os.listdir(_SHM) if "mmipc" in entry}
    except FileNotFoundError:
        return set()


def _is_controller(config: pytest.Config) -> bool:
    return not hasattr(config, "workerinput")


def pytest_sessionstart(session: pytest.Session) -> None:
    if _is_controller(session.config):
        setattr(session.config, _BEFORE_KEY, mmipc_shm_entries())


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    if not _is_controller(config):
        return
    before: set[str] = getattr(config, _BEFORE_KEY, set())
    leaked = sorted(mmipc_shm_entries() - before)
    if leaked:
        reporter = config.pluginmanager.get_plugin("terminalreporter")
        message = "mmipc objects left in /dev/shm by the test suite: " + ", ".join(leaked)
        if reporter is not None:
            reporter.write_line(message, red=True, bold=True)
        for entry in leaked:  # clean up so the next run starts from a clean machine
            try:
                os.unlink(_SHM / entry)
            except OSError:
                pass
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(params=START_METHODS)
def mp_context(request: pytest.FixtureRequest) -> multiprocessing.context.BaseContext:
    """Each test using this runs once per start method."""
    return multiprocessing.get_context(request.param)


def cleanup_ring(ring: mmipc.Ring) -> None:
    """Remove everything a ring owns from the machine, whatever state the test left it in."""
    nonce = ring._region.nonce
    try:
        if not ring.closed:
            try:
                ring.unlink()
            except mmipc.MmipcError:
                pass
            ring.close()
    finally:
        for sem in _sem_names(nonce):
            _semaphore.unlink_semaphore(sem)


@pytest.fixture
def make_ring(tmp_path: pathlib.Path) -> Iterator[Callable[..., mmipc.Ring]]:
    """``make_ring(capacity, kind="anonymous"|"named"|"file", **kwargs)``; cleaned up after."""
    made: list[mmipc.Ring] = []

    def make(capacity: int = 1 << 16, kind: str = "anonymous", **kwargs: Any) -> mmipc.Ring:
        if kind == "named":
            kwargs.setdefault("name", f"test-{uuid.uuid4().hex[:12]}")
        elif kind == "file":
            kwargs.setdefault("path", str(tmp_path / f"ring-{uuid.uuid4().hex[:8]}.mmipc"))
        ring = mmipc.Ring.create(capacity, **kwargs)
        made.append(ring)
        return ring

    yield make
    for ring in made:
        cleanup_ring(ring)


@pytest.fixture(params=["anonymous", "named", "file"])
def ring_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)
