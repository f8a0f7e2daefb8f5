"""The `runner` command: a thin shell over the library. No job logic lives here.

About 400 lines because it is the one list of commands and flags; each command only
parses, calls the library and prints.

Exit codes (the contract scripts rely on):
    0  every row succeeded
    1  the job finished, some rows failed (see `runner status`)
    2  usage or spec error: nothing was sent
    3  stopped early (signal, budget, the platform refused the account): resumable
"""

from __future__ import annotations

import json
import os
import sys
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import anyio
import click

from .batch import batch_summary
from .cost import NANO, format_cost, load_prices
from .errors import CheckpointError, RunnerError, UsageError, redact
from .estimate import DEFAULT_OUTPUT_TOKENS, estimate_spec, render, transport_tokenizer
from .export import write_results_jsonl, write_results_parquet
from .generation import generate as run_generate
from .generation import summary_of
from .http import make_transport
from .job import EXIT_STOPPED, EXIT_USAGE, checkpoint_path, run_job
from .keys import load_keys_file
from .lifecycle import results_path
from .providers import PROVIDERS, PROVIDERS_ENV, get_provider
from .settings import USER_SETTINGS, Settings, load_job_file
from .spec import SpecDefaults, SpecError, validate_spec
from .store import Store

__all__ = ["main"]

PathArg = click.Path(path_type=Path)


def _run_async(fn: Any, *args: Any) -> Any:
    try:
        import uvloop  # noqa: F401

        options = {"use_uvloop": True}
    except ImportError:
        options = {}
    try:
        return anyio.run(fn, *args, backend="asyncio", backend_options=options)
    except BaseExceptionGroup as group:
        # One of our errors raised inside a task group arrives wrapped; the exit-code table
        # (and the user) want it bare, not as a traceback.
        leaf = _only_runner_error(group)
        if leaf is None:
            raise
        raise leaf from None


def _only_runner_error(group: BaseExceptionGroup[BaseException]) -> RunnerError | None:
    leaves: list[BaseException] = []
    stack: list[BaseException] = [group]
    while stack:
        exc = stack.pop()
        if isinstance(exc, BaseExceptionGroup):
            stack.extend(exc.exceptions)
        else:
            leaves.append(exc)
    if len(leaves) == 1 and isinstance(leaves[0], RunnerError):
        return leaves[0]
    return None


