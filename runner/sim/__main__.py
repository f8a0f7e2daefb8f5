"""``python -m runner.sim``: the same command as ``runner sim``."""

from runner.sim.cli import sim_command

if __name__ == "__main__":
    sim_command(prog_name="python -m runner.sim")
