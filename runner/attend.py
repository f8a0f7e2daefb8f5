"""A job nobody watches: its live page, its metrics, and a message when it ends.

`attend` wraps a job in `run_job`: it starts what the settings ask for (`--notify`,
`--serve`, `--metrics-port`) in a task group of its own and ends it with the job, so
nothing outlives `run_job`. Each run of the job (`open_run`) calls `Attendant.watch_run`,
which starts the pieces that read the run's live counters: the Prometheus endpoint and
the watch on the failure rate. None of it can fail or delay the job: a webhook that does
not answer is a warning, a port that is taken is a warning, and the last messages get a
bounded time to go out after the job is done.

Shards of a job on Ray (`settings.window`) attend to nothing: their driver speaks for them.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
from anyio.abc import TaskGroup

from .errors import RunnerError, redact
from .lifecycle import results_path
from .settings import Settings

if TYPE_CHECKING:
    from .lifecycle import JobResult, Run
    from .notify import Notifier

__all__ = ["Attendant", "attend"]

FAILURE_CHECK_S = 30.0  # how often the failure rate is looked at


class Attendant:
    """What watches over one job; every method is a no-op for what was not asked for."""

    def __init__(self, settings: Settings, notifier: Notifier | None) -> None:
        self.settings = settings
        self.notifier = notifier
        self.started = time.monotonic()
        self.told = False  # the job's end was reported

    def watch_run(self, run: Run, tg: TaskGroup) -> None:
        """Start what reads this run's live counters; `tg` ends with the run."""
        if self.settings.metrics_port is not None:
            from .metrics import serve_metrics  # prometheus_client: only with the flag

            tg.start_soon(serve_metrics, run, self.settings.metrics_port)
        if self.notifier is not None:
            tg.start_soon(self._watch_failures, run)

    async def _watch_failures(self, run: Run) -> None:
        from .notify import FailureWatch, failing

        watch = FailureWatch()
        c = run.counters
        while True:
            await anyio.sleep(FAILURE_CHECK_S)
            window = watch.observe(time.monotonic(), c.done, c.failed)
            if window is not None and self.notifier is not None:
                summary = {
                    "total": c.total, "succeeded": c.succeeded, "failed": c.failed,
                    "pending": max(c.total - c.already_done - c.done, 0),
                    "cost_nano": c.cost_nano,
                }  # fmt: skip
                self.notifier.post(
                    failing(
                        job=run.job_id,
                        out=self.settings.out,
                        spec=self.settings.spec,
                        summary=summary,
                        currency=c.currency,
                        window=window,
                    )
                )

    def ended(self, result: JobResult) -> None:
        """The job returned: `finished`, or `stopped` with its reason and what to do next."""
        if self.notifier is None or self.told:
            return
        from .notify import ended

        self.told = True
        summary = result.summary
        results = results_path(self.settings.out)
        self.notifier.post(
            ended(
                job=str(summary.get("settings", {}).get("job_id") or "-"),
                out=self.settings.out,
                spec=self.settings.spec,
                summary=summary,
                currency=result.counters.currency,
                wall_s=time.monotonic() - self.started,
                reason=result.reason,
                message=result.message,
                results=results if results.exists() else None,
            )
        )

    def failed(self, exc: BaseException) -> None:
        """The job raised instead of returning: say so, in words safe to send."""
        if self.notifier is None or self.told:
            return
        from .notify import ended

        self.told = True
        leaf = exc
        while isinstance(leaf, BaseExceptionGroup) and leaf.exceptions:
            leaf = leaf.exceptions[0]
        message = redact(str(leaf), *self.settings.secrets())
        if not isinstance(leaf, RunnerError):
            message = f"{type(leaf).__name__}: {message}"
        self.notifier.post(
            ended(
                job="-",
                out=self.settings.out,
                spec=self.settings.spec,
                summary={},
                currency="",
                wall_s=time.monotonic() - self.started,
                reason=leaf,
                message=message,
                results=None,
            )
        )


@contextlib.asynccontextmanager
async def attend(settings: Settings) -> AsyncIterator[Attendant]:
    """Watch over the job run inside the block (see the module's docstring)."""
    notifier = None
    if settings.window is None and settings.notify:
        from .notify import Notifier, parse_target

        urls = [settings.notify] if isinstance(settings.notify, str) else list(settings.notify)
        targets = [parse_target(u) for u in urls]
        # The tests' switch (RetryConfig.testing) zeroes the waits between attempts here too.
        wait = 0.0 if settings.retry.testing else None
        notifier = Notifier(targets, settings.out, settings.http_config, first_wait=wait)
    if settings.window is not None:
        settings = _alone(settings)
    attendant = Attendant(settings, notifier)
    if notifier is None and settings.serve is None:
        yield attendant
        return
    async with anyio.create_task_group() as tg:
        if notifier is not None:
            tg.start_soon(notifier.run)
        if settings.serve is not None:
            tg.start_soon(_serve_page, settings.out, settings.serve)
        try:
            yield attendant
        except Exception as exc:
            attendant.failed(exc)
            raise
        finally:
            if notifier is not None:
                from .notify.sender import DRAIN_S

                notifier.close()
                # The last messages get a bounded time; the job's result is already settled.
                with anyio.CancelScope(shield=True), anyio.move_on_after(DRAIN_S):
                    await notifier.done.wait()
            tg.cancel_scope.cancel()


def _alone(settings: Settings) -> Settings:
    from dataclasses import replace

    return replace(settings, notify=(), serve=None, metrics_port=None)


async def _serve_page(out: Path, port: int) -> None:
    """`runner serve OUT --port PORT` as a child process: the page's reads of the checkpoint
    then share no interpreter (nor its lock) with the job, so they cannot slow it."""
    cmd = [sys.executable, "-m", "runner", "serve", str(out), "--port", str(port), "--quiet",
           "--parent", str(os.getpid())]  # fmt: skip
    try:
        process = await anyio.open_process(cmd, stdin=None, stdout=None, stderr=None)
    except OSError as exc:
        print(f"warning: no live page: {exc}; the job goes on", file=sys.stderr, flush=True)
        return
    print(f"live page: http://127.0.0.1:{port}/  (for this job's run)", file=sys.stderr, flush=True)
    try:
        code = await process.wait()
        if code:
            print(
                f"warning: the live page on port {port} stopped (exit {code}); the job goes "
                f"on (serve it with: runner serve {out} --port PORT)",
                file=sys.stderr,
                flush=True,
            )
    finally:
        with anyio.CancelScope(shield=True):
            if process.returncode is None:
                process.terminate()
                with anyio.move_on_after(5):
                    await process.wait()
                if process.returncode is None:
                    process.kill()
                    await process.wait()
            await process.aclose()
