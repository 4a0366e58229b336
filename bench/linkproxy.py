"""A TCP proxy that behaves like one host's network link: a rate per direction and a delay.

`python bench/linkproxy.py --mbit 100 --delay-ms 10 HOST:PORT [HOST:PORT ...]` listens on one
loopback port per target (printed as one JSON line, ``{"ports": [...]}``, once listening) and
forwards each connection to its target. Every port of one process shares the same link, as the
SSH and serving ports of one machine share its network card:

- each direction has a token bucket on bytes (``--mbit``, 20 ms of burst); once the link is
  more than 20 ms behind what it was given, the proxy stops reading that sender, so a fast
  sender is held back by TCP's own flow control (a router's queue, not an endless buffer);
- each 64 KiB slice then waits in a delay queue until ``--delay-ms`` after the link carried
  it (the one-way delay: 10 ms each way is a 20 ms round trip);
- a new connection's first bytes also pay the TCP handshake a loopback connect skips: nothing
  reaches the server before 3 one-way delays, nothing reaches the client before 2.

The bench starts one process per host (each host its own link) with :func:`start` and kills it
at the end; :func:`measure` checks what the links deliver (rate, round trip), alone and all at
once.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

SLICE = 64 << 10  # scheduling unit: 5.2 ms of a 100 Mbit/s link
# The bucket's depth: 20 ms of a 100 Mbit/s link, so a proxy delayed by a busy CPU catches up
# on what it missed instead of losing it (over any longer span the rate holds exactly).
BURST = 256 << 10
# How far the link may fall behind what it was given before the sender is paused (a router's
# queue): beyond it, reading stops and TCP's flow control holds the sender back.
QUEUE_S = 0.02
RCVBUF = 256 << 10  # the proxy's socket buffer towards the sender (about one 20 ms BDP)
EOF_, CLOSE = b"", None  # markers in a delay queue


class TokenBucket:
    """Bytes per second with a burst; takers are served in the order they asked (FIFO debt)."""

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate, self.burst = rate, burst
        self.tokens = float(burst)
        self.stamp = now

    def take(self, n: int, now: float) -> float:
        """Book ``n`` bytes; return when the link has carried them (now, or later when owed)."""
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate) - n
        self.stamp = now
        return now + max(0.0, -self.tokens) / self.rate

    def backlog(self, now: float) -> float:
        """Seconds of booked bytes the link has yet to carry."""
        tokens = self.tokens + (now - self.stamp) * self.rate
        return max(0.0, -tokens) / self.rate


class Link:
    """One host's link: a bucket each way and the one-way delay."""

    def __init__(self, mbit: float, delay_s: float, now: float) -> None:
        rate = mbit * 1e6 / 8
        self.up = TokenBucket(rate, BURST, now)  # client -> host
        self.down = TokenBucket(rate, BURST, now)  # host -> client
        self.delay = delay_s


class Direction:
    """One direction of one connection: bytes booked on the link, then held for the delay."""

    def __init__(self, loop, bucket: TokenBucket, delay: float, not_before: float) -> None:
        self.loop, self.bucket, self.delay, self.not_before = loop, bucket, delay, not_before
        self.src: asyncio.Transport | None = None
        self.dst: asyncio.Transport | None = None
        self.queue: collections.deque = collections.deque()
        self.timer: asyncio.TimerHandle | None = None
        self.pauses: set[str] = set()
        self.finished = False  # EOF or close delivered
        self.reverse: Direction | None = None  # the other way of the same connection

    def carry(self, data: bytes) -> None:
        now = self.loop.time()
        view = memoryview(data)
        for i in range(0, len(view), SLICE):
            part = view[i : i + SLICE]
            left = self.bucket.take(len(part), now)
            self.queue.append((max(left + self.delay, self.not_before), part))
        self._arm()
        backlog = self.bucket.backlog(now)
        if backlog > QUEUE_S and "link" not in self.pauses:
            self.pause("link")
            self.loop.call_later(backlog - QUEUE_S, self.resume, "link")

    def end(self, marker) -> None:
        """The source sent EOF (``EOF_``) or went away (``CLOSE``): pass it on after the data."""
        last = self.queue[-1][0] if self.queue else 0.0
        self.queue.append((max(self.loop.time() + self.delay, last, self.not_before), marker))
        self._arm()

    def _arm(self) -> None:
        if self.timer is None and self.queue:
            self.timer = self.loop.call_at(self.queue[0][0], self._flush)

    def _flush(self) -> None:
        self.timer = None
        now = self.loop.time()
        while self.queue and self.queue[0][0] <= now:
            _, data = self.queue.popleft()
            if self.finished or self.dst is None or self.dst.is_closing():
                continue
            if data is CLOSE:
                self.finished = True
                self.dst.close()
            elif not data:
                self.finished = True
                with contextlib.suppress(OSError):  # the other end may be gone already
                    self.dst.write_eof()
                if self.reverse.finished:  # EOF both ways: the connection is over
                    self.dst.close()
                    self.src.close()
            else:
                self.dst.write(data)
        self._arm()

    def pause(self, why: str) -> None:
        if not self.pauses and self.src is not None:
            self.src.pause_reading()
        self.pauses.add(why)

    def resume(self, why: str) -> None:
        self.pauses.discard(why)
        if not self.pauses and self.src is not None and not self.src.is_closing():
            self.src.resume_reading()