def _pairs(values: tuple[str, ...], flag: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        name, sep, num = v.rpartition("=")
        if not sep or not name or not num.isdigit() or int(num) < 1:
            raise click.BadParameter(f"expected MODEL=N with N >= 1, got {v!r}", param_hint=flag)
        out[name] = int(num)
    return out


def _execute(settings: Settings, engine: dict[str, Any] | None = None) -> None:
    try:
        settings = settings.with_key_from_env()
        if engine is not None and engine.get("engine") == "ray":
            from .ray_engine import run_sharded  # Ray is imported only for a job on Ray

            result = run_sharded(settings, engine["shards"], engine["ray_address"])
        else:
            result = _run_async(run_job, settings)
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
    cost = format_cost(s["cost_nano"], result.counters.currency)
    # What a script reads goes to stdout: the counts and where the results are. Why a job
    # stopped early or sent nothing (exit 2, 3) is a problem to act on, so it goes to stderr
    # with the progress and warnings.
    trouble = result.exit_code in (EXIT_USAGE, EXIT_STOPPED)
    click.echo(result.message, err=trouble)
    click.echo(
        f"rows: {s['total']} total, {s['succeeded']} succeeded, {s['failed']} failed, "
        f"{s['pending']} pending; cost {cost}\n"
        f"results: {results_path(settings.out)}  (runner status {settings.out})"
    )
    sys.exit(result.exit_code)


class _Commands(click.Group):
    """Loads `runner sim` (uvicorn and the simulator) only when it is the command run."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), "sim"])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name == "sim":
            from .sim import sim_command

            return sim_command
        return super().get_command(ctx, cmd_name)


@click.group(cls=_Commands)
@click.version_option(package_name="glm-batch-runner")
def cli() -> None:
    """Batch runner for the Zhipu / Z.ai GLM platform and OpenAI-compatible APIs."""


@cli.command()
@click.argument("spec", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--out", "-o", type=PathArg, help="Output folder (checkpoint and results).")
@click.option("--provider", help=f"{', '.join(PROVIDERS)}, or one from --providers (default: zai).")
@click.option(
    "--providers",
    "providers_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    envvar=PROVIDERS_ENV,
    help=f"TOML file of extra providers (or ${PROVIDERS_ENV}).",
)
@click.option("--base-url", help="Override the provider's base URL.")
@click.option("--model", help="Model for rows whose body names none.")
@click.option("--endpoint", help="Endpoint for short rows, e.g. chat/completions.")
@click.option(
    "--tier",
    type=click.Choice(["V0", "V1", "V2", "V3"], case_sensitive=False),
    metavar="[V0|V1|V2|V3]",
    help="The account's tier, which sets each model's in-flight cap (text: V0 50 ... V3 500).",
)
@click.option("--concurrency", type=click.IntRange(min=1), help="In-flight cap per model.")
@click.option("--model-concurrency", multiple=True, help="MODEL=N cap for one model.")
@click.option("--max-cost", help="Stop sending before spent cost could pass this amount.")
@click.option("--strict", is_flag=True, default=None, help="Refuse the job if any row is invalid.")
@click.option("--force", is_flag=True, default=None, help="Resume even if the spec changed.")
@click.option("--no-progress", is_flag=True, default=False, help="No live progress display.")
@click.option("--prices", type=click.Path(exists=True, path_type=Path), help="Price table.")
@click.option("--transport", type=click.Choice(["fast", "httpx"]), help="HTTP transport.")
@click.option("--timeout", type=float, help="Seconds to wait for one answer (default 300).")
@click.option(
    "--ca-bundle",
    type=click.Path(exists=True, dir_okay=False, resolve_path=True, path_type=Path),
    help="PEM file of the CAs to trust (e.g. a company's private CA); default: the system's.",
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
        if name not in ("model_concurrency", "max_cost") and opts.get(name) is not None:
            values[name] = opts[name]
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
            **_pairs(opts["model_concurrency"], "--model-concurrency"),
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
    _execute(Settings(spec=Path(spec), **values), engine)


def _text_or_file(value: str | None, flag: str) -> str | None:
    """TEXT, or @FILE for the text of FILE."""
    if value is None or not value.startswith("@"):
        return value
    try:
        return Path(value[1:]).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise click.BadParameter(f"cannot read {value[1:]}: {exc}", param_hint=flag) from None


@cli.command()
@click.argument("input", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--prompt", required=True, help="Template over the columns, or @FILE.")
@click.option("--out", "-o", type=PathArg, required=True, help="Job folder; output.parquet.")
@click.option("--schema", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="JSON Schema file for the answers (their fields become columns).")  # fmt: skip
@click.option("--system", help="System message, or @FILE.")
@click.option("--model", help="Model (default glm-4.5-air on zai, zhipu and sim).")
@click.option("--cache/--no-cache", default=True, show_default=True,
              help="Reuse answers to identical requests from any earlier job.")  # fmt: skip
@click.option("--cache-dir", type=PathArg, help="Cache folder (default: user cache folder).")
@click.option("--max-reasks", type=click.IntRange(min=0), default=2, show_default=True,
              help="Ask again this often when an answer does not match the schema.")  # fmt: skip
@click.option("--provider", default="zai", help="Provider (default: zai).")
@click.option(
    "--providers",
    "providers_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    envvar=PROVIDERS_ENV,
    help=f"TOML file of extra providers (or ${PROVIDERS_ENV}).",
)
@click.option("--base-url", help="Override the provider's base URL.")
@click.option(
    "--tier",
    type=click.Choice(["V0", "V1", "V2", "V3"], case_sensitive=False),
    help="The account's tier, which sets the model's in-flight cap (text: V0 50 ... V3 500).",
)
@click.option("--concurrency", type=click.IntRange(min=1), help="In-flight cap.")
@click.option("--max-cost", help="Stop sending before spent cost could pass this amount.")
@click.option("--force", is_flag=True, help="Resume even if the requests changed.")
@click.option("--no-progress", is_flag=True, default=False, help="No live progress display.")
@click.option("--transport", type=click.Choice(["fast", "httpx"]), help="HTTP transport.")
@click.option("--timeout", type=float, help="Seconds to wait for one answer (default 300).")
def generate(input: Path, **opts: Any) -> None:
    """Map --prompt over the rows of INPUT (Parquet, JSONL, CSV) into OUT/output.parquet."""
    response_format = None
    if opts["schema"] is not None:
        try:
            response_format = json.loads(opts["schema"].read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise click.BadParameter(f"not a JSON file: {exc}", param_hint="--schema") from None
    model = opts["model"]
    if model is None:
        if opts["provider"] not in ("zai", "zhipu", "sim"):
            raise click.UsageError(f"--model is required for provider {opts['provider']!r}")
        model = "glm-4.5-air"
    options: dict[str, Any] = {}
    for name, setting in (
        ("providers_file", "providers_file"),
        ("transport", "transport"),
        ("timeout", "request_timeout"),
    ):
        if opts[name] is not None:
            options[setting] = opts[name]
    try:
        table = run_generate(
            input,
            prompt=_text_or_file(opts["prompt"], "--prompt"),
            model=model,
            out=opts["out"],
            response_format=response_format,
            system=_text_or_file(opts["system"], "--system"),
            provider=opts["provider"],
            base_url=opts["base_url"],
            concurrency=opts["concurrency"],
            tier=opts["tier"],
            max_cost=opts["max_cost"],
            cache=opts["cache"],
            cache_dir=opts["cache_dir"],
            max_reasks=opts["max_reasks"],
            progress=not opts["no_progress"],
            force=opts["force"],
            **options,
        )
    except (UsageError, CheckpointError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_USAGE)
    except RunnerError as exc:
        key_env = get_provider(opts["provider"], opts["providers_file"]).key_env
        click.echo(f"error: {redact(str(exc), os.environ.get(key_env, ''))}", err=True)
        sys.exit(EXIT_STOPPED)
    try:
        info = get_provider(opts["provider"], opts["providers_file"])
        currency = load_prices(info.price_table).currency
    except UsageError:
        currency = "USD"
    text, failed = summary_of(table, currency)
    # The counts and where the table is go to stdout (what a script reads), as for run.
    click.echo(f"{text}\nresults: {opts['out'] / 'output.parquet'}")
    sys.exit(1 if failed else 0)


@cli.command()
@click.argument("out", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--no-progress", is_flag=True, default=False, help="No live progress display.")
@click.option("--force", is_flag=True, default=False, help="Resume even if the spec changed.")
def resume(out: Path, no_progress: bool, force: bool) -> None:
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
    settings = Settings.from_record(job["settings"], progress=not no_progress, force=force, out=out)
    # A job run on Ray resumes on Ray (its shards' checkpoints are what it resumes from).
    engine = None
    if job["settings"].get("engine") == "ray":
        engine = {"engine": "ray", "shards": None, "ray_address": None}
    _execute(settings, engine)


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


@cli.command()
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
    data = _status_json(summary, currency)
    data["batches"] = batches
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    click.echo(
        f"spec: {data['spec']}\n"
        f"rows: {data['total']} total, {data['succeeded']} succeeded, {data['failed']} failed, "
        f"{data['pending']} pending ({data['in_progress']} async tasks in progress)\n"
        f"cost: {format_cost(summary['cost_nano'], currency)}"
    )
    for model, m in data["cost"]["by_model"].items():
        click.echo(
            f"  {model}: {_rows(m['rows'])}, {m['prompt_tokens']} prompt + "
            f"{m['completion_tokens']} completion tokens, "
            f"{format_cost(m['cost_nano'], currency)}"
            + (f" ({_rows(m['unpriced'])} with no price)" if m["unpriced"] else "")
        )
    if len(data["keys"]) > 1:
        click.echo("keys:")
        for label, k in data["keys"].items():
            state = k["state"] + (f": {k['reason']}" if k["reason"] else "")
            click.echo(
                f"  {label}: {_rows(k['rows'])}, {format_cost(k['cost_nano'], currency)}, {state}"
            )
    if data["batches"]:
        click.echo("batches:")
        for b in data["batches"]:
            click.echo(
                f"  file {b['key']}: {_rows(b['lines'])} of {b['model']}, {b['state']}"
                + (f", batch {b['batch_id']} {b['status']}" if b["batch_id"] else "")
                + (f" ({b['message']})" if b["message"] else "")
            )
    if data["errors"]:
        click.echo("errors (one line per cause; an example message, then the first lines):")
        for e in data["errors"]:
            click.echo(f"  {e['rows']:>6} × {e['code']}: {e['message']}{_lines_of(e)}")
        shown = sum(e["rows"] for e in data["errors"])
        if shown < data["failed"]:
            click.echo(f"  ... and {data['failed'] - shown} more failed rows in smaller groups")
        hint = ""
        if "invalid_row" in data["error_codes"]:
            hint = f"`runner validate {data['spec']}`, or "
        click.echo(f"  every failed row: {hint}error_message in {results_path(out)}")


def _rows(n: int) -> str:
    return f"{n} row" if n == 1 else f"{n} rows"


def _lines_of(group: dict[str, Any]) -> str:
    lines = group["lines"]
    if group["rows"] < 2 or not lines:
        return ""
    more = ", …" if group["rows"] > len(lines) else ""
    return f" (lines {', '.join(map(str, lines))}{more})"


@cli.command()
@click.argument("out", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["parquet", "jsonl"]),
    default="parquet",
    show_default=True,
    help="Parquet results, or the provider's Batch-API output JSONL.",
)
@click.option("-o", "--output", type=PathArg, required=True, help="File to write.")
def export(out: Path, fmt: str, output: Path) -> None:
    """Write the results of OUT as Parquet or Batch-API JSONL."""
    try:
        store = Store(checkpoint_path(out), create=False)
    except CheckpointError as exc:
        raise click.UsageError(str(exc)) from exc
    try:
        n = (write_results_parquet if fmt == "parquet" else write_results_jsonl)(store, output)
    except (CheckpointError, OSError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_USAGE)
    finally:
        store.close()
    click.echo(f"wrote {_rows(n)} to {output}")


@cli.command()
@click.argument("out", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("-o", "--output", type=PathArg, help="HTML file to write (default OUT/report.html).")
def report(out: Path, output: Path | None) -> None:
    """Write one self-contained HTML page of the job in OUT: figures, charts, errors."""
    from .report.data import load_report
    from .report.page import write_report

    target = output or out / "report.html"
    try:
        data = load_report(checkpoint_path(out))
        size = write_report(data, target, currency=_currency(data["job"]))
    except CheckpointError as exc:
        raise click.UsageError(str(exc)) from exc
    except (UsageError, OSError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_USAGE)
    click.echo(f"wrote {target} ({size / 1024:,.0f} KiB)")


def _currency(job: dict[str, Any]) -> str:
    """The currency of the job's price table (the provider's, or the user's --prices)."""
    try:
        info = get_provider(
            job["provider"], Path(job["providers_file"]) if job["providers_file"] else None
        )
        prices = Path(job["prices"]) if job["prices"] else None
        return load_prices(info.price_table, prices).currency
    except (UsageError, OSError, ValueError):
        return "USD"


@cli.command()
@click.argument("spec", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--model", help="Model for rows whose body names none.")
@click.option("--endpoint", help="Endpoint for short rows.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def validate(spec: Path, model: str | None, endpoint: str | None, as_json: bool) -> None:
    """Check every row of SPEC before anything is spent (exit 2 if any is invalid)."""
    try:
        report = validate_spec(spec, SpecDefaults(endpoint=endpoint, model=model))
    except SpecError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_USAGE)
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2))
    else:
        click.echo(report.render())
    sys.exit(EXIT_USAGE if report.invalid else 0)


@cli.command()
@click.argument("spec", type=click.Path(exists=True, dir_okay=False, path_type=Path))
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
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def estimate(spec: Path, **opts: Any) -> None:
    """Estimate what SPEC costs online and in batch mode; nothing billable is sent."""
    try:
        info = get_provider(opts["provider"] or "zai", opts["providers_file"])
        prices = load_prices(info.price_table, opts["prices"])
        defaults = SpecDefaults(endpoint=opts["endpoint"], model=opts["model"])
        est = _run_async(_estimate, spec, defaults, prices, info, opts)
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


def main() -> None:
    cli()
