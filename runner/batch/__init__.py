"""Batch mode: the provider's server-side Batch API at half price, checkpointed step by step.

`files.py` splits the spec into Batch-API input files and merges result lines back into
row outcomes; `run.py` drives each file through upload, create, poll and merge.
"""

from .files import BATCH_ENDPOINTS
from .run import TERMINAL_BATCH, batch_summary, run_batch

__all__ = ["BATCH_ENDPOINTS", "TERMINAL_BATCH", "batch_summary", "run_batch"]
