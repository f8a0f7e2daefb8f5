"""`runner run` and `runner resume`: a job from a spec or a job file, and its resume."""

from __future__ import annotations

import sys
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import click

from ..cost import format_total
from ..endpoints import KEEP_RESPONSE
from ..errors import CheckpointError, RunnerError, UsageError, redact
from ..job import EXIT_STOPPED, EXIT_USAGE, checkpoint_path, run_job
from ..keys import load_keys_file
from ..lifecycle import RESULTS, results_path
from ..settings import USER_SETTINGS, Settings, load_job_file
from ..store import Store
from .common import (
    PathArg,
    SpecArg,
    check_destination,
    pairs,
    platform_options,
    push_outputs,
    run_async,
)

__all__ = ["resume", "run"]

SERVE_PORT = 8750  # `--serve` with no port


def unattended_options(command: Any) -> Any:
    """Options for a job nobody watches (attend.py): run and resume take the same."""
    for option in reversed(
        [
            click.option(
                "--notify",
                multiple=True,
                metavar="URL",
                help="POST a message when the job finishes or stops (and if its failures "
                "rise): a plain URL gets JSON; slack:URL, feishu:URL, dingtalk:URL, wecom:URL "
                "that app's format. Repeatable.",
            ),
            click.option(
                "--serve",
                type=click.IntRange(min=1, max=65535),
                is_flag=False,
                flag_value=SERVE_PORT,
                default=None,
                metavar="[PORT]",
                help=f"Serve the job's live page on 127.0.0.1:PORT (default {SERVE_PORT}) "
                "while it runs.",
            ),
            click.option(
                "--metrics-port",
                type=click.IntRange(min=0, max=65535),
                help="Expose Prometheus metrics on 127.0.0.1:PORT/metrics while the job runs.",
            ),
        ]
    ):
        command = option(command)
    return command


def _unattended(values: dict[str, Any], opts: dict[str, Any]) -> None:
    if opts.get("notify"):
        values["notify"] = tuple(opts["notify"])  # flags replace the job file's list
    for name in ("serve", "metrics_port"):
        if opts.get(name) is not None:
            values[name] = opts[name]


def _execute(settings: Settings, engine: dict[str, Any] | None = None) -> None:
    try:
        settings = settings.with_key_from_env()
        if engine is not None and engine.get("engine") == "ray":
            from ..ray_engine import run_sharded  # Ray is imported only for a job on Ray

            result = run_sharded(
                settings, engine["shards"], engine["ray_address"], results_to=settings.results_to
            )
        else:
            result = run_async(run_job, settings)
    except UsageError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_USAGE)
    except CheckpointError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_USAGE)
    except RunnerError as exc:
        click.echo(f"error: {redact(str(exc), *settings.secrets())}", err=True)
        sys.exit(EXIT_STOPPED)
    s = result.summary
    cost = format_total(s["cost_nano"], result.counters.currency, s.get("unpriced", 0))
    # What a script reads goes to stdout: the counts and where the results are. Why a job
    # stopped early or sent nothing (exit 2, 3) is a problem to act on, so it goes to stderr
    # with the progress and warnings.
    trouble = result.exit_code in (EXIT_USAGE, EXIT_STOPPED)
    click.echo(result.message, err=trouble)
    results = results_path(settings.out)
    where = results if results.exists() else "in the checkpoint"  # a signal stop skips it
    click.echo(
        f"rows: {s['total']} total, {s['succeeded']} succeeded, {s['failed']} failed, "
        f"{s['pending']} pending; cost {cost}\n"
        f"results: {where}  (runner status {settings.out})"
    )
    code = result.exit_code
    # The checkpoint stays in OUT; results.parquet and the artifacts go to the bucket. A
    # failed upload keeps the local copy and says how to push it again: exit 3.
    if settings.results_to is not None and results.exists():
        pushed = push_outputs(settings.out, settings.results_to, [(results, RESULTS)])
        code = code if pushed else EXIT_STOPPED
    sys.exit(code)


