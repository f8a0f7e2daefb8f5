"""Run the simulator over real HTTP inside the caller's event loop.

``Simulator`` binds its own socket first, so ``port=0`` works and ``base_url`` is known
before any request; it then runs uvicorn's ``Server.serve`` as a child of an anyio task
group, which means the server cannot outlive the ``async with`` block. Uvicorn is told not
to touch the loop, logging or signals: those belong to the embedding program (pytest, the
runner, or the ``runner sim`` command, which handles SIGINT/SIGTERM itself).
"""

from __future__ import annotations

import contextlib
import signal
import socket
import time
from collections.abc import Generator
from types import TracebackType
from typing import Any

import anyio
import anyio.abc
import uvicorn

from runner.sim.app import SimApp, quiet_drops
from runner.sim.config import SimConfig
from runner.sim.state import SimState

__all__ = ["Simulator"]

_STARTUP_POLL_S = 0.005


class _EmbeddedServer(uvicorn.Server):
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
        # uvicorn polls should_exit every 0.1 s; waiting on an event makes each test's
        # simulator stop without that latency. on_tick refreshes the Date header.
        while not await self.on_tick(0):
            with anyio.move_on_after(1.0):
                await self.wake.wait()


def _http_impl() -> str:
    try:
        import httptools  # noqa: F401
    except ImportError:  # pragma: no cover - httptools is a declared dependency
        return "h11"
    return "httptools"


def _bind(host: str, port: int, backlog: int) -> socket.socket:
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


class Simulator:
    """The Z.ai platform on loopback: ``async with Simulator(cfg) as sim: sim.base_url``."""

    def __init__(
        self,
        config: SimConfig | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        backlog: int = 4096,
        shutdown_timeout: int = 1,
        ssl_certfile: str | None = None,
        ssl_keyfile: str | None = None,
    ) -> None:
        self.state = SimState(config)
        self.host = host
        self.port = port
        self._backlog = backlog
        self._shutdown_timeout = shutdown_timeout
        # TLS, for rehearsing a job behind a private CA (tests make the certificate).
        self._ssl_certfile = ssl_certfile
        self._ssl_keyfile = ssl_keyfile
        self._server: _EmbeddedServer | None = None
        self._group: anyio.abc.TaskGroup | None = None

    @property
    def config(self) -> SimConfig:
        return self.state.config

    @property
    def root_url(self) -> str:
        """``http://HOST:PORT``: where ``/_sim/*`` lives."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        scheme = "https" if self._ssl_certfile else "http"
        return f"{scheme}://{host}:{self.port}"

    @property
    def base_url(self) -> str:
        """The API base URL, as a client's ``base_url`` setting expects it."""
        return f"{self.root_url}/api/paas/v4"

    def stats(self) -> dict[str, Any]:
        """The ledger; identical to ``GET {root_url}/_sim/stats``."""
        return self.state.stats(time.monotonic())

    def update(self, **knobs: Any) -> SimConfig:
        """Change knobs at runtime (as ``POST /_sim/config``); raises ValueError."""
        return self.state.update(knobs)

    def reset(self) -> None:
        """Clear the ledger and consumed balance/RPM (as ``POST /_sim/reset``)."""
        self.state.reset()

    async def __aenter__(self) -> Simulator:
        sock = _bind(self.host, self.port, self._backlog)
        self.port = sock.getsockname()[1]
        app = SimApp(self.state, self.root_url)
        config = uvicorn.Config(
            app,
            loop="none",
            http=_http_impl(),
            lifespan="off",
            log_config=None,
            access_log=False,
            server_header=False,
            # No proxy sits in front of the simulator; uvicorn's middleware for one cost 5 %
            # of the simulator's CPU at 2,000 requests in flight.
            proxy_headers=False,
            backlog=self._backlog,
            timeout_keep_alive=30,
            timeout_graceful_shutdown=self._shutdown_timeout,
            ssl_certfile=self._ssl_certfile,
            ssl_keyfile=self._ssl_keyfile,
        )
        quiet_drops()
        server = self._server = _EmbeddedServer(config)
        finished = anyio.Event()

        async def serve() -> None:
            try:
                await server.serve(sockets=[sock])
            finally:
                sock.close()
                finished.set()

        group = self._group = anyio.create_task_group()
        await group.__aenter__()
        try:
            group.start_soon(serve)
            while not server.started:
                if finished.is_set():
                    raise RuntimeError("the simulator's HTTP server failed to start")
                await anyio.sleep(_STARTUP_POLL_S)
        except BaseException as exc:
            server.should_exit = True
            server.wake.set()
            await group.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        assert self._server is not None and self._group is not None
        self._server.should_exit = True
        self._server.wake.set()
        if exc_type is not None and issubclass(exc_type, Exception):
            # An error in the caller's block: let the server stop gracefully, then let
            # the caller's exception propagate as itself, not wrapped in an ExceptionGroup.
            await self._group.__aexit__(None, None, None)
            return None
        # Success or cancellation: the task group handles it the usual way.
        return await self._group.__aexit__(exc_type, exc, tb)

    async def serve_forever(self) -> None:
        """Serve until SIGINT or SIGTERM (main thread only); then return normally."""
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                return
