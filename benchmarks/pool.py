"""Worker pools: mmipc.Pool against ProcessPoolExecutor, multiprocessing.Pool and loky, in one run.

``python -m benchmarks pool [--quick] [--workers 2] [--only WORDS]``

Every cell (one executor, one workload) runs in a fresh Python process (``python -m
benchmarks.pool --cell ...``): it starts the executor with ``--workers`` workers (default 2),
warms it up (every worker has started and run tasks; for the array workloads as many results
as make three laps of mmipc's result heap, the same count for every executor, so that the page
faults of a fresh pool's first lap are not measured), then measures for about ``--seconds``
and prints one JSON line. The best of ``--repeat`` cells is reported (interference on a shared
machine only ever slows a run down).

Workloads (task functions live in this module, so every start method can import them):

* ``64 MiB array (cached)``: each task returns the same 64 MiB float64 array, built once per
  worker: what is measured is the cost of passing the result, not of building it.
* ``64 MiB array (np.full)``: each task builds a fresh 64 MiB array (``np.full``, 16 ms of page
  faults and writes here) and returns it: the same comparison including the work.
* ``1 MiB array (cached)``: as above with 1 MiB.
* For the array workloads, the caller keeps ``2 x workers`` tasks in flight (submit a new one
  when the oldest result arrives), reads one element of each result and drops it.
* ``empty task``: a function returning an int; all tasks submitted at once, then every result
  awaited (submit-to-result throughput).
* ``latency``: one task at a time; the median of submit-to-result times (µs).

Executors: ``mmipc.Pool``, ``concurrent.futures.ProcessPoolExecutor``,
``multiprocessing.Pool`` (``apply_async``) and ``loky.ProcessPoolExecutor``, all started with
the same multiprocessing start method (``--start-method``, default forkserver; loky always uses
its own ``loky`` start method).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections import deque
from typing import Any

from benchmarks import _harness as H

DESCRIPTION = "mmipc.Pool vs ProcessPoolExecutor, multiprocessing.Pool, loky: arrays, empty tasks, latency"

MMIPC = "mmipc.Pool"
PPE = "ProcessPoolExecutor"
MPPOOL = "multiprocessing.Pool"
LOKY = "loky"
EXECUTORS = (MMIPC, PPE, MPPOOL, LOKY)

A64 = "64 MiB array (cached)"
A64_FRESH = "64 MiB array (np.full)"
A1 = "1 MiB array (cached)"
EMPTY = "empty task"
LATENCY = "latency"
WORKLOADS = (A64, A64_FRESH, A1, EMPTY, LATENCY)
SIZES = {A64: 64 << 20, A64_FRESH: 64 << 20, A1: 1 << 20}

CELL_TIMEOUT = 300.0

# -- task functions (run in the workers) ----------------------------------------------------------

_cached: dict[int, Any] = {}


def cached_array(nbytes: int) -> Any:
    arr = _cached.get(nbytes)
    if arr is None:
        import numpy as np

        arr = _cached[nbytes] = np.full(nbytes // 8, 1.5)
    return arr


def fresh_array(nbytes: int) -> Any:
    import numpy as np

    return np.full(nbytes // 8, 2.5)


def empty_task(x: int) -> int:
    return x


# -- the cell process ----------------------------------------------------------------------------


class _Adapter:
    """submit(fn, arg) -> handle; wait(handle) -> result; close()."""

    def __init__(self, kind: str, workers: int, start_method: str, heap_size: int) -> None:
        import multiprocessing

        self.kind = kind
        ctx = multiprocessing.get_context(start_method)
        if kind == MMIPC:
            import mmipc

            self.executor: Any = mmipc.Pool(workers, mp_context=ctx, result_heap_size=heap_size)
        elif kind == PPE:
            from concurrent.futures import ProcessPoolExecutor

            self.executor = ProcessPoolExecutor(workers, mp_context=ctx)
        elif kind == MPPOOL:
            self.executor = ctx.Pool(workers)
        elif kind == LOKY:
            import loky

            self.executor = loky.ProcessPoolExecutor(workers)
        else:
            raise ValueError(kind)

    def submit(self, fn: Any, arg: Any) -> Any:
        if self.kind == MPPOOL:
            return self.executor.apply_async(fn, (arg,))
        return self.executor.submit(fn, arg)

    def wait(self, handle: Any) -> Any:
        if self.kind == MPPOOL:
            return handle.get()
        return handle.result()

    def close(self) -> None:
        if self.kind == MPPOOL:
            self.executor.close()
            self.executor.join()
        else:
            self.executor.shutdown(wait=True)


def _run_arrays(pool: _Adapter, fn: Any, nbytes: int, workers: int, seconds: float) -> dict[str, Any]:
    window = 2 * workers
    inflight: deque[Any] = deque(pool.submit(fn, nbytes) for _ in range(window))
    # Warm-up, the same for every executor: every worker built its array and sent results, and
    # mmipc's result heap went round three times (its pages are mapped in every worker: the
    # first write of a page of shared memory costs a page fault, ~1 ms per MiB on this VM).
    for _ in range(max(2 * window, 3 * heap_size_for(nbytes, workers) // nbytes)):
        arr = pool.wait(inflight.popleft())
        assert arr.nbytes == nbytes
        del arr
        inflight.append(pool.submit(fn, nbytes))
    count = 0
    checksum = 0.0
    start = time.perf_counter()
    while True:
        arr = pool.wait(inflight.popleft())
        checksum += float(arr[-1])
        del arr
        count += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds and count >= 5:
            break
        inflight.append(pool.submit(fn, nbytes))
    for handle in inflight:
        pool.wait(handle)
    return {"count": count, "seconds": elapsed, "bytes": count * nbytes, "checksum": checksum}


def _run_empty(pool: _Adapter, seconds: float) -> dict[str, Any]:
    for handle in [pool.submit(empty_task, k) for k in range(2000)]:
        pool.wait(handle)
    batch = 2000
    while True:  # grow the batch until one lasts about a fifth of the sample
        start = time.perf_counter()
        handles = [pool.submit(empty_task, k) for k in range(batch)]
        total = sum(pool.wait(h) for h in handles)
        elapsed = time.perf_counter() - start
        assert total == batch * (batch - 1) // 2
        if elapsed >= seconds / 5 or batch >= 2_000_000:
            break
        batch *= 4
    rate = batch / elapsed
    batch = max(batch, int(rate * seconds))
    start = time.perf_counter()
    handles = [pool.submit(empty_task, k) for k in range(batch)]
    total = sum(pool.wait(h) for h in handles)
    elapsed = time.perf_counter() - start
    assert total == batch * (batch - 1) // 2
    return {"count": batch, "seconds": elapsed, "bytes": 0}


def _run_latency(pool: _Adapter, seconds: float) -> dict[str, Any]:
    for k in range(200):
        pool.wait(pool.submit(empty_task, k))
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(times) < 50:
        t0 = time.perf_counter()
        pool.wait(pool.submit(empty_task, 1))
        times.append(time.perf_counter() - t0)
    times.sort()
    return {
        "count": len(times),
        "seconds": sum(times),
        "bytes": 0,
        "median_us": statistics.median(times) * 1e6,
        "p90_us": times[int(0.9 * (len(times) - 1))] * 1e6,
    }


def heap_size_for(nbytes: int, workers: int) -> int:
    """mmipc's result heap: the default (256 MiB), or room for the results in flight (2 x
    workers), the one being read and one being written per worker, if that is more."""
    return max(256 << 20, (3 * workers + 2) * nbytes)


def run_one_cell(
    executor: str, workload: str, workers: int, start_method: str, seconds: float
) -> dict[str, Any]:
    pool = _Adapter(executor, workers, start_method, heap_size_for(SIZES.get(workload, 0), workers))
    try:
        if workload == A64:
            return _run_arrays(pool, cached_array, SIZES[A64], workers, seconds)
        if workload == A64_FRESH:
            return _run_arrays(pool, fresh_array, SIZES[A64_FRESH], workers, seconds)
        if workload == A1:
            return _run_arrays(pool, cached_array, SIZES[A1], workers, seconds)
        if workload == EMPTY:
            return _run_empty(pool, seconds)
        if workload == LATENCY:
            return _run_latency(pool, seconds)
        raise ValueError(workload)
    finally:
        pool.close()


def _cell_main(argv: list[str]) -> int:
    spec = json.loads(argv[0])
    result = run_one_cell(
        spec["executor"], spec["workload"], spec["workers"], spec["start_method"], spec["seconds"]
    )
    print("RESULT " + json.dumps(result), flush=True)
    return 0


# -- the driver ------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workers", type=int, default=2, help="workers per executor (default 2)")


def _run_cell_process(spec: dict[str, Any]) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.pool", "--cell", json.dumps(spec)],
        cwd=H.REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=CELL_TIMEOUT,
    )
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return dict(json.loads(line[7:]))
    raise H.CellError(f"cell {spec} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")


def _measure(
    executor: str, workload: str, settings: H.Settings, workers: int
) -> tuple[H.Measurement, list[dict[str, Any]]]:
    spec = {
        "executor": executor,
        "workload": workload,
        "workers": workers,
        "start_method": settings.start_method,
        "seconds": settings.seconds,
    }
    samples: list[H.Sample] = []
    raw: list[dict[str, Any]] = []
    note = ""
    for _ in range(settings.repeat):
        try:
            result = _run_cell_process(spec)
        except (H.CellError, subprocess.TimeoutExpired) as exc:
            note = f"failed: {str(exc).strip()[:2000]}"
            break
        raw.append(result)
        if workload == LATENCY:
            # One "message" per microsecond of median latency inverted: rate = 1e6 / median.
            samples.append(H.Sample(1, 0, result["median_us"] / 1e6))
        else:
            samples.append(H.Sample(result["count"], result["bytes"], result["seconds"]))
    m = H.Measurement(group=workload, case=executor, size=SIZES.get(workload, 0), producers=workers)
    m.samples.extend(samples)
    m.note = note
    return m, raw


def run(args: argparse.Namespace) -> int:
    settings = H.Settings.from_args(args, "pool")
    workers = int(args.workers)
    info = H.machine_info(("mmipc", "numpy", "loky"))
    H.print_machine(info, settings)
    print(f"workers per executor: {workers}; cells in fresh processes\n", flush=True)
    measurements: list[H.Measurement] = []
    raw: dict[str, Any] = {}
    latency: dict[str, float] = {}
    for workload in WORKLOADS:
        for executor in EXECUTORS:
            if not (settings.selected(executor) or settings.selected(workload)):
                continue
            m, samples = _measure(executor, workload, settings, workers)
            measurements.append(m)
            raw[f"{workload} / {executor}"] = samples
            if workload == LATENCY and samples:
                latency[executor] = min(s["median_us"] for s in samples)
            shown = "failed" if m.msgs_per_s is None else f"{m.msgs_per_s:.4g}/s"
            if workload == LATENCY and executor in latency:
                shown = f"median {latency[executor]:.1f} us"
            print(f"  {workload:<24} {executor:<22} {shown}", flush=True)
    results = H.Results(m for m in measurements if m.group != LATENCY)
    table = H.print_table(results, [(PPE, "PPE"), (MPPOOL, "mp.Pool"), (LOKY, "loky")], rate_title="tasks/s")
    lat_lines = ["\nlatency of one submit-to-result (median of the best sample, µs)\n"]
    lat_lines.append("| executor | median µs | vs PPE |")
    lat_lines.append("|---|---:|---:|")
    for executor, value in latency.items():
        base = latency.get(PPE)
        ratio = f"{value / base:.2f}x" if base else "-"
        lat_lines.append(f"| {executor} | {value:.1f} | {ratio} |")
    lat_text = "\n".join(lat_lines) + "\n"
    print(lat_text, flush=True)
    targets = [
        H.ratio_target(
            "64 MiB array results/s >= 10x ProcessPoolExecutor",
            results.rate(A64, MMIPC),
            results.rate(A64, PPE),
            10.0,
        ),
        H.ratio_target(
            "1 MiB array results/s >= 4x ProcessPoolExecutor",
            results.rate(A1, MMIPC),
            results.rate(A1, PPE),
            4.0,
        ),
        H.ratio_target(
            "empty-task throughput >= 2x ProcessPoolExecutor",
            results.rate(EMPTY, MMIPC),
            results.rate(EMPTY, PPE),
            2.0,
        ),
    ]
    if MMIPC in latency and PPE in latency:
        ratio = latency[MMIPC] / latency[PPE]
        targets.append(
            H.Target(
                "median submit-to-result latency <= 0.5x ProcessPoolExecutor",
                "PASS" if ratio <= 0.5 else "FAIL",
                f"{ratio:.3g}x ({latency[MMIPC]:.1f} vs {latency[PPE]:.1f} µs)",
            )
        )
    else:
        targets.append(H.Target("median latency <= 0.5x ProcessPoolExecutor", "SKIP", "not measured"))
    target_text = H.evaluate_targets(targets)
    H.write_json(
        settings.json_path,
        {
            "benchmark": "pool",
            "machine": info,
            "settings": {"workers": workers, **{k: str(v) for k, v in vars(settings).items()}},
            "measurements": [m.to_json() for m in measurements],
            "raw": raw,
            "latency_median_us": latency,
            "table": table + lat_text,
            "targets": [t.to_json() for t in targets],
            "targets_text": target_text,
        },
    )
    return 0


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "--cell":
        sys.exit(_cell_main(sys.argv[2:]))
    from benchmarks.__main__ import main

    sys.exit(main(["pool", *sys.argv[1:]]))
