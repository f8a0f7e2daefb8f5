"""A job from start to finish: checkpoint, reader, lanes, writer, progress, signals, export.

The job is one task group. The reader streams the spec (in a thread, a batch at a time)
past the rows the checkpoint already holds, into per-model lanes; workers send outcomes
to one writer that commits them in batches; when the reader ends or the job stops, the
lanes drain, the writer makes its last commit in a shielded scope, and the results are
exported. Nothing outlives `run_job`.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import sqlite3
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream

from .cost import PriceTable, load_prices
from .errors import (
    CheckpointError,
    FatalAPIError,
    Interrupted,
    UsageError,
    advice_for,
    redact,
)
from .export import write_results_parquet
from .http import make_transport
from .pool import Budget, Control, Lanes, Outcome, invalid_outcome
from .progress import Counters, render_loop
from .settings import Settings
from .spec import (
    Request,
    SpecDefaults,
    SpecError,
    read_spec,
    spec_fingerprint,
    validate_spec,
)
from .store import REOPEN_CODES, Store, advice
from .tasks import Tasks, prepare_resume

__all__ = ["EXIT_FAILED_ROWS", "EXIT_OK", "EXIT_STOPPED", "EXIT_USAGE", "JobResult", "run_job"]

EXIT_OK, EXIT_FAILED_ROWS, EXIT_USAGE, EXIT_STOPPED = 0, 1, 2, 3

CHECKPOINT = "checkpoint.sqlite"
RESULTS = "results.parquet"


@dataclass
class JobResult:
    exit_code: int
    message: str
    summary: dict[str, Any]
    counters: Counters


def checkpoint_path(out: Path) -> Path:
    return out / CHECKPOINT


def count_rows(path: Path) -> int:
    """Rows in the spec, for progress and `pending`, without parsing them.

    A JSONL row is a line that is not blank; Parquet says its row count in the footer.
    """
    if path.suffix.lower() in (".parquet", ".pq"):
        import pyarrow.parquet as pq

        return int(pq.ParquetFile(path).metadata.num_rows)
    n = 0
    with path.open("rb") as f:
        for line in f:
            if line.strip():
                n += 1
    return n


def _defaults(settings: Settings) -> SpecDefaults:
    return SpecDefaults(
        endpoint=settings.endpoint, model=settings.model, body=dict(settings.body_defaults)
    )


def begin_job(
    store: Store, settings: Settings, fingerprint: str, total: int
) -> tuple[str, PriceTable]:
    """Check the spec against the checkpoint and record the job; its id and prices."""
    job_id = _check_job(store, settings, fingerprint)
    store.init_job(
        str(settings.spec), fingerprint, total, {**settings.to_record(), "job_id": job_id}
    )
    return job_id, load_prices(settings.provider_info.price_table, settings.prices)


def _check_job(store: Store, settings: Settings, fingerprint: str) -> str:
    """Refuse a changed spec on resume (unless forced); return the job's stable id."""
    job = store.job()
    if job is None:
        return uuid.uuid4().hex[:12]
    if job["spec_fingerprint"] != fingerprint and not settings.force:
        raise UsageError(
            f"the spec changed since this job started in {settings.out} "
            f"(was {job['spec_path']}, fingerprint {job['spec_fingerprint'][:12]}; now "
            f"{fingerprint[:12]}). Rows are matched by position, so resuming could mix "
            "results. Use a new --out folder, or pass --force to resume anyway."
        )
    return str(job["settings"].get("job_id") or uuid.uuid4().hex[:12])


@contextlib.asynccontextmanager
async def serve_backend(settings: Settings) -> AsyncIterator[Settings]:
    """For provider 'sim' with no --base-url, serve the embedded simulator for the job."""
    if settings.base_url:
        yield settings
        return
    if settings.provider != "sim":
        base = settings.provider_info.base_url
        if not base:
            raise UsageError(f"provider {settings.provider!r} needs --base-url")
        yield replace(settings, base_url=base)
        return
    from .sim import SimConfig, Simulator

    # Tasks finish in a second and are polled often, so a demo of videos takes seconds.
    async with Simulator(SimConfig(latency=0.05, seed=0, task_seconds=1.0)) as sim:
        yield replace(
            settings,
            base_url=sim.base_url,
            poll_initial=min(settings.poll_initial, 0.25),
            poll_max=min(settings.poll_max, 1.0),
        )


