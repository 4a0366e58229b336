"""An HTTP proxy in front of the S3 service that fails chosen requests of a deploy.

Every request is forwarded on its own upstream connection (``Connection: close`` both ways,
so each request is one connection and the proxy needs no response parsing). ``rule(method,
path, headers)`` decides per request:

- ``"pass"``: forwarded;
- ``"drop"``: the connection is closed without an answer (a link that died mid-request);
- ``"hold"``: never forwarded and never answered; :attr:`held` is set, so a test can kill
  the client at exactly that step (the connection is closed by :meth:`release`).
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

Rule = Callable[[str, str, dict[str, str]], str]


def passing(method: str, path: str, headers: dict[str, str]) -> str:
    return "pass"


class S3FaultProxy:
    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.rule: Rule = passing
        self.held = threading.Event()
        self.seen: list[tuple[str, str]] = []
        self._release = threading.Event()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    out = b""
                    while True:
                        size_line = self.rfile.readline()
                        size = int(size_line.split(b";")[0].strip() or b"0", 16)
                        chunk = self.rfile.read(size + 2)
                        out += size_line + chunk
                        if size == 0:
                            # trailers, then the blank line
                            while True:
                                line = self.rfile.readline()
                                out += line
                                if line in (b"\r\n", b"\n", b""):
                                    return out
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _any(self) -> None:
                body = self._body()
                headers = {k.lower(): v for k, v in self.headers.items()}
                proxy.seen.append((self.command, self.path))
                action = proxy.rule(self.command, self.path, headers)
                if action == "drop":
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if action == "hold":
                    proxy.held.set()
                    proxy._release.wait(120)
                    self.close_connection = True
                    return
                lines = [f"{self.command} {self.path} HTTP/1.1"]
                for k, v in self.headers.items():
                    if k.lower() not in ("connection", "keep-alive", "proxy-connection"):
                        lines.append(f"{k}: {v}")
                lines.append("Connection: close")
                raw = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
                with socket.create_connection(proxy.upstream, timeout=60) as up:
                    up.sendall(raw)
                    answer = b""
                    while chunk := up.recv(1 << 16):
                        answer += chunk
                head, _, rest = answer.partition(b"\r\n\r\n")
                kept = [
                    line
                    for line in head.split(b"\r\n")
                    if not line.lower().startswith((b"connection:", b"keep-alive:"))
                ]
                self.wfile.write(b"\r\n".join([*kept, b"Connection: close"]) + b"\r\n\r\n" + rest)
                self.close_connection = True

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _any  # noqa: N815

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def release(self) -> None:
        """Let every held request go (its connection closes unanswered); reset the rule."""
        self.rule = passing
        self._release.set()
        self._release = threading.Event()
        self.held.clear()

    def close(self) -> None:
        self.release()
        self._server.shutdown()
        self._server.server_close()
