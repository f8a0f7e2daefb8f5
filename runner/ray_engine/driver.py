"""Run a job as shards on Ray: plan, start (or join) Ray, run the shards, merge, answer.

The driver holds the job folder's lock, plans the shards (saved, so a resume runs the same
ones), records the job and its run in the job's checkpoint, and starts one Ray task per
shard (shard.py). One small actor lives on the driver's node, so it shares its fate and
no other node's (hub.py): the `SlotBank` that leases the tier's slots to the shards
(slots.py) and the `Inbox` the shards ship their outcomes to (inbox.py). The driver takes
the inbox's batches every fraction of a second and merges them into DIR/checkpoint.sqlite,
which no shard opens: DIR may be on the driver's disk alone. A task whose worker or node
is lost is retried by Ray; it asks which rows the driver holds and sends only the others.
The job's checkpoint then gives the message and exit code as for any job.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, replace
from typing import Any

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
from ..spec import SpecWindow
from ..storage import is_url
from ..store import Store
from .hub import Hub
from .merge import apply, held_rows, merge_legacy
from .plan import load_plan, plan_shards, save_plan
from .shard import check_node, shard_main

__all__ = ["run_sharded"]

TAKE_WAIT = 0.25  # most seconds the driver waits on the inbox before it looks at the shards
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
    results_to: str | None = None,
) -> JobResult:
    """Run (or resume) the job as `shards` Ray tasks; exit codes as for `run_job`.

    With `results_to` (an object-storage prefix) the shards upload their artifacts there
    from their own nodes; without, they send them back into DIR/artifacts.
    """
    if settings.mode != "online":
        raise UsageError("--engine ray runs online jobs only; batch mode runs in one process")
    if settings.provider == "sim" and not settings.base_url:
        raise UsageError(
            "--engine ray with provider sim needs a simulator every shard can reach: start "
            "`runner sim` and pass its --base-url"
        )
    ray = _ray()
    # Every node reads the spec by the same name: a path made absolute, or a URL as given.
    spec = settings.spec if is_url(settings.spec) else settings.spec.resolve()
    settings = replace(settings, spec=spec, out=settings.out.resolve(), progress=False)
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
                return _run_job(ray, settings, shards, fingerprint, total, results_to)
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
    ray: Any,
    settings: Settings,
    shards: int | None,
    fingerprint: str,
    total: int,
    results_to: str | None,
) -> JobResult:
    out = settings.out
    windows = load_plan(out, fingerprint)
    if windows is None:
        n = shards or max(1, int(ray.cluster_resources().get("CPU", 1)))
        windows = plan_shards(settings.spec, n)
        save_plan(out, fingerprint, windows)
    store = Store(checkpoint_path(out))
    try:
        shards_run = _Job(ray, settings, store, windows)
        shards_run.check_nodes()
        merge_legacy(store, out, windows)
        job = store.job()
        job_id = str(job["settings"].get("job_id")) if job else os.urandom(6).hex()
        record = {**settings.to_record(), "job_id": job_id, "engine": "ray"}
        record["shards"] = len(windows)
        store.init_job(str(settings.spec), fingerprint, total, record)
        run_id = store.start_run()
        outcomes = shards_run.run((job_id, run_id), results_to)
        write_results_parquet(store, results_path(out))
        return _finish(settings, store, run_id, total, outcomes)
    finally:
        store.close()


class _Job:
    """The shards of one run, the actors they share, and the driver's merging of their
    outcomes."""

    def __init__(
        self,
        ray: Any,
        settings: Settings,
        store: Store,
        windows: list[SpecWindow],
    ) -> None:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        self.ray, self.settings, self.store, self.windows = ray, settings, store, windows
        # Pinned to the driver's node: a lost worker node must not take the tier or the
        # outcomes on their way with it.
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        hub = ray.remote(Hub).options(num_cpus=0, scheduling_strategy=here).remote()
        self.bank = self.inbox = hub
        self._merged = 0  # the inbox's last batch merged into the job's checkpoint

    def check_nodes(self) -> None:
        """On a cluster of several nodes, ask each whether it can run a shard before any
        runs: a spec or a key one node lacks stops the job with nothing sent."""
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        ray = self.ray
        nodes = [n for n in ray.nodes() if n.get("Alive") and n["Resources"].get("CPU", 0) > 0]
        if len(nodes) < 2:
            return  # the driver's own node: it has read the spec and the key already
        probe = ray.remote(check_node)
        record = self.settings.to_record()
        refs = [
            probe.options(
                num_cpus=0,
                max_retries=0,
                scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False),
            ).remote(record)
            for n in nodes
        ]
        problems = sorted({p for p in ray.get(refs) if p is not None})
        if problems:
            raise UsageError("; ".join(problems) + ". Nothing was sent.")

    def run(self, job: tuple[str, int], results_to: str | None) -> list[dict[str, Any]]:
        """Run shard k of each window for run `job` = (job id, run id); what each did."""
        ray, settings = self.ray, self.settings
        # Every shard must run at once (their lanes share one tier); a shard's CPU is mostly
        # parsing answers, so it asks for the share of a CPU that fits them all on the nodes.
        cpus = [float(n["Resources"].get("CPU", 0.0)) for n in ray.nodes() if n.get("Alive", True)]
        task = ray.remote(shard_main).options(
            num_cpus=shard_cpus(cpus, len(self.windows)),
            max_retries=3,
            scheduling_strategy="SPREAD",
        )
        refs = [
            task.remote(
                {**settings.to_record(), "window": _window_record(w)},
                k,
                job,
                self.bank,
                self.inbox,
                results_to,
            )
            for k, w in enumerate(self.windows)
        ]
        results: dict[Any, dict[str, Any]] = {}
        pending = list(refs)
        try:
            while pending:
                self.take(TAKE_WAIT)
                ready, pending = ray.wait(pending, num_returns=len(pending), timeout=0)
                for ref in ready:
                    results[ref] = self._result(ref)
        except KeyboardInterrupt:
            # Ctrl-C or SIGTERM: the bank tells every shard to stop as one process would (no
            # new requests, the ones in flight answered and committed, all shipped); a shard
            # still running after the grace period is ended.
            ray.get(self.bank.halt.remote("stopped by a signal"))
            deadline = time.monotonic() + GRACE
            while pending and time.monotonic() < deadline:
                self.take(TAKE_WAIT)
                ready, pending = ray.wait(pending, num_returns=len(pending), timeout=0)
                for ref in ready:
                    with contextlib.suppress(Exception):
                        results[ref] = ray.get(ref)
            for ref in pending:
                ray.cancel(ref, force=True)
            self.take(0)
            stopped = "stopped by a signal\nresume with:"
            return [
                {"exit_code": 3, "message": stopped, "sent": 0, "retries": 0},
                *results.values(),
            ]
        except BaseException:
            # One shard failed: on a cluster the others would run on without a driver. What
            # they shipped so far is kept.
            for ref in pending:
                ray.cancel(ref, force=True)
            with contextlib.suppress(Exception):
                self.take(0)
            raise
        self.take(0)  # a shard returns once the inbox has its last batch
        return [results[r] for r in refs]

    def take(self, wait: float) -> None:
        """Merge what the inbox holds; then answer the shards that are starting."""
        ray = self.ray
        mail = ray.get(self.inbox.take.remote(self._merged, wait))
        apply(self.store, self.settings.out, self.windows, mail.batches)
        self._merged = mail.last  # told to the inbox by the next take
        for shard, serial, wants in mail.hellos:
            held = held_rows(self.store, self.windows[shard]) if wants else []
            ray.get(self.inbox.answer.remote(shard, serial, held))

    def _result(self, ref: Any) -> dict[str, Any]:
        ray = self.ray
        try:
            return dict(ray.get(ref))
        except ray.exceptions.RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, RunnerError):
                raise cause from None
            raise


def shard_cpus(nodes: list[float], shards: int) -> float:
    """The most CPU (at most 1) a shard may ask for with every shard placed at once on
    nodes of these CPU counts: a share that fits each node a whole number of times."""
    best = 0.01
    for cpus in nodes:
        for k in range(1, shards + 1):
            x = min(1.0, math.floor(cpus / k * 10_000) / 10_000)  # Ray's resource grain
            if x > best and sum(math.floor(c / x + 1e-9) for c in nodes) >= shards:
                best = x
    return best


def _window_record(window: SpecWindow) -> dict[str, Any]:
    return asdict(window)


def _finish(
    settings: Settings,
    store: Store,
    run_id: int,
    total: int,
    outcomes: list[dict[str, Any]],
) -> JobResult:
    """The job's message and exit code from the merged checkpoint, as one process's; the
    summary also names the nodes the shards ended on."""
    counters = Counters(total=total)
    counters.sent = sum(o["sent"] for o in outcomes)
    counters.retries = sum(o["retries"] for o in outcomes)
    control = Control()
    for o in outcomes:
        if o["exit_code"] == 3 and "\nresume with:" in o["message"] and control.reason is None:
            # The shard's own first line says why; the resume hint is the job's.
            control.stop(JobStopped(o["message"].split("\nresume with:")[0]))
    result = finish_run(settings, store, run_id, control, counters, store.summary())
    result.summary["nodes"] = sorted({str(o["node"]) for o in outcomes if "node" in o})
    return result
