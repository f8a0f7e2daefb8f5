"""The commands that read a job or a spec: status, export, report, validate, estimate."""

from __future__ import annotations

import json
import os
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import click

from ..cost import NANO, format_cost, format_total, load_prices
from ..errors import CheckpointError, UsageError
from ..estimate import DEFAULT_OUTPUT_TOKENS, estimate_spec, render, transport_tokenizer
from ..http import make_transport
from ..job import EXIT_STOPPED, EXIT_USAGE, checkpoint_path
from ..lifecycle import folder_in_use, results_path
from ..providers import PROVIDERS_ENV, get_provider
from ..spec import SpecDefaults, SpecError, validate_spec
from ..store import Store
from .common import (
    PathArg,
    SpecArg,
    check_destination,
    lines_of,
    push_outputs,
    rows,
    run_async,
)

__all__ = ["currency_of", "estimate", "export", "report", "status", "validate"]


def _status_json(summary: dict[str, Any], currency: str) -> dict[str, Any]:
    by_model = {
        model: {**m, "cost": m["cost_nano"] / NANO} for model, m in summary["by_model"].items()
    }
    return {
        "total": summary["total"],
        "succeeded": summary["succeeded"],
        "failed": summary["failed"],
        "pending": summary["pending"],
        "in_progress": summary["in_progress"],
        "tokens": summary["tokens"],
        "cost": {
            "total": summary["cost_nano"] / NANO,
            "total_exact": str(Decimal(summary["cost_nano"]) / NANO),
            "currency": currency,
            # Succeeded rows whose model has no price: `total` leaves them out.
            "unpriced_rows": summary.get("unpriced", 0),
            "by_model": by_model,
        },
        "error_codes": summary["error_codes"],
        "errors": summary["errors"],
        "runs": summary["runs"],
        "spec": summary["spec"],
        "keys": {
            label: {**k, "cost": k["cost_nano"] / NANO}
            for label, k in summary.get("by_key", {}).items()
        },
    }


def _mark_interrupted(runs: list[dict[str, Any]], in_use: bool) -> None:
    """A run still "running" with no runner holding the folder was killed (kill -9, a
    crash, a lost machine): it never recorded its end, so say so instead."""
    for n, run in enumerate(runs):
        if run["outcome"] == "running" and not (in_use and n == len(runs) - 1):
            run["outcome"] = "interrupted"
            run["message"] = "the runner ended without recording it (killed?); run again to resume"


