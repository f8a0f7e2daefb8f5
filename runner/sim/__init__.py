"""A faithful Z.ai / Zhipu platform simulator served over real HTTP on loopback.

``Simulator`` embeds it in a running event loop (tests, demos); ``sim_command`` is the
``runner sim`` CLI; ``SimConfig`` holds every limit and fault knob.
"""

from runner.sim.cli import sim_command
from runner.sim.config import SimConfig
from runner.sim.server import Simulator

__all__ = ["SimConfig", "Simulator", "sim_command"]

# Reprs and tracebacks name the public home, not the private module.
SimConfig.__module__ = Simulator.__module__ = "runner.sim"
