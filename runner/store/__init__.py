"""The SQLite checkpoint: the single source of truth for a job.

One row per spec row the job has touched, keyed by its position in the spec (`seq`), with
its status, attempts, timings, last error, response, usage and cost. A result counts as
done only once its transaction has committed. WAL with synchronous=NORMAL keeps every
committed row across a killed process (only an OS crash or power loss can drop the last
transactions), and one writer commits rows in batches so the store keeps pace with
thousands of rows per second.

Every SQL statement of the checkpoint's job tables lives in this package, next to the schema
it depends on; the callers see methods of `Store`, never SQL. checkpoint.py is the store
itself (schema, job, runs, rows); batches.py the batch-mode tables and totals.py the
read-side totals, both mixed into `Store`; opening.py what opening a checkpoint needs when
it is read-only, damaged or read beside the writer. (The report's own `timeline` table is
report/timeline.py's.)
"""

from ..outcome import COLUMNS
from .batches import BATCH_COLUMNS
from .checkpoint import REOPEN_CODES, TERMINAL, Store
from .opening import Claims, FinishedRows, advice
from .totals import message_shape

__all__ = [
    "BATCH_COLUMNS",
    "COLUMNS",
    "REOPEN_CODES",
    "TERMINAL",
    "Claims",
    "FinishedRows",
    "Store",
    "advice",
    "message_shape",
]
