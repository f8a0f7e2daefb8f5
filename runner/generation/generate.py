"""`generate`: map a prompt over a table and get the answers back as typed columns.

The input is turned into the job's requests (`OUT/requests.jsonl`, one chat request per
input row, in order), which the engine runs exactly as `runner run` runs a spec: the same
tier-capped pool, retries, budget and checkpoint (`OUT/checkpoint.sqlite`), so calling again
sends only what is not done, and a killed call resumes. `reask.CheckedLanes` adds the
response cache, the schema check and re-asks per row. At the end the input is read again
beside the checkpoint and written with the answers as `OUT/output.parquet`, which is what
`generate` returns.

Result columns, after the input's own: the schema's fields (or `output`, the assistant's
text, without a schema), then `status` (succeeded, failed, pending), `error_code`,
`error_message`, `raw_output` (with a schema: the answer's text when it did not match),
`cached` (answered from the cache, nothing sent), `attempts` (answers asked for: 1, more
after re-asks, 0 from the cache), `cost` (the provider's currency, every ask included),
`prompt_tokens`, `completion_tokens`, `total_tokens`.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import sqlite3
import threading
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import anyio
import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from ..cost import NANO, format_total
from ..errors import JobStopped, UsageError
from ..job import EXIT_STOPPED, checkpoint_path, run_job
from ..localfiles import FileRefError, forget, remember
from ..rerun import Selection, choose
from ..settings import Settings
from ..spec import spec_fingerprint
from ..store import Store
from .answers import OutputSchema
from .cache import ResponseCache, default_cache_dir
from .prompts import PromptBuilder, RowProblem
from .reask import PROBLEM_KEY, Asking, CheckedLanes, answer_text
from .sources import Source, open_source

__all__ = ["META_COLUMNS", "agenerate", "generate", "summary_of"]

REQUESTS = "requests.jsonl"
OUTPUT = "output.parquet"
MARK = "generate.json"
ENDPOINT = "chat/completions"
DEFAULT_MAX_REASKS = 2

META_COLUMNS = pa.schema(
    [
        ("status", pa.string()),
        ("error_code", pa.string()),
        ("error_message", pa.string()),
        ("raw_output", pa.string()),
        ("cached", pa.bool_()),
        ("attempts", pa.int64()),
        ("cost", pa.float64()),
        ("prompt_tokens", pa.int64()),
        ("completion_tokens", pa.int64()),
        ("total_tokens", pa.int64()),
    ]
)
_STORED = [  # after the seq that iter_columns puts first
    "status",
    "error_code",
    "error_message",
    "attempts",
    "cost_nano",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "response",
]


def _answer_schema(answers: OutputSchema | None) -> pa.Schema:
    return answers.arrow if answers is not None else pa.schema([("output", pa.string())])


def _digest_type(t: pa.DataType) -> pa.DataType | None:
    """An image column of bytes is written as their sha256 (the bytes never go to disk)."""
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return pa.string()
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        inner = _digest_type(t.value_type)
        return pa.list_(inner) if inner is not None else None
    return None


def _digest(value: Any) -> Any:
    if isinstance(value, list):
        return [_digest(v) for v in value]
    return None if value is None else hashlib.sha256(value).hexdigest()


def _input_schema(src: Source, images: Sequence[str]) -> pa.Schema:
    fields = []
    for f in src.schema:
        digest = _digest_type(f.type) if f.name in images else None
        fields.append(f if digest is None else pa.field(f.name, digest))
    return pa.schema(fields)


def _input_columns(batch: pa.RecordBatch, schema: pa.Schema) -> list[pa.Array]:
    cols = []
    for i, col in enumerate(batch.columns):
        f = schema.field(i)
        if col.type != f.type:  # an image column of bytes: its sha256s instead
            col = pa.array([_digest(v) for v in col.to_pylist()], type=f.type)
        cols.append(col)
    return cols


def _result_schema(
    src: Source, answers: OutputSchema | None, images: Sequence[str] = ()
) -> pa.Schema:
    """Input columns, answer columns, row columns; a name used twice is refused up front."""
    fields = [*_input_schema(src, images), *_answer_schema(answers), *META_COLUMNS]
    seen: dict[str, str] = {}
    for i, f in enumerate(fields):
        where = (
            "input"
            if i < len(src.schema)
            else "answer"
            if i < len(src.schema) + len(_answer_schema(answers))
            else "result"
        )
        if f.name in seen:
            raise UsageError(
                f"column {f.name!r} would appear twice in the result (an {seen[f.name]} column "
                f"and an {where} column): rename it in the input or the schema"
            )
        seen[f.name] = where
    return pa.schema(fields)


def _with_images(
    messages: list[dict[str, Any]], row: dict[str, Any], columns: Sequence[str], refs: set[str]
) -> list[dict[str, Any]]:
    """The row's images (paths, or bytes remembered by sha256) as image parts ahead of the
    last user message's text; a null cell adds none."""
    parts: list[dict[str, Any]] = []
    for name in columns:
        value = row.get(name)
        for item in value if isinstance(value, list) else [value]:
            if item is None:
                continue
            if isinstance(item, bytes | bytearray | memoryview):
                try:
                    ref = remember(bytes(item))
                except FileRefError as exc:
                    raise RowProblem(str(exc), name) from None
                refs.add(ref)
            elif isinstance(item, str | Path):
                ref = str(item)
            else:
                raise RowProblem(f"an image is a path or bytes, got {type(item).__name__}", name)
            parts.append({"type": "image_url", "image_url": {"url": ref}})
    if not parts:
        return messages
    last = max(i for i, m in enumerate(messages) if m.get("role") == "user")
    content = messages[last]["content"]
    text = [{"type": "text", "text": content}] if isinstance(content, str) else list(content)
    messages[last] = {**messages[last], "content": [*parts, *text]}
    return messages


