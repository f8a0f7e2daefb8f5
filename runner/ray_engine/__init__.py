"""`runner run --engine ray`: one job split into shards, each run by this runner's own
engine in a Ray worker, with the account's tier held across the cluster.

plan.py cuts the spec into windows by position; slots.py is the bank that leases each
(key, model)'s slots to the shards and the lanes that borrow from it; shard.py is a shard's
life on its node, shipper.py how it ships its checkpoint's changes to the driver's inbox
(inbox.py), and merge.py how the driver folds them into the job's own checkpoint;
driver.py starts (or joins) Ray and runs them. Ray is imported only when a job asks for it.

`run_sharded` is loaded on first use: a Ray worker that hosts an actor imports the one
module it needs, not the driver's (results export, pyarrow) with it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .driver import run_sharded

__all__ = ["run_sharded"]


def __getattr__(name: str) -> Any:
    if name == "run_sharded":
        from .driver import run_sharded

        return run_sharded
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
