"""One shard in a Ray worker: this runner's engine over its window of the spec, with its
checkpoint on the worker's own node and its outcomes shipped to the driver.

The shard never touches the job's folder, which may be on the driver's disk alone. It reads
its window of the spec itself (a path every node has, or object storage), keeps its
checkpoint under the node's shard folder (`RUNNER_SHARD_DIR`, default the temp folder's
`runner-shards`), one per job, run and shard, and removes it once everything is shipped.
The key is read from the worker's environment: it never travels through Ray.
"""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import anyio

from ..errors import UsageError
from ..lifecycle import checkpoint_path
from ..settings import Settings
from ..storage import is_url
from .shipper import Shipper, prepare
from .slots import LeasedLanes

__all__ = ["SHARD_DIR_ENV", "check_node", "local_root", "shard_main"]

SHARD_DIR_ENV = "RUNNER_SHARD_DIR"


def local_root() -> Path:
    """Where this node keeps its shards' checkpoints (node-local space; not the job's DIR)."""
    configured = os.environ.get(SHARD_DIR_ENV)
    return Path(configured) if configured else Path(tempfile.gettempdir()) / "runner-shards"


def check_node(record: dict[str, Any]) -> str | None:
    """What keeps this node from running a shard of the job (None if nothing): the spec
    unreadable by the path the driver gave, or no API key in its workers' environment."""
    import ray

    node = f"on node {ray.util.get_node_ip_address()}"  # type: ignore[no-untyped-call]
    settings = Settings.from_record(record, out=local_root(), progress=False)
    if not is_url(settings.spec) and not settings.spec.is_file():
        return (
            f"{node} cannot read the spec {settings.spec}: a job on Ray needs the spec at "
            "the same path on every node, or in object storage (s3://, gs://, abfs://)"
        )
    try:
        settings.with_key_from_env()
    except UsageError as exc:
        return (
            f"{node}: {exc} (each node's Ray workers read the key from their own "
            "environment: set it where that node's `ray start` runs)"
        )
    return None


def shard_main(
    record: dict[str, Any],
    shard: int,
    job: tuple[str, int],
    bank: Any,
    inbox: Any,
    results_to: str | None = None,
) -> dict[str, Any]:
    """Run shard `shard` of run `job` = (job id, run id); what it did, for the driver."""
    import ray

    from ..job import run_job

    job_dir = local_root() / job[0]
    out = job_dir / f"r{job[1]}" / f"{shard:04d}"
    problem = check_node(record)
    if problem is not None:
        raise UsageError(f"shard {shard} {problem}")
    settings = Settings.from_record(record, out=out, progress=False).with_key_from_env()
    _drop_earlier_runs(job_dir, keep=out.parent)
    fresh = not checkpoint_path(out).exists()
    # The rows the driver holds; a checkpoint left here by this shard's last attempt holds
    # them already (and what it did not ship yet).
    held = ray.get(inbox.hello.remote(shard, fresh))
    if fresh:
        prepare(out, held)
    del held
    # Which process runs the shard now (a retry runs in another): for `ps`, and for a test
    # that kills it.
    (out / "worker.pid").write_text(f"{os.getpid()}\n")
    ray.get(bank.reset.remote(shard))  # a retried shard held nothing it can still use
    lanes = functools.partial(LeasedLanes, bank=bank, shard=shard)
    shipper = Shipper(out, shard, lambda batch: ray.get(inbox.put.remote(batch)), results_to)
    try:
        with shipper.running():
            result = anyio.run(
                functools.partial(run_job, settings, handle_signals=False, lanes=lanes),
                backend="asyncio",
            )
    finally:
        shipper.close()
        ray.get(bank.reset.remote(shard))
    # Everything is with the driver now: the node keeps nothing of a shard that ended.
    shutil.rmtree(out, ignore_errors=True)
    for empty in (out.parent, job_dir):
        try:
            empty.rmdir()
        except OSError:
            break  # another shard of the job still runs on this node
    return {
        "exit_code": result.exit_code,
        "message": result.message,
        "sent": result.counters.sent,
        "retries": result.counters.retries,
        "stopped": result.summary["pending"] > 0,
        "node": ray.get_runtime_context().get_node_id(),
        "shipped": shipper.shipped,
    }


def _drop_earlier_runs(job_dir: Path, keep: Path) -> None:
    """Checkpoints an earlier run of the job left on this node (its driver was killed):
    what they did not ship is sent again, so they are of no use."""
    if not job_dir.is_dir():
        return
    for old in job_dir.iterdir():
        if old != keep:
            shutil.rmtree(old, ignore_errors=True)
