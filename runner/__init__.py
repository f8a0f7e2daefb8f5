"""Resumable, tier-capped batch runner for the Zhipu / Z.ai GLM platform.

The public API is what `__all__` lists; every other module may change without notice.
"""

import sys
import types
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
    from .generate import agenerate, generate

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


class _Package(types.ModuleType):
    """`generate` and `agenerate` are loaded on first use: they import pyarrow, which
    `runner run` needs only to export at the end. Properties, not a module `__getattr__`:
    importing the submodule `runner.generate` binds the package's `generate` to that
    module, and the setter below keeps the function in its place."""

    @property
    def generate(self) -> Any:
        from .generate import generate

        return generate

    @generate.setter
    def generate(self, value: Any) -> None:
        pass

    @property
    def agenerate(self) -> Any:
        from .generate import agenerate

        return agenerate


sys.modules[__name__].__class__ = _Package
