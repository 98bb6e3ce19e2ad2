"""Real servers on loopback for the remote-source tests: moto's S3 server and a standard-library HTTP file server
that counts requests and misbehaves on demand."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections import Counter, defaultdict, deque
from contextlib import contextmanager
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

FAULTS = ("drop", "500", "503", "truncate", "corrupt")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def s3_server(bucket: str = "dnalm"):
    """moto's ThreadedMotoServer on 127.0.0.1, reached through the standard AWS variables (dummy credentials)."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        import boto3

        boto3.client("s3").create_bucket(Bucket=bucket)
        yield f"http://127.0.0.1:{port}"
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        server.stop()


class _Faulty:
    """What the two servers share: a queue of faults per path and a count of GETs per path."""

    def __init__(self):
        self.requests, self.rate = Counter(), None
        self.faults: dict[str, deque] = defaultdict(deque)
        self.lock = threading.Lock()

    def next_fault(self, path: str):
        with self.lock:
            self.requests[path] += 1
            return self.faults[path].popleft() if self.faults[path] else None

    def gets(self, suffix: str = ".tar") -> Counter:
        with self.lock:
            return Counter({path: n for path, n in self.requests.items() if path.endswith(suffix)})

    def answer(self, handler, fault, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        """Send a response to ``handler``'s GET, spoiled by ``fault``."""
        if fault in ("404", "500", "503"):
            return handler.send_error(int(fault))
        if fault == "truncate":
            body = body[: len(body) // 2]
        if fault == "corrupt":
            body = body[:-1] + bytes([body[-1] ^ 0xFF])
        handler.send_response(status)
        for name, value in headers:
            if name.lower() not in ("content-length", "transfer-encoding", "connection", "date", "server"):
                handler.send_header(name, value)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        if fault == "drop":
            handler.wfile.write(body[: len(body) // 2])
            handler.wfile.flush()
            handler.connection.shutdown(socket.SHUT_RDWR)
            handler.close_connection = True
            return
        step = 1 << 16
        for start in range(0, len(body), step):
            handler.wfile.write(body[start : start + step])
            if self.rate:
                time.sleep(step / self.rate)

    def serve(self, handler_class) -> None:
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler_class)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class FaultProxy(_Faulty):
    """Forwards every request to ``upstream`` (moto's S3 server), spoiling GETs of the object keys that ``faults``
    names (``bucket/key``), as a flaky network or store would, under the real boto3 client."""

    def __init__(self, upstream: str):
        super().__init__()
        import http.client
        from urllib.parse import urlparse

        host, port = urlparse(upstream).hostname, urlparse(upstream).port
        proxy = self

        class Handler(SimpleHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _forward(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                connection = http.client.HTTPConnection(host, port, timeout=60)
                connection.request(self.command, self.path, body=body, headers=dict(self.headers))
                response = connection.getresponse()
                data = response.read()
                connection.close()
                path = self.path.split("?")[0].lstrip("/")
                fault = proxy.next_fault(path) if self.command == "GET" and response.status == 200 else None
                if self.command == "HEAD":
                    self.send_response(response.status)
                    for name, value in response.getheaders():
                        if name.lower() not in ("connection", "date", "server", "transfer-encoding"):
                            self.send_header(name, value)
                    self.end_headers()
                    return
                proxy.answer(self, fault, response.status, response.getheaders(), data)

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _forward

        self.serve(Handler)


class FileServer(_Faulty):
    """Serves a folder over HTTP (GET and HEAD, whole objects) in a thread.

    ``faults[path]`` is a queue of faults for the next GETs of that path: ``drop`` (the connection closes
    half-way through the body), ``500``/``503``, ``truncate`` (a shorter object, honestly sized), ``corrupt``
    (the right size, other bytes). ``requests`` counts GETs by path; ``rate`` (bytes/s) slows bodies down.
    """

    def __init__(self, folder: Path):
        super().__init__()
        self.folder = Path(folder)
        server = self

        class Handler(SimpleHTTPRequestHandler):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, directory=str(server.folder), **kwargs)

            def log_message(self, *args):
                pass

            def do_GET(self):
                path = self.path.lstrip("/")
                fault = server.next_fault(path)
                file = server.folder / path
                if not file.is_file():
                    return self.send_error(404)
                server.answer(self, fault, 200, [], file.read_bytes())

        self.serve(Handler)
