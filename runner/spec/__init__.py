"""Read a job's spec (JSONL or Parquet) as a stream of batches of ``Request`` or ``InvalidRow``.

A spec may hold a million rows, so it is never loaded whole: JSONL is split from fixed-size
chunks and Parquet is read in record batches. Every data row yields exactly one item, in file
order; a bad row becomes an ``InvalidRow`` naming its line and field and never stops the reading of
the rest. Only a problem with the file as a whole (missing, unknown format, not Parquet) raises
``SpecError``.

Rows come in two forms, mixed freely: the provider Batch-API line (``custom_id``, ``method``,
``url``, ``body``) and a bare request body whose endpoint and model come from ``SpecDefaults``.
``seq`` counts data rows from 0 (blank lines are not rows); the checkpoint keys on it, so it
depends only on the file's bytes.
"""

from .checks import ASYNC_ENDPOINTS, ENDPOINTS, FORM_ENDPOINTS, canonical_endpoint
from .reader import (
    MAX_LINE_BYTES,
    SpecWindow,
    count_lines,
    jsonl_lines,
    open_spec,
    read_spec,
    spec_fingerprint,
    window_digest,
)
from .rows import InvalidRow, Request, SpecDefaults, SpecError, derive_custom_id
from .validate import ValidationReport, validate_spec

__all__ = [
    "ASYNC_ENDPOINTS",
    "ENDPOINTS",
    "FORM_ENDPOINTS",
    "MAX_LINE_BYTES",
    "InvalidRow",
    "Request",
    "SpecDefaults",
    "SpecError",
    "SpecWindow",
    "ValidationReport",
    "canonical_endpoint",
    "count_lines",
    "derive_custom_id",
    "jsonl_lines",
    "open_spec",
    "read_spec",
    "spec_fingerprint",
    "validate_spec",
    "window_digest",
]
