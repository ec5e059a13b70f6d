"""A file-backed Ring keeps unconsumed records across restarts.

Run: python examples/ring_persistent.py
"""

from __future__ import annotations

import os
import tempfile

import mmipc


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "journal.ring")
        with mmipc.Ring.create(1 << 16, path=path) as ring:
            for i in range(10):
                ring.send(f"event {i}".encode())
            ring.flush()  # msync: durable even if the machine goes down now
        # Every process has closed the ring; later, another process re-opens the file.
        with mmipc.Ring.attach(path=path) as ring:
            first = [ring.recv_bytes() for _ in range(4)]
        with mmipc.Ring.attach(path=path) as ring:
            rest = ring.recv_many(100, timeout=1)
            ring.unlink()  # removes the file and the ring's semaphores
        print("first run received:", [r.decode() for r in first])
        print("after re-opening:  ", [r.decode() for r in rest])
        assert len(first) + len(rest) == 10


if __name__ == "__main__":
    main()
