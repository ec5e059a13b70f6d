"""The exception hierarchy: one base, the matching builtins, picklable, shown as ``mmipc.X``."""

from __future__ import annotations

import concurrent.futures
import pickle

import pytest

import mmipc

BUILTIN_OF = {
    mmipc.ClosedError: ValueError,
    mmipc.WouldBlock: BlockingIOError,
    mmipc.WaitTimeout: TimeoutError,
    mmipc.EndOfStream: EOFError,
    mmipc.RegionNotFound: FileNotFoundError,
    mmipc.RegionExists: FileExistsError,
    mmipc.NoSpaceError: OSError,
    mmipc.IncompatibleRegion: ValueError,
    mmipc.CorruptionError: mmipc.IncompatibleRegion,
    mmipc.RecordTooLarge: ValueError,
    mmipc.BusyError: RuntimeError,
    mmipc.HeapExhausted: mmipc.WaitTimeout,
    mmipc.SerializationError: ValueError,
    mmipc.KVFull: mmipc.NoSpaceError,
    mmipc.ReadOnlyError: PermissionError,
    mmipc.WorkerDied: RuntimeError,
    mmipc.BrokenPool: concurrent.futures.BrokenExecutor,
    mmipc.ServerDied: ConnectionError,
    mmipc.RemoteError: mmipc.MmipcError,
    mmipc.Lapped: mmipc.MmipcError,
}


@pytest.mark.parametrize("cls", list(BUILTIN_OF), ids=lambda c: c.__name__)
def test_each_error_is_an_mmipc_error_and_its_builtin(cls: type[Exception]) -> None:
    err = cls("something specific")
    assert isinstance(err, mmipc.MmipcError)
    assert isinstance(err, BUILTIN_OF[cls])
    assert cls.__module__ == "mmipc"
    assert str(err) == "something specific"


@pytest.mark.parametrize("cls", [mmipc.MmipcError, *BUILTIN_OF], ids=lambda c: c.__name__)
def test_errors_pickle_with_their_message(cls: type[Exception]) -> None:
    err = pickle.loads(pickle.dumps(cls("the message")))
    assert type(err) is cls
    assert str(err) == "the message"


def test_every_public_error_is_exported() -> None:
    exported = {name for name in mmipc.__all__ if isinstance(getattr(mmipc, name), type)}
    errors = {name for name in exported if issubclass(getattr(mmipc, name), BaseException)}
    assert errors == {c.__name__ for c in BUILTIN_OF} | {"MmipcError"}


def test_timeout_is_caught_by_builtin_handler(make_ring) -> None:
    ring = make_ring(4096)
    with pytest.raises(TimeoutError):
        ring.recv_bytes(timeout=0.01)
