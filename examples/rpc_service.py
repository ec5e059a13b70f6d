"""Request/reply between processes: a server process answers calls from two client processes.

The server computes statistics of the numpy arrays it is sent (they arrive as zero-copy views)
and raises for bad input; the exception reaches the caller with the server's traceback.

Run: python examples/rpc_service.py  (needs numpy)
"""

from __future__ import annotations

import multiprocessing as mp
import os

import numpy as np

import mmipc


def stats(array: np.ndarray) -> dict[str, float]:
    if array.size == 0:
        raise ValueError("empty array")
    return {"mean": float(array.mean()), "max": float(array.max()), "pid": os.getpid()}


def server_main(server: mmipc.Server) -> None:
    served = server.serve(stats)  # until a client ends the service
    print(f"server {os.getpid()}: served {served} requests")
    server.close()


def client_main(name: str, index: int, results: mp.Queue) -> None:
    with mmipc.Client.connect(name) as client:
        replies = [client.call(np.full(1 << 18, float(index * 10 + i)), timeout=30) for i in range(5)]
        try:
            client.call(np.zeros(0), timeout=30)
        except ValueError as exc:
            error = f"{exc} (remote traceback attached: {isinstance(exc.__cause__, mmipc.RemoteError)})"
        results.put((index, [r["mean"] for r in replies], error))


def main() -> None:
    name = f"example-rpc-{os.getpid()}"
    server = mmipc.Server.create(name, heap_size=16 << 20)
    try:
        process = mp.Process(target=server_main, args=(server,))
        process.start()
        results: mp.Queue = mp.Queue()
        clients = [mp.Process(target=client_main, args=(name, k, results)) for k in range(2)]
        for c in clients:
            c.start()
        for _ in clients:
            index, means, error = results.get(timeout=60)
            assert means == [float(index * 10 + i) for i in range(5)], means
            print(f"client {index}: means {means}; bad input raised {error}")
        for c in clients:
            c.join(timeout=60)
        with mmipc.Client.connect(name) as client:
            client.end_service()
        process.join(timeout=60)
        assert process.exitcode == 0
    finally:
        server.unlink()
        server.close()


if __name__ == "__main__":
    main()
