"""``python -m benchmarks channel_threshold``: where out-of-band buffers start to pay.

One producer process sends a numpy array of each size through a ``Channel`` over and over; the
parent receives, reads one element and drops the object. Each size runs twice in fresh
producer processes: with ``copy_threshold`` above the size (the buffer travels in-band, inside
the ring record) and with ``copy_threshold=1`` (out-of-band, through the heap). Prints the time
per object for both (best of ``--repeat``), the basis of ``DEFAULT_COPY_THRESHOLD``
(docs/channels.md).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import time
from typing import Any

from benchmarks import _harness

DESCRIPTION = "Channel in-band vs out-of-band cost per object by buffer size (copy_threshold)"

SIZES = [16 << 10, 32 << 10, 64 << 10, 128 << 10, 256 << 10, 512 << 10, 1 << 20]


def _produce(chan: Any, nbytes: int, count: int) -> None:
    import numpy as np

    array = np.ones(nbytes // 8)
    for _ in range(count):
        chan.send(array, timeout=60)
    chan.close()


def _per_object_us(ctx: Any, threshold: int, nbytes: int, seconds: float) -> float:
    import mmipc

    # About `seconds` of traffic at ~1 GB/s, at least 200 objects.
    count = max(200, min(20_000, int(seconds * 1e9) // nbytes))
    chan = mmipc.Channel.create(16 << 20, heap_size=64 << 20, copy_threshold=threshold)
    try:
        producer = ctx.Process(target=_produce, args=(chan, nbytes, count))
        producer.start()
        try:
            obj = chan.recv(timeout=60)  # warm: the producer is running
            del obj
            t0 = time.perf_counter()
            for _ in range(count - 1):
                obj = chan.recv(timeout=60)
                float(obj[0])
                del obj
            elapsed = time.perf_counter() - t0
        finally:
            producer.join(timeout=60)
            if producer.is_alive():
                producer.kill()
        return elapsed / (count - 1) * 1e6
    finally:
        chan.unlink()
        chan.close()


def run(args: argparse.Namespace) -> int:
    settings = _harness.Settings.from_args(args, "channel_threshold")
    ctx = mp.get_context(settings.start_method)
    info = _harness.machine_info(("mmipc", "numpy"))
    _harness.print_machine(info, settings)
    rows: list[dict[str, Any]] = []
    print(f"{'buffer':>10}  {'in-band us/obj':>15}  {'out-of-band us/obj':>19}  out/in")
    for nbytes in SIZES:
        inband = min(_per_object_us(ctx, 1 << 40, nbytes, settings.seconds) for _ in range(settings.repeat))
        oob = min(_per_object_us(ctx, 1, nbytes, settings.seconds) for _ in range(settings.repeat))
        rows.append({"bytes": nbytes, "in_band_us": inband, "out_of_band_us": oob})
        print(
            f"{_harness.format_size(nbytes):>10}  {inband:15.1f}  {oob:19.1f}  {oob / inband:6.2f}",
            flush=True,
        )
    _harness.write_json(settings.json_path, {"machine": info, "rows": rows})
    return 0
