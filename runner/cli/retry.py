"""`runner retry`: send chosen finished rows of a job again, as a new run of the same job."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import click
import orjson

from ..errors import CheckpointError, UsageError
from ..lifecycle import checkpoint_path
from ..rerun import Selection, choose, parse_lines, parse_override, read_ids
from ..settings import Settings
from ..store import Store
from .run import _execute, _unattended, unattended_options

__all__ = ["retry"]


@click.command()
@click.argument("out", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--status",
    "statuses",
    multiple=True,
    type=click.Choice(["failed", "succeeded"]),
    help="Rows with this status (repeatable; default: failed).",
)
@click.option(
    "--code", "codes", multiple=True, help="Rows that failed with this error code (repeatable)."
)
@click.option(
    "--finish-reason",
    type=click.Choice(["length", "stop", "sensitive", "tool_calls"]),
    help="Rows whose answer ended so, e.g. length: cut at max_tokens.",
)
@click.option("--rows", "rows", help="Spec lines, e.g. 3,17-40.")
@click.option(
    "--ids",
    type=click.File("r"),
    help="A file of custom_ids, one a line.",
)
@click.option(
    "--set",
    "sets",
    multiple=True,
    metavar="PATH=JSON",
    help="Write a value into each resent body, e.g. body.max_tokens=2048 (repeatable).",
)
@click.option("--model", help="Send the chosen rows to this model instead.")
@click.option(
    "--resubmit-unknown",
    is_flag=True,
    help="Also resend async rows whose task the platform may hold (may pay twice).",
)
@click.option("--dry-run", is_flag=True, help="Say which rows would be sent, and send nothing.")
@click.option(
    "--max-cost",
    type=str,
    help="Stop before the job's whole cost, every attempt included, passes this.",
)
@click.option(
    "--mode",
    type=click.Choice(["online", "batch"]),
    help="batch: send the chosen rows as Batch API files, at the batch price (default: as the "
    "job was run).",
)
@click.option(
    "--engine",
    type=click.Choice(["local", "ray"]),
    help="ray: run the retry on Ray (default: as the job was run).",
)
@click.option("--shards", type=click.IntRange(min=1), help="With --engine ray: shards.")
@click.option("--ray-address", help="With --engine ray: the cluster to join.")
@click.option("--no-progress", is_flag=True, help="No live progress line.")
@unattended_options
def retry(
    out: Path,
    statuses: tuple[str, ...],
    codes: tuple[str, ...],
    finish_reason: str | None,
    rows: str | None,
    ids: Any,
    sets: tuple[str, ...],
    model: str | None,
    resubmit_unknown: bool,
    dry_run: bool,
    max_cost: str | None,
    mode: str | None,
    engine: str | None,
    shards: int | None,
    ray_address: str | None,
    no_progress: bool,
    **opts: Any,
) -> None:
    """Send chosen finished rows of the job in OUT again (failed ones by default)."""
    try:
        overrides = dict(parse_override(s) for s in sets)
        if model is not None:
            overrides["body.model"] = model
        sel = Selection(
            statuses=frozenset(statuses),
            codes=frozenset(codes),
            finish_reason=finish_reason,
            lines=parse_lines(rows) if rows else frozenset(),
            ids=read_ids(ids) if ids is not None else frozenset(),
            resubmit_unknown=resubmit_unknown,
        )
        budget = None if max_cost is None else _amount(max_cost)
        store = Store(checkpoint_path(out), create=False)
    except (UsageError, CheckpointError) as exc:
        raise click.UsageError(str(exc)) from exc
    try:
        job = store.job()
        if job is None:
            raise click.UsageError(f"{out} holds no job: start one with `runner run`")
        summary = store.summary()
        if summary["pending"] or summary["in_progress"]:
            raise click.UsageError(
                f"{summary['pending']} rows of the job in {out} have no result yet: finish "
                f"it first with `runner resume {out}`, then retry"
            )
        seqs, reasons = choose(store, sel)
        for reason, n in sorted(reasons.items()):
            click.echo(f"  {n} {reason}", err=True)
        chosen = ", ".join(f"{k}={v}" for k, v in overrides.items())
        click.echo(
            f"retry: {len(seqs)} row{'s' if len(seqs) != 1 else ''} chosen"
            + (f", with {chosen}" if chosen else ""),
            err=True,
        )
        extra: dict[str, Any] = {}
        _unattended(extra, opts)
        if budget is not None:
            extra["max_cost"] = budget
        if mode is not None:
            extra["mode"] = mode
        settings = Settings.from_record(
            job["settings"], progress=not no_progress, out=out, overrides=overrides, **extra
        )
        if dry_run:
            if seqs:
                click.echo(worst_case_line(settings, seqs), err=True)
            return
        if not seqs:
            return
        # Checked before the rows are made pending: a refused retry leaves the job as it was.
        ray = (engine or job["settings"].get("engine", "local")) == "ray"
        if not ray and (shards or ray_address):
            raise click.UsageError("--shards and --ray-address go with --engine ray")
        store.archive(seqs, store.next_run_id())
    finally:
        store.close()
    _execute(
        settings, {"engine": "ray", "shards": shards, "ray_address": ray_address} if ray else None
    )


def _amount(text: str) -> Decimal:
    try:
        return Decimal(text)
    except InvalidOperation:
        raise click.BadParameter(f"not a number: {text!r}", param_hint="--max-cost") from None


def worst_case_line(settings: Settings, seqs: list[int]) -> str:
    """The most the chosen rows could cost, as --max-cost reckons a request before sending
    it (bytes bound the prompt, max_tokens the answer), with the overrides applied."""
    from ..cost import format_total, load_prices
    from ..spec import Request, read_spec

    prices = load_prices(settings.provider_info.price_table, settings.prices)
    batch = settings.mode == "batch"
    if batch:
        from ..batch import BATCH_ENDPOINTS
    wanted = set(seqs)
    worst = unpriced = 0
    for chunk in read_spec(settings.spec, settings.spec_defaults()):
        for item in chunk:
            if item.seq not in wanted or not isinstance(item, Request):
                continue
            if prices.price(item.model) is None:
                unpriced += 1
                continue
            cost = prices.worst_case(item.model, item.body, len(orjson.dumps(item.body)))
            if batch and item.endpoint in BATCH_ENDPOINTS:
                cost = int(Decimal(cost) * prices.batch_factor)
            worst += cost
    return f"retry: worst case {format_total(worst, prices.currency, unpriced)}" + (
        " at the batch price" if batch else ""
    )
