"""A worker pool whose numpy results come back as zero-copy views of shared memory.

``mmipc.Pool`` is a ``concurrent.futures.Executor``. Each task below builds an 8 MiB array; the
parent receives it as a read-only view of the pool's shared result heap (no pickle stream, no
pipe, no copy on the way in). The example keeps some results (holding them never stalls the
pool), shows a worker exception with its remote traceback, and survives a worker killed by
SIGKILL in the middle of a task. Everything is removed at the end of the ``with`` block.

Run: python examples/pool_numpy_results.py  (needs numpy)
"""

from __future__ import annotations

import os
import signal
import tempfile
import time

import numpy as np

import mmipc

SHAPE = (1024, 1024)  # 8 MiB of float64


def simulate(step: int) -> np.ndarray:
    """A 'simulation step': an 8 MiB array whose every item is ``step``."""
    return np.full(SHAPE, float(step))


def check(step: int) -> int:
    if step == 13:
        raise ValueError(f"step {step} is unlucky")
    return step


def hang(pid_file: str) -> int:
    """Tell the parent which process runs this task, then sleep (it gets killed)."""
    with open(pid_file + ".tmp", "w") as f:
        f.write(str(os.getpid()))
    os.rename(pid_file + ".tmp", pid_file)
    time.sleep(60)
    return 0


def main() -> None:
    with mmipc.Pool(2, result_heap_size=128 << 20) as pool:
        print(pool)

        # map: results in order, input consumed lazily; each array is a read-only view.
        kept = []
        for step, arr in enumerate(pool.map(simulate, range(40))):
            assert not arr.flags.writeable and arr[0, 0] == arr[-1, -1] == step
            if step % 4 == 0:
                kept.append(arr)  # held: its heap block stays taken, the pool goes on
        print(f"map: 40 arrays of {SHAPE} received as views; kept {len(kept)} of them")

        # copy=True returns owned, writable arrays (the shared memory is released at once).
        owned = pool.submit(simulate, 99).result()
        writable = next(pool.imap_unordered(simulate, [7], copy=True))
        writable += 1
        print(f"views are read-only ({owned.flags.writeable}); copy=True gives writable ({writable[0, 0]})")

        # Exceptions carry the worker's traceback as __cause__.
        try:
            pool.submit(check, 13).result()
        except ValueError as exc:
            print(f"task raised {exc!r}; remote traceback ends with: {str(exc.__cause__).splitlines()[-1]}")

        # A worker killed mid-task: that task fails with WorkerDied, the pool replaces the worker.
        with tempfile.TemporaryDirectory() as tmp:
            pid_file = os.path.join(tmp, "pid")
            victim = pool.submit(hang, pid_file)
            deadline = time.monotonic() + 30
            while not os.path.exists(pid_file) and time.monotonic() < deadline:
                time.sleep(0.01)
            with open(pid_file) as f:
                os.kill(int(f.read()), signal.SIGKILL)
        try:
            victim.result(timeout=30)
        except mmipc.WorkerDied as exc:
            print(f"WorkerDied: {exc}")
        total = sum(int(a[0, 0]) for a in pool.map(simulate, range(10)))
        print(f"after the crash the pool still works: sum of steps 0..9 = {total}")
        print(pool.stats())
        del kept, owned, writable
    print("pool shut down: workers joined, shared memory removed")


if __name__ == "__main__":
    main()
