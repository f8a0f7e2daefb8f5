"""`--metrics-port`: the running job's counters for Prometheus, with `prometheus_client`.

Nothing is counted twice: a scrape reads the counters the progress line and the report's
timeline read (`progress.Counters`), and per key and model the lanes' limiters (requests
sent, 429s, slots in use, the limit as the adaptive limiter moved it) and the depth of
each model's row stream. A scrape therefore costs the job a few dozen attribute reads on
its loop, whatever its size; nothing touches the checkpoint after the start.

Rows are the job's (`runner_rows{status}`): what the checkpoint held when the run began,
read once, plus what this run has committed since, so the figure matches `runner status`
at any moment. Everything else counts from the start of this run (of the process), as
Prometheus counters do.

prometheus_client is imported only here, and this module only with the flag, so a plain
run's start-up does not pay for it (bench/startup.py).
"""

from __future__ import annotations

import sqlite3
import sys
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import anyio
from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.asgi import make_asgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .cost import NANO

if TYPE_CHECKING:
    from .lifecycle import Run

__all__ = ["JobCollector", "serve_metrics"]


class JobCollector(Collector):
    """The metrics of one run of a job, read at each scrape."""

    def __init__(self, run: Run, baseline: dict[str, int]) -> None:
        self.run = run
        # Rows the checkpoint held at the start, less what this run had counted by then.
        self.baseline = baseline

    def collect(self) -> Iterator[Metric]:
        run, c = self.run, self.run.counters
        info = GaugeMetricFamily(
            "runner_job_info", "The job this process runs (value 1).", labels=["job", "spec"]
        )
        info.add_metric([run.job_id, str(run.settings.spec)], 1)
        yield info
        rows = GaugeMetricFamily(
            "runner_rows", "The job's rows by status, as in the checkpoint.", labels=["status"]
        )
        succeeded = self.baseline["succeeded"] + c.succeeded
        failed = self.baseline["failed"] + c.failed
        rows.add_metric(["succeeded"], succeeded)
        rows.add_metric(["failed"], failed)
        rows.add_metric(["pending"], max(c.total - succeeded - failed, 0))
        yield rows
        yield _counter("runner_rows_done", "Rows this run committed, by status.", ["status"],
                       [(["succeeded"], c.succeeded), (["failed"], c.failed)])  # fmt: skip
        yield _counter("runner_requests", "Requests sent (attempts).", [], [([], c.sent)])
        yield _counter("runner_retries", "Attempts retried.", [], [([], c.retries)])
        yield _counter("runner_rate_limited", "429 answers.", [], [([], c.rate_limited)])
        tokens = [(["prompt"], c.prompt_tokens), (["completion"], c.completion_tokens)]
        yield _counter("runner_tokens", "Tokens of committed rows.", ["kind"], tokens)
        yield _counter(
            "runner_cost", "Cost of committed rows, in the price table's currency.",
            ["currency"], [([c.currency], c.cost_nano / NANO)],
        )  # fmt: skip
        yield _counter("runner_task_polls", "Polls of async tasks.", [], [([], c.polls)])
        yield _gauge("runner_in_flight", "Requests on the wire.", [], [([], c.in_flight)])
        yield _gauge("runner_tasks_polling", "Async tasks being followed.", [], [([], c.polling)])
        yield _gauge("runner_limit", "The effective in-flight limit, summed.", [], [([], c.cap)])
        yield from self._lanes()
        keys = GaugeMetricFamily("runner_key_active", "1 while a key is in use.", labels=["key"])
        for account in run.accounts.items:
            keys.add_metric([account.label], 0 if account.retired is not None else 1)
        yield keys

    def _lanes(self) -> Iterator[Metric]:
        lanes = self.run.lanes
        labels = ["key", "model"]
        sent: list[tuple[list[str], float]] = []
        throttled, busy, limit = list(sent), list(sent), list(sent)
        depth: list[tuple[list[str], float]] = []
        if lanes is not None:
            accounts = self.run.accounts.items
            for (n, model), limiter in list(lanes.limiters.items()):
                key = [accounts[n].label, model]
                sent.append((key, limiter.sent))
                throttled.append((key, limiter.throttled))
                busy.append((key, limiter.borrowed))
                limit.append((key, limiter.current))
            for model, stream in list(lanes.streams.items()):
                depth.append(([model], stream.statistics().current_buffer_used))
        yield _counter("runner_key_requests", "Requests sent, by key and model.", labels, sent)
        yield _counter("runner_key_rate_limited", "429 answers, by key and model.", labels,
                       throttled)  # fmt: skip
        yield _gauge("runner_key_in_flight", "Slots in use, by key and model.", labels, busy)
        yield _gauge("runner_key_limit", "The adaptive in-flight limit, by key and model.",
                     labels, limit)  # fmt: skip
        yield _gauge("runner_queue_depth", "Rows read and waiting for a worker, by model.",
                     ["model"], depth)  # fmt: skip


def _counter(
    name: str, doc: str, labels: list[str], values: Sequence[tuple[list[str], float]]
) -> Metric:
    m = CounterMetricFamily(name, doc, labels=labels)
    for lv, v in values:
        m.add_metric(lv, v)
    return m


def _gauge(
    name: str, doc: str, labels: list[str], values: Sequence[tuple[list[str], float]]
) -> Metric:
    m = GaugeMetricFamily(name, doc, labels=labels)
    for lv, v in values:
        m.add_metric(lv, v)
    return m


def _stored_counts(run: Run) -> dict[str, int]:
    counts = run.store.status_counts()  # the kept totals: no count over the rows
    return {k: counts.get(k, 0) for k in ("succeeded", "failed")}


async def baseline_of(run: Run) -> dict[str, int]:
    """What the checkpoint held beyond this run's own counts, read under the writer's lock:
    the writer counts a commit right after it (with no wait between), so while the lock is
    held the counters and the checkpoint agree."""
    async with run.store_lock:
        seen = {"succeeded": run.counters.succeeded, "failed": run.counters.failed}
        stored = await anyio.to_thread.run_sync(_stored_counts, run)
    return {k: stored[k] - seen[k] for k in stored}


async def serve_metrics(run: Run, port: int, host: str = "127.0.0.1") -> None:
    """Serve /metrics until the run ends; a port that cannot be bound is one warning."""
    from .serving import serve_app

    try:
        baseline = await baseline_of(run)
    except sqlite3.Error as exc:  # the writer will meet it too; the metrics say nothing
        print(f"warning: no metrics: {exc}", file=sys.stderr, flush=True)
        return
    registry = CollectorRegistry(auto_describe=False)
    registry.register(JobCollector(run, baseline))
    ProcessCollector(registry=registry)  # CPU and memory of the runner's process
    app: Any = make_asgi_app(registry)
    try:
        async with serve_app(app, host, port) as bound:
            print(f"metrics: http://{host}:{bound}/metrics", file=sys.stderr, flush=True)
            await anyio.sleep_forever()
    except OSError as exc:
        print(
            f"warning: no metrics: cannot serve on {host}:{port}: {exc.strerror or exc}; "
            "the job goes on",
            file=sys.stderr,
            flush=True,
        )
