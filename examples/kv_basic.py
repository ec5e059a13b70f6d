"""Worker processes sharing a KV: counters, zero-copy views, objects, and a persistent file.

Run: python examples/kv_basic.py
"""

from __future__ import annotations

import multiprocessing as mp
import os
import tempfile

import mmipc


def worker(kv: mmipc.KV, worker_id: int) -> None:
    for i in range(100):
        kv[f"worker-{worker_id}/item-{i}"] = f"result {i} of worker {worker_id}".encode()
        kv.increment("done")  # atomic read-modify-write under the writer lock
    kv.objects[f"summary-{worker_id}"] = {"worker": worker_id, "pid": os.getpid(), "items": 100}
    kv.close()


def main() -> None:
    # Anonymous KV: shared with the children by pickling the handle (any start method).
    with mmipc.KV.create(1 << 20) as kv:
        kv["config"] = b"threshold=0.5"
        since = kv.commit_seq
        workers = [mp.Process(target=worker, args=(kv, n)) for n in range(3)]
        for w in workers:
            w.start()
        kv.wait_for_change(timeout=60, since=since)  # sleeps until some worker writes
        for w in workers:
            w.join(timeout=60)
        done = int.from_bytes(kv["done"], "little", signed=True)
        print(f"{len(kv)} keys, {done} items done")
        print(kv["worker-2/item-99"].decode())
        print(kv.objects["summary-1"])
        with kv.view("config") as view:  # zero copy: valid inside the block only
            print("config:", bytes(view).decode())
        print(kv.stats())

    # A file-backed KV keeps its contents after every process has exited.
    path = os.path.join(tempfile.mkdtemp(prefix="mmipc-example-"), "store.kv")
    with mmipc.KV.create(1 << 16, path=path) as store:
        store.update({"a": b"1", "b": b"2"})
        store.flush()  # durable on disk, not only in the page cache
    with mmipc.KV.attach(path=path, readonly=True) as store:
        print("reopened:", dict(store.items()))
    os.unlink(path)
    os.rmdir(os.path.dirname(path))


if __name__ == "__main__":
    main()