async def _writer(
    store: Store,
    results: MemoryObjectReceiveStream[Outcome],
    counters: Counters,
    budget: Budget,
    settings: Settings,
    lock: anyio.CapacityLimiter,
) -> None:
    """The single writer: batch outcomes, commit, and only then count them as done.

    `lock` is shared with the async-task commits (`tasks.py`), so two threads never use
    the SQLite connection at once.
    """
    batch: list[Outcome] = []

    async def flush() -> None:
        nonlocal batch
        if not batch:
            return
        pending, batch = batch, []
        await anyio.to_thread.run_sync(store.record, pending, limiter=lock)
        for o in pending:
            if o["status"] == "succeeded":
                counters.succeeded += 1
            elif o["status"] == "failed":
                counters.failed += 1
            counters.cost_nano += o.get("cost_nano") or 0

    async with results:
        try:
            last = time.monotonic()
            while True:
                # Take whatever is ready without waiting. Commit when the batch is full, or
                # when the stream runs dry and the last commit is `commit_interval` old: few
                # large transactions under load, prompt ones when results trickle in.
                try:
                    batch.append(results.receive_nowait())
                    if len(batch) < settings.commit_batch:
                        continue
                except anyio.WouldBlock:
                    if batch:
                        wait = settings.commit_interval - (time.monotonic() - last)
                        if wait > 0:
                            await anyio.sleep(wait)
                            continue
                    else:
                        try:
                            batch.append(await results.receive())
                        except anyio.EndOfStream:
                            break
                        continue
                except anyio.EndOfStream:
                    break
                await flush()
                last = time.monotonic()
        finally:
            with anyio.CancelScope(shield=True):
                await flush()


async def watch_signals(control: Control, scope: anyio.CancelScope, grace: float) -> None:
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            if control.reason is None:
                name = signal.Signals(signum).name
                control.stop(Interrupted(f"stopped by {name}: in-flight requests are finishing"))
                print(
                    f"\n{name}: finishing in-flight requests (up to {grace:g}s); "
                    "press Ctrl-C again to stop at once",
                    file=sys.stderr,
                    flush=True,
                )
            else:
                scope.cancel()
                return


async def watch_grace(control: Control, scope: anyio.CancelScope, grace: float) -> None:
    await control.stopping.wait()
    await anyio.sleep(grace)
    scope.cancel()


async def run_job(
    settings: Settings,
    *,
    handle_signals: bool = True,
    grace: float = 30.0,
    lanes: Callable[..., Lanes] = Lanes,
) -> JobResult:
    """Run (or resume) a job; the exit code follows the CLI contract (0/1/2/3).

    `lanes` builds the online worker pool; `generate.py` passes a subclass that checks
    each answer (and may ask again) before the row's outcome goes to the writer.
    """
    spec = settings.spec
    defaults = _defaults(settings)
    try:
        fingerprint = await anyio.to_thread.run_sync(spec_fingerprint, spec)
        total = await anyio.to_thread.run_sync(count_rows, spec)
        if settings.strict:
            report = await anyio.to_thread.run_sync(validate_spec, spec, defaults)
            if report.invalid:
                raise UsageError(
                    f"--strict: {report.invalid} invalid rows, nothing was sent:\n"
                    + report.render()
                )
    except SpecError as exc:
        raise UsageError(str(exc)) from exc
    except OSError as exc:
        raise UsageError(f"cannot read spec {spec}: {exc}") from exc
    if settings.mode not in ("online", "batch"):
        raise UsageError(f"unknown mode {settings.mode!r}: use 'online' or 'batch'")
    with _folder_lock(settings.out):
        store = Store(checkpoint_path(settings.out))
        try:
            if settings.mode == "batch":
                from .batch import run_batch

                return await run_batch(settings, store, fingerprint, total, handle_signals, grace)
            return await run_online(
                settings, store, fingerprint, total, handle_signals, grace, lanes
            )
        except sqlite3.DatabaseError as exc:
            path = checkpoint_path(settings.out)
            raise CheckpointError(
                f"cannot use checkpoint {path}: {exc}. {advice(exc, path)}"
            ) from exc
        except BaseExceptionGroup as group:
            # A task group wraps what its tasks raised; the writer's store failure is the
            # one the user must act on (disk full, read-only), so it is the one we raise.
            store_error = group.subgroup(CheckpointError)
            if store_error is None:
                raise
            raise _first(store_error) from group
        finally:
            store.close()


def _first(group: BaseExceptionGroup[CheckpointError]) -> CheckpointError:
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    assert isinstance(exc, CheckpointError)
    return exc


