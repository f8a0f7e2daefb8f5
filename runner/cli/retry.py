"""`runner retry`: send chosen finished rows of a job again, as a new run of the same job."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import click

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
        if not seqs or dry_run:
            return
        store.archive(seqs, store.next_run_id())
    finally:
        store.close()
    extra: dict[str, Any] = {}
    _unattended(extra, opts)
    if max_cost is not None:
        extra["max_cost"] = Decimal(max_cost)
    settings = Settings.from_record(
        job["settings"], progress=not no_progress, out=out, overrides=overrides, **extra
    )
    _execute(settings)
