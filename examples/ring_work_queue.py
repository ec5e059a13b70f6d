"""Work queue: each job goes to exactly one of several worker processes, at least once.

Four workers take jobs from a ``mode="queue"`` ring and send results back through a
multi-writer ring. One worker is SIGKILLed while it holds jobs: those jobs are delivered again
to another worker, flagged ``redelivered`` and carrying their sequence number, so the producer
can tell a retry from a new job.

Run: python examples/ring_work_queue.py
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import threading
import time

import mmipc

JOBS = 2000


def worker(jobs: mmipc.Ring, results: mmipc.Ring, slow: bool) -> None:
    with jobs, results:
        for _ in range(JOBS):
            try:
                with jobs.recv(timeout=30) as view:  # a zero-copy view of the job
                    job = int(bytes(view))
                    info = jobs.last_record
                    assert info is not None and info.sequence == job
                    if slow:
                        time.sleep(60)  # holds the job until it is killed
                    results.send(f"{os.getpid()} {job} {int(info.redelivered)}".encode(), timeout=30)
            except mmipc.EndOfStream:
                return


def main() -> None:
    ctx = mp.get_context("spawn")
    with (
        mmipc.Ring.create(1 << 14, mode="queue") as jobs,
        mmipc.Ring.create(1 << 16, multi_writer=True) as results,
    ):
        doomed = ctx.Process(target=worker, args=(jobs, results, True))
        doomed.start()
        jobs.send(b"0")  # the doomed worker takes job 0 and stalls
        while jobs.stats().records_read < 1:
            time.sleep(0.01)
        workers = [ctx.Process(target=worker, args=(jobs, results, False)) for _ in range(3)]
        for w in workers:
            w.start()
        assert doomed.pid is not None
        os.kill(doomed.pid, signal.SIGKILL)  # dies holding job 0
        doomed.join()

        def produce() -> None:  # in a thread: this process also collects the results meanwhile
            for n in range(1, JOBS):
                jobs.send(str(n).encode(), timeout=30)
            jobs.end_stream()

        producer = threading.Thread(target=produce)
        producer.start()
        done: dict[int, int] = {}
        pids = set()
        while len(done) < JOBS:
            pid, job, redelivered = map(int, results.recv_bytes(timeout=60).split())
            assert job not in done, "each job is done once"
            done[job] = redelivered
            pids.add(pid)
        producer.join(60)
        for w in workers:
            w.join(60)
        print(
            f"{JOBS} jobs done by {len(pids)} workers; redelivered after a worker died: "
            f"{sorted(j for j, r in done.items() if r)}"
        )
        assert sorted(done) == list(range(JOBS)) and done[0] == 1


if __name__ == "__main__":
    main()