@click.command()
@click.argument("out", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status(out: Path, as_json: bool) -> None:
    """Counts, cost and errors of the job in OUT."""
    try:
        store = Store(checkpoint_path(out), create=False)
    except CheckpointError as exc:
        raise click.UsageError(str(exc)) from exc
    try:
        summary = store.summary()
        truncated = store.truncated_rows()
        from ..batch import batch_summary

        batches = batch_summary(store)
    finally:
        store.close()
    provider = summary["settings"].get("provider", "zai")
    providers_file = summary["settings"].get("providers_file")
    try:
        info = get_provider(provider, Path(providers_file) if providers_file else None)
    except UsageError as exc:
        raise click.UsageError(str(exc)) from exc
    currency = load_prices(info.price_table).currency
    _mark_interrupted(summary["runs"], folder_in_use(out))
    data = _status_json(summary, currency)
    data["batches"] = batches
    data["truncated"] = truncated
    data["overrides"] = dict(summary["settings"].get("overrides") or {})
    from ..notify import read_notes  # --notify's record of its deliveries, if any

    data["notifications"] = read_notes(out)
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    click.echo(
        f"spec: {data['spec']}\n"
        f"rows: {data['total']} total, {data['succeeded']} succeeded, {data['failed']} failed, "
        f"{data['pending']} pending ({data['in_progress']} async tasks in progress)\n"
        f"cost: {format_total(summary['cost_nano'], currency, summary.get('unpriced', 0))}"
    )
    for model, m in data["cost"]["by_model"].items():
        click.echo(
            f"  {model}: {rows(m['rows'])}, {m['prompt_tokens']} prompt + "
            f"{m['completion_tokens']} completion tokens, "
            f"{format_total(m['cost_nano'], currency, m['unpriced'] or 0)}"
        )
    if len(data["keys"]) > 1:
        click.echo("keys:")
        for label, k in data["keys"].items():
            state = k["state"] + (f": {k['reason']}" if k["reason"] else "")
            click.echo(
                f"  {label}: {rows(k['rows'])}, {format_cost(k['cost_nano'], currency)}, {state}"
            )
    if data["batches"]:
        click.echo("batches:")
        for b in data["batches"]:
            click.echo(
                f"  file {b['key']}: {rows(b['lines'])} of {b['model']}, {b['state']}"
                + (f", batch {b['batch_id']} {b['status']}" if b["batch_id"] else "")
                + (f" ({b['message']})" if b["message"] else "")
            )
    if data["errors"]:
        click.echo("errors (one line per cause; an example message, then the first lines):")
        for e in data["errors"]:
            click.echo(f"  {e['rows']:>6} × {e['code']}: {e['message']}{lines_of(e)}")
        shown = sum(e["rows"] for e in data["errors"])
        if shown < data["failed"]:
            click.echo(f"  ... and {data['failed'] - shown} more failed rows in smaller groups")
        hint = ""
        if "invalid_row" in data["error_codes"]:
            hint = f"`runner validate {data['spec']}`, or "
        click.echo(f"  every failed row: {hint}error_message in {results_path(out)}")
        for code in data["error_codes"]:
            if code not in ("invalid_row", "submit_unknown"):
                click.echo(f"  resend the {code} rows: runner retry {out} --code {code}")
    if truncated:
        click.echo(
            f"truncated: {truncated} answer{'s' if truncated != 1 else ''} cut at max_tokens "
            f"(finish_reason length); resend them with more room: runner retry {out} "
            "--finish-reason length --set body.max_tokens=N"
        )
    if data["overrides"]:
        sets = " ".join(f"--set {k}={json.dumps(v)}" for k, v in data["overrides"].items())
        click.echo(f"the last retry sent its rows with: {sets}")
    for note in data["notifications"]:
        if not note.get("delivered"):
            click.echo(f"could not notify {note['target']} of {note['event']!r}: {note['error']}")


@click.command()
@click.argument("out", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["parquet", "jsonl"]),
    default="parquet",
    show_default=True,
    help="Parquet results, or the provider's Batch-API output JSONL.",
)
@click.option("-o", "--output", type=PathArg, help="File to write.")
@click.option(
    "--to",
    "to",
    metavar="URL",
    help="Upload the results (results.parquet or results.jsonl), the artifacts and "
    "report.html to this s3://, gs:// or abfs:// prefix.",
)
def export(out: Path, fmt: str, output: Path | None, to: str | None) -> None:
    """Write the results of OUT as Parquet or Batch-API JSONL, to a file or a bucket."""
    if output is None and to is None:
        raise click.UsageError("say where: -o FILE, --to URL, or both")
    if to is not None:
        to = check_destination(to, "--to")  # a bucket that cannot take them: exit 2 now
    try:
        store = Store(checkpoint_path(out), create=False)
    except CheckpointError as exc:
        raise click.UsageError(str(exc)) from exc
    name = f"results.{fmt}"
    # Without -o the upload's file is written beside the checkpoint and removed after: a
    # runner working on OUT may be rewriting results.parquet itself.
    target = output if output is not None else out / f".export-{os.getpid()}.{fmt}"
    try:
        from ..export import write_results_jsonl, write_results_parquet

        n = (write_results_parquet if fmt == "parquet" else write_results_jsonl)(store, target)
    except (CheckpointError, OSError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_USAGE)
    finally:
        store.close()
    if output is not None:
        click.echo(f"wrote {rows(n)} to {output}")
    if to is None:
        return
    try:
        files = [(target, name)]
        if (out / "report.html").is_file():
            files.append((out / "report.html", "report.html"))
        pushed = push_outputs(out, to, files)
    finally:
        if output is None:
            target.unlink(missing_ok=True)
    if not pushed:
        sys.exit(EXIT_STOPPED)


