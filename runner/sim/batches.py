"""The File and Batch APIs (API-NOTES section 5): upload a JSONL file, run it as a batch.

``POST files`` (multipart, ``purpose=batch``) stores a file; ``POST batches`` turns one into a
batch whose status follows the clock: ``validating`` for the first tenth of
``batch_seconds``, ``in_progress`` until nine tenths, ``finalizing``, then ``completed``
(or ``failed`` when the file does not validate, ``expired`` when ``batch_expire_after`` is
set, ``cancelled`` after ``POST batches/{id}/cancel``). The lines run when the batch
finishes, through the very handler code of the online endpoints (the caller passes it in
as ``run_line``), so a body gets the same answer online and in a batch; lines the platform
rejects go to the error file. Billing is counted in the ledger's ``batch`` section.

Files and batches belong to the key that made them; another key gets 404.

About 430 lines because the File and Batch APIs are one resource model (a batch is made
from a file and writes two more); the handlers share its state and its validation.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

import orjson

from runner.sim.errors import ApiError
from runner.sim.forms import read_form
from runner.sim.ledger import Bill

if TYPE_CHECKING:
    from runner.sim.state import SimState

__all__ = ["BATCH_ENDPOINTS", "BatchStore", "Reply", "RunLine", "handle", "parse_multipart"]

# What a batch may run (API-NOTES 5.1: the docs show chat, images and embeddings).
BATCH_ENDPOINTS = frozenset({"chat/completions", "embeddings", "images/generations"})
_URL_PREFIXES = ("/v4/", "/v1/", "/paas/v4/", "/api/paas/v4/")
MAX_FILE_BYTES = 100 * 1024 * 1024
# What `POST files` with purpose agent takes (zai-openapi.json: pdf, doc, xlsx, ppt, txt,
# jpg, png; the newer Office forms too).
AGENT_FILE_TYPES = ("pdf", "doc", "docx", "xlsx", "ppt", "pptx", "txt", "jpg", "jpeg", "png")
MAX_LINES = 50_000
MAX_EMBEDDING_LINES = 10_000
TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})

# (endpoint name, body, key id, root URL) -> (HTTP status, payload, bill or None)
RunLine = Callable[[str, dict[str, Any], str, str], tuple[int, dict[str, Any], Bill | None]]


@dataclass(slots=True)
class Reply:
    status: int
    data: bytes
    kind: bytes = b"application/json"


@dataclass(slots=True)
class SimFile:
    id: str
    key_id: str
    purpose: str
    filename: str
    data: bytes
    created_at: int

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "file",
            "bytes": len(self.data),
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "status_details": None,
        }


@dataclass(slots=True)
class SimBatch:
    id: str
    key_id: str
    endpoint: str  # as the client gave it, e.g. "/v4/chat/completions"
    input_file_id: str
    completion_window: str
    metadata: dict[str, Any] | None
    created_at: int
    t0: float  # monotonic creation time: drives the status
    status: str = "validating"
    output_file_id: str | None = None
    error_file_id: str | None = None
    errors: list[dict[str, Any]] | None = None
    counts: dict[str, int] = field(
        default_factory=lambda: {"total": 0, "completed": 0, "failed": 0}
    )
    stamps: dict[str, int | None] = field(default_factory=dict)

    def public(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "object": "batch",
            "endpoint": self.endpoint,
            "input_file_id": self.input_file_id,
            "completion_window": self.completion_window,
            "status": self.status,
            "output_file_id": self.output_file_id,
            "error_file_id": self.error_file_id,
            "errors": None if self.errors is None else {"object": "list", "data": self.errors},
            "created_at": self.created_at,
            "request_counts": dict(self.counts),
            "metadata": self.metadata,
        }
        for name in (
            "in_progress_at",
            "expires_at",
            "finalizing_at",
            "completed_at",
            "failed_at",
            "expired_at",
            "cancelling_at",
            "cancelled_at",
        ):
            out[name] = self.stamps.get(name)
        return out


class BatchStore:
    """Files and batches of one simulated platform (kept across ``/_sim/reset``)."""

    def __init__(self) -> None:
        self.files: dict[str, SimFile] = {}
        self.batches: dict[str, SimBatch] = {}


# --- multipart --------------------------------------------------------------------------


def parse_multipart(content_type: str, body: bytes) -> dict[str, tuple[str | None, bytes]]:
    """form-data field name -> (filename or None, bytes). Enough for ``POST files``."""
    return {part.name: (part.filename, part.data) for part in read_form(content_type, body)}


# --- routes -----------------------------------------------------------------------------


def _json(status: int, payload: Any) -> Reply:
    return Reply(status, orjson.dumps(payload))


def _page(items: list[dict[str, Any]], query: dict[str, list[str]]) -> dict[str, Any]:
    """A cursor page, newest first: ``after`` is the last id of the previous page."""
    try:
        limit = int(query.get("limit", ["20"])[0])
    except ValueError:
        raise ApiError(1214, "limit must be an integer") from None
    if not 1 <= limit <= 100:
        raise ApiError(1214, "limit must be in [1, 100]")
    after = query.get("after", [None])[0]
    if after:
        ids = [i["id"] for i in items]
        items = items[ids.index(after) + 1 :] if after in ids else []
    page = items[:limit]
    return {
        "object": "list",
        "data": page,
        "first_id": page[0]["id"] if page else None,
        "last_id": page[-1]["id"] if page else None,
        "has_more": len(items) > limit,
    }


def handle(
    state: SimState,
    method: str,
    name: str,
    query_string: bytes,
    content_type: str,
    body: bytes,
    kid: str,
    root: str,
    run_line: RunLine,
) -> Reply:
    """One request under ``files`` or ``batches``; raises ApiError for error answers."""
    store = state.batches
    parts = name.split("/")
    query = parse_qs(query_string.decode("latin-1"))
    now = time.monotonic()
    for batch in store.batches.values():
        _settle(state, batch, now, root, run_line)
    if parts[0] == "files":
        if len(parts) == 1 and method == "POST":
            return _upload(state, content_type, body, kid)
        if len(parts) == 1 and method == "GET":
            purpose = query.get("purpose", [None])[0]
            files = [
                f.public()
                for f in reversed(store.files.values())
                if f.key_id == kid and (purpose is None or f.purpose == purpose)
            ]
            return _json(200, _page(files, query))
        file = store.files.get(parts[1]) if len(parts) >= 2 else None
        if file is None or file.key_id != kid:
            raise ApiError(1222, "file not found", status=404)
        if len(parts) == 2 and method == "GET":
            return _json(200, file.public())
        if len(parts) == 2 and method == "DELETE":
            del store.files[file.id]
            return _json(200, {"id": file.id, "object": "file", "deleted": True})
        if len(parts) == 3 and parts[2] == "content" and method == "GET":
            state.ledger.downloads += 1
            return Reply(200, file.data, b"application/octet-stream")
        raise ApiError(1222, status=405)
    if len(parts) == 1 and method == "POST":
        return _create(state, body, kid, now)
    if len(parts) == 1 and method == "GET":
        mine = [b.public() for b in reversed(store.batches.values()) if b.key_id == kid]
        return _json(200, _page(mine, query))
    found = store.batches.get(parts[1]) if len(parts) >= 2 else None
    if found is None or found.key_id != kid:
        raise ApiError(1222, "batch not found", status=404)
    if len(parts) == 2 and method == "GET":
        return _json(200, found.public())
    if len(parts) == 3 and parts[2] == "cancel" and method == "POST":
        if found.status in TERMINAL:
            raise ApiError(1214, f"a {found.status} batch cannot be cancelled")
        found.status = "cancelling"
        found.stamps["cancelling_at"] = int(time.time())
        return _json(200, found.public())
    raise ApiError(1222, status=405)


def _upload(state: SimState, content_type: str, body: bytes, kid: str) -> Reply:
    fields = parse_multipart(content_type, body)
    purpose = fields.get("purpose", (None, b""))[1].decode("utf-8", "replace")
    if purpose not in ("batch", "agent"):
        raise ApiError(1214, "purpose must be 'batch' or 'agent' (those the simulator keeps)")
    if "file" not in fields:
        raise ApiError(1213, "The field 'file' is required")
    filename, data = fields["file"]
    if len(data) > MAX_FILE_BYTES:
        raise ApiError(1210, "files may hold at most 100 MB", status=435)
    if purpose == "agent":
        suffix = (filename or "").rsplit(".", 1)[-1].lower()
        if suffix not in AGENT_FILE_TYPES:
            raise ApiError(1214, f"agent files must be one of {', '.join(AGENT_FILE_TYPES)}")
        state.ledger.agent_file(hashlib.sha256(data).hexdigest())
    file = SimFile(
        "file-" + state.new_id(), kid, purpose, filename or "upload.jsonl", data, int(time.time())
    )
    state.batches.files[file.id] = file
    if purpose == "batch":
        state.ledger.batch["files"] += 1
    return _json(200, file.public())


def _endpoint_name(url: Any) -> str | None:
    if not isinstance(url, str):
        return None
    for prefix in _URL_PREFIXES:
        if url.startswith(prefix) and url[len(prefix) :] in BATCH_ENDPOINTS:
            return url[len(prefix) :]
    return None


def _create(state: SimState, raw: bytes, kid: str, now: float) -> Reply:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise ApiError(1210, "The request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise ApiError(1210, "The request body must be a JSON object")
    file_id = body.get("input_file_id")
    file = state.batches.files.get(file_id) if isinstance(file_id, str) else None
    if file is None or file.key_id != kid:
        raise ApiError(1214, "input_file_id names no uploaded file")
    endpoint = body.get("endpoint")
    if _endpoint_name(endpoint) is None:
        raise ApiError(1214, "endpoint must be /v4/chat/completions, /v4/embeddings, ...")
    metadata = body.get("metadata")
    if metadata is not None and (not isinstance(metadata, dict) or len(metadata) > 16):
        raise ApiError(1214, "metadata must be an object of at most 16 pairs")
    created = int(time.time())
    batch = SimBatch(
        "batch_" + state.new_id(),
        kid,
        str(endpoint),
        file.id,
        str(body.get("completion_window") or "24h"),
        metadata,
        created,
        now,
        stamps={"expires_at": created + 24 * 3600},
    )
    state.batches.batches[batch.id] = batch
    state.ledger.batch["batches"] += 1
    return _json(200, batch.public())


def _validate(
    batch: SimBatch, data: bytes
) -> tuple[list[tuple[str, dict[str, Any]]], list[dict[str, Any]]]:
    """Parse the input file: (custom_id, body) per line, or the validation errors."""
    want = _endpoint_name(batch.endpoint)
    lines: list[tuple[str, dict[str, Any]]] = []
    errors: list[dict[str, Any]] = []
    seen: set[str] = set()
    models: set[str] = set()
    for n, raw in enumerate(data.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            line = orjson.loads(raw)
        except orjson.JSONDecodeError:
            errors.append({"code": "invalid_json", "line": n, "message": "not JSON"})
            continue
        cid = line.get("custom_id") if isinstance(line, dict) else None
        body = line.get("body") if isinstance(line, dict) else None
        if not isinstance(cid, str) or not cid or cid in seen:
            errors.append({"code": "invalid_custom_id", "line": n, "message": "missing/duplicate"})
        elif _endpoint_name(line.get("url")) != want or not isinstance(body, dict):
            errors.append({"code": "invalid_url", "line": n, "message": "url must match endpoint"})
        else:
            seen.add(cid)
            models.add(str(body.get("model")))
            lines.append((cid, body))
    limit = MAX_EMBEDDING_LINES if want == "embeddings" else MAX_LINES
    if len(lines) > limit:
        errors.append({"code": "too_many_lines", "line": None, "message": f"at most {limit}"})
    if len(models) > 1:
        errors.append({"code": "mixed_models", "line": None, "message": "one model per file"})
    if not lines and not errors:
        errors.append({"code": "empty_file", "line": None, "message": "the file has no lines"})
    return lines, errors


def _settle(state: SimState, batch: SimBatch, now: float, root: str, run_line: RunLine) -> None:
    """Move a batch along its timeline; run its lines when it finishes."""
    if batch.status in TERMINAL:
        return
    stamp = int(time.time())
    if batch.status == "cancelling":
        batch.status = "cancelled"
        batch.stamps["cancelled_at"] = stamp
        return
    age = now - batch.t0
    span = state.config.batch_seconds
    if age < 0.1 * span:
        return
    if batch.status == "validating":
        file = state.batches.files.get(batch.input_file_id)
        lines, errors = _validate(batch, file.data if file else b"")
        if errors:
            batch.status, batch.errors = "failed", errors
            batch.stamps["failed_at"] = stamp
            return
        batch.status = "in_progress"
        batch.stamps["in_progress_at"] = stamp
        batch.counts["total"] = len(lines)
    if age < 0.9 * span:
        return
    if batch.status == "in_progress":
        batch.status = "finalizing"
        batch.stamps["finalizing_at"] = stamp
    if age < span:
        return
    _finish(state, batch, root, run_line, stamp)


def _finish(state: SimState, batch: SimBatch, root: str, run_line: RunLine, stamp: int) -> None:
    file = state.batches.files.get(batch.input_file_id)
    lines, _ = _validate(batch, file.data if file else b"")
    limit = state.config.batch_expire_after
    if limit is not None:
        lines = lines[:limit]
    name = _endpoint_name(batch.endpoint) or ""
    out: list[bytes] = []
    err: list[bytes] = []
    for cid, body in lines:
        status, payload, bill = run_line(name, dict(body), batch.key_id, root)
        response = {"status_code": status, "body": payload}
        line = {"custom_id": cid, "id": batch.id, "response": response}
        if status == 200:
            out.append(orjson.dumps(line))
            batch.counts["completed"] += 1
            state.ledger.bill_batch(str(body.get("model")), bill)
        else:
            err.append(orjson.dumps(line))
            batch.counts["failed"] += 1
            state.ledger.bill_batch(str(body.get("model")), None)
    batch.output_file_id = _result_file(state, batch, "output", out)
    batch.error_file_id = _result_file(state, batch, "error", err)
    if limit is not None:
        batch.status = "expired"
        batch.stamps["expired_at"] = stamp
    else:
        batch.status = "completed"
        batch.stamps["completed_at"] = stamp


def _result_file(state: SimState, batch: SimBatch, kind: str, lines: list[bytes]) -> str | None:
    if not lines:
        return None
    data = b"\n".join(lines) + b"\n"
    file = SimFile(
        "file-" + state.new_id(),
        batch.key_id,
        f"batch_{kind}",
        f"{batch.id}_{kind}.jsonl",
        data,
        int(time.time()),
    )
    state.batches.files[file.id] = file
    return file.id