@click.command()
@platform_options
@click.argument("spec", type=SpecArg)
@click.option("--out", "-o", type=PathArg, help="Output folder (checkpoint and results).")
@click.option(
    "--results-to",
    metavar="URL",
    help="Upload results.parquet and the artifacts to this s3://, gs:// or abfs:// prefix "
    "when the job ends (the checkpoint stays in --out); recorded, so a resume uploads there too.",
)
@click.option("--model", help="Model for rows whose body names none.")
@click.option("--endpoint", help="Endpoint for short rows, e.g. chat/completions.")
@click.option("--model-concurrency", multiple=True, help="MODEL=N cap for one model.")
@click.option("--strict", is_flag=True, default=None, help="Refuse the job if any row is invalid.")
@click.option("--force", is_flag=True, default=None, help="Resume even if the spec changed.")
@click.option("--prices", type=click.Path(exists=True, path_type=Path), help="Price table.")
@click.option(
    "--ca-bundle",
    type=click.Path(exists=True, dir_okay=False, resolve_path=True, path_type=Path),
    help="PEM file of the CAs to trust (e.g. a company's private CA); default: the system's.",
)
@click.option(
    "--files-root",
    type=click.Path(exists=True, file_okay=False, resolve_path=True, path_type=Path),
    help="Folder rows' local files must lie under (default: the spec's folder).",
)
@click.option(
    "--body-budget",
    "body_budget_mb",
    type=click.IntRange(min=1),
    help="MiB of request bodies with local files held at once (default 128): bounds memory "
    "whatever the concurrency and file sizes.",
)
@click.option(
    "--keep-response",
    type=click.Choice(KEEP_RESPONSE),
    help="full (default): keep each answer's body as it came; answer: a chat completion's "
    "ids and choices alone (no usage or reasoning), for a smaller checkpoint and results.",
)
@click.option("--no-download", is_flag=True, default=None, help="Don't download artifacts.")
@click.option(
    "--mode",
    type=click.Choice(["online", "batch"]),
    help="online (default) or batch: the provider's Batch API at half price, within 24 h.",
)
@click.option(
    "--retry-failed-online",
    is_flag=True,
    default=None,
    help="Batch mode: afterwards send rows the batches did not finish through online mode.",
)
@click.option("--batch-lines", type=click.IntRange(min=1), help="Most lines per batch file.")
@click.option("--rpm", type=click.IntRange(min=1), help="Requests per minute per model.")
@click.option("--tpm", type=click.IntRange(min=1), help="Tokens per minute per model.")
@click.option(
    "--keys",
    "keys_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="TOML file of [[keys]]: the variables holding several keys, with each account's tier "
    "and limits.",
)
@click.option(
    "--engine",
    type=click.Choice(["local", "ray"]),
    default="local",
    show_default=True,
    help="ray: split the job into shards run on Ray workers, the tier held across them.",
)
@click.option(
    "--shards",
    type=click.IntRange(min=1),
    default=None,
    help="With --engine ray: shards to split the spec into (default: the cluster's CPUs).",
)
@click.option(
    "--ray-address",
    help="With --engine ray: the cluster to join (default: RAY_ADDRESS, else a local Ray).",
)
@unattended_options
def run(spec: Path, **opts: Any) -> None:
    """Run SPEC (JSONL, Parquet, or a .toml job file); run again to resume."""
    values: dict[str, Any] = {}
    if spec.suffix.lower() == ".toml":
        try:
            values = load_job_file(spec)
        except UsageError as exc:
            raise click.UsageError(str(exc)) from exc
        if "spec" not in values:
            raise click.UsageError(f"{spec}: the job file must name a spec")
        spec = values.pop("spec")
    # Flags win over the job file; the converted ones are handled below.
    for name in USER_SETTINGS:
        if name not in ("model_concurrency", "max_cost", "notify") and opts.get(name) is not None:
            values[name] = opts[name]
    _unattended(values, opts)
    if "out" not in values:
        raise click.UsageError("--out DIR is required (the checkpoint and results go there)")
    if opts.get("timeout") is not None:
        values["request_timeout"] = opts["timeout"]
    if opts.get("no_download"):
        values["download"] = False
    if opts.get("keys_file") is not None:
        try:
            values["keys"] = load_keys_file(opts["keys_file"])
        except UsageError as exc:
            raise click.UsageError(str(exc)) from exc
    if opts["model_concurrency"]:
        values["model_concurrency"] = {
            **values.get("model_concurrency", {}),
            **pairs(opts["model_concurrency"], "--model-concurrency"),
        }
    raw_cost = opts.get("max_cost") if opts.get("max_cost") is not None else values.get("max_cost")
    if raw_cost is not None:
        try:
            values["max_cost"] = Decimal(str(raw_cost))
        except InvalidOperation:
            raise click.BadParameter(
                f"not a number: {raw_cost!r}", param_hint="--max-cost"
            ) from None
    if "tier" in values:
        values["tier"] = str(values["tier"]).upper()
    values["progress"] = not opts["no_progress"]
    engine = {k: opts[k] for k in ("engine", "shards", "ray_address")}
    if engine["engine"] != "ray" and (engine["shards"] or engine["ray_address"]):
        raise click.UsageError("--shards and --ray-address go with --engine ray")
    if engine["engine"] == "ray" and any(
        values.get(k) for k in ("notify", "serve", "metrics_port")
    ):
        # The shards' checkpoints are merged only at the end: nothing live to serve yet.
        raise click.UsageError("--notify, --serve and --metrics-port need --engine local")
    if values.get("results_to") is not None:
        values["results_to"] = check_destination(values["results_to"], "--results-to")
    _execute(Settings(spec=Path(spec), **values), engine)


@click.command()
@click.argument("out", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--no-progress", is_flag=True, default=False, help="No live progress display.")
@click.option("--force", is_flag=True, default=False, help="Resume even if the spec changed.")
@unattended_options
def resume(out: Path, no_progress: bool, force: bool, **opts: Any) -> None:
    """Resume the job in OUT with the settings it was started with."""
    if (out / "generate.json").exists():
        raise click.UsageError(
            f"{out} holds a `runner generate` job: run the same `runner generate` command "
            "(or call generate() with the same out) again to resume it"
        )
    try:
        store = Store(checkpoint_path(out), create=False)
        job = store.job()
        store.close()
    except CheckpointError as exc:
        raise click.UsageError(str(exc)) from exc
    if job is None:
        raise click.UsageError(f"{out} holds no job: start one with `runner run SPEC --out {out}`")
    extra: dict[str, Any] = {}
    _unattended(extra, opts)
    settings = Settings.from_record(
        job["settings"], progress=not no_progress, force=force, out=out, **extra
    )
    if settings.results_to is not None:  # where the job's results went, checked again
        check_destination(settings.results_to, "the job's results_to")
    # A job run on Ray resumes on Ray (its shards' checkpoints are what it resumes from).
    engine = None
    if job["settings"].get("engine") == "ray":
        engine = {"engine": "ray", "shards": None, "ray_address": None}
    _execute(settings, engine)
