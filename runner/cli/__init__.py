"""The `runner` command: a thin shell over the library. No job logic lives here.

One module per family of commands: run.py (run, resume), generate.py, inspect.py (status,
export, report, validate, estimate); common.py holds the platform's options they share.

Exit codes (the contract scripts rely on):
    0  every row succeeded
    1  the job finished, some rows failed (see `runner status`)
    2  usage or spec error: nothing was sent
    3  stopped early (signal, budget, the platform refused the account): resumable
"""

from __future__ import annotations

import click

from .generate import generate
from .inspect import estimate, export, report, status, validate
from .run import resume, run

__all__ = ["cli", "main"]


class _Commands(click.Group):
    """Loads `runner sim` (uvicorn and the simulator) only when it is the command run."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), "sim"])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name == "sim":
            from ..sim import sim_command

            return sim_command
        return super().get_command(ctx, cmd_name)


@click.group(cls=_Commands)
@click.version_option(package_name="glm-batch-runner")
def cli() -> None:
    """Batch runner for the Zhipu / Z.ai GLM platform and OpenAI-compatible APIs."""


for _command in (run, resume, generate, status, export, report, validate, estimate):
    cli.add_command(_command)


def main() -> None:
    cli()
