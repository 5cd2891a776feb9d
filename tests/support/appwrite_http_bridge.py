"""An emulated Appwrite served over real HTTP on a loopback port, for programs of other
languages (the Appwrite CLI, in node) that ``responses`` cannot intercept."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import requests

from tests.support.appwrite_emulator import AppwriteEmulator


class _LoopbackServer(ThreadingHTTPServer):
    # A hundred clients connecting at once (the benchmarks) overflow the default backlog of 5.
    request_queue_size = 256
    daemon_threads = True


@contextmanager
def served(make: Callable[[str], AppwriteEmulator]) -> Iterator[AppwriteEmulator]:
    """``make(endpoint)``'s emulator, answering at ``endpoint`` while the block runs."""
    server = _LoopbackServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    origin = f"http://127.0.0.1:{server.server_address[1]}"
    emulator = make(f"{origin}/v1")

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            request = requests.Request(
                self.command,
                origin + self.path,
                headers=dict(self.headers),
                data=self.rfile.read(length) if length else None,
            ).prepare()
            status, headers, text = emulator.handle(request)
            body = text.encode("utf-8")
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        # http.server dispatches on these names.
        do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _answer  # noqa: N815

        def log_message(self, format: str, *args: object) -> None:
            return

    server.RequestHandlerClass = Handler
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield emulator
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
