"""The `runner` command: a thin shell over the library. No job logic lives here.

One module per family of commands: run.py (run, resume), generate.py, inspect.py (status,
export, report, validate, estimate), serve.py (the live page); common.py holds the
platform's options they share.

Exit codes (the contract scripts rely on):
    0  every row succeeded
    1  the job finished, some rows failed (see `runner status`)
    2  usage or spec error: nothing was sent
    3  stopped early (signal, budget, the platform refused the account): resumable
"""

from __future__ import annotations

import gc
import importlib
import os
import sys

import click

from ..heap import one_arena
from .run import resume, run

__all__ = ["cli", "main"]

# The commands besides `run` and `resume`, by the module that defines them: each loads only
# when it is the command run (or listed by --help), so `runner run` starts without the
# estimator, the report, generate's modules or the simulator's uvicorn.
_LAZY = {
    "estimate": "runner.cli.inspect",
    "export": "runner.cli.inspect",
    "generate": "runner.cli.generate",
    "report": "runner.cli.inspect",
    "retry": "runner.cli.retry",
    "serve": "runner.cli.serve",
    "sim": "runner.sim",
    "status": "runner.cli.inspect",
    "validate": "runner.cli.inspect",
}
_ATTR = {"sim": "sim_command"}


class _Commands(click.Group):
    """`run` and `resume` registered; every other command imported when it is asked for."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *_LAZY])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        module = _LAZY.get(cmd_name)
        if module is None:
            return super().get_command(ctx, cmd_name)
        command: click.Command = getattr(
            importlib.import_module(module), _ATTR.get(cmd_name, cmd_name)
        )
        return command


@click.group(cls=_Commands)
@click.version_option(package_name="glm-batch-runner")
def cli() -> None:
    """Batch runner for the Zhipu / Z.ai GLM platform and OpenAI-compatible APIs."""


cli.add_command(run)
cli.add_command(resume)


# Young-generation collections every 20,000 new container objects instead of 700, the
# older generations in proportion (see `main`).
_GC_THRESHOLDS = (20_000, 20, 20)


def main() -> None:
    # A job allocates a few dozen objects per row and keeps thousands of tasks, connections
    # and futures alive, so with CPython's defaults the collector ran hundreds of times a
    # second, and each full pass walked every object of start-up too. This process is the
    # runner's own (not a notebook's, nor a test's): what start-up made is frozen out of
    # collection, and collections are rarer; cycles are still collected. At 4 models x
    # C=500, L=1 s the first 2,000 requests went out in 0.24-0.29 s instead of 0.38 and
    # the job reached 0.97 of ideal instead of 0.95-0.96, with less CPU.
    gc.freeze()
    gc.set_threshold(*_GC_THRESHOLDS)
    one_arena()  # this process's threads share glibc's main arena: see heap.one_arena
    # Arrow's allocator for results.parquet, written while the job runs by a process that
    # inherits this environment (results_writer.py), or at its end in this one: with
    # jemalloc the pages of a written row group go back; the default (mimalloc) kept 40 MB
    # more through a million-row run. Set before pyarrow loads; a user's choice stands.
    # Linux only: the wheels for other systems may be built without it (Arrow would warn).
    if sys.platform == "linux":
        os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "jemalloc")
    cli()
