"""`runner run --engine ray`: one job split into shards, each run by this runner's own
engine in a Ray worker, with the account's tier held across the cluster.

plan.py cuts the spec into windows by position; slots.py is the bank that leases each
(key, model)'s slots to the shards and the lanes that borrow from it; merge.py folds the
shards' checkpoints into the job's own; driver.py starts (or joins) Ray and runs them.
Ray is imported only by driver.py, and only when a job asks for it.
"""

from .driver import run_sharded

__all__ = ["run_sharded"]
