"""asyncio: await objects from a producer process without blocking the event loop.

A producer process sends 1000 small objects and ends the stream; the event loop receives them
with ``async for`` while a second task keeps ticking (it could not if a receive blocked the loop),
and a receive with a timeout shows how waits end.

Run: python examples/asyncio_channel.py
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp

import mmipc

COUNT = 1000


def producer(chan: mmipc.Channel) -> None:
    for i in range(COUNT):
        chan.send({"i": i, "square": i * i}, timeout=30)
    chan.end_stream()
    chan.close()


async def main() -> None:
    # An anonymous channel: nothing to unlink; closing the adapter closes the handle.
    async with mmipc.AsyncChannel(mmipc.Channel.create(1 << 20)) as achan:
        try:
            await achan.recv(timeout=0.05)
        except mmipc.WaitTimeout as exc:
            print(f"nothing yet: {exc}")
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.001)

        tick_task = asyncio.ensure_future(ticker())
        child = mp.Process(target=producer, args=(achan.handle,))
        child.start()
        received = [obj async for obj in achan]  # until end_stream
        tick_task.cancel()
        child.join(timeout=30)
        assert [obj["i"] for obj in received] == list(range(COUNT))
        print(f"received {len(received)} objects; the loop ticked {ticks} times meanwhile")


if __name__ == "__main__":
    asyncio.run(main())
