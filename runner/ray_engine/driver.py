"""Run a job as shards on Ray: plan, start (or join) Ray, run the shards, merge, answer.

The driver holds the job folder's lock, plans the shards (saved, so a resume runs the same
ones), records the job and its run in the job's checkpoint, and starts one Ray task per
shard. Each task rebuilds the settings from their record (the key is read from the
worker's environment: it never travels through Ray) and runs `run_job` over its window of
the spec, with its own checkpoint under DIR/shards/K and lanes that lease their slots from
one `SlotBank` actor. A task whose worker is lost is retried by Ray and resumes from that
checkpoint. While the shards run, and once they are done, their checkpoints are merged
into the job's, whose counts give the message and exit code as for any job.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio

from ..control import Control
from ..errors import JobStopped, RunnerError, UsageError
from ..export import write_results_parquet
from ..lifecycle import (
    JobResult,
    check_spec,
    checkpoint_path,
    count_rows,
    finish_run,
    folder_lock,
    results_path,
)
from ..progress import Counters
from ..settings import Settings
from ..store import Store
from .merge import merge_shards
from .plan import load_plan, plan_shards, save_plan, shard_dir
from .slots import LeasedLanes, SlotBank

__all__ = ["run_sharded"]

MERGE_EVERY = 2.0  # seconds between merges while the shards run, for `runner status`
GRACE = 30.0  # seconds the shards get to stop after a signal, as one process gets


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise UsageError("--engine ray needs Ray: pip install 'glm-batch-runner[ray]'") from None
    return ray


def run_sharded(
    settings: Settings,
    shards: int | None = None,
    address: str | None = None,
    *,
    num_cpus: int | None = None,
) -> JobResult:
    """Run (or resume) the job as `shards` Ray tasks; exit codes as for `run_job`."""
    if settings.mode != "online":
        raise UsageError("--engine ray runs online jobs only; batch mode runs in one process")
    if settings.provider == "sim" and not settings.base_url:
        raise UsageError(
            "--engine ray with provider sim needs a simulator every shard can reach: start "
            "`runner sim` and pass its --base-url"
        )
    ray = _ray()
    settings = replace(
        settings, spec=settings.spec.resolve(), out=settings.out.resolve(), progress=False
    )
    spec, out = settings.spec, settings.out
    fingerprint = check_spec(settings)
    total = count_rows(spec)
    with folder_lock(out):
        started = not ray.is_initialized()
        if started:
            ray.init(
                address=address,
                num_cpus=None if address else num_cpus,
                include_dashboard=False,
                logging_level=logging.WARNING,
            )
        try:
            with _sigterm_as_interrupt():
                return _run_job(ray, settings, shards, fingerprint, total)
        finally:
            if started:
                ray.shutdown()


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM stops the job as Ctrl-C does: shards cancelled, merged, Ray shut down (the
    default would end the driver at once and leave a local Ray instance running)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def _run_job(
    ray: Any, settings: Settings, shards: int | None, fingerprint: str, total: int
) -> JobResult:
    out = settings.out
    windows = load_plan(out, fingerprint)
    if windows is None:
        n = shards or max(1, int(ray.cluster_resources().get("CPU", 1)))
        windows = plan_shards(settings.spec, n)
        save_plan(out, fingerprint, windows)
    store = Store(checkpoint_path(out))
    try:
        job = store.job()
        job_id = str(job["settings"].get("job_id")) if job else os.urandom(6).hex()
        record = {**settings.to_record(), "job_id": job_id, "engine": "ray"}
        record["shards"] = len(windows)
        store.init_job(str(settings.spec), fingerprint, total, record)
        run_id = store.start_run()
        outcomes = _run_shards(ray, settings, store, windows)
        merge_shards(store, out, windows)
        write_results_parquet(store, results_path(out))
        return _finish(settings, store, run_id, total, outcomes)
    finally:
        store.close()


def _run_shards(
    ray: Any, settings: Settings, store: Store, windows: list[Any]
) -> list[dict[str, Any]]:
    bank = ray.remote(SlotBank).options(num_cpus=0).remote()
    cpus = float(ray.cluster_resources().get("CPU", 1.0))
    # Every shard must run at once (their lanes share one tier); a shard's CPU is mostly
    # parsing answers, so asking for a share of the CPUs spreads them over the nodes.
    per_shard = max(0.01, min(1.0, cpus / len(windows)))
    task = ray.remote(_shard_main).options(
        num_cpus=per_shard, max_retries=3, scheduling_strategy="SPREAD"
    )
    refs = [
        task.remote(
            {**settings.to_record(), "window": _window_record(w)},
            str(shard_dir(settings.out, k)),
            k,
            bank,
        )
        for k, w in enumerate(windows)
    ]
    results: dict[Any, dict[str, Any]] = {}
    pending = list(refs)
    last = time.monotonic()
    try:
        while pending:
            ready, pending = ray.wait(pending, num_returns=1, timeout=MERGE_EVERY)
            for ref in ready:
                try:
                    results[ref] = ray.get(ref)
                except ray.exceptions.RayTaskError as exc:
                    cause = getattr(exc, "cause", None)
                    if isinstance(cause, RunnerError):
                        raise cause from None
                    raise
            if time.monotonic() - last >= MERGE_EVERY:
                merge_shards(store, settings.out, windows)
                last = time.monotonic()
    except KeyboardInterrupt:
        # Ctrl-C or SIGTERM: the bank tells every shard to stop as one process would (no
        # new requests, the ones in flight answered and committed); a shard still running
        # after the grace period is ended. Either way its checkpoint keeps what it committed.
        ray.get(bank.halt.remote("stopped by a signal"))
        done, pending = ray.wait(pending, num_returns=len(pending), timeout=GRACE)
        for ref in done:
            with contextlib.suppress(Exception):
                results[ref] = ray.get(ref)
        for ref in pending:
            ray.cancel(ref, force=True)
        stopped = "stopped by a signal\nresume with:"
        return [{"exit_code": 3, "message": stopped, "sent": 0, "retries": 0}, *results.values()]
    except BaseException:
        # One shard failed: on a cluster the others would run on without a driver.
        for ref in pending:
            ray.cancel(ref, force=True)
        raise
    return [results[r] for r in refs]


def _window_record(window: Any) -> dict[str, int]:
    return {
        "start": window.start,
        "end": window.end,
        "first_seq": window.first_seq,
        "first_line": window.first_line,
        "rows": window.rows,
    }


def _shard_main(record: dict[str, Any], out: str, shard: int, bank: Any) -> dict[str, Any]:
    """One shard in a Ray worker: this runner's engine over its window of the spec."""
    import ray

    from ..job import run_job

    settings = Settings.from_record(record, out=Path(out), progress=False)
    settings = settings.with_key_from_env()
    # Which process runs the shard now (a retry runs in another): for `ps`, and for a
    # test that kills it.
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / "worker.pid").write_text(f"{os.getpid()}\n")
    ray.get(bank.reset.remote(shard))  # a retried shard held nothing it can still use
    lanes = functools.partial(LeasedLanes, bank=bank, shard=shard)
    try:
        result = anyio.run(
            functools.partial(run_job, settings, handle_signals=False, lanes=lanes),
            backend="asyncio",
        )
    finally:
        ray.get(bank.reset.remote(shard))
    return {
        "exit_code": result.exit_code,
        "message": result.message,
        "sent": result.counters.sent,
        "retries": result.counters.retries,
        "stopped": result.summary["pending"] > 0,
    }


def _finish(
    settings: Settings,
    store: Store,
    run_id: int,
    total: int,
    outcomes: list[dict[str, Any]],
) -> JobResult:
    """The job's message and exit code from the merged checkpoint, as one process's."""
    counters = Counters(total=total)
    counters.sent = sum(o["sent"] for o in outcomes)
    counters.retries = sum(o["retries"] for o in outcomes)
    control = Control()
    for o in outcomes:
        if o["exit_code"] == 3 and "\nresume with:" in o["message"] and control.reason is None:
            # The shard's own first line says why; the resume hint is the job's.
            control.stop(JobStopped(o["message"].split("\nresume with:")[0]))
    return finish_run(settings, store, run_id, control, counters, store.summary())