class Side(asyncio.Protocol):
    """One end of a proxied connection: what it sends goes ``out``, ``inn`` writes to it."""

    def __init__(self, out: Direction, inn: Direction, open_: set) -> None:
        self.out, self.inn, self.open_ = out, inn, open_

    def connection_made(self, transport) -> None:
        self.out.src = self.inn.dst = transport
        self.open_.add(transport)
        transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.out.carry(data)

    def eof_received(self) -> bool:
        self.out.end(EOF_)
        return True  # half-open: the other way may still carry data

    def connection_lost(self, exc) -> None:
        self.out.end(CLOSE)
        self.inn.finished = True
        self.open_.discard(self.out.src)

    def pause_writing(self) -> None:  # our transport's buffer is full: stop its source
        self.inn.pause("peer")

    def resume_writing(self) -> None:
        self.inn.resume("peer")


class Client(Side):
    """The accepted end: connects to the target, then lets the client's bytes flow."""

    def __init__(self, link: Link, target: tuple[str, int], open_: set) -> None:
        loop = asyncio.get_running_loop()
        now, d = loop.time(), link.delay
        # a loopback connect has no round trip: the first bytes pay the handshake's here
        up = Direction(loop, link.up, d, now + 3 * d)
        down = Direction(loop, link.down, d, now + 2 * d)
        up.reverse, down.reverse = down, up
        super().__init__(up, down, open_)
        self.target = target

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self.out.pause("connect")
        asyncio.ensure_future(self._connect())

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.create_connection(lambda: Side(self.inn, self.out, self.open_), *self.target)
        except OSError:
            self.inn.dst.close()
            return
        self.out.resume("connect")


async def serve(mbit: float, delay_ms: float, targets: list[tuple[str, int]]) -> None:
    loop = asyncio.get_running_loop()
    link = Link(mbit, delay_ms / 1000, loop.time())
    servers, ports, open_ = [], [], set()
    for target in targets:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # before listen(), so the window the clients see is this small (no autotuning)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
        sock.bind(("127.0.0.1", 0))
        sock.listen(128)
        servers.append(await loop.create_server(lambda t=target: Client(link, t, open_), sock=sock))
        ports.append(sock.getsockname()[1])
    print(json.dumps({"ports": ports}), flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    for s in servers:
        s.close()
    for t in list(open_):
        t.abort()


# --------------------------------------------------------------------------------------------
# Starting proxies, and measuring what they deliver
# --------------------------------------------------------------------------------------------


def start(
    targets: list[tuple[str, int]], mbit: float, delay_ms: float
) -> tuple[subprocess.Popen, list[int]]:
    """One link in front of ``targets``: the process and its ports (one per target)."""
    proc = subprocess.Popen(
        [
            sys.executable,
            str(Path(__file__).resolve()),
            "--mbit",
            str(mbit),
            "--delay-ms",
            str(delay_ms),
            *(f"{h}:{p}" for h, p in targets),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    line = proc.stdout.readline()
    if not line:
        proc.kill()
        raise RuntimeError("linkproxy did not start")
    return proc, json.loads(line)["ports"]


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _drain_all(conn: socket.socket) -> int:
    buf = bytearray(1 << 20)
    n = 0
    while k := conn.recv_into(buf):
        n += k
    return n


def test_server() -> None:
    """``--test-server``: ``e`` echoes, ``s`` reads to EOF then answers, ``g<N>\\n`` sends N.

    A process of its own, so what the measurement sends and receives does not compete with
    it for one interpreter.
    """
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)

    def serve_one(conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            kind = conn.recv(1)
            if kind == b"e":
                while data := conn.recv(1 << 16):
                    conn.sendall(data)
            elif kind == b"s":
                conn.sendall(str(_drain_all(conn)).encode())
            elif kind == b"g":
                request = b""
                while not request.endswith(b"\n"):
                    request += conn.recv(32)
                n, block = int(request), b"\0" * (1 << 20)
                while n > 0:
                    conn.sendall(block[: min(n, len(block))])
                    n -= len(block)

    print(json.dumps({"port": sock.getsockname()[1]}), flush=True)
    while True:
        conn, _ = sock.accept()
        threading.Thread(target=serve_one, args=(conn,), daemon=True).start()


# What a transfer costs besides its bytes, in one-way delays: the handshake holds the first
# bytes to the server until 3 delays after the connect. Sending N bytes and reading the
# server's answer takes N/rate + 2 delays (N/rate > 3 delays here); asking for N bytes and
# reading them takes 3 delays (the request) + N/rate + 1 delay.
UP_DELAYS, DOWN_DELAYS = 2, 4


def _upstream(port: int, n: int, delay: float) -> float:
    """Mbit/s of ``n`` bytes sent through the link: the whole exchange less its delays."""
    t = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port)) as c:
        c.sendall(b"s")
        block = b"\1" * (1 << 20)
        for i in range(0, n, len(block)):
            c.sendall(block[: min(len(block), n - i)])
        c.shutdown(socket.SHUT_WR)
        got = int(c.recv(64))
    return got * 8 / (time.perf_counter() - t - UP_DELAYS * delay) / 1e6


def _downstream(port: int, n: int, delay: float) -> float:
    """Mbit/s of ``n`` bytes received through the link: the whole exchange less its delays."""
    t = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port)) as c:
        c.sendall(b"g%d\n" % n)
        got = _drain_all(c)
    return got * 8 / (time.perf_counter() - t - DOWN_DELAYS * delay) / 1e6