@click.command()
@click.argument("out", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("-o", "--output", type=PathArg, help="HTML file to write (default OUT/report.html).")
def report(out: Path, output: Path | None) -> None:
    """Write one self-contained HTML page of the job in OUT: figures, charts, errors.

    A job run with --results-to also gets the page uploaded there, as report.html."""
    from ..report.data import load_report
    from ..report.page import write_report

    target = output or out / "report.html"
    try:
        data = load_report(checkpoint_path(out))
        size = write_report(data, target, currency=currency_of(data["job"]))
    except CheckpointError as exc:
        raise click.UsageError(str(exc)) from exc
    except (UsageError, OSError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_USAGE)
    click.echo(f"wrote {target} ({size / 1024:,.0f} KiB)")
    results_to = data["job"].get("results_to")
    if results_to:
        from .. import storage

        try:
            url = storage.upload(target, storage.join_url(results_to, "report.html"))
        except storage.StorageError as exc:
            click.echo(
                f"error: {exc}. The page stays in {target}; run `runner report {out}` again "
                "to push it",
                err=True,
            )
            sys.exit(EXIT_STOPPED)
        click.echo(f"uploaded: {url}")


def currency_of(job: dict[str, Any]) -> str:
    """The currency of the job's price table (the provider's, or the user's --prices)."""
    try:
        info = get_provider(
            job["provider"], Path(job["providers_file"]) if job["providers_file"] else None
        )
        prices = Path(job["prices"]) if job["prices"] else None
        return load_prices(info.price_table, prices).currency
    except (UsageError, OSError, ValueError):
        return "USD"


@click.command()
@click.argument("spec", type=SpecArg)
@click.option("--model", help="Model for rows whose body names none.")
@click.option("--endpoint", help="Endpoint for short rows.")
@click.option(
    "--files-root",
    type=click.Path(exists=True, file_okay=False, resolve_path=True, path_type=Path),
    help="Folder rows' local files must lie under (default: the spec's folder).",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def validate(
    spec: Path, model: str | None, endpoint: str | None, files_root: Path | None, as_json: bool
) -> None:
    """Check every row of SPEC before anything is spent (exit 2 if any is invalid)."""
    root = files_root if files_root is not None else spec.parent
    try:
        report = validate_spec(spec, SpecDefaults(endpoint=endpoint, model=model, files_root=root))
    except SpecError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_USAGE)
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2))
    else:
        click.echo(report.render())
    sys.exit(EXIT_USAGE if report.invalid else 0)


@click.command()
@click.argument("spec", type=SpecArg)
@click.option("--model", help="Model for rows whose body names none.")
@click.option("--endpoint", help="Endpoint for short rows.")
@click.option("--price-as", help="Price every row as this model (what-if).")
@click.option("--provider", help="Price table and tokenizer of this provider (default: zai).")
@click.option(
    "--providers",
    "providers_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    envvar=PROVIDERS_ENV,
    help="TOML file of extra providers.",
)
@click.option("--base-url", help="Where the tokenizer is (with --use-tokenizer).")
@click.option(
    "--use-tokenizer",
    is_flag=True,
    help="Count chat prompts with the provider's tokenizer endpoint (not billed; needs a key).",
)
@click.option("--prices", type=click.Path(exists=True, path_type=Path), help="Price table.")
@click.option(
    "--output-tokens",
    type=click.IntRange(min=0),
    default=DEFAULT_OUTPUT_TOKENS,
    show_default=True,
    help="Output tokens assumed for rows without max_tokens.",
)
@click.option(
    "--files-root",
    type=click.Path(exists=True, file_okay=False, resolve_path=True, path_type=Path),
    help="Folder rows' local files must lie under (default: the spec's folder).",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def estimate(spec: Path, **opts: Any) -> None:
    """Estimate what SPEC costs online and in batch mode; nothing billable is sent."""
    # Local files resolve as `run` resolves them, so an audio row's length can be read.
    root = opts["files_root"] or (spec.parent if isinstance(spec, Path) else None)
    try:
        info = get_provider(opts["provider"] or "zai", opts["providers_file"])
        prices = load_prices(info.price_table, opts["prices"])
        defaults = SpecDefaults(endpoint=opts["endpoint"], model=opts["model"], files_root=root)
        est = run_async(_estimate, spec, defaults, prices, info, opts)
    except (UsageError, SpecError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_USAGE)
    if opts["as_json"]:
        click.echo(json.dumps(est.to_json(), indent=2))
    else:
        click.echo(render(est))


async def _estimate(
    spec: Path, defaults: SpecDefaults, prices: Any, info: Any, opts: dict[str, Any]
) -> Any:
    kw = {"output_tokens": opts["output_tokens"], "price_as": opts["price_as"]}
    if not opts["use_tokenizer"]:
        return await estimate_spec(spec, defaults, prices, **kw)
    base = opts["base_url"] or info.base_url
    key = os.environ.get(info.key_env, "")
    if not base or not key:
        raise UsageError(
            f"--use-tokenizer needs a base URL (--base-url) and a key in {info.key_env}"
        )
    transport = make_transport("httpx", base, key, dict(info.extra_headers))
    try:
        return await estimate_spec(
            spec, defaults, prices, tokenizer=transport_tokenizer(transport), **kw
        )
    finally:
        await transport.aclose()
