"""Resumable, tier-capped batch runner for the Zhipu / Z.ai GLM platform.

The public API is what `__all__` lists; every other module may change without notice.
"""

from typing import TYPE_CHECKING, Any

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

if TYPE_CHECKING:
    # Since moto joined the dev extra, mypy reports these as redefined (cause not found);
    # they are not: the names exist here for type checking only (see __getattr__).
    from .generation import agenerate, generate  # type: ignore[no-redef]
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


# Loaded on first use: generate and agenerate import pyarrow, which `runner run` needs only
# to export; the job's modules are most of the 17 MB that importing the package cost a
# process that needs only part of it (the results writer beside a job).
_LAZY = {
    "generate": "generation",
    "agenerate": "generation",
    "run_job": "job",
    "JobResult": "job",
    "Settings": "settings",
    "RetryConfig": "settings",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