def _round_trips(port: int, n: int = 50) -> tuple[float, list[float]]:
    """(connect + first exchange, then ``n`` one-byte round trips), in ms."""
    t = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port)) as c:
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        c.sendall(b"e.")
        c.recv(1)
        first = (time.perf_counter() - t) * 1000
        rtts = []
        for _ in range(n):
            t = time.perf_counter()
            c.sendall(b".")
            c.recv(1)
            rtts.append((time.perf_counter() - t) * 1000)
    return first, rtts


def measure(mbit: float, delay_ms: float, links: int, mb: int = 25) -> dict:
    """What the links deliver: one alone (each way, and its round trip), then ``links`` at once."""
    server = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "--test-server"],
        stdout=subprocess.PIPE,
        text=True,
    )
    procs: list[tuple[subprocess.Popen, int]] = []
    delay = delay_ms / 1000
    try:
        target = ("127.0.0.1", json.loads(server.stdout.readline())["port"])
        for _ in range(links):
            proc, (port,) = start([target], mbit, delay_ms)
            procs.append((proc, port))
        port = procs[0][1]
        first, rtts = _round_trips(port)
        alone = {
            "up_mbit": round(_upstream(port, mb << 20, delay), 1),
            "down_mbit": round(_downstream(port, mb << 20, delay), 1),
            "rtt_ms_median": round(statistics.median(rtts), 1),
            "rtt_ms_p90": round(sorted(rtts)[int(0.9 * len(rtts))], 1),
            "connect_and_first_exchange_ms": round(first, 1),
        }
        with ThreadPoolExecutor(links) as pool:
            each = list(pool.map(lambda p: _upstream(p[1], mb << 20, delay), procs))
        together = {
            "links": links,
            "up_mbit_each_median": round(statistics.median(each), 1),
            "up_mbit_each_min": round(min(each), 1),
            "up_mbit_total": round(sum(each), 1),
        }
        return {"set_mbit": mbit, "set_rtt_ms": 2 * delay_ms, "alone": alone, "together": together}
    finally:
        for proc, _ in procs:
            stop(proc)
        stop(server)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mbit", type=float, default=100.0, help="Mbit/s each way")
    parser.add_argument("--delay-ms", type=float, default=10.0, help="one-way delay")
    parser.add_argument("--test-server", action="store_true", help="see test_server()")
    parser.add_argument("targets", nargs="*", help="HOST:PORT to forward to, one per port")
    args = parser.parse_args()
    if args.test_server:
        test_server()
    targets = []
    for t in args.targets:
        host, _, port = t.rpartition(":")
        targets.append((host or "127.0.0.1", int(port)))
    # A link is not the hosts' CPU: run ahead of the bench's busy processes, so the timing
    # holds when the cores are saturated (the proxy needs little CPU itself).
    with contextlib.suppress(OSError):
        os.nice(-10)
    asyncio.run(serve(args.mbit, args.delay_ms, targets))
    sys.exit(0)


if __name__ == "__main__":
    main()
