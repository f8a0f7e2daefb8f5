"""Async tasks (videos, async images, async chat): submit once, poll to completion, download.

A task is paid for once the platform accepts it, so a row must never be submitted twice.
Each row is two-phase in the checkpoint, both phases committed synchronously under the
writer's lock (one SQLite user at a time): the intent ('submitting', with the request_id,
``{job_id}-{custom_id}`` unless the row sets one) just before the POST, inside the lane
slot; then 'submitted' with the task id as soon as the 200 arrives (shielded from
cancellation). From there the row is only ever polled, by this run or the next.

The submit is retried only when the platform cannot have accepted it - a 429/1302 or 5xx
*answer*, or a connection that never opened - and the intent is deleted before the retry,
so a crash while waiting leaves the row plainly pending. A timeout or a connection lost
after sending is ambiguous: the task may exist and be billed, and the Z.ai API cannot look
a task up by request_id. Such rows fail at once as 'submit_unknown', naming the request_id
to check. **The submit window** - intent committed, answer not yet committed - is the only
place a crash leaves doubt; the next run fails those rows the same way, never resubmitting.

Pollers live in the job's task group (the job waits for them) under their own budget,
`poll_concurrency`, holding no submit slot; each backs off from `poll_initial` x1.5 up to
`poll_max`. SUCCESS and FAIL are terminal, any other status keeps polling; 5xx, drops and
timeouts are retried, a 404 fails the row. When the job stops, pollers leave their rows
'submitted' for the next run. A task still running after `task_max_age` seconds of polling
fails as 'task_timeout', one whose files can't be fetched as 'download_failed'; both keep
their task id and the next run reopens them (`prepare_resume`): it polls again, with a new
`task_max_age`, for fresh URLs.

Why one module of over 400 lines: submit, poll and settle are one protocol whose
exactly-once guarantee rests on their order; split, the window would be harder to see.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from types import TracebackType
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import anyio
import orjson
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectSendStream
from tenacity import RetryCallState

from .agents import agent_status
from .artifacts import Downloader, DownloadError, Provenance, items_of, listing, media_usage
from .bodybudget import held_size
from .control import Stopping
from .cost import Usage
from .endpoints import error_fields, parse_success
from .errors import (
    FatalAPIError,
    RateLimited,
    RequestFailed,
    RetryableError,
    RowError,
    TransportFatal,
)
from .http import ConnectionDropped, Response
from .localfiles import FileRefError, FileTooLarge, has_files, inline_files, inline_size
from .outcome import Outcome, outcome_for
from .pool import JobContext, Lane, fingerprint
from .retry import build_retrying
from .spec import Request
from .store import Store

if TYPE_CHECKING:  # imported where used: httpx (with its CLI's imports) is slow to load
    pass

__all__ = ["TERMINAL_TASK_STATUSES", "Tasks", "prepare_resume"]

TERMINAL_TASK_STATUSES = frozenset({"SUCCESS", "FAIL"})
# Fresh polls tried when a result URL has expired, before the row fails as download_failed.
REFRESH_POLLS = 8


class _Refused(Exception):
    """The platform refused the submitting key itself (nothing was accepted)."""

    def __init__(self, error: FatalAPIError) -> None:
        super().__init__(str(error))
        self.error = error


class _Unknown(Exception):
    """The submit may or may not have reached the platform."""

    attempts = 1


@dataclass(slots=True)
class TaskRow:
    """A submitted task being followed; `req` carries the row's identity (its body is unused)."""

    req: Request
    request_id: str
    request_fp: str | None
    task_id: str
    started: float
    attempts: int
    worst: int = 0
    last_status: str = ""  # the platform's task_status, as last seen
    key_fp: str | None = None  # the key that created the task, which alone polls it

    @classmethod
    def from_stored(cls, r: Mapping[str, Any]) -> TaskRow:
        req = Request(r["seq"], r["line"] or 0, r["custom_id"], r["endpoint"], r["model"], {})
        return cls(
            req, str(r["request_id"] or ""), r["request_fingerprint"], str(r["task_id"]),
            float(r["started_at"] or time.time()), int(r["attempts"] or 1),
            last_status=str(r["task_status"] or "PROCESSING"), key_fp=r.get("key_fp"),
        )  # fmt: skip


def _unknown(request_id: object, why: str) -> str:
    return (
        f"submit outcome unknown ({why}): the platform may have created and billed this task; "
        f"check request_id {request_id} on the platform before running the row again"
    )