def _write_requests(
    src: Source,
    builder: PromptBuilder,
    base: dict[str, Any],
    path: Path,
    images: Sequence[str] = (),
    refs: set[str] | None = None,
) -> None:
    """One chat request per input row, in order; a row that can't be built carries why.
    Image bytes stay in this process (`refs`): the file holds their sha256, never them."""
    tmp = path.with_name(path.name + ".tmp")
    seq = 0
    refs = set() if refs is None else refs
    with tmp.open("wb") as f:
        for batch in src.batches():
            for row in batch.to_pylist():
                try:
                    messages = builder.messages(row)
                    if images:
                        messages = _with_images(messages, row, images, refs)
                    body = {**base, "messages": messages}
                except RowProblem as p:
                    field = f", column {p.field!r}" if p.field else ""
                    problem = f"row {seq}{field}: {p.message}"
                    stub = [{"role": "user", "content": "(not sent)"}]
                    body = {"model": base["model"], "messages": stub, PROBLEM_KEY: problem}
                try:
                    line = orjson.dumps({"custom_id": f"row-{seq}", "body": body})
                except TypeError as exc:  # a value JSON cannot carry (e.g. raw bytes)
                    stub = [{"role": "user", "content": "(not sent)"}]
                    problem = f"row {seq}: the prompt is not JSON-serialisable: {exc}"
                    body = {"model": base["model"], "messages": stub, PROBLEM_KEY: problem}
                    line = orjson.dumps({"custom_id": f"row-{seq}", "body": body})
                f.write(line + b"\n")
                seq += 1
    tmp.replace(path)


def _place_requests(out: Path, new: Path, force: bool) -> None:
    """Keep the job's requests unless they changed; a changed job needs a new `out`."""
    path = out / REQUESTS
    resuming = path.exists() and checkpoint_path(out).exists() and not force
    if resuming and spec_fingerprint(path) != spec_fingerprint(new):
        new.unlink()
        raise UsageError(
            f"the requests differ from those of the job already in {out} (another "
            "input, prompt, schema, model or body): use a new out folder, or force=True "
            "to resume anyway"
        )
    new.replace(path)


