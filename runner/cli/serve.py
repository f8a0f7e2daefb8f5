"""`runner serve OUT`: the job's live page over HTTP, for a job running or ended."""

from __future__ import annotations

import ipaddress
import os
import secrets
import signal
import sys
from pathlib import Path

import anyio
import click

from ..job import checkpoint_path
from .common import run_async

__all__ = ["DEFAULT_PORT", "serve"]

DEFAULT_PORT = 8750


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@click.command()
@click.argument("out", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--port", type=click.IntRange(min=0, max=65535), default=DEFAULT_PORT, show_default=True,
    help="Port to serve on (0: any free one).",
)  # fmt: skip
@click.option(
    "--host", default="127.0.0.1", show_default=True,
    help="Address to bind; anything beyond loopback needs a token (--token, or one is printed).",
)  # fmt: skip
@click.option(
    "--token", envvar="RUNNER_SERVE_TOKEN",
    help="Token the page asks for (or $RUNNER_SERVE_TOKEN); default beyond loopback: a new one.",
)  # fmt: skip
@click.option("--quiet", is_flag=True, help="Print nothing but errors.")
@click.option(
    "--parent", type=int, hidden=True,
    help="Stop when this process (the job that started the page) is gone.",
)  # fmt: skip
def serve(
    out: Path, port: int, host: str, token: str | None, quiet: bool, parent: int | None
) -> None:
    """Serve the live report of the job in OUT (refreshed every few seconds) until Ctrl-C."""
    if token is None and not _loopback(host):
        token = secrets.token_urlsafe(18)
        click.echo(f"token (the page asks for it): {token}", err=True)
    try:
        run_async(_serve, out, host, port, token, quiet, parent)
    except OSError as exc:
        click.echo(f"error: cannot serve on {host}:{port}: {exc.strerror or exc}", err=True)
        sys.exit(2)


async def _serve(
    out: Path, host: str, port: int, token: str | None, quiet: bool, parent: int | None
) -> None:
    from ..report.live import LiveReport
    from ..report.serve import LiveApp
    from ..serving import serve_app
    from .inspect import currency_of

    live = LiveReport(checkpoint_path(out))
    app = LiveApp(live, currency_of, token=token)
    async with anyio.create_task_group() as tg, serve_app(app, host, port) as bound:
        tg.start_soon(live.keep_fresh)
        if parent is not None:
            tg.start_soon(_orphaned, parent, tg.cancel_scope)
        if not quiet:
            shown = f"[{host}]" if ":" in host else host
            click.echo(f"serving the live page of {out} on http://{shown}:{bound}/ (Ctrl-C stops)")
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                break
        tg.cancel_scope.cancel()


async def _orphaned(parent: int, scope: anyio.CancelScope) -> None:
    """A job killed with SIGKILL cannot stop its page: the page notices it was orphaned
    (its parent changed) and stops itself."""
    while os.getppid() == parent:
        await anyio.sleep(1.0)
    scope.cancel()
