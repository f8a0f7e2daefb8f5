"""Dataset generation: a prompt mapped over a table, answers back as typed columns.

`generate.py` is the entry (`generate`, `agenerate`); it builds the job's requests from the
input (`sources.py`, `prompts.py`) and runs them on the engine with `reask.CheckedLanes`,
which checks each answer against the schema (`answers.py`), asks again when it does not
match, and keeps answers in the shared response cache (`cache.py`).
"""

from .generate import agenerate, generate, summary_of

__all__ = ["agenerate", "generate", "summary_of"]