@contextlib.contextmanager
def _folder_lock(out: Path) -> Iterator[None]:
    """One runner per output folder: two would both send the same pending rows."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd = os.open(out / "checkpoint.lock", os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise CheckpointError(f"cannot create checkpoint folder {out}: {exc}") from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise CheckpointError(
                f"another runner is working on {out}: wait for it to finish (or stop it with "
                "Ctrl-C), then resume; two runners would send the same rows twice"
            ) from None
        yield
    finally:
        os.close(fd)  # closing releases the lock


async def run_online(
    settings: Settings,
    store: Store,
    fingerprint: str,
    total: int,
    handle_signals: bool,
    grace: float,
    make_lanes: Callable[..., Lanes] = Lanes,
) -> JobResult:
    job_id, prices = begin_job(store, settings, fingerprint, total)
    # Async tasks from earlier runs: 'submitting' ones fail as submit_unknown, the rest are
    # polled again; the reader must not send any of them.
    open_rows = prepare_resume(store)
    done = store.done_bitmap(total)
    already = sum(bin(b).count("1") for b in done)
    for row in open_rows:
        seq = int(row["seq"])
        if seq < total:
            already -= row["status"] == "failed"  # reopened: it will be counted when done
            done[seq >> 3] |= 1 << (seq & 7)
    # Rows a server-side batch may still answer (and bill) are not sent online.
    for seq in store.open_batch_seqs():
        if seq < total:
            done[seq >> 3] |= 1 << (seq & 7)
    counters = Counters(total=total, already_done=already, currency=prices.currency)
    control = Control()
    budget = Budget.for_job(settings.max_cost, store.summary()["cost_nano"])
    run_id = store.start_run()
    defaults = _defaults(settings)

    async with serve_backend(settings) as settings, anyio.create_task_group() as outer:
        transport = make_transport(
            settings.transport,
            settings.base_url,
            settings.api_key.reveal(),
            dict(settings.provider_info.extra_headers),
        )
        if settings.progress:
            outer.start_soon(render_loop, counters)
        work_scope = anyio.CancelScope()
        if handle_signals:
            outer.start_soon(watch_signals, control, work_scope, grace)
        outer.start_soon(watch_grace, control, work_scope, grace)
        results_send, results_recv = anyio.create_memory_object_stream[Outcome](4096)
        store_lock = anyio.CapacityLimiter(1)
        tasks = Tasks(settings, store, store_lock, job_id)
        try:
            async with anyio.create_task_group() as work:
                work.start_soon(
                    _writer, store, results_recv, counters, budget, settings, store_lock
                )
                with work_scope:
                    # Pollers run in lanes_tg, so the job waits for them; the downloader in
                    # `tasks` closes only after they are done.
                    async with tasks, anyio.create_task_group() as lanes_tg:
                        lanes = make_lanes(
                            settings,
                            transport,
                            prices,
                            counters,
                            control,
                            budget,
                            results_send,
                            lanes_tg,
                            submit_task=tasks.submit,
                        )
                        tasks.start(lanes, lanes_tg, open_rows)
                        reader_scope = anyio.CancelScope()
                        control.on_stop(reader_scope.cancel)
                        with reader_scope:
                            await _read(settings, defaults, done, lanes)
                        lanes.close()
                # If the lanes were cancelled (hard stop), the writer still owns its stream.
                results_send.close()
        finally:
            with anyio.CancelScope(shield=True):
                await transport.aclose()
            outer.cancel_scope.cancel()

    summary = store.summary()
    await anyio.to_thread.run_sync(write_results_parquet, store, settings.out / "results.parquet")
    return finish_run(settings, store, run_id, control, counters, summary)


async def _read(settings: Settings, defaults: SpecDefaults, done: bytearray, lanes: Lanes) -> None:
    batches = read_spec(settings.spec, defaults)
    invalid: list[Outcome] = []
    while True:
        batch = await anyio.to_thread.run_sync(next, batches, None)
        if batch is None:
            break
        for item in batch:
            seq = item.seq
            if seq >> 3 < len(done) and done[seq >> 3] & (1 << (seq & 7)):
                continue
            if isinstance(item, Request):
                await lanes.feed(item)
            else:
                invalid.append(invalid_outcome(item))
        if invalid:
            for o in invalid:
                await lanes.results.send(o)
            invalid.clear()


def finish_run(
    settings: Settings,
    store: Store,
    run_id: int,
    control: Control,
    counters: Counters,
    summary: dict[str, Any],
) -> JobResult:
    key = settings.api_key.reveal()
    reason = control.reason
    if reason is not None:
        message = redact(str(reason), key)
        if isinstance(reason, FatalAPIError):
            message = (
                f"stopped: the platform refused the account: {message}. "
                f"{advice_for(reason.code, reason.status, settings.provider_info.key_env)}"
            )
        message += f"\nresume with: runner resume {settings.out}"
        outcome, code = "stopped", EXIT_STOPPED
    elif summary["pending"] > 0 or summary["in_progress"] > 0:
        message = (
            f"{summary['pending']} rows still pending; resume with: runner resume {settings.out}"
        )
        outcome, code = "stopped", EXIT_STOPPED
    elif summary["failed"]:
        message = f"finished: {summary['succeeded']} succeeded, {summary['failed']} failed"
        reopen = sum(e["rows"] for e in summary["errors"] if e["code"] in REOPEN_CODES)
        if reopen:
            message += (
                f"\n{reopen} async tasks are still running or their files were not fetched; "
                f"resume to poll them again (never resubmitted): runner resume {settings.out}"
            )
        outcome, code = "finished_with_failures", EXIT_FAILED_ROWS
    else:
        message = f"finished: all {summary['succeeded']} rows succeeded"
        outcome, code = "finished", EXIT_OK
    try:
        store.end_run(run_id, outcome, message, counters.sent, counters.retries)
    except Exception as exc:  # the run's own record is best effort
        raise CheckpointError(f"cannot record the end of the run: {exc}") from exc
    return JobResult(code, message, store.summary(), counters)