def _choose_again(out: Path, new: Path, retry: tuple[str, ...]) -> None:
    """Make the rows `retry` names pending again, their outcomes kept as earlier attempts."""
    if not checkpoint_path(out).exists():
        new.unlink()
        raise UsageError(f"retry: {out} holds no generate job yet; call without retry first")
    store = Store(checkpoint_path(out), create=False)
    try:
        chosen: set[int] = set()
        for what in retry:
            if what == "failed":
                sel = Selection()
            elif what == "length":
                sel = Selection(finish_reason="length")
            else:
                sel = Selection(codes=frozenset({what}))
            chosen.update(choose(store, sel)[0])
        if chosen:
            store.archive(sorted(chosen), store.next_run_id())
    finally:
        store.close()


def _write_output(
    src: Source, answers: OutputSchema | None, out: Path, images: Sequence[str] = ()
) -> Path:
    """The input read again beside the checkpoint, with answers and row columns, in order."""
    schema = _result_schema(src, answers, images)
    path, tmp = out / OUTPUT, out / (OUTPUT + ".tmp")
    store = Store(checkpoint_path(out), create=False)
    try:
        earlier = store.earlier_attempts()  # retried rows: their superseded attempts
        rows = (
            _with_earlier(r, earlier)
            for chunk in store.iter_columns(_STORED, batch=4096)
            for r in chunk
        )
        ahead: tuple[Any, ...] | None = next(rows, None)
        seq = 0
        with pq.ParquetWriter(tmp, schema) as writer:
            for batch in src.batches(4096):
                stored: list[tuple[Any, ...] | None] = []
                for _ in range(batch.num_rows):
                    while ahead is not None and ahead[0] < seq:
                        ahead = next(rows, None)
                    stored.append(ahead if ahead is not None and ahead[0] == seq else None)
                    seq += 1
                writer.write_table(_result_batch(batch, stored, answers, schema))
        tmp.replace(path)
    finally:
        store.close()
    return path


def _with_earlier(row: tuple[Any, ...], earlier: dict[int, tuple[int, int]]) -> tuple[Any, ...]:
    """A row's attempts and cost with those of its superseded attempts added (a retry)."""
    before = earlier.get(row[0])
    if before is None:
        return row
    seq, status, code, message, attempts, cost_nano, *rest = row
    return (seq, status, code, message, (attempts or 0) + before[0],
            (cost_nano or 0) + before[1], *rest)  # fmt: skip


def _result_batch(
    batch: pa.RecordBatch,
    stored: list[tuple[Any, ...] | None],
    answers: OutputSchema | None,
    schema: pa.Schema,
) -> pa.Table:
    values: list[Any] = []
    meta: dict[str, list[Any]] = {name: [] for name in META_COLUMNS.names}
    for row in stored:
        if row is None:
            values.append(None)
            for name in META_COLUMNS.names:
                meta[name].append("pending" if name == "status" else None)
            continue
        _, status, code, message, attempts, cost_nano, p_tok, c_tok, t_tok, response = row
        text = None
        if response:
            try:
                text = answer_text(orjson.loads(response))
            except (orjson.JSONDecodeError, AttributeError):
                text = None
        value: Any = None
        raw = None
        if answers is None:
            value = text if status == "succeeded" else None
        elif status == "succeeded":
            value, _ = answers.check(text)
        elif code == "invalid_output":
            raw = text if isinstance(text, str) else None
        values.append(value)
        meta["status"].append(status)
        meta["error_code"].append(code)
        meta["error_message"].append(message)
        meta["raw_output"].append(raw)
        meta["cached"].append(status == "succeeded" and attempts == 0)
        meta["attempts"].append(attempts)
        meta["cost"].append(None if cost_nano is None else cost_nano / NANO)
        meta["prompt_tokens"].append(p_tok)
        meta["completion_tokens"].append(c_tok)
        meta["total_tokens"].append(t_tok)
    if answers is None:
        answer_cols = [pa.array(values, type=pa.string())]
    else:
        answer_cols = answers.columns(values)
    meta_cols = [pa.array(meta[f.name], type=f.type) for f in META_COLUMNS]
    inputs = _input_columns(batch, schema)
    return pa.Table.from_arrays([*inputs, *answer_cols, *meta_cols], schema=schema)


