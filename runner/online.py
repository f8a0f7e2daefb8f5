"""Online mode: rows stream from the spec through per-model lanes, answers to one writer.

The run is one task group. The reader streams the spec (in a thread, a batch at a time)
past the rows the checkpoint already holds, into per-model lanes (pool.py); async-task rows
go to `Tasks` (tasks.py), whose pollers run beside the lanes; workers send outcomes to one
writer that commits them in batches. When the reader ends or the job stops, the lanes
drain, the writer makes its last commit in a shielded scope, and `close_run` exports the
results. Nothing outlives `run_online`.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream

from .agent_files import AgentFiles
from .lifecycle import JobResult, JobStart, Run, close_run, marks_path, open_run, results_path
from .outcome import Outcome, invalid_outcome
from .pool import JobContext, Lanes
from .progress import Counters
from .settings import Settings, spec_location
from .spec import Request, SpecDefaults, read_spec
from .store import Claims, Store
from .tasks import Tasks, prepare_resume

__all__ = ["run_online"]

# When results.parquet starts to follow the job, and how often it takes the rows that
# became final since.
FOLLOW_FROM = 5.0
FOLLOW_EVERY = 2.0


async def run_online(start: JobStart, make_lanes: Callable[..., Lanes] = Lanes) -> JobResult:
    store, total = start.store, start.total
    run: Run | None = None
    try:
        async with open_run(start) as run:
            async with run.store_lock:  # the timeline may be writing already
                # Async tasks from earlier runs: 'submitting' ones fail as submit_unknown, the
                # rest are polled again; the reader must not send any of them.
                open_rows = prepare_resume(store)
                done = store.done_bitmap(total)
                already = int.from_bytes(done, "little").bit_count()
                for row in open_rows:
                    seq = int(row["seq"])
                    if seq < total:
                        already -= row["status"] == "failed"  # reopened: counted when done
                        done[seq >> 3] |= 1 << (seq & 7)
                # results.parquet stops short of the first row an earlier run left open.
                stop = min((int(row["seq"]) for row in open_rows), default=total)
                # Rows a server-side batch may still answer (and bill) are not sent online.
                for seq in store.open_batch_seqs():
                    stop = min(stop, seq)
                    if seq < total:
                        done[seq >> 3] |= 1 << (seq & 7)
            run.counters.already_done = already
            live, control = run.settings, run.control
            ctx = JobContext(
                live, run.transport, run.prices, run.counters, control, run.budget, run.accounts
            )
            results_send, results_recv = anyio.create_memory_object_stream[Outcome](4096)
            store_lock = run.store_lock  # the writer's, the task commits' and the timeline's
            ctx.agent_files = AgentFiles(live, store, store_lock, control)
            tasks = Tasks(ctx, store, store_lock, run.job_id)
            following = anyio.CancelScope()
            async with anyio.create_task_group() as work:
                work.start_soon(_writer, store, results_recv, run.counters, live, store_lock)
                if live.window is None:  # a shard's rows go to the driver, which writes the file
                    work.start_soon(_follow_results, run, stop, following)
                with run.work_scope:
                    # Pollers run in lanes_tg, so the job waits for them; the downloader in
                    # `tasks` closes only after they are done.
                    async with tasks, anyio.create_task_group() as lanes_tg:
                        lanes = make_lanes(ctx, results_send, lanes_tg, submit_task=tasks.submit)
                        run.lanes = lanes
                        tasks.start(lanes_tg, results_send, open_rows)
                        reader_scope = anyio.CancelScope()
                        control.on_stop(reader_scope.cancel)
                        with reader_scope:
                            await _read(live, live.spec_defaults(), done, lanes, store)
                        lanes.close()
                following.cancel()
                # If the lanes were cancelled (hard stop), the writer still owns its stream.
                results_send.close()
        return await close_run(run)
    finally:
        # Finished, or left by an error anywhere in the run: no temp file stays behind.
        if run is not None and run.results is not None:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(run.results.abandon)


async def _follow_results(run: Run, stop: int, scope: anyio.CancelScope) -> None:
    """results.parquet written as rows become final, by a process beside the job
    (results_writer.py); `close_run` has it write the tail. It starts a few seconds in: a
    job that ends sooner exports at its end, in less time than a process takes to start."""
    with scope:
        await anyio.sleep(FOLLOW_FROM)
        from .results_writer import ResultsWriter

        target = results_path(run.settings.out)

        def make() -> ResultsWriter | None:
            try:
                return ResultsWriter(run.store.path, target, stop)
            except OSError:  # no process to be had (limits, no interpreter path): the end exports
                return None

        # Shielded: once started it is kept, for close_run to finish or drop.
        with anyio.CancelScope(shield=True):
            results = run.results = await anyio.to_thread.run_sync(make)
        while results is not None:
            await anyio.to_thread.run_sync(results.follow)
            await anyio.sleep(FOLLOW_EVERY)


async def _writer(
    store: Store,
    results: MemoryObjectReceiveStream[Outcome],
    counters: Counters,
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
        # On the loop: a thread would wait for the GIL behind the loop itself, and under
        # load its commits took ten times as long. Only a lock held by another process
        # sends the commit to a thread, to wait there.
        async with lock:
            if not store.record_at_once(pending):
                await anyio.to_thread.run_sync(store.record, pending)
        for o in pending:
            if o.status == "succeeded":
                counters.succeeded += 1
                if o.cost_nano is None:
                    counters.unpriced += 1
            elif o.status == "failed":
                counters.failed += 1
            counters.cost_nano += o.cost_nano or 0
            counters.prompt_tokens += o.prompt_tokens or 0
            counters.completion_tokens += o.completion_tokens or 0

    async with results, anyio.create_task_group() as beside:
        await anyio.to_thread.run_sync(store.defer_checkpoints, True, limiter=lock)
        beside.start_soon(_checkpoints, store)
        try:
            while True:
                # Commit once the oldest answer has waited `commit_interval` or the batch is
                # full. The bound is on time, not on count: an answer is paid for the moment
                # it arrives and until its commit a kill -9 loses it (the resume pays it
                # again), so at thousands of rows per second the backlog must stay tens of
                # milliseconds long. Answers that queued while the last commit ran (and the
                # loop served the workers) have waited already: they are committed at once,
                # so under load the batches grow with the rate and the backlog stays about
                # two commits long, while a trickle is grouped into one commit per interval.
                if not batch:
                    try:
                        batch.append(results.receive_nowait())
                        oldest = 0.0  # a backlog: commit it as soon as it is taken
                    except anyio.WouldBlock:
                        try:
                            batch.append(await results.receive())
                        except anyio.EndOfStream:
                            break
                        oldest = time.monotonic()
                    except anyio.EndOfStream:
                        break
                ended = False
                while len(batch) < settings.commit_batch:
                    try:
                        batch.append(results.receive_nowait())
                    except anyio.WouldBlock:
                        break
                    except anyio.EndOfStream:
                        ended = True
                        break
                if ended:
                    break
                wait = settings.commit_interval - (time.monotonic() - oldest)
                if wait > 0 and len(batch) < settings.commit_batch:
                    # A sleep, not a receive under a deadline: a cancelled receive can drop
                    # the item it was handed. What arrives meanwhile waits in the stream.
                    await anyio.sleep(wait)
                    continue
                await flush()
        finally:
            with anyio.CancelScope(shield=True):
                await flush()
                await anyio.to_thread.run_sync(store.defer_checkpoints, False, limiter=lock)
            beside.cancel_scope.cancel()


async def _checkpoints(store: Store) -> None:
    """WAL checkpoints beside the writer, about once a second (see Store.defer_checkpoints)."""
    while True:
        await anyio.sleep(1.0)
        await anyio.to_thread.run_sync(store.checkpoint_wal)


async def _read(
    settings: Settings,
    defaults: SpecDefaults,
    done: bytearray,
    lanes: Lanes,
    store: Store,
) -> None:
    """Feed the spec's pending rows to the lanes; rows done before are skipped unparsed."""
    # Only a resume skips rows; their ids are then checked against the checkpoint.
    claims = await anyio.to_thread.run_sync(store.claims) if any(done) else None
    try:
        await _feed(settings, defaults, done, lanes, claims)
    finally:
        if claims is not None:
            claims.close()


async def _feed(
    settings: Settings,
    defaults: SpecDefaults,
    done: bytearray,
    lanes: Lanes,
    claims: Claims | None,
) -> None:
    batches = read_spec(
        settings.spec,
        defaults,
        skip=done if claims else None,
        taken=claims,
        window=settings.window,
        marks=marks_path(settings.out),
    )
    invalid: list[Outcome] = []
    seen_invalid = 0
    while True:
        batch = await anyio.to_thread.run_sync(next, batches, None)
        if batch is None:
            break
        for item in batch:
            if isinstance(item, Request):
                await lanes.feed(item)
            else:
                if not seen_invalid:
                    _warn(f"invalid row, recorded as failed ({item.code}); the job goes on: {item}")
                seen_invalid += 1
                invalid.append(invalid_outcome(item))
        if invalid:
            for o in invalid:
                await lanes.results.send(o)
            invalid.clear()
    if seen_invalid:
        rows = "row is" if seen_invalid == 1 else "rows are"
        _warn(
            f"{seen_invalid} {rows} invalid and recorded as failed; "
            f"`runner validate {spec_location(settings.spec)}` lists them"
        )


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)
