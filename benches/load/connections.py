#!/usr/bin/env python3
"""Tiny HTTP/1.1 actors for benches/load/connections.sh (127.0.0.1 only, standard library only).

  connections.py upstream PORT DELAY_MS
      An upstream that answers every GET with 200 "ok" after DELAY_MS, keep-alive.
  connections.py idle HOST:PORT N
      Opens N keep-alive connections, sends GETs on each until one is answered 200 (a shed 503 is
      retried), then holds them all open. Prints "ready ok=... other=..." once done, and closes
      them when stdin closes.
  connections.py burst HOST:PORT CONNS SECONDS
      CONNS connections, each sending GETs back to back for SECONDS (reconnecting when the proxy
      closes one). Prints one line of counts: answers by status, refused or reset connections.
"""

import asyncio
import collections
import sys
import time

REQUEST = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"
# Connections opened at once: above the proxy's listen backlog, the kernel drops SYNs and the
# client waits a second for each retry.
OPEN_CONCURRENCY = 256


async def read_answer(reader):
    """Reads one response with a content-length body; returns its status, or None if closed."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value.strip())
    if length:
        await reader.readexactly(length)
    return status


async def upstream(port, delay):
    async def serve(reader, writer):
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                if delay:
                    await asyncio.sleep(delay)
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", port, backlog=4096)
    print("upstream ready", flush=True)
    async with server:
        await server.serve_forever()


async def idle(host, port, n):
    gate = asyncio.Semaphore(OPEN_CONCURRENCY)
    streams, failed = [], collections.Counter()

    async def one():
        async with gate:
            try:
                reader, writer = await asyncio.open_connection(host, port)
                while True:
                    writer.write(REQUEST)
                    status = await read_answer(reader)
                    if status == 200:
                        break
                    failed[f"retried after {status}"] += 1
                    await asyncio.sleep(0.01)
                streams.append(writer)
            except (OSError, asyncio.IncompleteReadError) as e:
                failed[type(e).__name__] += 1

    await asyncio.gather(*(one() for _ in range(n)))
    print(f"ready ok={len(streams)} other={dict(failed)}", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    for writer in streams:
        writer.close()


async def burst(host, port, conns, seconds):
    counts = collections.Counter()
    end = time.monotonic() + seconds

    async def loop():
        while time.monotonic() < end:
            try:
                reader, writer = await asyncio.open_connection(host, port)
            except OSError:
                counts["connect failed"] += 1
                await asyncio.sleep(0.01)
                continue
            try:
                while time.monotonic() < end:
                    writer.write(REQUEST)
                    counts[await read_answer(reader)] += 1
            except (asyncio.IncompleteReadError, ConnectionError):
                counts["closed by proxy"] += 1
                await asyncio.sleep(0.01)
            finally:
                writer.close()

    await asyncio.gather(*(loop() for _ in range(conns)))
    print(" ".join(f"{k}={v}" for k, v in sorted(counts.items(), key=str)), flush=True)


def main():
    mode, args = sys.argv[1], sys.argv[2:]
    if mode == "upstream":
        asyncio.run(upstream(int(args[0]), int(args[1]) / 1000))
        return
    host, _, port = args[0].rpartition(":")
    if mode == "idle":
        asyncio.run(idle(host, int(port), int(args[1])))
    elif mode == "burst":
        asyncio.run(burst(host, int(port), int(args[1]), float(args[2])))
    else:
        sys.exit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
