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


class FaultProxy:
    def __init__(self, upstream: str, version: int, mode: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.version = version
        self.mode = mode
        self.broken = 0  # answers the proxy changed
        self._count = 0
        self._lock = threading.Lock()
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

    def handle(self, method: str, path: str, body: bytes) -> tuple[int, bytes]:
        targeted = re.search(rf"/versions/{self.version}:predict$", path) is not None
        if targeted and self.mode.startswith("503"):
            with self._lock:
                self._count += 1
                fail = self.mode == "503 always" or self._count % 3 == 0
            if fail:
                self.broken += 1
                return 503, b'{ "error": "injected: upstream unavailable" }'
        resp = requests.request(method, self.upstream + path, data=body or None, timeout=30)
        payload = resp.content
        if targeted and resp.status_code == 200 and self.mode in ("nan", "shape"):
            doc = json.loads(payload)
            key = "predictions" if "predictions" in doc else "outputs"  # row / columnar format
            if isinstance(doc[key], dict):
                doc[key] = {name: self._break(v) for name, v in doc[key].items()}
            else:
                doc[key] = self._break(doc[key])
            payload = json.dumps(doc).encode()  # json writes NaN, as TF Serving does
            self.broken += 1
        return resp.status_code, payload

    def _break(self, rows: list) -> list:
        if self.mode == "nan":
            return [[float("nan")] * len(r) for r in rows]
        return [r[:-1] for r in rows]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
