"""Run a job: the one entry point of the library and the CLI, for every mode.

`run_job` checks the spec as a whole, takes the output folder's lock, opens the checkpoint
and hands it to the mode (online.py or batch.py); a failure of the checkpoint itself comes
out as one CheckpointError whatever task hit it. How a run begins and ends is lifecycle.py.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar, cast

import anyio

from .attend import attend
from .endpoints import KEEP_RESPONSE
from .errors import CheckpointError, UsageError
from .lifecycle import (
    EXIT_FAILED_ROWS,
    EXIT_OK,
    EXIT_STOPPED,
    EXIT_USAGE,
    JobResult,
    JobStart,
    check_spec,
    checkpoint_path,
    count_rows,
    folder_lock,
    marks_path,
)
from .online import run_online
from .pool import Lanes
from .settings import Settings
from .store import Store, advice

__all__ = [
    "EXIT_FAILED_ROWS",
    "EXIT_OK",
    "EXIT_STOPPED",
    "EXIT_USAGE",
    "JobResult",
    "checkpoint_path",
    "run_job",
]


async def run_job(
    settings: Settings,
    *,
    handle_signals: bool = True,
    grace: float = 30.0,
    lanes: Callable[..., Lanes] = Lanes,
) -> JobResult:
    """Run (or resume) a job; the exit code follows the CLI contract (0/1/2/3).

    `lanes` builds the online worker pool; `runner.generate` passes a subclass that checks
    each answer (and may ask again) before the row's outcome goes to the writer.
    """
    spec = settings.spec
    fingerprint = await anyio.to_thread.run_sync(check_spec, settings)
    if settings.mode not in ("online", "batch"):
        raise UsageError(f"unknown mode {settings.mode!r}: use 'online' or 'batch'")
    if settings.keep_response not in KEEP_RESPONSE:
        raise UsageError(
            f"unknown keep_response {settings.keep_response!r}: use 'full' or 'answer'"
        )
    with folder_lock(settings.out):
        store = Store(checkpoint_path(settings.out))
        try:
            # A resume of the same spec takes the count it recorded: counting a million
            # lines again would delay its first request by a fifth of a second.
            total = store.stored_total(fingerprint)
            if settings.window is not None:  # a shard: the part of the spec it runs
                total = settings.window.rows
            elif total is None:
                total = await anyio.to_thread.run_sync(_count_rows, spec, marks_path(settings.out))
            async with attend(settings) as attendant:
                start = JobStart(
                    settings, store, fingerprint, total, handle_signals, grace, attendant
                )
                if settings.mode == "batch":
                    from .batch import run_batch  # only batch jobs load the Batch API driver

                    result = await run_batch(start)
                else:
                    result = await run_online(start, make_lanes=lanes)
                attendant.ended(result)
            return result
        except sqlite3.DatabaseError as exc:
            path = checkpoint_path(settings.out)
            raise CheckpointError(
                f"cannot use checkpoint {path}: {exc}. {advice(exc, path)}"
            ) from exc
        except BaseExceptionGroup as group:
            # A task group wraps what its tasks raised; the writer's store failure is the
            # one the user must act on (disk full, read-only), so it is the one we raise.
            store_error = group.subgroup(CheckpointError)
            if store_error is not None:
                raise _first(store_error) from group
            # SQLite refusing the file itself (damaged pages) inside a task: the reader's
            # id lookups or a resume's first reads can meet it before anything else does.
            db_error = group.subgroup(sqlite3.DatabaseError)
            if db_error is None:
                raise
            path = checkpoint_path(settings.out)
            cause = _first(db_error)
            raise CheckpointError(
                f"cannot use checkpoint {path}: {cause}. {advice(cause, path)}"
            ) from group
        finally:
            store.close()


def _count_rows(spec: Path, marks: Path) -> int:
    try:
        return count_rows(spec, marks)
    except OSError as exc:
        raise UsageError(f"cannot read spec {spec}: {exc}") from exc


_E = TypeVar("_E", bound=BaseException)


def _first(group: BaseExceptionGroup[_E]) -> _E:
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return cast(_E, exc)
