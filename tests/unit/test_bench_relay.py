"""The WAN benchmark's delaying relay (benchmarks/wan.py): it forwards every byte unchanged, in
both directions, and holds each direction for its delay, so that a request and its answer cost one
RTT. The delay is checked as a lower bound only (a loaded machine can only make it longer)."""

from __future__ import annotations

import asyncio
import os
import time

from tests.bench_modules import load

wan = load("wan")


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(1 << 16):
        writer.write(data)
        await writer.drain()
    writer.close()


async def _exchange(delay: float, payload: bytes, late_target: bool = False) -> tuple[bytes, float]:
    relay = wan.DelayRelay([("127.0.0.1", 0)], ("127.0.0.1", 0), delay)
    echo = None
    if not late_target:
        echo = await asyncio.start_server(_echo, "127.0.0.1", 0)
        relay.target = echo.sockets[0].getsockname()[:2]
    await relay.start()
    port = relay._servers[0].sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    if late_target:  # the target starts listening only after the client connected
        await asyncio.sleep(0.3)
        echo = await asyncio.start_server(_echo, "127.0.0.1", 0)
        relay.target = echo.sockets[0].getsockname()[:2]
    start = time.perf_counter()
    writer.write(payload)
    await writer.drain()
    writer.write_eof()
    got = await reader.read(-1)
    elapsed = time.perf_counter() - start
    writer.close()
    await relay.close()
    assert echo is not None
    echo.close()
    assert (relay.upstream, relay.downstream) == (len(payload), len(payload))
    return got, elapsed


def test_relay_forwards_every_byte_and_delays_each_direction() -> None:
    payload = os.urandom(3 * (1 << 16) + 17)  # several chunks, one partial
    got, elapsed = asyncio.run(_exchange(0.05, payload))
    assert got == payload
    assert elapsed >= 0.1  # 50 ms there, 50 ms back


def test_relay_holds_a_client_until_the_target_listens() -> None:
    got, _ = asyncio.run(_exchange(0.0, b"hello", late_target=True))
    assert got == b"hello"
