"""`--mode batch`: the job's rows through the provider's server-side Batch API, at half price.

The job plans its rows into JSONL files (files.py), then drives each file through
upload → create → poll → download → merge, committing every step to the checkpoint's
`batches` table before going on:

    planned ─► uploading ─► uploaded ─► creating ─► created ─► (polled) ─► merged
                (intent)     file id     (intent)    batch id              rows written

An intent is committed *before* its POST, like async tasks (tasks.py), and the answer's id
right after. **The window** is an intent without its id (the process died between the POST
and the commit). A resume closes it by looking the object up instead of creating it again:
a file by its name (`{job_id}-{key}.jsonl`, unique per job and file) in `GET files`, a batch
by its `input_file_id` (unique per upload) in `GET batches`. Only when the platform does
not list it is the step repeated: for an upload that costs nothing, and a batch is created
only for a file that no listed batch uses. A resumed job therefore polls the batches it
already has and never pays for one twice.

Finished batches are merged into the same `rows` table as online mode (status, response,
usage, cost at `PriceTable.batch_factor`), and results.parquet is written the same way. Rows
a batch did not finish (expired, cancelled, failed validation, or failed for a reason that
is not the row's own) can be sent through the online pool afterwards with
`--retry-failed-online`; rows of endpoints the Batch API does not run wait for the same flag.

JSON calls go through the job's Transport; the multipart upload and the file downloads use
an httpx client built from the same HttpConfig (CA bundle, proxies, timeouts), base URL and
Authorization header. The key is only ever in that header.

Over 400 lines because each step of a batch (upload, create, poll, merge) is checkpointed
before and after it, and those windows read best next to each other in one driver.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

import anyio
import orjson

from ..control import Budget, Control, Stopping
from ..cost import PriceTable
from ..endpoints import raise_for_answer
from ..errors import FatalAPIError, RetryableError, RunnerError, TransportFatal
from ..http import ConnectionDropped, Response, Transport, make_client, transport_error
from ..lifecycle import JobResult, JobStart, close_run, open_run
from ..online import run_online
from ..outcome import Outcome
from ..progress import Counters
from ..retry import build_retrying
from ..settings import Settings
from ..store import Store
from .files import merge_file, missing_outcome, plan_files, retry_online

if TYPE_CHECKING:  # imported where used: httpx (with its CLI's imports) is slow to load
    import httpx

__all__ = ["TERMINAL_BATCH", "run_batch"]

TERMINAL_BATCH = frozenset({"completed", "failed", "expired", "cancelled"})
BATCH_FOLDER = "batches"
# Batches looked up in `GET batches` when closing the create window (100 per page).
_LIST_PAGES = 50
_UPLOADS_AT_ONCE = 2  # Zhipu answers 429 to uploads that come too fast (API-NOTES 4)

T = TypeVar("T")


class BatchClient:
    """The Files and Batches endpoints of one provider, with the job's retry policy."""

    def __init__(
        self, settings: Settings, control: Control, transport: Transport, key: str | None = None
    ) -> None:
        self.settings = settings
        self.control = control
        self.transport = transport
        info = settings.provider_info
        self._balance = info.balance_statuses
        self._shape = info.error_shape
        key = settings.api_key.reveal() if key is None else key
        self.http = make_client(
            settings.http_config,
            base_url=settings.base_url.rstrip("/") + "/",
            headers={"Authorization": f"Bearer {key}", **dict(info.extra_headers)},
            timeout=settings.request_timeout,
        )
        self._where = urlsplit(settings.base_url).netloc.rsplit("@", 1)[-1]

    async def aclose(self) -> None:
        await self.http.aclose()

    def _fatal(self, exc: httpx.TransportError) -> None:
        """An untrusted certificate or a refused tunnel stops the job, as for API calls."""
        mapped = transport_error(exc, self._where)
        if isinstance(mapped, TransportFatal):
            raise mapped from None

    def _answer(self, resp: Response) -> dict[str, Any]:
        return raise_for_answer(resp, balance_statuses=self._balance, error_shape=self._shape)

    async def _retrying(self, attempt_once: Callable[[], Any]) -> Any:
        async for attempt in build_retrying(self.settings.retry, sleep=self.control.pause):
            with attempt:
                return await attempt_once()
        raise AssertionError("unreachable: tenacity reraises")  # pragma: no cover

    async def call(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        """One JSON call; transient failures are retried, others raise our errors."""
        data = None if body is None else orjson.dumps(body)

        async def once() -> dict[str, Any]:
            try:
                resp = await self.transport.request(
                    method, path, data, self.settings.request_timeout
                )
            except ConnectionDropped as exc:
                raise RetryableError(str(exc), code="connection") from exc
            return self._answer(resp)

        result: dict[str, Any] = await self._retrying(once)
        return result

    async def upload(self, path: Path, filename: str) -> dict[str, Any]:
        import httpx

        async def once() -> dict[str, Any]:
            try:
                with path.open("rb") as fh:
                    r = await self.http.post(
                        "files",
                        data={"purpose": "batch"},
                        files={"file": (filename, fh, "application/jsonl")},
                    )
            except httpx.TransportError as exc:
                self._fatal(exc)
                raise RetryableError(f"upload: {type(exc).__name__}", code="connection") from exc
            return self._answer(Response(r.status_code, list(r.headers.raw), r.content))

        result: dict[str, Any] = await self._retrying(once)
        return result

    async def download(self, file_id: str, dest: Path) -> None:
        import httpx

        """Stream a file's content to `dest` (through a temporary name)."""
        tmp = dest.with_suffix(dest.suffix + ".part")

        async def once() -> None:
            try:
                async with self.http.stream(
                    "GET", f"files/{file_id}/content", follow_redirects=True
                ) as r:
                    if r.status_code != 200:
                        body = await r.aread()
                        self._answer(Response(r.status_code, list(r.headers.raw), body))
                    with tmp.open("wb") as f:
                        async for chunk in r.aiter_bytes():
                            f.write(chunk)
            except httpx.TransportError as exc:
                self._fatal(exc)
                raise RetryableError(f"download: {type(exc).__name__}", code="connection") from exc
            tmp.replace(dest)

        await self._retrying(once)

    async def find(
        self, kind: str, match: Callable[[dict[str, Any]], bool]
    ) -> dict[str, Any] | None:
        """Look an object up in a listing (`files?purpose=batch` or `batches`), newest first."""
        after = ""
        base = "/files?purpose=batch&limit=100" if kind == "files" else "/batches?limit=100"
        for _ in range(_LIST_PAGES):
            page = await self.call("GET", base + (f"&after={after}" if after else ""))
            items = page.get("data") or []
            for item in items:
                if isinstance(item, dict) and match(item):
                    return item
            if not page.get("has_more") or not items:
                return None
            after = str(page.get("last_id") or items[-1].get("id") or "")
        return None


class _Driver:
    """Takes the job's batch files from their committed step to merged."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        clients: dict[str, BatchClient],
        prices: PriceTable,
        counters: Counters,
        control: Control,
        budget: Budget,
        job_id: str,
        db_lock: anyio.CapacityLimiter,
    ) -> None:
        self.settings = settings
        self.store = store
        # Per key fingerprint, in the pool's order: a batch and its files are the account's
        # that uploaded them, so each batch keeps to the key recorded with it.
        self.clients = clients
        self.prices = prices
        self.counters = counters
        self.control = control
        self.budget = budget
        self.job_id = job_id
        self.folder = settings.out / BATCH_FOLDER
        self._db_lock = db_lock  # one SQLite user at a time: shared with the timeline
        self._uploads = anyio.CapacityLimiter(_UPLOADS_AT_ONCE)

    async def db(self, fn: Callable[..., T], *args: Any) -> T:
        return await anyio.to_thread.run_sync(fn, *args, limiter=self._db_lock)

    async def step(self, key: int, **values: Any) -> None:
        await self.db(lambda: self.store.update_batch(key, **values))

    async def drive(self, batch: dict[str, Any]) -> None:
        try:
            await self._drive(batch)
        except Stopping:
            return
        except FatalAPIError as exc:
            self.control.stop(exc)
        except RunnerError as exc:
            # A file the platform refused (HTTP 400 on upload or create): its rows stay
            # planned; record why, so `runner status` and the resume can say it.
            await self.step(int(batch["key"]), message=str(exc)[:500])

    def _client(self, b: dict[str, Any], key: int) -> BatchClient:
        """The batch's key: the one recorded with it, else the pool's keys in turn."""
        fps = list(self.clients)
        fp = b.get("key_fp")
        if fp not in self.clients:
            # Not yet uploaded (or its key has left the pool: the first key then asks).
            fp = fps[key % len(fps)] if not fp or b["state"] == "planned" else fps[0]
        b["key_fp"] = fp
        return self.clients[fp]

    async def _drive(self, b: dict[str, Any]) -> None:
        key = int(b["key"])
        filename = f"{self.job_id}-{key:05d}.jsonl"
        client = self._client(b, key)
        if b["state"] in ("planned", "uploading"):
            found = None
            if b["state"] == "uploading":  # the upload window: was it stored?
                found = await client.find("files", lambda f: f.get("filename") == filename)
            if found is None:
                if self.control.reason is not None:
                    raise Stopping
                await self.step(key, state="uploading", key_fp=b["key_fp"])
                async with self._uploads:
                    found = await client.upload(Path(b["path"]), filename)
            b["file_id"] = str(found["id"])
            b["state"] = "uploaded"
            await self.step(key, state="uploaded", file_id=b["file_id"])
        if b["state"] in ("uploaded", "creating"):
            await self._create(b, key, client)
        if b["state"] == "created":
            if "reserved" not in b:
                # A batch created by an earlier run is already committed spending.
                b["reserved"] = int(b["worst_nano"] or 0)
                self.budget.hold(b["reserved"])
            await self._poll(b, key, client)
        if b["state"] == "finished":
            await self._merge(b, key, client)

    async def _create(self, b: dict[str, Any], key: int, client: BatchClient) -> None:
        file_id = b["file_id"]
        found = None
        if b["state"] == "creating":  # the create window: does a batch use this file?
            found = await client.find("batches", lambda x: x.get("input_file_id") == file_id)
        if found is None:
            if self.control.reason is not None:
                raise Stopping
            worst = int(b["worst_nano"] or 0)
            if not self.budget.admit(worst, self.control, what="batch"):
                raise Stopping
            b["reserved"] = worst
            await self.step(key, state="creating")
            body = {
                "input_file_id": file_id,
                "endpoint": self.settings.provider_info.batch_url_prefix + b["endpoint"],
                "completion_window": "24h",
                "metadata": {"runner_job": self.job_id, "runner_file": str(key)},
            }
            found = await client.call("POST", "/batches", body)
        b["batch_id"] = str(found["id"])
        b["status"] = str(found.get("status") or "validating")
        b["state"] = "created"
        await self.step(key, state="created", batch_id=b["batch_id"], status=b["status"])

    async def _poll(self, b: dict[str, Any], key: int, client: BatchClient) -> None:
        wait = self.settings.poll_initial
        self.counters.polling += 1
        try:
            while True:
                found = await client.call("GET", f"/batches/{b['batch_id']}")
                status = str(found.get("status") or "")
                if status != b.get("status"):
                    b["status"] = status
                    counts = orjson.dumps(found.get("request_counts")).decode()
                    await self.step(key, status=status, request_counts=counts)
                if status in TERMINAL_BATCH:
                    break
                await self.control.pause(wait)
                wait = min(wait * 1.5, self.settings.poll_max)
        finally:
            self.counters.polling -= 1
        errors = (found.get("errors") or {}).get("data") if isinstance(found, dict) else None
        b["message"] = "; ".join(
            str(e.get("message") or e.get("code")) for e in (errors or []) if isinstance(e, dict)
        )[:500]
        b["output_file_id"] = found.get("output_file_id") or None
        b["error_file_id"] = found.get("error_file_id") or None
        b["state"] = "finished"

    async def _merge(self, b: dict[str, Any], key: int, client: BatchClient) -> None:
        paths: list[Path | None] = []
        for kind in ("output", "error"):
            file_id = b.get(f"{kind}_file_id")
            if not file_id:
                paths.append(None)
                continue
            dest = self.folder / f"{kind}-{key:05d}.jsonl"
            await client.download(str(file_id), dest)
            paths.append(dest)
        cost = await self.db(self._merge_sync, b, key, paths)
        self.budget.settle(int(b.pop("reserved", 0)), cost)

    def _merge_sync(self, b: dict[str, Any], key: int, paths: list[Path | None]) -> int:
        """Record every line of the result files, then the rows the batch left unanswered,
        then mark the batch merged. A crash in between only repeats the same upserts."""
        store, counters = self.store, self.counters
        members = store.batch_members(key)
        seen: set[str] = set()
        cost = 0

        def record(chunk: list[Outcome]) -> None:
            nonlocal cost
            for o in chunk:
                o.key_fp = b.get("key_fp")
            store.record(chunk)
            for o in chunk:
                counters.succeeded += o.status == "succeeded"
                counters.failed += o.status == "failed"
                counters.cost_nano += o.cost_nano or 0
                counters.prompt_tokens += o.prompt_tokens or 0
                counters.completion_tokens += o.completion_tokens or 0
                cost += o.cost_nano or 0

        for path in paths:
            for chunk in merge_file(path, members, b, self.prices, self.settings, seen):
                record(chunk)
        why = {
            "completed": "the completed batch returned no line for this row",
            "expired": "the batch expired before this row ran",
            "cancelled": "the batch was cancelled before this row ran",
            "failed": "the batch failed validation: " + (b.get("message") or "no reason given"),
        }.get(str(b.get("status")), f"the batch ended as {b.get('status')!r}")
        why += "; send such rows online with --retry-failed-online"
        missing = [
            missing_outcome(seq, line, cid, b, why)
            for cid, (seq, line) in members.items()
            if cid not in seen
        ]
        for i in range(0, len(missing), 2000):
            record(missing[i : i + 2000])
        store.update_batch(
            key,
            state="merged",
            output_file_id=b.get("output_file_id"),
            error_file_id=b.get("error_file_id"),
            message=b.get("message") or None,
        )
        return cost


async def run_batch(start: JobStart) -> JobResult:
    """Run (or resume) a job in batch mode; the exit code follows the CLI contract."""
    settings, store, total = start.settings, start.store, start.total
    plan = None
    async with open_run(start) as run:
        live, counters, control = run.settings, run.counters, run.control
        async with run.store_lock:  # the timeline may be writing already
            done = store.done_bitmap(total)
        counters.already_done = sum(bin(x).count("1") for x in done)
        clients = {
            a.fingerprint: BatchClient(live, control, a.transport, a.key.secret.reveal())
            for a in run.accounts.items
        }
        driver = _Driver(
            live, store, clients, run.prices, counters, control, run.budget, run.job_id,
            run.store_lock,
        )  # fmt: skip
        try:
            with run.work_scope:
                plan = await anyio.to_thread.run_sync(
                    plan_files, live, store, run.prices, total, live.out / BATCH_FOLDER,
                    limiter=run.store_lock,
                )  # fmt: skip
                counters.failed += plan.invalid
                async with anyio.create_task_group() as tg:
                    for b in store.batches():
                        if b["state"] != "merged":
                            tg.start_soon(driver.drive, b)
        finally:
            with anyio.CancelScope(shield=True):
                for client in clients.values():
                    await client.aclose()

    open_batches = [b for b in store.batches() if b["state"] != "merged"]
    if settings.retry_failed_online and control.reason is None and not open_batches:
        seqs = retry_online(store, settings)
        if seqs:
            store.discard(seqs)
        if store.summary()["pending"]:
            store.end_run(run.run_id, "batches_merged", "sending the rest online", 0, 0)
            return await run_online(start)
    result = await close_run(run)
    notes = []
    if open_batches and control.reason is None:
        refused = [b for b in open_batches if b.get("message")]
        for b in refused:
            notes.append(f"batch file {b['key']} was refused: {b['message']}")
    if plan is not None and plan.not_batchable:
        notes.append(
            f"{plan.not_batchable} rows use endpoints the Batch API does not run "
            f"({', '.join(sorted(plan.endpoints))}); add --retry-failed-online to send them "
            "online"
        )
    if notes:
        result.message += "\n" + "\n".join(notes)
    return result


def batch_summary(store: Store) -> list[dict[str, Any]]:
    """The batches of a job, for `runner status`."""
    return [
        {k: b[k] for k in ("key", "model", "lines", "state", "batch_id", "status", "message")}
        for b in store.batches()
    ]
