#!/usr/bin/env python3
"""A re-pointable TCP proxy: the stable "front" address of scripts/pg-failover.sh.

  pgfo-proxy.py LISTEN_PORT TARGET_FILE APPLIED_FILE

TARGET_FILE holds the upstream port on 127.0.0.1 (or "none": accept and close at once).
On SIGHUP the proxy re-reads it; when the target changes, every open connection is dropped
(both sides aborted, as a crashed or replaced server would) and new connections go to the new
target. The target in force is written to APPLIED_FILE after each (re)load so callers can wait
for a switch. If the upstream refuses, the client's connection is closed at once.
Standard library only.
"""
import asyncio
import os
import signal
import sys

LISTEN_PORT = int(sys.argv[1])
TARGET_FILE = sys.argv[2]
APPLIED_FILE = sys.argv[3]

state = {"target": None, "conns": set()}


def log(msg):
    print(f"[pgfo-proxy] {msg}", file=sys.stderr, flush=True)


def read_target():
    try:
        with open(TARGET_FILE) as f:
            t = f.read().strip()
    except FileNotFoundError:
        return None
    return int(t) if t.isdigit() else None


def apply():
    new = read_target()
    if new != state["target"]:
        dropped = len(state["conns"])
        for c in list(state["conns"]):
            for w in c:
                w.transport.abort()
        state["conns"].clear()
        log(f"target {state['target']} -> {new}; dropped {dropped} connection(s)")
        state["target"] = new
    tmp = APPLIED_FILE + ".tmp"
    with open(tmp, "w") as f:
        f.write(f"{new if new is not None else 'none'}\n")
    os.replace(tmp, APPLIED_FILE)


async def pipe(reader, writer):
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError, OSError):
        pass
    finally:
        try:
            writer.close()
        except Exception:
            pass


async def handle(creader, cwriter):
    target = state["target"]
    if target is None:
        cwriter.transport.abort()
        return
    try:
        ureader, uwriter = await asyncio.open_connection("127.0.0.1", target)
    except OSError:
        cwriter.transport.abort()
        return
    if state["target"] != target:  # switched while we were connecting
        uwriter.transport.abort()
        cwriter.transport.abort()
        return
    pair = (cwriter, uwriter)
    state["conns"].add(pair)
    try:
        await asyncio.gather(pipe(creader, uwriter), pipe(ureader, cwriter))
    finally:
        state["conns"].discard(pair)


async def main():
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGHUP, apply)
    loop.add_signal_handler(signal.SIGTERM, loop.stop)
    apply()
    server = await asyncio.start_server(handle, "127.0.0.1", LISTEN_PORT, reuse_address=True)
    log(f"listening on 127.0.0.1:{LISTEN_PORT}")
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except RuntimeError:  # loop.stop() on SIGTERM
        pass
