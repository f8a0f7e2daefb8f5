"""An ASGI app served by uvicorn inside the caller's event loop and task group.

The live page (`runner serve`), the job's Prometheus endpoint (`--metrics-port`) and the
simulator all serve this way: the socket is bound first (so port 0 works and the address
is known before any request), then uvicorn's `Server.serve` runs as a child of an anyio
task group, so the server cannot outlive the `async with` block. Uvicorn is told to leave
the loop, logging and signals alone: those belong to the program that embeds it (a job
handles SIGINT/SIGTERM itself, and uvicorn's own handlers would re-raise the signal).
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import AsyncIterator, Generator
from typing import Any

import anyio
import uvicorn

__all__ = ["EmbeddedServer", "bind", "http_impl", "serve_app"]

_STARTUP_POLL_S = 0.005


class EmbeddedServer(uvicorn.Server):
    """uvicorn.Server that leaves signals alone and wakes at once when asked to exit."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.wake = anyio.Event()

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        # The host program owns signal handling; uvicorn's handlers would re-raise the
        # signal after shutdown and kill pytest or the CLI with a non-zero status.
        yield

    async def main_loop(self) -> None:
        # uvicorn polls should_exit every 0.1 s; waiting on an event makes a server stop
        # without that latency. on_tick refreshes the Date header.
        while not await self.on_tick(0):
            with anyio.move_on_after(1.0):
                await self.wake.wait()

    def stop(self) -> None:
        self.should_exit = True
        self.wake.set()


def http_impl() -> str:
    try:
        import httptools  # noqa: F401
    except ImportError:  # pragma: no cover - httptools is a declared dependency
        return "h11"
    return "httptools"


def bind(host: str, port: int, backlog: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio only sets TCP_NODELAY on accepted sockets whose
    # proto says TCP, and without it every two-write response waits on a delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


@contextlib.asynccontextmanager
async def serve_app(app: Any, host: str, port: int, *, backlog: int = 128) -> AsyncIterator[int]:
    """Serve `app` on host:port for the block; yields the bound port. OSError if the
    address is taken or not ours to bind."""
    sock = bind(host, port, backlog)
    bound = int(sock.getsockname()[1])
    config = uvicorn.Config(
        app,
        loop="none",
        http=http_impl(),
        lifespan="off",
        log_config=None,
        access_log=False,
        server_header=False,
        proxy_headers=False,
        timeout_graceful_shutdown=1,
    )
    server = EmbeddedServer(config)
    finished = anyio.Event()

    async def serve() -> None:
        try:
            await server.serve(sockets=[sock])
        finally:
            sock.close()
            finished.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(serve)
        try:
            while not server.started:
                if finished.is_set():
                    raise OSError(f"the HTTP server on {host}:{bound} failed to start")
                await anyio.sleep(_STARTUP_POLL_S)
            yield bound
        finally:
            server.stop()
