"""A job's life, the same in every mode: lock, begin, run, finish, exit code.

`run_job` (job.py) takes the output folder's lock (`folder_lock`) and hands the checkpoint
to a mode (online.py, batch.py). Each mode opens its run with `open_run`, which checks the
spec against the checkpoint (`begin_job`), serves the embedded simulator when asked to
(`serve_backend`), opens the transport, starts the progress display and the signal
watchers, and gives the mode a `Run`; the mode ends with `close_run`, which exports
results.parquet and turns the checkpoint's counts into the exit code (`finish_run`).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from .accounts import Accounts
from .control import Budget, Control
from .cost import PriceTable, load_prices
from .errors import (
    CheckpointError,
    FatalAPIError,
    Interrupted,
    JobStopped,
    TransportFatal,
    UsageError,
    advice_for,
    redact,
)
from .http import Transport, make_transport
from .progress import Counters, render_loop
from .report.timeline import record as record_timeline
from .settings import Settings, spec_location
from .spec import (
    Request,
    SpecError,
    SpecWindow,
    count_lines,
    open_spec,
    read_spec,
    spec_fingerprint,
    validate_spec,
    window_digest,
)
from .store import REOPEN_CODES, Store

if TYPE_CHECKING:
    from .attend import Attendant
    from .pool import Lanes
    from .results_writer import ResultsWriter

__all__ = [
    "CHECKPOINT",
    "EXIT_FAILED_ROWS",
    "EXIT_OK",
    "EXIT_STOPPED",
    "EXIT_USAGE",
    "RESULTS",
    "JobResult",
    "JobStart",
    "Run",
    "check_spec",
    "checkpoint_path",
    "close_run",
    "count_rows",
    "finish_run",
    "folder_lock",
    "marks_path",
    "open_run",
    "results_path",
]

EXIT_OK, EXIT_FAILED_ROWS, EXIT_USAGE, EXIT_STOPPED = 0, 1, 2, 3

CHECKPOINT = "checkpoint.sqlite"
RESULTS = "results.parquet"
MARKS = "spec.marks"
IDENTITY = "spec.identity"


@dataclass
class JobResult:
    exit_code: int
    message: str
    summary: dict[str, Any]
    counters: Counters
    reason: JobStopped | None = None  # why it stopped early, if it did


def checkpoint_path(out: Path) -> Path:
    return out / CHECKPOINT


def results_path(out: Path) -> Path:
    return out / RESULTS


def marks_path(out: Path) -> Path:
    """Where the spec is marked for a resume to seek (spec.reader.count_lines)."""
    return out / MARKS


def identity_path(out: Path) -> Path:
    """Where a local spec's digest is kept with its version (spec.reader.spec_fingerprint)."""
    return out / IDENTITY


def count_rows(path: Path, marks: Path | None = None) -> int:
    """Rows in the spec, for progress and `pending`, without parsing them.

    A JSONL row is a line that is not blank; Parquet says its row count in the footer.
    A JSONL spec leaves resume marks in `marks` as it is counted.
    """
    if path.suffix.lower() in (".parquet", ".pq"):
        import pyarrow.parquet as pq

        with open_spec(path) as f:
            return int(pq.ParquetFile(f).metadata.num_rows)
    return count_lines(path, marks)


def check_spec(settings: Settings) -> str:
    """The spec's fingerprint, once the spec as a whole is fit to run: readable and, with
    --strict, without an invalid row (a shard leaves that check to its driver)."""
    spec = settings.spec
    try:
        window = settings.window
        if window is not None and window.digest is not None:
            return _check_window(spec, window)
        # The folder now, so that a first run keeps the digest for its resumes too.
        with contextlib.suppress(OSError):
            settings.out.mkdir(parents=True, exist_ok=True)
        fingerprint = spec_fingerprint(spec, identity_path(settings.out))
        if settings.strict and settings.window is None:
            report = validate_spec(spec, settings.spec_defaults())
            if report.invalid:
                raise UsageError(
                    f"--strict: {report.invalid} invalid rows, nothing was sent:\n"
                    + report.render()
                )
        if settings.max_cost is not None and settings.window is None:
            _refuse_unpriced(settings)
    except SpecError as exc:
        raise UsageError(str(exc)) from exc
    except OSError as exc:
        raise UsageError(f"cannot read spec {spec}: {exc}") from exc
    return fingerprint


def _check_window(spec: Path, window: SpecWindow) -> str:
    """A shard reads its window of the spec alone: it must hold the bytes the job was
    planned on (a node may have a copy of its own, or an older one)."""
    digest = window_digest(spec, window)
    if digest != window.digest:
        raise UsageError(
            f"the spec {spec} read here is not the one this job was planned on (the rows "
            f"from line {window.first_line} differ): every node must see the same spec at "
            "the same path, or read it from object storage"
        )
    return digest


