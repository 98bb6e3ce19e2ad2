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
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
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


class FileServer:
    """Serves a folder over HTTP (GET and HEAD, whole objects) in a thread.

    ``faults[path]`` is a queue of faults for the next GETs of that path: ``drop`` (the connection closes
    half-way through the body), ``500``/``503``, ``truncate`` (a shorter object, honestly sized), ``corrupt``
    (the right size, other bytes). ``requests`` counts GETs by path; ``rate`` (bytes/s) slows bodies down.
    """

    def __init__(self, folder: Path):
        self.folder, self.requests, self.rate = Path(folder), Counter(), None
        self.faults: dict[str, deque] = defaultdict(deque)
        self.lock = threading.Lock()
        server = self

        class Handler(SimpleHTTPRequestHandler):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, directory=str(server.folder), **kwargs)

            def log_message(self, *args):
                pass

            def do_GET(self):
                path = self.path.lstrip("/")
                with server.lock:
                    server.requests[path] += 1
                    fault = server.faults[path].popleft() if server.faults[path] else None
                file = server.folder / path
                if not file.is_file():
                    return self.send_error(404)
                if fault in ("500", "503"):
                    return self.send_error(int(fault))
                body = file.read_bytes()
                if fault == "truncate":
                    body = body[: len(body) // 2]
                if fault == "corrupt":
                    body = body[:-1] + bytes([body[-1] ^ 0xFF])
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if fault == "drop":
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    return
                step = 1 << 16
                for start in range(0, len(body), step):
                    self.wfile.write(body[start : start + step])
                    if server.rate:
                        time.sleep(step / server.rate)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def gets(self, suffix: str = ".tar") -> Counter:
        with self.lock:
            return Counter({path: n for path, n in self.requests.items() if path.endswith(suffix)})

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
