"""``runner sim``: serve the simulated platform from the command line.

Prints the API base URL as the first stdout line (flushed) so a parent process can read
it, then serves until SIGINT or SIGTERM and exits 0. The command only parses options into
a :class:`SimConfig`; everything else is the same ``Simulator`` the tests embed.
"""

from __future__ import annotations

import ipaddress
import resource
import sys
from typing import Any

import anyio
import click

from runner.sim.config import SimConfig, apply_updates
from runner.sim.server import Simulator

__all__ = ["sim_command"]


def _pairs(values: tuple[str, ...], sep: str, option: str) -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for value in values:
        name, has_sep, rest = value.partition(sep)
        if not name:
            raise click.BadParameter(f"{value!r}: missing name", param_hint=option)
        found[name] = rest if has_sep else None
    return found


def _count(text: str | None, option: str) -> int | None:
    if text is None or text == "":
        return None
    if not text.isdigit():
        raise click.BadParameter(f"{text!r} is not a non-negative integer", param_hint=option)
    return int(text)


def _raise_fd_limit() -> None:
    """Thousands of open connections need more descriptors than the usual soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 65536
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(target, 65536), hard))


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def _serve(
    config: SimConfig, host: str, port: int, certfile: str | None, keyfile: str | None
) -> None:
    async with Simulator(
        config, host=host, port=port, ssl_certfile=certfile, ssl_keyfile=keyfile
    ) as sim:
        click.echo(sim.base_url)
        sys.stdout.flush()
        await sim.serve_forever()


@click.command("sim")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", default=0, show_default=True, help="Port to bind; 0 picks a free one.")
@click.option("--latency", default=0.0, show_default=True, help="Mean seconds per request.")
@click.option(
    "--latency-dist",
    type=click.Choice(["fixed", "lognormal"]),
    default="fixed",
    show_default=True,
    help="Every request takes --latency, or a lognormal spread around it.",
)
@click.option("--latency-sigma", default=0.5, show_default=True, help="Lognormal sigma.")
@click.option("--concurrency", type=int, default=None, help="In-flight limit per key per model.")
@click.option("--model-limit", multiple=True, metavar="MODEL=N", help="Per-model limit.")
@click.option("--api-key", multiple=True, metavar="KEY[:LIMIT]", help="Accept only these keys.")
@click.option("--rpm", type=int, default=None, help="Requests per minute per key.")
@click.option("--rate-429", default=0.0, help="Probability of a random 429 (code 1305).")
@click.option("--rate-500", default=0.0, help="Probability of a random 500.")
@click.option("--rate-503", default=0.0, help="Probability of a random 503.")
@click.option("--rate-drop", default=0.0, help="Probability of dropping the connection.")
@click.option("--rate-stall", default=0.0, help="Probability of stalling the response.")
@click.option("--stall-seconds", default=30.0, show_default=True, help="How long a stall lasts.")
@click.option("--balance-requests", type=int, default=None, help="1113 after N billed.")
@click.option("--key-balance", multiple=True, metavar="KEY=N", help="1113 for KEY after N billed.")
@click.option(
    "--error-shape",
    type=click.Choice(["nested", "flat", "siliconflow"]),
    default="nested",
    show_default=True,
    help="How error bodies look: Z.ai nested, flat, or SiliconFlow's.",
)
@click.option("--task-seconds", default=0.5, show_default=True, help="Async task duration.")
@click.option("--batch-seconds", default=1.0, show_default=True, help="Batch job duration.")
@click.option("--batch-expire-after", type=int, help="Expire batches after N lines are done.")
@click.option("--url-ttl", type=float, default=None, help="Seconds a result URL stays valid.")
@click.option(
    "--queue-slots",
    type=int,
    default=None,
    help="Serve as a self-hosted server: N decoding slots, a FIFO queue, no 1302s.",
)
@click.option(
    "--service-seconds", default=1.0, show_default=True, help="With --queue-slots: s an answer."
)
@click.option("--json-schema", is_flag=True, help="Accept response_format json_schema.")
@click.option("--seed", default=0, show_default=True, help="Seed for latencies and faults.")
@click.option("--no-ledger-ids", is_flag=True, help="Skip per-request-id maps (benchmarks).")
@click.option("--ssl-certfile", type=click.Path(exists=True, dir_okay=False), help="Serve TLS.")
@click.option("--ssl-keyfile", type=click.Path(exists=True, dir_okay=False), help="Its key.")
def sim_command(**options: Any) -> None:
    """Serve a simulated Z.ai platform (loopback by default) until SIGINT/SIGTERM."""
    keys: dict[str, int | None] | None = None
    if options["api_key"]:
        keys = {}
        for value in options["api_key"]:
            # Keys look like "<id>.<secret>"; a limit follows the last colon.
            name, sep, limit = value.rpartition(":")
            if not sep or not limit.isdigit():
                name, limit = value, ""
            if not name:
                raise click.BadParameter("empty API key", param_hint="--api-key")
            keys[name] = _count(limit, "--api-key")
    key_balances: dict[str, int] = {}
    for value in options["key_balance"]:
        name, sep, count = value.rpartition("=")
        parsed = _count(count, "--key-balance") if sep and count.isdigit() else None
        if not name or parsed is None:
            raise click.BadParameter("expected KEY=N", param_hint="--key-balance")
        key_balances[name] = parsed
    model_limits: dict[str, int] = {}
    for name, limit in _pairs(options["model_limit"], "=", "--model-limit").items():
        parsed = _count(limit, "--model-limit")
        if parsed is None:
            raise click.BadParameter(f"{name}: expected MODEL=N", param_hint="--model-limit")
        model_limits[name] = parsed
    knobs = {
        "latency": options["latency"],
        "latency_dist": options["latency_dist"],
        "latency_sigma": options["latency_sigma"],
        "concurrency_limit": options["concurrency"],
        "model_limits": model_limits,
        "keys": keys,
        "rpm_limit": options["rpm"],
        "rate_429": options["rate_429"],
        "rate_500": options["rate_500"],
        "rate_503": options["rate_503"],
        "rate_drop": options["rate_drop"],
        "rate_stall": options["rate_stall"],
        "stall_seconds": options["stall_seconds"],
        "balance_requests": options["balance_requests"],
        "key_balances": key_balances,
        "error_shape": options["error_shape"],
        "task_seconds": options["task_seconds"],
        "batch_seconds": options["batch_seconds"],
        "batch_expire_after": options["batch_expire_after"],
        "url_ttl": options["url_ttl"],
        "seed": options["seed"],
        "ledger_ids": not options["no_ledger_ids"],
        "queue_slots": options["queue_slots"],
        "service_seconds": options["service_seconds"],
        "json_schema": options["json_schema"],
    }
    try:
        # The same validation as POST /_sim/config, so both reject the same values.
        config = apply_updates(SimConfig(), knobs)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    host: str = options["host"]
    if not _is_loopback(host):
        click.echo(f"warning: serving on {host}, which is not a loopback address", err=True)
    _raise_fd_limit()
    backend_options: dict[str, Any] = {}
    try:
        import uvloop  # noqa: F401

        backend_options["use_uvloop"] = True
    except ImportError:
        pass
    if bool(options["ssl_certfile"]) != bool(options["ssl_keyfile"]):
        raise click.UsageError("--ssl-certfile and --ssl-keyfile go together")
    anyio.run(
        _serve,
        config,
        host,
        options["port"],
        options["ssl_certfile"],
        options["ssl_keyfile"],
        backend="asyncio",
        backend_options=backend_options,
    )
