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


def test_the_files_session_in_the_readme_is_what_the_samples_do(tmp_path: Path) -> None:
    """The README's session over samples/files.jsonl, run again: same counts, same lines."""
    import subprocess
    import sys

    samples = ROOT / "samples"
    made = {p.name: p.read_bytes() for p in (samples / "media").iterdir()}
    subprocess.run([sys.executable, "make_files.py"], cwd=samples, check=True,
                   capture_output=True)  # fmt: skip
    assert {p.name: p.read_bytes() for p in (samples / "media").iterdir()} == made
    out = tmp_path / "files-out"
    r = subprocess.run(
        [sys.executable, "-m", "runner", "run", "files.jsonl", "--out", str(out),
         "--provider", "sim", "--no-progress"],
        cwd=samples, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 1, r.stderr
    readme = (ROOT / "README.md").read_text()
    for line in r.stdout.splitlines()[:2]:
        assert line in readme, line
    status = subprocess.run([sys.executable, "-m", "runner", "status", str(out)], cwd=samples,
                            capture_output=True, text=True, timeout=60).stdout  # fmt: skip
    for model in ("glm-4.5v: 3 rows", "glm-asr-2512: 1 row", "glm-ocr: 1 row"):
        (line,) = [x for x in status.splitlines() if model in x]
        assert line in readme, line
