"""What the commands share: running a coroutine, the platform's options, small texts."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import anyio
import click

from ..errors import RunnerError
from ..providers import PROVIDERS, PROVIDERS_ENV

__all__ = [
    "PathArg",
    "SpecArg",
    "check_destination",
    "lines_of",
    "pairs",
    "platform_options",
    "push_outputs",
    "rows",
    "run_async",
]

PathArg = click.Path(path_type=Path)


class _SpecLocation(click.Path):
    """A spec: an existing local file, or an object-storage URL (s3://, gs://, abfs://)
    that the reader opens and checks itself."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str) and _is_url(value):
            from ..storage import StorageError, normalize

            try:
                return Path(normalize(value))  # a URL with credentials stops here
            except StorageError as exc:
                self.fail(str(exc), param, ctx)
        return super().convert(value, param, ctx)


def _is_url(value: str) -> bool:
    from ..storage import is_url

    return is_url(value)


SpecArg = _SpecLocation(exists=True, dir_okay=False, path_type=Path)


def check_destination(url: str, flag: str) -> str:
    """A results destination, in its canonical spelling, once its bucket is known to take
    the results: a missing bucket or refused credentials exit 2 now, before anything is
    sent or written."""
    from .. import storage
    from ..lifecycle import EXIT_USAGE

    if not storage.is_url(url):
        raise click.BadParameter("an object-storage URL (s3://, gs://, abfs://)", param_hint=flag)
    try:
        storage.check_bucket(url)
    except storage.StorageError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_USAGE)
    return storage.normalize(url)


def push_outputs(out: Path, url: str, files: list[tuple[Path, str]]) -> bool:
    """Upload (local file, name under `url`) pairs and each of OUT's artifacts; say what
    was uploaded, or, if an upload failed, that the local copies stay and how to push them
    again. Returns whether everything was uploaded."""
    from .. import storage
    from ..artifacts import ARTIFACTS_DIR

    artifacts = out / ARTIFACTS_DIR
    if artifacts.is_dir():
        files = files + [
            (p, p.relative_to(out).as_posix()) for p in sorted(artifacts.rglob("*")) if p.is_file()
        ]
    try:
        for path, name in files:
            storage.upload(path, storage.join_url(url, name))
    except storage.StorageError as exc:
        click.echo(
            f"error: {exc}. Nothing is lost: the results stay in {out}; push them again with "
            f"`runner export {out} --to {url}`",
            err=True,
        )
        return False
    for _, name in files[:1]:
        click.echo(f"uploaded: {storage.join_url(url, name)}")
    if len(files) > 1:
        click.echo(f"uploaded: {len(files) - 1} more file(s) under {url}")
    return True


F = TypeVar("F", bound=Callable[..., Any])

# Where to send and how hard: `runner run` and `runner generate` take the same flags.
_PLATFORM_OPTIONS = [
    click.option(
        "--provider", help=f"{', '.join(PROVIDERS)}, or one from --providers (default: zai)."
    ),
    click.option(
        "--providers",
        "providers_file",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        envvar=PROVIDERS_ENV,
        help=f"TOML file of extra providers (or ${PROVIDERS_ENV}).",
    ),
    click.option("--base-url", help="Override the provider's base URL."),
    click.option(
        "--tier",
        type=click.Choice(["V0", "V1", "V2", "V3"], case_sensitive=False),
        metavar="[V0|V1|V2|V3]",
        help="The account's tier, which sets each model's in-flight cap (text: V0 50 ... V3 500).",
    ),
    click.option("--concurrency", type=click.IntRange(min=1), help="In-flight cap per model."),
    click.option("--max-cost", help="Stop sending before spent cost could pass this amount."),
    click.option("--transport", type=click.Choice(["fast", "httpx"]), help="HTTP transport."),
    click.option("--timeout", type=float, help="Seconds to wait for one answer (default 300)."),
    click.option("--no-progress", is_flag=True, default=False, help="No live progress display."),
]


def platform_options(command: F) -> F:
    for option in reversed(_PLATFORM_OPTIONS):
        command = option(command)
    return command


def run_async(fn: Any, *args: Any) -> Any:
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


def pairs(values: tuple[str, ...], flag: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        name, sep, num = v.rpartition("=")
        if not sep or not name or not num.isdigit() or int(num) < 1:
            raise click.BadParameter(f"expected MODEL=N with N >= 1, got {v!r}", param_hint=flag)
        out[name] = int(num)
    return out


def rows(n: int) -> str:
    return f"{n} row" if n == 1 else f"{n} rows"


def lines_of(group: dict[str, Any]) -> str:
    """ " (lines 2, 9, …)": where a group of failed rows starts, for `runner status`."""
    lines = group["lines"]
    if group["rows"] < 2 or not lines:
        return ""
    more = ", …" if group["rows"] > len(lines) else ""
    return f" (lines {', '.join(map(str, lines))}{more})"
