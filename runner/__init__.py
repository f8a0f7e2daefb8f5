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
from .job import JobResult, run_job
from .settings import RetryConfig, Settings

if TYPE_CHECKING:
    # Since moto joined the dev extra, mypy reports these as redefined (cause not found);
    # they are not: the names exist here for type checking only (see __getattr__).
    from .generation import agenerate, generate  # type: ignore[no-redef]

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


def __getattr__(name: str) -> Any:
    # generate and agenerate import pyarrow, which `runner run` needs only at the end (to
    # export), so they load on first use.
    if name in ("generate", "agenerate"):
        from . import generation

        return getattr(generation, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