def _refuse_unpriced(settings: Settings) -> None:
    """--max-cost needs a price for every row's model: a row of an unpriced model would
    count as free, and the budget would not be the one the user asked for."""
    prices = load_prices(settings.provider_info.price_table, settings.prices)
    unpriced: set[str] = set()
    for batch in read_spec(settings.spec, settings.spec_defaults()):
        for row in batch:
            if isinstance(row, Request) and prices.price(row.model) is None:
                unpriced.add(row.model)
    if unpriced:
        names = ", ".join(sorted(unpriced))
        raise UsageError(
            f"--max-cost cannot be enforced: no price for {names} in the "
            f"{settings.provider_info.price_table!r} price table; nothing was sent. Give "
            "their prices with --prices FILE (per 1M tokens: "
            '{"models": {"NAME": {"input": "0.5", "output": "1.5"}}}) or drop --max-cost'
        )


@contextlib.contextmanager
def folder_lock(out: Path) -> Iterator[None]:
    """One runner per output folder: two would both send the same pending rows."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd = os.open(out / "checkpoint.lock", os.O_RDWR | os.O_CREAT, 0o644)
    except FileExistsError:
        raise CheckpointError(
            f"cannot create checkpoint folder {out}: a file of that name is in the way; "
            "choose another --out"
        ) from None
    except NotADirectoryError:
        blocker = next((p for p in out.parents if p.is_file()), out.parent)
        raise CheckpointError(
            f"cannot create checkpoint folder {out}: {blocker} is a file, not a folder; "
            "choose another --out"
        ) from None
    except OSError as exc:
        reason = (exc.strerror or str(exc)).lower()
        raise CheckpointError(f"cannot create checkpoint folder {out}: {reason}") from None
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


def folder_in_use(out: Path) -> bool:
    """Whether a runner holds `out`'s lock now (False when none does, or none ever ran)."""
    try:
        fd = os.open(out / "checkpoint.lock", os.O_RDONLY)
    except OSError:
        return False
    try:
        # A shared lock, let go at once: it fails only while a runner holds the lock.
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def _begin_job(
    store: Store, settings: Settings, fingerprint: str, total: int
) -> tuple[str, PriceTable]:
    """Check the spec against the checkpoint and record the job; its id and prices."""
    job_id = _check_job(store, settings, fingerprint)
    store.init_job(
        spec_location(settings.spec), fingerprint, total, {**settings.to_record(), "job_id": job_id}
    )
    return job_id, load_prices(settings.provider_info.price_table, settings.prices)


def _check_job(store: Store, settings: Settings, fingerprint: str) -> str:
    """Refuse a changed spec on resume (unless forced); return the job's stable id."""
    job = store.job()
    if job is None:
        return _new_job_id()
    if job["spec_fingerprint"] != fingerprint and not settings.force:
        raise UsageError(
            f"the spec changed since this job started in {settings.out} "
            f"(was {job['spec_path']}, fingerprint {job['spec_fingerprint'][:12]}; now "
            f"{fingerprint[:12]}). Rows are matched by position, so resuming could mix "
            "results. Use a new --out folder, or pass --force to resume anyway."
        )
    return str(job["settings"].get("job_id") or _new_job_id())


def _new_job_id() -> str:
    """12 random hex digits (uuid4's first 12 were the same, at the cost of importing uuid)."""
    return os.urandom(6).hex()


@contextlib.asynccontextmanager
async def _serve_backend(settings: Settings) -> AsyncIterator[Settings]:
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


async def _watch_signals(control: Control, scope: anyio.CancelScope, grace: float) -> None:
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            if control.reason is None:
                name = signal.Signals(signum).name
                control.stop(Interrupted(f"stopped by {name}"))
                print(
                    f"\n{name}: finishing in-flight requests (up to {grace:g}s); "
                    "press Ctrl-C again to stop at once",
                    file=sys.stderr,
                    flush=True,
                )
            else:
                scope.cancel()
                return


async def _watch_grace(control: Control, scope: anyio.CancelScope, grace: float) -> None:
    await control.stopping.wait()
    await anyio.sleep(grace)
    scope.cancel()


@dataclass(frozen=True, slots=True)
class JobStart:
    """What `run_job` hands a mode: the job, its open checkpoint, and how it may stop."""

    settings: Settings
    store: Store
    fingerprint: str  # of the spec, checked against the checkpoint's
    total: int  # rows in the spec
    handle_signals: bool = True
    grace: float = 30.0  # seconds the requests in flight get after a stop
    attendant: Attendant | None = None  # --notify, --metrics-port (attend.py)


@dataclass
class Run:
    """One run of a job, as `open_run` gives it to a mode."""

    settings: Settings  # with the base URL resolved (the embedded simulator's, for "sim")
    store: Store
    job_id: str
    run_id: int
    prices: PriceTable
    counters: Counters
    control: Control
    budget: Budget
    transport: Transport
    # Cancelled by a second Ctrl-C, or when the grace period after a stop runs out.
    work_scope: anyio.CancelScope
    # Held by whichever thread uses the checkpoint's connection: one at a time.
    store_lock: anyio.CapacityLimiter
    # The job's keys, one account each; `transport` is the first one's.
    accounts: Accounts
    # The online worker pool, once the mode made it (the metrics read its limiters).
    lanes: Lanes | None = None
    # results.parquet as the job goes, where the mode writes it so (online.py).
    results: ResultsWriter | None = None


