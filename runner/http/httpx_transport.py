"""`HttpxTransport`: the transport interface over httpx.AsyncClient (`--transport httpx`)."""

from __future__ import annotations

import time
from typing import Any

from ..errors import AnswerTooLarge, ConnectionDropped
from .base import STALE_WINDOW, Body, Multipart, Response, Target
from .config import HttpConfig, make_client, transport_error

__all__ = ["HttpxTransport"]


class HttpxTransport:
    """The same interface over httpx.AsyncClient."""

    def __init__(
        self,
        base_url: str,
        headers: dict[str, str],
        *,
        config: HttpConfig | None = None,
    ):
        config = config or HttpConfig()
        t = self._t = Target.parse(base_url)
        self._limit = config.max_answer_bytes
        fixed = {**headers, "Content-Type": "application/json"}
        if t.basic is not None:
            fixed["Authorization"] = t.basic
        self._client = make_client(config, headers=fixed)

    async def request(
        self, method: str, path: str, body: Body | None = None, timeout: float | None = None
    ) -> Response:
        import httpx

        for attempt in (1, 2):
            started = time.monotonic()
            try:
                return await self._once(method, path, body, timeout)
            except httpx.RemoteProtocolError as exc:
                # httpcore cannot say whether the connection was reused, so the stale case
                # is recognized as FastTransport's is: no answer at all, at once.
                stale = "without sending a response" in str(exc)
                if attempt == 1 and stale and time.monotonic() - started < STALE_WINDOW:
                    continue
                raise transport_error(exc, self._t.netloc) from None
            except httpx.TransportError as exc:
                raise transport_error(exc, self._t.netloc) from None
            except httpx.DecodingError as exc:
                raise ConnectionDropped(f"corrupt body: {exc}") from exc
        raise AssertionError("unreachable")  # pragma: no cover

    async def _once(
        self, method: str, path: str, body: Body | None, timeout: float | None
    ) -> Response:
        import httpx

        limit = self._limit
        form: dict[str, Any] = {"content": body}
        if isinstance(body, Multipart):
            # The client's JSON Content-Type would win over the one httpx derives, so the
            # form's own (with its boundary, which httpx then uses) is given here.
            boundary = body.boundary()
            headers = {"Content-Type": body.content_type(boundary)}
            if body.files:  # httpx encodes the form itself
                values: dict[str, list[str]] = {}
                for name, value in body.fields:
                    values.setdefault(name, []).append(value)
                files = [(f.name, (f.filename, f.read(), f.content_type)) for f in body.files]
                form = {"data": values, "files": files, "headers": headers}
            else:  # without a file httpx would send the fields url-encoded
                form = {"content": b"".join(body.encode(boundary)), "headers": headers}
        async with self._client.stream(
            method, self._t.url(path), timeout=httpx.Timeout(timeout), **form
        ) as r:
            chunks: list[bytes] = []
            size = 0
            async for chunk in r.aiter_bytes():
                size += len(chunk)
                if size > limit:
                    raise AnswerTooLarge(
                        f"the answer is over the {limit}-byte cap", code="answer_too_large"
                    )
                chunks.append(chunk)
        return Response(r.status_code, list(r.headers.raw), b"".join(chunks))

    async def aclose(self) -> None:
        await self._client.aclose()
