"""Python objects and numpy arrays through a Channel: large arrays arrive as zero-copy views.

A worker process sends results (a dict with metadata and a 4 MiB array) and builds some arrays
in place with ``reserve_array``. The parent receives them as read-only views of shared memory,
keeps every tenth one (held arrays never stall the channel: their memory lives in the channel's
heap, not in the ring) and prints what it got.

Run: python examples/channel_numpy.py  (needs numpy)
"""

from __future__ import annotations

import gc
import multiprocessing as mp

import numpy as np

import mmipc

COUNT = 40
SHAPE = (512, 1024)  # 4 MiB of float64


def worker(chan: mmipc.Channel) -> None:
    for i in range(COUNT):
        if i % 2:
            # Built in place: the array is never copied, not even once.
            with chan.reserve_array(SHAPE, "float64", timeout=30) as arr:
                arr.fill(i)
        else:
            chan.send({"step": i, "tag": f"result-{i}", "data": np.full(SHAPE, float(i))}, timeout=30)
    chan.end_stream()
    chan.close()


def main() -> None:
    # 1 MiB of ring for the small records; 32 MiB of heap for the arrays in flight and held.
    with mmipc.Channel.create(1 << 20, heap_size=32 << 20) as chan:
        try:
            child = mp.Process(target=worker, args=(chan,))
            child.start()
            kept = []
            for i, obj in enumerate(chan):  # until end_stream
                arr = obj["data"] if isinstance(obj, dict) else obj
                assert not arr.flags.writeable  # a view of shared memory, not a copy
                assert arr[0, 0] == arr[-1, -1] == float(i)
                if i % 10 == 0:
                    kept.append(arr)  # holding it keeps its heap block; the worker goes on
            child.join(timeout=60)
            assert child.exitcode == 0, child.exitcode
            del arr, obj  # the loop's last object: only `kept` holds arrays now
            held = chan.stats()
            print(
                f"received {held.objects_received} objects; holding {len(kept)} arrays "
                f"({held.heap_bytes_held >> 20} MiB of heap) while the channel kept flowing"
            )
            owned = np.array(kept[0])  # copy out what must outlive the channel
            del kept
            gc.collect()  # the last view of a block is gone: the block returns to the heap
            print(
                f"after dropping them: {chan.stats().heap_blocks_held} heap blocks held; "
                f"kept an owned copy of shape {owned.shape}"
            )
        finally:
            chan.unlink()


if __name__ == "__main__":
    main()
