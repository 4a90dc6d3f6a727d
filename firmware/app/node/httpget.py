# A small HTTP/1.0 GET client on asyncio streams (MicroPython and CPython), for release bundles:
# ranged requests to resume a download, bodies streamed to flash in bounded chunks. HTTPS when the
# URL says so (the runtime's TLS; pass an SSLContext as `ssl` to pin a CA).
import asyncio

CHUNK = 1024
TIMEOUT_S = 15


class HTTPError(OSError):
    def __init__(self, status, url):
        super().__init__("HTTP %d for %s" % (status, url))
        self.status = status


def split_url(url):
    """(https, host, port, path) of an http:// or https:// URL; ValueError otherwise."""
    if url.startswith("http://"):
        tls, rest, port = False, url[7:], 80
    elif url.startswith("https://"):
        tls, rest, port = True, url[8:], 443
    else:
        raise ValueError("not an http(s) URL: %s" % url)
    i = rest.find("/")
    hostport, path = (rest, "/") if i < 0 else (rest[:i], rest[i:])
    if ":" in hostport:
        host, p = hostport.rsplit(":", 1)
        port = int(p)
    else:
        host = hostport
    if not host:
        raise ValueError("no host in %s" % url)
    return tls, host, port, path


async def _close(writer):
    try:
        writer.close()
        await writer.wait_closed()
    except Exception:
        pass


class Response:
    def __init__(self, status, headers, reader, writer):
        self.status = status
        self.headers = headers  # lower-case name -> value
        self.reader = reader
        self.writer = writer

    def total(self):
        """The whole resource's size from Content-Range (206, 416) or Content-Length (200), or None."""
        try:
            if self.status in (206, 416):
                return int(self.headers["content-range"].rsplit("/", 1)[1])
            return int(self.headers["content-length"])
        except (KeyError, ValueError, IndexError):
            return None

    async def read(self, n=CHUNK):
        return await asyncio.wait_for(self.reader.read(n), TIMEOUT_S)

    async def close(self):
        await _close(self.writer)


async def get(url, offset=0, ssl=None):
    """Open a GET of `url` from byte `offset`; returns a Response (its body not yet read)."""
    tls, host, port, path = split_url(url)
    if tls and ssl is None:
        ssl = True
    if tls:
        coro = asyncio.open_connection(host, port, ssl=ssl)
    else:
        coro = asyncio.open_connection(host, port)
    reader, writer = await asyncio.wait_for(coro, TIMEOUT_S)
    try:
        req = "GET %s HTTP/1.0\r\nHost: %s\r\nUser-Agent: maille-node\r\nConnection: close\r\n" % (path, host)
        if offset:
            req += "Range: bytes=%d-\r\n" % offset
        writer.write((req + "\r\n").encode())
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), TIMEOUT_S)
        parts = line.split(None, 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/"):
            raise OSError("not an HTTP response from %s" % host)
        status = int(parts[1])
        headers = {}
        while True:
            line = await asyncio.wait_for(reader.readline(), TIMEOUT_S)
            if not line or line in (b"\r\n", b"\n"):
                break
            i = line.find(b":")
            if i > 0:
                headers[line[:i].strip().lower().decode()] = line[i + 1:].strip().decode()
    except BaseException:
        await _close(writer)
        raise
    return Response(status, headers, reader, writer)


async def fetch(url, limit, ssl=None):
    """The whole body of a small resource (at most `limit` bytes) in RAM."""
    r = await get(url, ssl=ssl)
    try:
        if r.status != 200:
            raise HTTPError(r.status, url)
        body = b""
        while True:
            chunk = await r.read()
            if not chunk:
                return body
            body += chunk
            if len(body) > limit:
                raise OSError("%s is larger than %d bytes" % (url, limit))
    finally:
        await r.close()
