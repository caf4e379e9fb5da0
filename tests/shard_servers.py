"""Servers the shard tests start on 127.0.0.1: a plain HTTP server counting the bytes it sends
per path, and moto's S3-compatible server."""

from __future__ import annotations

import contextlib
import functools
import threading
from collections import Counter
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class _CountingHandler(SimpleHTTPRequestHandler):
    sent: Counter

    def copyfile(self, source, outputfile) -> None:  # counts the body bytes of every GET
        data = source.read()
        self.sent[self.path] += len(data)
        outputfile.write(data)

    def log_message(self, format, *args) -> None:  # noqa: A002 (the base class's name)
        pass


@contextlib.contextmanager
def serve_http(folder: Path) -> Iterator[tuple[str, Counter]]:
    """(URL of `folder`, bytes sent per request path) while the server runs."""
    sent: Counter = Counter()
    handler = functools.partial(
        type("H", (_CountingHandler,), {"sent": sent}), directory=str(folder)
    )
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", sent
    finally:
        server.shutdown()
        server.server_close()
