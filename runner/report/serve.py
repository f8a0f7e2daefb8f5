"""`runner serve`: the report of a job, live, over HTTP (a small ASGI app for uvicorn).

Three routes: `GET /` is the report page with the live figures and the script that
refreshes them, `GET /live.json` the figures alone (what the script fetches every few
seconds), and `GET /login` the form a page bound beyond loopback asks for its token with.
Every response forbids loading anything from elsewhere (Content-Security-Policy): the
page's assets are inline, and its one request goes back to this server.

Beyond loopback a token is required: from the `runner_token` cookie (set once the token
was given), an `Authorization: Bearer` header (for scripts) or `?token=` (which sets the
cookie and redirects, so the token does not stay in the address bar or the history).
"""

from __future__ import annotations

import hmac
import html
from collections.abc import Awaitable, Callable, MutableMapping
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qs

import orjson

from .live import LiveReport, NotReady
from .page import render_report

__all__ = ["LiveApp"]

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

COOKIE = "runner_token"
_CSP = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
    "img-src data:; connect-src 'self'; form-action 'self'; base-uri 'none'; "
    "frame-ancestors 'none'"
)
_WAITING = (
    '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
    '<meta http-equiv="refresh" content="3"><title>Waiting for the job</title></head>'
    "<body><h1>Waiting for the job</h1><p>{why}</p><p>This page reloads every 3 s.</p>"
    "</body></html>"
)
_LOGIN = (
    '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>Token</title></head>'
    "<body><h1>This page needs its token</h1><p>{why}</p>"
    '<form method="get" action="/"><label>Token <input name="token" type="password" '
    'autocomplete="off" autofocus></label> <button>Open</button></form>'
    "<p>It was printed by <code>runner serve</code> when it started.</p></body></html>"
)


class LiveApp:
    """The ASGI app of one job folder's live page."""

    def __init__(
        self,
        live: LiveReport,
        currency: Callable[[dict[str, Any]], str],
        *,
        token: str | None = None,
        refresh_s: float = 5.0,
    ) -> None:
        self.live = live
        self.currency = currency  # of the job's price table, from the report's job record
        self.token = token
        self.refresh_s = refresh_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        method, path = scope["method"], scope["path"]
        if method not in ("GET", "HEAD"):
            await _answer(send, 405, b"only GET\n", "text/plain", {"allow": "GET, HEAD"})
            return
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        if self.token is not None:
            given = (query.get("token") or [""])[0]
            if given and path in ("/", "/login"):
                if _same(given, self.token):
                    cookie = f"{COOKIE}={self.token}; HttpOnly; SameSite=Strict; Path=/"
                    await _answer(
                        send, 303, b"", "text/plain", {"location": "/", "set-cookie": cookie}
                    )
                else:
                    await self._login(send, "That token is not this page's.")
                return
            if not self._authorised(scope):
                if path == "/live.json":
                    await _answer(send, 401, b'{"error": "token required"}\n', "application/json")
                else:
                    await self._login(send, "")
                return
        if path == "/":
            await self._page(send)
        elif path == "/live.json":
            await self._figures(send)
        elif path == "/login":
            await self._login(send, "")
        else:
            await _answer(send, 404, b"not found\n", "text/plain")

    def _authorised(self, scope: Scope) -> bool:
        assert self.token is not None
        for name, value in scope.get("headers", []):
            if name == b"authorization":
                scheme, _, given = value.decode("latin-1").partition(" ")
                if scheme.lower() == "bearer" and _same(given.strip(), self.token):
                    return True
            elif name == b"cookie":
                jar: SimpleCookie = SimpleCookie()
                try:
                    jar.load(value.decode("latin-1"))
                except Exception:  # a malformed cookie header is no token
                    continue
                if COOKIE in jar and _same(jar[COOKIE].value, self.token):
                    return True
        return False

    async def _page(self, send: Send) -> None:
        try:
            data = await self.live.page_data()
        except NotReady as exc:
            body = _WAITING.format(why=html.escape(str(exc))).encode()
            await _answer(send, 200, body, "text/html; charset=utf-8")
            return
        page = render_report(data, currency=self.currency(data["job"]), refresh_s=self.refresh_s)
        await _answer(send, 200, page.encode(), "text/html; charset=utf-8")

    async def _figures(self, send: Send) -> None:
        try:
            figures = await self.live.figures()
        except NotReady as exc:
            body = orjson.dumps({"error": str(exc)})
            await _answer(send, 503, body, "application/json")
            return
        await _answer(send, 200, orjson.dumps(figures), "application/json")

    async def _login(self, send: Send, why: str) -> None:
        body = _LOGIN.format(why=html.escape(why)).encode()
        await _answer(send, 401, body, "text/html; charset=utf-8")


def _same(given: str, token: str) -> bool:
    return hmac.compare_digest(given.encode(), token.encode())


async def _answer(
    send: Send, status: int, body: bytes, ctype: str, extra: dict[str, str] | None = None
) -> None:
    headers = [
        (b"content-type", ctype.encode()),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"),
        (b"content-security-policy", _CSP.encode()),
        (b"x-content-type-options", b"nosniff"),
        (b"referrer-policy", b"no-referrer"),
    ]
    headers += [(k.encode(), v.encode()) for k, v in (extra or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
