"""An HTTP proxy in front of `tfship serve` that breaks the answers for one model version.

Only requests to ``/v1/models/<m>/versions/<version>:predict`` are touched (the version being
deployed), so the previous version keeps answering normally through the same proxy:

- ``"503 every 3"``: every third such request gets ``503 Service Unavailable``;
- ``"503 always"``: every such request gets it;
- ``"nan"``: every predicted value becomes ``NaN`` (written as TF Serving writes it);
- ``"shape"``: every prediction row loses its last value.
"""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import requests


class ForwardingProxy:
    """An HTTP forwarder on 127.0.0.1 in front of ``upstream``: :meth:`handle` answers each
    request (by default it forwards it as is; an upstream that fails is a 502)."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # else each small write waits for a delayed ACK

            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                self._forward("GET")

            def do_POST(self) -> None:
                self._forward("POST")

            def _forward(self, method: str) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                status, payload = proxy.handle(method, self.path, body)
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def forward(self, method: str, path: str, body: bytes) -> tuple[int, bytes]:
        """The upstream's answer to the request, or 502 when it cannot be reached."""
        try:
            r = requests.request(method, self.upstream + path, data=body or None, timeout=30)
        except requests.RequestException:
            return 502, b'{"error": "proxy: upstream failed"}'
        return r.status_code, r.content

    def handle(self, method: str, path: str, body: bytes) -> tuple[int, bytes]:
        return self.forward(method, path, body)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class FaultProxy(ForwardingProxy):
    def __init__(self, upstream: str, version: int, mode: str) -> None:
        self.version = version
        self.mode = mode
        self.broken = 0  # answers the proxy changed
        self._count = 0
        self._lock = threading.Lock()
        super().__init__(upstream)

    def handle(self, method: str, path: str, body: bytes) -> tuple[int, bytes]:
        targeted = re.search(rf"/versions/{self.version}:predict$", path) is not None
        if targeted and self.mode.startswith("503"):
            with self._lock:
                self._count += 1
                fail = self.mode == "503 always" or self._count % 3 == 0
            if fail:
                self.broken += 1
                return 503, b'{ "error": "injected: upstream unavailable" }'
        status, payload = self.forward(method, path, body)
        if targeted and status == 200 and self.mode in ("nan", "shape"):
            doc = json.loads(payload)
            key = "predictions" if "predictions" in doc else "outputs"  # row / columnar format
            if isinstance(doc[key], dict):
                doc[key] = {name: self._break(v) for name, v in doc[key].items()}
            else:
                doc[key] = self._break(doc[key])
            payload = json.dumps(doc).encode()  # json writes NaN, as TF Serving does
            self.broken += 1
        return status, payload

    def _break(self, rows: list) -> list:
        if self.mode == "nan":
            return [[float("nan")] * len(r) for r in rows]
        return [r[:-1] for r in rows]