def _failed_agent_task(resp: Response) -> dict[str, Any] | None:
    try:
        body = orjson.loads(resp.body)
    except orjson.JSONDecodeError:
        return None
    if resp.status == 200 and isinstance(body, dict) and agent_status(body) == "FAIL":
        return body
    return None


def prepare_resume(store: Store) -> list[dict[str, Any]]:
    """Settle the checkpoint's open tasks before a run; return the rows to poll again.

    Rows left 'submitting' (the run died inside the submit window) are failed as
    'submit_unknown', never resubmitted; 'submitted' rows and reopenable failures
    ('task_timeout', 'download_failed') that carry a task id go back to the pollers.
    """
    why = "the previous run ended between sending the request and its answer"
    to_poll, unknown = [], []
    for row in store.open_tasks():
        if row["status"] == "submitting" or not row["task_id"]:
            msg = _unknown(row["request_id"], why)
            unknown.append(replace(Outcome.from_stored(row), status="failed",
                                   error_code="submit_unknown", error_message=msg,
                                   finished_at=time.time()))  # fmt: skip
        else:
            to_poll.append(row)
    store.record(unknown)
    return to_poll


def _never_sent(exc: BaseException) -> bool:
    """A connection that could not be opened carried no request: safe to send again."""
    import httpx

    return isinstance(exc.__cause__, OSError | httpx.ConnectError | httpx.ConnectTimeout)


