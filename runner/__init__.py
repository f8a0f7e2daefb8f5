"""Resumable, tier-capped batch runner for the Zhipu / Z.ai GLM platform.

The public API is what `__all__` lists; every other module may change without notice.
"""

from .errors import (
    BudgetExceeded,
    CheckpointError,
    FatalAPIError,
    Interrupted,
    JobStopped,
    RateLimited,
    RequestFailed,
    RetryableError,
    RowError,
    RunnerError,
    UsageError,
)
from .generation import agenerate, generate
from .job import JobResult, run_job
from .settings import RetryConfig, Settings

__all__ = [
    "BudgetExceeded",
    "CheckpointError",
    "FatalAPIError",
    "Interrupted",
    "JobResult",
    "JobStopped",
    "RateLimited",
    "RequestFailed",
    "RetryConfig",
    "RetryableError",
    "RowError",
    "RunnerError",
    "Settings",
    "UsageError",
    "agenerate",
    "generate",
    "run_job",
]
