"""Task functions for the Pool tests (module level, so spawn and forkserver workers import them)."""

from __future__ import annotations

import os
import pathlib
import pickle
import threading
import time
from typing import Any

import numpy as np

WAIT_LIMIT = 60.0  # a task that waits for the test never waits longer than this


def square(x: int) -> int:
    return x * x


def add(x: int, y: int) -> int:
    return x + y


def identity(x: Any) -> Any:
    return x


def pid_of_worker(_: Any = None) -> int:
    return os.getpid()


def array(n: int, value: float, dtype: str = "float64") -> np.ndarray:
    return np.full(n, value, dtype=dtype)


def pattern(n: int, seed: int) -> np.ndarray:
    """A 1-D uint64 array whose items are unique to ``(n, seed)``."""
    return np.arange(n, dtype=np.uint64) + np.uint64(seed << 40)


def pattern_128k(seed: int) -> np.ndarray:
    return pattern(1 << 17, seed)


def many_kinds(kind: str) -> Any:
    if kind == "int":
        return 12345678901234567890
    if kind == "none":
        return None
    if kind == "str":
        return "héllo" * 1000
    if kind == "dict":
        return {"a": [1, 2.5, "x"], "b": (None, True), "c": {"nested": b"bytes"}}
    if kind == "bytes_1m":
        return bytes(range(256)) * 4096  # in-band: the ring carries it
    if kind == "bytes_8m":
        return bytes(range(256)) * 32768  # larger than the result ring: an overflow segment
    if kind == "bytearray_1m":
        return bytearray(range(256)) * 4096  # out-of-band (pickle 5): a view of the heap
    if kind == "small_array":
        return np.arange(100, dtype=np.int32)
    if kind == "array_1m":
        return pattern(1 << 17, 1)
    if kind == "empty_array":
        return np.zeros((0, 3))
    if kind == "array_2d":
        return pattern(1 << 16, 2).reshape(256, 256)
    if kind == "mixed":
        return {"x": pattern(1 << 15, 3), "y": [pattern(1 << 14, 4), "tag"], "z": np.float32(1.5)}
    raise ValueError(kind)


def raise_value_error(x: int) -> int:
    if x == 3:
        raise ValueError(f"task refuses {x}")
    return x


def return_unpicklable(_: Any = None) -> Any:
    return threading.Lock()


class Unpicklable(Exception):
    def __init__(self) -> None:
        super().__init__("cannot travel")
        self.lock = threading.Lock()


def raise_unpicklable(_: Any = None) -> None:
    raise Unpicklable()


def _fail_to_load() -> None:
    raise RuntimeError("this object refuses to be rebuilt")


class LoadsBadly:
    def __reduce__(self) -> Any:
        return (_fail_to_load, ())


def return_loads_badly(_: Any = None) -> Any:
    return LoadsBadly()


def announce_and_sleep(path: str, seconds: float = WAIT_LIMIT) -> int:
    """Write this worker's pid to ``path`` (atomically), then sleep: the test kills the worker."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(str(os.getpid()))
    os.rename(tmp, path)
    time.sleep(seconds)
    return os.getpid()


def wait_for_file(path: str) -> int:
    """Block until ``path`` exists (the test creates it), then return this worker's pid."""
    deadline = time.monotonic() + WAIT_LIMIT
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} never appeared")
        time.sleep(0.005)
    return os.getpid()


def exit_now(code: int) -> None:
    os._exit(code)


def sleep_then(seconds: float, value: Any) -> Any:
    time.sleep(seconds)
    return value


_initialized: Any = None


def init_global(value: Any) -> None:
    global _initialized
    _initialized = value


def read_global(_: Any = None) -> Any:
    return _initialized


def sum_array(arr: np.ndarray) -> tuple[float, bool]:
    """The sum of an argument array and whether the worker received it writable."""
    return float(arr.sum()), bool(arr.flags.writeable)


def pickled_size(obj: Any) -> int:
    return len(pickle.dumps(obj))


def wait_until_file(path: str) -> None:
    """Wait (outside any pool) until ``path`` exists."""
    deadline = time.monotonic() + WAIT_LIMIT
    while not pathlib.Path(path).exists():
        if time.monotonic() > deadline:
            raise TimeoutError(path)
        time.sleep(0.005)


def init_exits(code: int) -> None:
    os._exit(code)


def segfault(_: Any = None) -> None:
    import ctypes
    import faulthandler

    faulthandler.disable()  # no traceback on the test's stderr; the worker just dies
    ctypes.string_at(0)


def init_fails_when(path: str, message: str) -> None:
    """An initializer that waits for ``path`` (the test creates it), then raises."""
    wait_until_file(path)
    raise RuntimeError(message)