async def agenerate(
    source: Any,
    *,
    prompt: str | Callable[[dict[str, Any]], Any],
    model: str,
    out: str | Path,
    response_format: Any = None,
    system: str | None = None,
    body: Mapping[str, Any] | None = None,
    provider: str = "zai",
    base_url: str | None = None,
    concurrency: int | None = None,
    tier: str | None = None,
    max_cost: float | Decimal | str | None = None,
    cache: bool = True,
    cache_dir: str | Path | None = None,
    max_reasks: int = DEFAULT_MAX_REASKS,
    progress: bool = True,
    force: bool = False,
    retry: Sequence[str] | None = None,
    images: Sequence[str] = (),
    handle_signals: bool = False,
    **options: Any,
) -> pa.Table:
    """The async form of `generate` (same arguments), for code already inside a loop.

    `retry` asks chosen finished rows of the job already in `out` again: error codes as
    `runner status` shows them (`1301`, `invalid_output`, `timeout`), `failed` for every
    failed row, `length` for answers cut at max_tokens. The prompt, schema or body may have
    changed since: only the chosen rows are sent with the new requests (so only they miss
    the response cache); the other rows keep their answers. Earlier attempts stay in the
    checkpoint and on the bill (the `cost` and `attempts` columns count every one).

    `images` names columns of images (a path, bytes, or a list of them per cell) sent as
    image parts ahead of the prompt's text, for a vision model. Paths resolve under
    `files_root` (default: the current folder) by the same rules as a spec's; bytes are
    never written to disk: requests.jsonl and the checkpoint hold their sha256, and they are
    inlined when their row is sent (so is the response cache's key).
    """
    out = Path(out)
    images = [images] if isinstance(images, str) else list(images)
    if max_reasks < 0:
        raise UsageError(f"max_reasks must be 0 or more, got {max_reasks}")
    try:
        budget = None if max_cost is None else Decimal(str(max_cost))
    except InvalidOperation:
        raise UsageError(f"max_cost is not a number: {max_cost!r}") from None
    src = await anyio.to_thread.run_sync(open_source, source)
    answers = OutputSchema(response_format) if response_format is not None else None
    _result_schema(src, answers)
    for name in images:
        if name not in src.schema.names:
            raise UsageError(f"images: no column {name!r} in the input ({src.schema.names})")
    # Image paths are relative to where the caller is, as any path in a script.
    options.setdefault("files_root", Path.cwd())
    builder = PromptBuilder(
        prompt,
        src.schema.names,
        system=system,
        instruction=answers.instruction() if answers is not None else None,
    )
    base: dict[str, Any] = {**(body or {}), "model": model}
    try:
        settings = Settings(
            spec=out / REQUESTS,
            out=out,
            provider=provider,
            base_url=base_url or "",
            model=model,
            endpoint=ENDPOINT,
            concurrency=concurrency,
            tier=tier.upper() if tier else None,
            max_cost=budget,
            progress=progress,
            force=force,
            **options,
        )
    except TypeError as exc:
        raise UsageError(f"unknown option for generate: {exc}") from None
    settings = _with_key(settings)
    if answers is not None and "response_format" not in base:
        # A response_format the caller put in `body` is sent as given; the schema is still
        # checked on every answer and asked again for.
        base["response_format"] = answers.response_format(settings.provider_info.json_schema)
    out.mkdir(parents=True, exist_ok=True)
    new = out / (REQUESTS + ".new")
    refs: set[str] = set()
    await anyio.to_thread.run_sync(_write_requests, src, builder, base, new, images, refs)
    if retry:
        await anyio.to_thread.run_sync(_choose_again, out, new, tuple(retry))
        settings = replace(settings, force=True)  # the requests may differ: rows match by seq
    await anyio.to_thread.run_sync(_place_requests, out, new, force or bool(retry))
    (out / MARK).write_text(
        orjson.dumps(
            {"model": model, "provider": provider, "schema": answers.schema if answers else None},
            option=orjson.OPT_INDENT_2,
        ).decode()
    )
    scope = f"{provider}\0{base_url or settings.provider_info.base_url}"
    store = None
    if cache:
        folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        # The cache saves money; it is never a reason to stop: unusable, the job runs without.
        try:
            store = await anyio.to_thread.run_sync(ResponseCache, folder)
        except (OSError, sqlite3.Error) as exc:
            warnings.warn(
                f"running without the response cache: {exc}", RuntimeWarning, stacklevel=2
            )
    asking = Asking(answers, max_reasks, scope, store)
    try:
        result = await run_job(
            settings,
            handle_signals=handle_signals,
            lanes=functools.partial(CheckedLanes, asking=asking),
        )
    finally:
        forget(refs)
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(asking.flush)
            if store is not None:
                store.close()
    if result.exit_code == EXIT_STOPPED:
        raise JobStopped(f"{result.message}\n(call generate again with the same out to resume)")
    path = await anyio.to_thread.run_sync(_write_output, src, answers, out, images)
    return pq.read_table(path)