class Tasks:
    """The async-task side of a job: `submit` is the Lanes' `submit_task` hook.

    Enter it around the task group that `start` is given: pollers run there, and the
    downloader closes only after they are done.
    """

    def __init__(
        self, ctx: JobContext, store: Store, store_lock: anyio.CapacityLimiter, job_id: str
    ) -> None:
        self.ctx = ctx
        self.settings = settings = ctx.settings
        self.store = store
        self.store_lock = store_lock
        self.job_id = job_id
        self.poll_limiter = anyio.CapacityLimiter(max(1, settings.poll_concurrency))
        self.downloader: Downloader | None = None
        self._tg: TaskGroup | None = None

    async def __aenter__(self) -> Tasks:
        s = self.settings
        if s.download:
            self.downloader = Downloader(
                s.out, max_bytes=s.max_artifact_bytes, concurrency=s.poll_concurrency,
                timeout=s.request_timeout, sleep=self._download_backoff, config=s.http_config,
            )  # fmt: skip
            await anyio.to_thread.run_sync(self.downloader.prepare)
            self.ctx.downloader = self.downloader  # the slides export downloads too
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.downloader is not None:
            with anyio.CancelScope(shield=True):
                await self.downloader.aclose()

    def start(
        self,
        task_group: TaskGroup,
        results: MemoryObjectSendStream[Outcome],
        open_rows: list[dict[str, Any]],
    ) -> None:
        """Run pollers in `task_group`; resume polling the checkpoint's open tasks."""
        self._tg = task_group
        for row in open_rows:
            task_group.start_soon(self._poller, TaskRow.from_stored(row), results.clone(), 0)

    async def _commit(self, outcome: Outcome) -> None:
        await anyio.to_thread.run_sync(self.store.record, [outcome], limiter=self.store_lock)

    async def _discard(self, seq: int) -> None:
        await anyio.to_thread.run_sync(self.store.discard, [seq], limiter=self.store_lock)

    async def _download_backoff(self, n: int) -> None:
        r = self.settings.retry
        await self.ctx.control.pause(0.0 if r.testing else min(r.max_wait, r.initial_wait * 2**n))

    # -- submit ---------------------------------------------------------------------------

    async def submit(
        self, req: Request, lane: Lane, results: MemoryObjectSendStream[Outcome]
    ) -> None:
        """Submit one row exactly once; once accepted, hand it to a poller."""
        if has_files(req.endpoint, req.body):
            # Its files are read only now: the bytes held at once stay within the budget.
            root = self.settings.resolved_files_root
            weight = held_size(inline_size(req.endpoint, req.body, root))
            async with self.ctx.bodies.hold(weight):
                await self._submit(req, lane, results)
        else:
            await self._submit(req, lane, results)

    async def _submit(
        self, req: Request, lane: Lane, results: MemoryObjectSendStream[Outcome]
    ) -> None:
        ctx, tg = self.ctx, self._tg
        assert tg is not None, "Tasks.start() gives the pollers' task group first"
        rid = req.body.get("request_id")
        if not isinstance(rid, str) or not rid:
            rid = f"{self.job_id}-{req.custom_id}"
        body = orjson.dumps({**req.body, "request_id": rid})
        worst = ctx.prices.worst_case(req.model, req.body, len(body))
        if not ctx.budget.admit(worst, ctx.control):
            return
        row = TaskRow(req, rid, fingerprint(req.endpoint, body), "", time.time(), 0, worst)
        err: RequestFailed
        if has_files(req.endpoint, req.body):
            # The fingerprint stays the row's own (its paths); the wire gets the bytes, read
            # only now and dropped once the submission is answered.
            try:
                wire = inline_files(
                    req.endpoint, {**req.body, "request_id": rid}, self.settings.resolved_files_root
                )
            except FileRefError as exc:
                code = "file_too_large" if isinstance(exc, FileTooLarge) else "file_unreadable"
                ctx.budget.settle(worst, 0)
                error = RowError(f"local file: {exc}", code=code)
                await results.send(self._outcome(row, "failed", error=error))
                return
            body = orjson.dumps(wire)
            del wire
        try:
            while True:
                row.key_fp = lane.account.fingerprint
                try:
                    answer, row.attempts = await self._send(row, lane, body)
                    break
                except _Refused as refused:  # this key is refused: submit with another
                    try:
                        ctx.move_lane(lane, refused.error)
                    except FatalAPIError as exc:
                        ctx.control.stop(exc)
                        raise Stopping from exc
        except Stopping:
            ctx.budget.settle(worst, 0)
            return
        except _Unknown as exc:
            err, row.attempts, spent = (
                RowError(str(exc), code="submit_unknown"),
                exc.attempts,
                worst,
            )
        except (RetryableError, RowError) as exc:
            if isinstance(exc, RetryableError):
                exc.message = f"gave up submitting after {exc.attempts} attempts: {exc.message}"
            err, row.attempts, spent = exc, exc.attempts, 0
        else:
            agent = req.endpoint == "agents"  # an agent task: `async_id`, `status` (agents.py)
            task_id = answer.get("async_id" if agent else "id")
            if isinstance(task_id, str | int) and task_id != "":
                row.task_id = str(task_id)
                status = agent_status(answer) if agent else answer.get("task_status")
                row.last_status = str(status or "PROCESSING")
                with anyio.CancelScope(shield=True):  # the task id must not be lost
                    await self._commit(self._outcome(row, "submitted"))
                tg.start_soon(self._poller, row, results.clone(), self.settings.poll_initial)
                return
            why = "the platform answered 200 without a task id"
            err, spent = RowError(_unknown(rid, why), code="submit_unknown", status=200), worst
        # Possibly accepted (and billed): the reservation counts as spent.
        ctx.budget.settle(worst, spent)
        await results.send(self._outcome(row, "failed", error=err))

    async def _send(self, row: TaskRow, lane: Lane, body: bytes) -> tuple[dict[str, Any], int]:
        """POST under the lane's slot; retry only answers that prove nothing was accepted."""

        def on_retry(state: RetryCallState) -> None:
            self.ctx.counters.retries += 1

        retrying = build_retrying(
            self.settings.retry, on_retry=on_retry, sleep=self.ctx.control.pause
        )
        try:
            async for attempt in retrying:
                with attempt:
                    row.attempts += 1
                    return await self._attempt(row, lane, body), row.attempts
        except (RequestFailed, _Unknown) as exc:
            exc.attempts = row.attempts
            raise
        raise AssertionError("unreachable: tenacity either returns or raises")

    async def _attempt(self, row: TaskRow, lane: Lane, body: bytes) -> dict[str, Any]:
        """One submit: commit the intent, send, and undo the intent if the answer says no."""
        counters, control = self.ctx.counters, self.ctx.control
        rid, req = row.request_id, row.req
        async with lane.limiter:
            if control.reason is not None:
                raise Stopping
            retired = lane.account.retired
            if retired is not None:
                raise _Refused(FatalAPIError(lane.account.why, code=retired.code))
            await self._commit(self._outcome(row, "submitting"))
            counters.in_flight += 1
            counters.peak_in_flight = max(counters.peak_in_flight, counters.in_flight)
            counters.sent += 1
            lane.limiter.sent += 1
            try:
                with anyio.fail_after(self.settings.request_timeout):
                    path = self.ctx.path(req.endpoint)
                    resp = await lane.account.transport.request("POST", path, body)
            except TimeoutError:
                why = f"no answer within {self.settings.request_timeout:g}s"
                raise _Unknown(_unknown(rid, why)) from None
            except TransportFatal as exc:  # refused before anything was sent
                await self._discard(req.seq)
                control.stop(exc)
                raise Stopping from exc
            except ConnectionDropped as exc:
                if not _never_sent(exc):
                    raise _Unknown(_unknown(rid, f"connection lost: {exc}")) from exc
                await self._discard(req.seq)
                raise RetryableError(str(exc), code="connection") from exc
            finally:
                counters.in_flight -= 1
        refused = _failed_agent_task(resp) if req.endpoint == "agents" else None
        if refused is not None:  # `status: failed` at creation: no task exists
            await self._discard(req.seq)
            code, message = error_fields(refused)
            raise RowError(
                f"the platform did not create the task: {message or 'no reason given'}",
                code=code or "task_failed",
                status=resp.status,
            )
        try:
            answer = self.ctx.raise_for_answer(resp)
        except RetryableError as exc:
            if resp.status == 200:  # accepted, but the answer is unreadable
                raise _Unknown(_unknown(rid, exc.message)) from exc
            if isinstance(exc, RateLimited):
                counters.rate_limited += 1
                lane.limiter.rate_limited(over_limit=exc.code in (None, "1302", "429"))
            await self._discard(req.seq)  # refused: a crash from here leaves it pending
            raise
        except (FatalAPIError, RowError) as exc:
            await self._discard(req.seq)
            if isinstance(exc, FatalAPIError):
                raise _Refused(exc) from exc
            raise
        lane.limiter.succeeded()
        return answer

    # -- poll -----------------------------------------------------------------------------

    async def _poller(
        self, row: TaskRow, results: MemoryObjectSendStream[Outcome], first_wait: float
    ) -> None:
        async with results:
            counters = self.ctx.counters
            counters.polling += 1
            outcome: Outcome | None = None
            try:
                outcome = await self._follow(row, first_wait)
            except Stopping:
                pass
            except Exception as exc:  # one task's surprise must not end the job
                msg = f"internal error following task {row.task_id}: {type(exc).__name__}: {exc}"
                outcome = self._outcome(row, "failed", error=RowError(msg, code="internal_error"))
            finally:
                counters.polling -= 1
                # Unknown cost (stopped, timed out, unpriced) keeps the reservation as spent.
                cost = outcome.cost_nano if outcome is not None else None
                self.ctx.budget.settle(row.worst, row.worst if cost is None else cost)
            if outcome is not None:
                await results.send(outcome)

    def _outcome(
        self,
        row: TaskRow,
        status: str,
        *,
        error: RequestFailed | None = None,
        got: tuple[Mapping[str, Any], bytes] | None = None,
        usage: Usage | None = None,
        artifacts: list[dict[str, Any]] | None = None,
    ) -> Outcome:
        """The row's final outcome; `got` is the last poll (its body becomes `response`)."""
        parsed = None if got is None else parse_success(row.req.endpoint, got[1], dict(got[0]))
        if parsed is not None and usage is not None:
            parsed.usage = usage
        cost = None if parsed is None else self.ctx.prices.cost(row.req.model, parsed.usage)
        return outcome_for(
            row.req, status, attempts=row.attempts, started=row.started,
            http_status=200 if parsed is not None else (error.status if error else None),
            error=error, parsed=parsed, cost_nano=cost, request_fp=row.request_fp,
            request_id=row.request_id, task_id=row.task_id or None,
            task_status=row.last_status or None,
            artifacts=None if artifacts is None else orjson.dumps(artifacts).decode(),
            key_fp=row.key_fp,
        )  # fmt: skip

    async def _poll_once(self, row: TaskRow) -> tuple[dict[str, Any], bytes] | None:
        """One poll of async-result; None when it failed in a way worth another poll.

        Model tasks are a GET of `async-result/{id}`; agent tasks a POST of
        `agents/async-result` with the agent and its `async_id`.
        """
        agent = row.req.endpoint == "agents"
        if agent:
            method, path = "POST", self.ctx.path("agents/async-result")
            body: bytes | None = orjson.dumps({"agent_id": row.req.model, "async_id": row.task_id})
        else:
            method, path, body = "GET", "/async-result/" + quote(row.task_id, safe=""), None
        self.ctx.counters.polls += 1
        try:
            async with self.poll_limiter:
                with anyio.fail_after(self.settings.request_timeout):
                    transport = self.ctx.transport_for(row.key_fp)
                    resp = await transport.request(method, path, body)
            try:
                answer = self.ctx.raise_for_answer(resp)
            except RowError:
                # A failed agent task is a 200 whose body carries `error` beside its status:
                # the task's end, not a refused poll.
                failed = _failed_agent_task(resp) if agent else None
                if failed is None:
                    raise
                answer = failed
        except (TimeoutError, ConnectionDropped, RetryableError):
            self.ctx.counters.retries += 1
            return None
        except FatalAPIError as exc:
            pool = self.ctx.pool
            account = pool.by_fingerprint(row.key_fp)
            if account is None or len(pool) == 1 or isinstance(exc, TransportFatal):
                self.ctx.control.stop(exc)
            else:
                # Only this key may read its task: retire it and leave the row 'submitted'
                # for a resume once the account is in order; the other keys go on.
                pool.retire(account, exc)
                if not pool.active():
                    self.ctx.control.stop(pool.exhausted())
            raise Stopping from exc
        status = agent_status(answer) if agent else answer.get("task_status")
        row.last_status = "UNKNOWN" if status is None else str(status)
        return answer, resp.body

    async def _until_terminal(self, row: TaskRow, first: float) -> tuple[dict[str, Any], bytes]:
        delay, step = first, self.settings.poll_initial
        while True:
            await self.ctx.control.pause(delay)
            delay, step = step, min(step * 1.5, self.settings.poll_max)
            got = await self._poll_once(row)
            if got is not None and row.last_status in TERMINAL_TASK_STATUSES:
                return got

    async def _follow(self, row: TaskRow, first_wait: float) -> Outcome:
        """Poll to a terminal state under the `task_max_age` deadline, then settle the row."""
        try:
            with anyio.move_on_after(self.settings.task_max_age) as deadline:
                got = await self._until_terminal(row, first_wait)
            if deadline.cancelled_caught:
                age = time.time() - row.started
                msg = (
                    f"task {row.task_id} still {row.last_status or 'PROCESSING'} after {age:.0f} s"
                )
                err = RowError(msg + "; resume to keep polling", code="task_timeout")
                return self._outcome(row, "failed", error=err)
            if row.last_status == "FAIL":
                why = got[0].get("error") or got[0].get("message") or "no reason given"
                if isinstance(why, dict):  # an agent's {"code", "message"}
                    why = f"{why.get('message') or 'no reason given'} (code {why.get('code')})"
                msg = f"task {row.task_id} ended with task_status FAIL: {why}"
                err = RowError(msg, code="task_failed", status=200)
                return self._outcome(row, "failed", error=err, got=got, usage=Usage())
            return await self._succeeded(row, got)
        except RowError as exc:  # the poll itself was refused (404: unknown task)
            if exc.status == 404:
                exc.code = "task_not_found"
                exc.message = f"the platform does not know task {row.task_id}: {exc.message}"
            return self._outcome(row, "failed", error=exc)

    async def _succeeded(self, row: TaskRow, got: tuple[dict[str, Any], bytes]) -> Outcome:
        usage = media_usage(row.req.endpoint, got[0])
        if usage is None:  # async chat: usage and finish_reason as for a sync chat answer
            parsed = parse_success(row.req.endpoint, got[1], got[0])
            status = "failed" if parsed.failure else "succeeded"
            return self._outcome(row, status, error=parsed.failure, got=got)
        items = items_of(got[0])
        if not items:
            err = RowError(f"task {row.task_id} succeeded but named no files", code="empty_result")
            return self._outcome(row, "failed", error=err, got=got, usage=usage)
        if self.downloader is None:
            return self._outcome(row, "succeeded", got=got, usage=usage, artifacts=listing(items))
        last = got

        async def refresh() -> Mapping[str, Any]:
            """Poll again (never submit) until the task shows SUCCESS with fresh URLs."""
            nonlocal last
            for _ in range(REFRESH_POLLS):
                await self.ctx.control.pause(self.settings.poll_initial)
                fresh = await self._poll_once(row)
                if fresh is not None and row.last_status == "SUCCESS":
                    last = fresh
                    return fresh[0]
            raise DownloadError(f"no fresh result URLs for task {row.task_id}")

        req = row.req
        prov = Provenance(self.settings.provider, req.model, req.endpoint, row.task_id,
                          row.request_id, req.custom_id)  # fmt: skip
        try:
            records = await self.downloader.fetch(prov, got[0], refresh)
        except TransportFatal as exc:  # e.g. the file host's certificate is not trusted
            self.ctx.control.stop(exc)
            raise Stopping from exc
        except DownloadError as exc:
            code = "download_failed" if exc.retryable else "artifact_too_large"
            msg = f"task {row.task_id} succeeded but its files could not be downloaded ({exc})"
            if exc.retryable:
                msg += "; resume to poll for fresh URLs and try again"
            return self._outcome(
                row, "failed", error=RowError(msg, code=code), got=last, usage=usage
            )
        return self._outcome(row, "succeeded", got=last, usage=usage, artifacts=records)
