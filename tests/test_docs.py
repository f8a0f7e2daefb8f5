"""The README documents every command and the two set-up commands CI relies on."""

from __future__ import annotations

from pathlib import Path

import click

from runner.cli import cli

ROOT = Path(__file__).resolve().parents[1]


def test_every_command_is_in_the_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    ctx = click.Context(cli)
    for name in cli.list_commands(ctx):
        assert f"runner {name}" in readme, name
        command = cli.get_command(ctx, name)
        assert command is not None and command.help, f"runner {name} has no help text"


def test_readme_set_up_commands_are_what_ci_runs() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "make demo" in readme and "make test" in readme
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_every_option_has_help() -> None:
    ctx = click.Context(cli)
    for name in cli.list_commands(ctx):
        command = cli.get_command(ctx, name)
        assert command is not None
        for param in command.params:
            if isinstance(param, click.Option):
                assert param.help, f"runner {name} {param.opts[0]} has no help text"
