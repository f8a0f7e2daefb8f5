"""A webhook receiver on loopback, for the --notify tests: records every POST it is sent."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["Receiver"]


class Receiver:
    """`with Receiver() as hook: hook.url`; `hook.posts` holds (path, raw body, JSON or None).

    `status` is what it answers (500 to play a webhook that is down)."""

    def __init__(self, status: int = 200, answer: bytes = b'{"code": 0}') -> None:
        self.posts: list[tuple[str, bytes, Any]] = []
        self.status = status
        self.answer = answer
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("content-length") or 0))
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = None
                outer.posts.append((self.path, raw, body))
                self.send_response(outer.status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(outer.answer)))
                self.end_headers()
                self.wfile.write(outer.answer)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook/secret-token"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Receiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join()

    def events(self) -> list[dict[str, Any]]:
        return [b for _, _, b in self.posts if isinstance(b, dict)]
