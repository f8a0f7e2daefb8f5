"""`runner generate`: a prompt over a table's rows, answers as typed columns."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import click

from ..cost import load_prices
from ..errors import CheckpointError, RunnerError, UsageError, redact
from ..job import EXIT_STOPPED, EXIT_USAGE
from ..providers import get_provider
from .common import PathArg, platform_options

__all__ = ["generate"]


def _text_or_file(value: str | None, flag: str) -> str | None:
    """TEXT, or @FILE for the text of FILE."""
    if value is None or not value.startswith("@"):
        return value
    try:
        return Path(value[1:]).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise click.BadParameter(f"cannot read {value[1:]}: {exc}", param_hint=flag) from None


@click.command()
@platform_options
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
@click.option("--force", is_flag=True, help="Resume even if the requests changed.")
@click.option("--retry", "retry", multiple=True, metavar="CODE",
              help="Ask chosen rows of the job in OUT again: an error code, failed, or length "
              "(cut at max_tokens); repeatable.")  # fmt: skip
def generate(input: Path, **opts: Any) -> None:
    """Map --prompt over the rows of INPUT (Parquet, JSONL, CSV) into OUT/output.parquet."""
    response_format = None
    if opts["schema"] is not None:
        try:
            response_format = json.loads(opts["schema"].read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise click.BadParameter(f"not a JSON file: {exc}", param_hint="--schema") from None
    provider = opts["provider"] or "zai"
    model = opts["model"]
    if model is None:
        if provider not in ("zai", "zhipu", "sim"):
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
        from ..generation import generate as run_generate

        table = run_generate(
            input,
            prompt=_text_or_file(opts["prompt"], "--prompt"),
            model=model,
            out=opts["out"],
            response_format=response_format,
            system=_text_or_file(opts["system"], "--system"),
            provider=provider,
            base_url=opts["base_url"],
            concurrency=opts["concurrency"],
            tier=opts["tier"],
            max_cost=opts["max_cost"],
            cache=opts["cache"],
            cache_dir=opts["cache_dir"],
            max_reasks=opts["max_reasks"],
            progress=not opts["no_progress"],
            force=opts["force"],
            retry=opts["retry"],
            **options,
        )
    except (UsageError, CheckpointError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_USAGE)
    except RunnerError as exc:
        key_env = get_provider(provider, opts["providers_file"]).key_env
        click.echo(f"error: {redact(str(exc), os.environ.get(key_env, ''))}", err=True)
        sys.exit(EXIT_STOPPED)
    try:
        info = get_provider(provider, opts["providers_file"])
        currency = load_prices(info.price_table).currency
    except UsageError:
        currency = "USD"
    from ..generation import summary_of

    text, failed = summary_of(table, currency)
    # The counts and where the table is go to stdout (what a script reads), as for run.
    click.echo(f"{text}\nresults: {opts['out'] / 'output.parquet'}")
    sys.exit(1 if failed else 0)
