"""Run the simulator over real HTTP inside the caller's event loop.

``Simulator`` binds its own socket first, so ``port=0`` works and ``base_url`` is known
before any request; it then runs uvicorn's ``Server.serve`` as a child of an anyio task
group, which means the server cannot outlive the ``async with`` block (runner/serving.py's
embedded server, which leaves the loop, logging and signals to the embedding program:
pytest, the runner, or the ``runner sim`` command, which handles SIGINT/SIGTERM itself).
"""

from __future__ import annotations

import signal
import time
from types import TracebackType
from typing import Any

import anyio
import anyio.abc
import uvicorn

from runner.serving import EmbeddedServer, bind, http_impl
from runner.sim.app import SimApp, quiet_drops
from runner.sim.config import SimConfig
from runner.sim.state import SimState

__all__ = ["Simulator"]

_STARTUP_POLL_S = 0.005


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
        self._server: EmbeddedServer | None = None
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
        sock = bind(self.host, self.port, self._backlog)
        self.port = sock.getsockname()[1]
        app = SimApp(self.state, self.root_url)
        config = uvicorn.Config(
            app,
            loop="none",
            http=http_impl(),
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
        server = self._server = EmbeddedServer(config)
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
