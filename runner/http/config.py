"""`HttpConfig`: what every connection of one job shares (CA bundle, proxies, timeouts,
caps), and the httpx clients built from it for batch files and artifact downloads."""

from __future__ import annotations

import functools
import os
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ConnectionDropped, ResponseTimeout, TransportFatal, Unreachable
from .base import MAX_ANSWER_BYTES

if TYPE_CHECKING:  # imported where used: httpx (with its CLI's imports) is slow to load
    import httpx

__all__ = ["HttpConfig", "cert_problem", "make_client", "transport_error"]


@dataclass(frozen=True, slots=True)
class HttpConfig:
    """Connection settings every client of one job shares.

    `ca_bundle` replaces the system's trusted CAs (as curl's --cacert does); without it the
    system store is used, which honours SSL_CERT_FILE / SSL_CERT_DIR. Proxies come from
    HTTP_PROXY / HTTPS_PROXY / ALL_PROXY / NO_PROXY (and their lower-case forms) when
    `trust_env`, as httpx reads them.
    """

    ca_bundle: Path | None = None
    connect_timeout: float = 10.0
    max_answer_bytes: int = MAX_ANSWER_BYTES
    trust_env: bool = True

    def ssl_context(self) -> ssl.SSLContext:
        env = os.environ
        ca = str(self.ca_bundle) if self.ca_bundle else None
        return ssl_context_for(ca, env.get("SSL_CERT_FILE"), env.get("SSL_CERT_DIR"))

    def proxy_for(self, scheme: str, host: str, port: int) -> str | None:
        """The proxy URL for a target, or None (no proxy set, or NO_PROXY matches)."""
        # getproxies_environment reads only *_proxy variables; without any, importing
        # urllib.request (http.client, email: 10 ms of start-up) would find nothing.
        if not self.trust_env or not any(k[-6:].lower() == "_proxy" for k in os.environ):
            return None
        import urllib.request

        proxies = urllib.request.getproxies_environment()
        proxy = proxies.get(scheme) or proxies.get("all")
        if not proxy:
            return None
        # Not in typeshed, but public and documented beside getproxies_environment.
        bypass = urllib.request.proxy_bypass_environment  # type: ignore[attr-defined]
        if bypass(host, proxies) or bypass(f"{host}:{port}", proxies):
            return None
        return proxy


@functools.lru_cache(maxsize=8)
def ssl_context_for(
    ca_bundle: str | None, cert_file: str | None, cert_dir: str | None
) -> ssl.SSLContext:
    """One verifying context per CA bundle (and SSL_CERT_* value): one costs milliseconds."""
    try:
        ctx = ssl.create_default_context(cafile=ca_bundle)
    except (OSError, ssl.SSLError) as exc:
        raise TransportFatal(f"cannot load the CA bundle {ca_bundle}: {exc}") from exc
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def cert_problem(exc: BaseException, where: str) -> TransportFatal | None:
    """A TransportFatal naming the certificate problem, if `exc` (or its cause) is one."""
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            return None
        if isinstance(seen, ssl.SSLCertVerificationError):
            why = seen.verify_message or seen.reason or str(seen)
            return TransportFatal(
                f"the TLS certificate of {where} is not trusted ({why}); if it is signed by a "
                "private CA, pass that CA with --ca-bundle FILE (or SSL_CERT_FILE)"
            )
        seen = seen.__cause__ or seen.__context__
    return None


def make_client(
    config: HttpConfig,
    *,
    base_url: str = "",
    headers: dict[str, str] | None = None,
    timeout: float | None = None,
    follow_redirects: bool = False,
    max_connections: int | None = None,
) -> httpx.AsyncClient:
    """An httpx client with the job's trust, proxies and timeouts (batch files, artifacts)."""
    import httpx

    return httpx.AsyncClient(
        base_url=base_url,
        headers=headers,
        verify=config.ssl_context(),
        trust_env=config.trust_env,
        timeout=httpx.Timeout(timeout, connect=config.connect_timeout),
        follow_redirects=follow_redirects,
        # httpcore's pool slows down sharply with its size (PEERS.md: 38 req/s of 1,000 at
        # C=500 with 500 kept); 64 kept connections measured best here.
        limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=64),
    )


def _unreachable(exc: BaseException) -> str | None:
    """A connect failure's kind when it was a refusal or an unknown host name (not a
    timeout or a reset): httpx wraps the socket's error, so the chain is walked."""
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            break
        if isinstance(seen, ConnectionRefusedError):
            return "refused"
        if isinstance(seen, socket.gaierror):
            return "unknown host"
        seen = seen.__cause__ or seen.__context__
    text = str(exc).lower()
    if "refused" in text or "all connection attempts failed" in text:
        return "refused"
    if "name or service not known" in text or "name resolution" in text:
        return "unknown host"
    return None


def transport_error(exc: httpx.TransportError, where: str) -> Exception:
    """An httpx failure as our own: a certificate problem stops the job, the rest drop."""
    import httpx

    fatal = cert_problem(exc, where)
    if fatal is not None:
        return fatal
    if isinstance(exc, httpx.TimeoutException):
        return ResponseTimeout(f"{type(exc).__name__}: {exc}")
    if isinstance(exc, httpx.ProxyError):
        text = str(exc)
        if "407" in text or "403" in text:
            return TransportFatal(f"the proxy refused the tunnel to {where}: {text}")
    kind = _unreachable(exc) if isinstance(exc, httpx.ConnectError) else None
    if kind is not None:
        return Unreachable(f"{type(exc).__name__}: {exc}", kind)
    return ConnectionDropped(f"{type(exc).__name__}: {exc}")