@contextlib.asynccontextmanager
async def open_run(start: JobStart) -> AsyncIterator[Run]:
    """Begin a run of the job: everything a mode needs, closed again when it is done."""
    settings, store, total, grace = start.settings, start.store, start.total, start.grace
    job_id, prices = _begin_job(store, settings, start.fingerprint, total)
    counters = Counters(total=total, currency=prices.currency)
    control = Control()
    spent = store.total_cost() if settings.max_cost is not None else 0
    budget = Budget.for_job(settings.max_cost, spent)
    run_id = store.start_run()
    async with _serve_backend(settings) as live, anyio.create_task_group() as outer:
        # One transport per key: the key sits in one header of its connections, nowhere else.
        transports = [
            make_transport(
                live.transport,
                live.base_url,
                key.secret.reveal(),
                dict(live.provider_info.extra_headers),
                config=live.http_config,
            )
            for key in live.key_pool
        ]
        transport = transports[0]
        accounts = Accounts(live, transports)
        store.record_keys(accounts.states())
        if live.progress:
            outer.start_soon(render_loop, counters)
        work_scope = anyio.CancelScope()
        if start.handle_signals:
            outer.start_soon(_watch_signals, control, work_scope, grace)
        outer.start_soon(_watch_grace, control, work_scope, grace)
        store_lock = anyio.CapacityLimiter(1)
        # Per-second counters for `runner report`, sampled from `counters`: not per row.
        outer.start_soon(record_timeline, counters, store.db.conn, store_lock, run_id)
        run = Run(
            live, store, job_id, run_id, prices, counters, control, budget, transport,
            work_scope, store_lock, accounts,
        )  # fmt: skip
        if start.attendant is not None:
            start.attendant.watch_run(run, outer)
        try:
            yield run
        finally:
            with anyio.CancelScope(shield=True):
                for t in transports:
                    await t.aclose()
            outer.cancel_scope.cancel()


async def close_run(run: Run) -> JobResult:
    """Export results.parquet and end the run with its message and exit code.

    A run stopped by a signal skips the export: rewriting results.parquet is most of the
    time a stop of a big job takes (about 9 s at a million rows), and whoever sends
    SIGTERM (a scheduler, a container runtime) waits a few seconds before SIGKILL. Every
    result is in the checkpoint; a results.parquet left by an earlier run is removed, so
    no file disagrees with it. The next run that ends writes it, and so does
    `runner export OUT -o FILE` at any time.
    """
    store = run.store
    store.record_keys(run.accounts.states())
    target = results_path(run.settings.out)
    if isinstance(run.control.reason, Interrupted):
        if run.results is not None:
            await anyio.to_thread.run_sync(run.results.abandon)
        await anyio.to_thread.run_sync(_drop_stale, target)
    elif run.results is not None:
        await anyio.to_thread.run_sync(run.results.finish, store)
    else:
        from .export import write_results_parquet  # pyarrow: loaded only when it is needed

        await anyio.to_thread.run_sync(write_results_parquet, store, target)
    result = finish_run(run.settings, store, run.run_id, run.control, run.counters, store.summary())
    if isinstance(run.control.reason, Interrupted):
        result.message += (
            f"\nresults.parquet is written when the job finishes (now: runner export "
            f"{run.settings.out} -o FILE)"
        )
    return result


def _drop_stale(target: Path) -> None:
    with contextlib.suppress(FileNotFoundError, IsADirectoryError):
        target.unlink()


def finish_run(
    settings: Settings,
    store: Store,
    run_id: int,
    control: Control,
    counters: Counters,
    summary: dict[str, Any],
) -> JobResult:
    reason = control.reason
    if reason is not None:
        message = redact(str(reason), *settings.secrets())
        if isinstance(reason, TransportFatal):
            message = f"stopped: {message}"
        elif isinstance(reason, FatalAPIError):
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
    elif summary["succeeded"] == 0 and _all_invalid(summary):
        rows = "the only row is" if summary["failed"] == 1 else f"all {summary['failed']} rows are"
        spec = spec_location(settings.spec)
        message = f"nothing was sent: {rows} invalid; `runner validate {spec}` says why"
        outcome, code = "finished_with_failures", EXIT_USAGE
    elif summary["failed"]:
        message = f"finished: {summary['succeeded']} succeeded, {summary['failed']} failed"
        reopen = sum(summary["error_codes"].get(code, 0) for code in REOPEN_CODES)
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
    # Only the runs changed since `summary` was read; summing a million rows again took
    # half a second of a stop's time.
    return JobResult(code, message, {**summary, "runs": store.runs()}, counters, reason)


def _all_invalid(summary: dict[str, Any]) -> bool:
    failed = int(summary["failed"])
    return failed > 0 and summary["error_codes"].get("invalid_row") == failed
