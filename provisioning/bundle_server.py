"""A small HTTP server for release bundles: a directory served with Range requests (resume).

Used by the tests and the demo; it counts the body bytes it sends per path, and can cut a
transfer after some bytes (`cut(path, after)`) to exercise the node's resume. The fleet's own
bundle server adds throttling on top of the same behaviour.
"""

from __future__ import annotations

import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote

RANGE_RE = re.compile(r"^bytes=(\d+)-(\d*)$")


def http_server(host: str, port: int, get, name: str) -> tuple[ThreadingHTTPServer, threading.Thread]:
    """A quiet threaded HTTP/1.0 server whose GETs go to `get(handler)`; start the thread to serve."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"

        def log_message(self, *args):
            pass

        def do_GET(self):
            get(self)

    httpd = ThreadingHTTPServer((host, port), Handler)
    httpd.daemon_threads = True
    return httpd, threading.Thread(target=httpd.serve_forever, name=name, daemon=True)


class BundleServer:
    def __init__(self, root: str | Path, host: str = "127.0.0.1", port: int = 0):
        self.root = Path(root).resolve()
        self.sent: dict[str, int] = {}  # path -> body bytes sent
        self.requests: list[tuple[str, str | None, int]] = []  # (path, Range header, status)
        self._cuts: dict[str, list[int]] = {}
        self._lock = threading.Lock()
        self.httpd, self._thread = http_server(host, port, self._get, "bundle-server")

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> BundleServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def cut(self, path: str, after: int, times: int = 1) -> None:
        """Close the next `times` transfers of `path` after `after` body bytes."""
        with self._lock:
            self._cuts.setdefault(path, []).extend([after] * times)

    def bytes_sent(self, prefix: str = "") -> int:
        with self._lock:
            return sum(n for p, n in self.sent.items() if p.startswith(prefix))

    def reset_counts(self) -> None:
        with self._lock:
            self.sent.clear()
            self.requests.clear()

    def _count(self, path: str, n: int) -> None:
        with self._lock:
            self.sent[path] = self.sent.get(path, 0) + n

    def _get(self, h: BaseHTTPRequestHandler) -> None:
        path = unquote(h.path.split("?", 1)[0])
        target = (self.root / path.lstrip("/")).resolve()
        rng = h.headers.get("Range")
        if not target.is_relative_to(self.root) or not target.is_file():
            self._status(h, path, rng, 404)
            return
        data = target.read_bytes()
        start, end = 0, len(data)
        status = 200
        if rng:
            m = RANGE_RE.match(rng.strip())
            if not m or int(m.group(1)) >= len(data):
                h.send_response(416)
                h.send_header("Content-Range", f"bytes */{len(data)}")
                h.end_headers()
                with self._lock:
                    self.requests.append((path, rng, 416))
                return
            start = int(m.group(1))
            end = min(len(data), int(m.group(2)) + 1) if m.group(2) else len(data)
            status = 206
        with self._lock:
            self.requests.append((path, rng, status))
            cuts = self._cuts.get(path)
            cut = cuts.pop(0) if cuts else None
        body = data[start:end]
        h.send_response(status)
        h.send_header("Content-Type", "application/octet-stream")
        h.send_header("Content-Length", str(len(body)))
        h.send_header("Accept-Ranges", "bytes")
        if status == 206:
            h.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(data)}")
        h.end_headers()
        if cut is not None:
            body = body[:cut]
        try:
            h.wfile.write(body)
            h.wfile.flush()
        except OSError:
            return
        self._count(path, len(body))
        if cut is not None:
            h.close_connection = True

    def _status(self, h, path, rng, code):
        with self._lock:
            self.requests.append((path, rng, code))
        h.send_response(code)
        h.send_header("Content-Length", "0")
        h.end_headers()
