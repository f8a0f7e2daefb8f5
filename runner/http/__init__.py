"""The HTTP seam: one small client interface, two transports behind it, one configuration.

Measured on one harness (docs/BENCHMARKS.md, "HTTP transports": C=500, L=0.2 s, client
on one core, CPU per request): the protocol pool in fast.py (`FastTransport`: keep-alive
connections on asyncio protocols with the httptools parser) 63 µs, pyreqwest 102, aiohttp
201, curl_cffi 353, httpx over aiohttp 594, niquests 934, httpx's own pool 1,640. The
runner's budget is 150 µs per row *including* checkpoint and cost, so `FastTransport` is
the default, kept only because it passes the same conformance suite as httpx
(tests/test_transport_conformance.py): proxies from the environment (CONNECT for https),
TLS with a private CA, gzip/deflate, chunked and close-delimited bodies, 1xx answers,
redirects refused, stale keep-alive connections, IPv6 literals, credentials and a query in
the base URL, and a size cap. `HttpxTransport` (httpx_transport.py) keeps httpx behind the
same interface (`--transport httpx`).

`HttpConfig` (config.py) is what every connection of a job shares (CA bundle, proxies,
timeouts, caps): API calls, batch file transfers and artifact downloads are all built from
it (`make_transport`, `make_client`), so one job never behaves two ways.
"""

from __future__ import annotations

from ..errors import ConnectionDropped, ResponseTimeout
from .base import MAX_ANSWER_BYTES, Response, Transport
from .config import HttpConfig, make_client, transport_error
from .fast import FastTransport
from .httpx_transport import HttpxTransport

__all__ = [
    "MAX_ANSWER_BYTES",
    "ConnectionDropped",
    "FastTransport",
    "HttpConfig",
    "HttpxTransport",
    "Response",
    "ResponseTimeout",
    "Transport",
    "make_client",
    "make_transport",
    "transport_error",
]


def make_transport(
    kind: str,
    base_url: str,
    api_key: str,
    extra_headers: dict[str, str] | None = None,
    *,
    config: HttpConfig | None = None,
) -> Transport:
    """Build the transport for a job; the API key goes into one header and nowhere else."""
    headers = {"Authorization": f"Bearer {api_key}", **(extra_headers or {})}
    if kind == "fast":
        return FastTransport(base_url, headers, config=config)
    if kind == "httpx":
        return HttpxTransport(base_url, headers, config=config)
    raise ValueError(f"unknown transport {kind!r}: use 'fast' or 'httpx'")