def _with_key(settings: Settings) -> Settings:
    """The provider's key from the environment; a server on this machine needs none
    (`Settings.with_key_from_env`), so a notebook rehearsing on the simulator need not set
    one."""
    return settings.with_key_from_env()


def generate(source: Any, **kwargs: Any) -> pa.Table:
    """Map `prompt` over the rows of `source`; the answers come back as typed columns.

    See the module docstring for the result's columns, and `agenerate` for the arguments.
    Works in a plain script (Ctrl-C stops cleanly; call again to resume) and where an event
    loop is already running, as in Jupyter: the job then runs on a loop in a worker thread.
    """
    call = functools.partial(agenerate, source, **kwargs)
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        main = threading.current_thread() is threading.main_thread()
        if main:
            call = functools.partial(call, handle_signals=kwargs.get("handle_signals", True))
        return _run(call)
    with anyio.from_thread.start_blocking_portal("asyncio") as portal:
        future = portal.start_task_soon(call)
        try:
            return future.result()
        except KeyboardInterrupt:
            future.cancel()
            raise


def _run(call: Callable[[], Any]) -> pa.Table:
    try:
        import uvloop  # noqa: F401

        options = {"use_uvloop": True}
    except ImportError:
        options = {}
    table: pa.Table = anyio.run(call, backend="asyncio", backend_options=options)
    return table


def summary_of(table: pa.Table, currency: str = "USD") -> tuple[str, int]:
    """One line for the CLI: counts, cache hits, re-asks and cost; and the failed count."""
    status = table.column("status").to_pylist()
    ok, failed = status.count("succeeded"), status.count("failed")
    cached = sum(1 for c in table.column("cached").to_pylist() if c)
    reasks = sum(max((a or 0) - 1, 0) for a in table.column("attempts").to_pylist())
    costs = table.column("cost").to_pylist()
    cost = sum(c or 0.0 for c in costs)
    # A succeeded row with no cost is one of a model with no price: said, not counted as 0.
    unpriced = sum(1 for c, s in zip(costs, status, strict=True) if c is None and s == "succeeded")
    text = (
        f"{table.num_rows} rows: {ok} succeeded, {failed} failed, "
        f"{table.num_rows - ok - failed} pending; {cached} from the cache, {reasks} re-asks; "
        f"cost {format_total(round(cost * NANO), currency, unpriced)}"
    )
    return text, failed
