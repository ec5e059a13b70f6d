"""Zero-copy numpy arrays through a named Ring: written in place, read as views.

The producer builds each array directly inside the ring (``reserve``); the consumer maps the
record with ``np.frombuffer`` without copying. An array kept after its ``with`` block pins its
record (and the ones after it) until it is garbage collected, so its bytes never change.

Run: python examples/ring_numpy_zero_copy.py  (needs numpy)
"""

from __future__ import annotations

import multiprocessing as mp
import os

import numpy as np

import mmipc

SHAPE = (512, 512)  # 2 MiB of float64 per record
COUNT = 50


def consume(name: str, results: mp.Queue) -> None:
    ring = mmipc.Ring.attach(name)  # attach by name, as an unrelated process would
    sums = []
    while True:
        try:
            with ring.recv(timeout=30) as view:
                arr = np.frombuffer(view, dtype=np.float64).reshape(SHAPE)  # no copy
                sums.append(float(arr[0, 0] + arr[-1, -1]))
                del arr  # drop it inside the block: the record is released on exit
        except mmipc.EndOfStream:
            break
    results.put(sums)
    ring.close()


def main() -> None:
    name = f"example-numpy-{os.getpid()}"
    ring = mmipc.Ring.create(64 << 20, name=name)
    try:
        results: mp.Queue = mp.Queue()
        child = mp.Process(target=consume, args=(name, results))
        child.start()
        nbytes = int(np.prod(SHAPE)) * 8
        for i in range(COUNT):
            with ring.reserve(nbytes, timeout=30) as buf:
                arr = np.frombuffer(buf, dtype=np.float64).reshape(SHAPE)
                arr.fill(i)  # written straight into shared memory
                del arr
        ring.end_stream()
        sums = results.get(timeout=60)
        child.join(timeout=60)
        assert sums == [2.0 * i for i in range(COUNT)], sums
        print(f"received {len(sums)} arrays of {nbytes} bytes, zero-copy both ways")
    finally:
        ring.unlink()
        ring.close()


if __name__ == "__main__":
    main()
