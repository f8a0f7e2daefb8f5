"""Glossaries for the translation agent: local files uploaded once (`files`, purpose agent).

A translation row may name its glossary by a local path where the platform wants a file
id: `"custom_variables": {"glossary": "terms/fr.xlsx"}`. Before the row is sent, the file
is read, hashed, and uploaded - once per distinct content per job and key: rows that name
the same bytes (under any path) wait for the one upload and share its id. The checkpoint
records each upload in two phases (store/uploads.py); an upload in doubt (a kill -9, a
timeout) is looked up by its name, which carries the content hash, in `GET files` before
anything is uploaded again. The row's body goes out with the file id in place of the path;
the bytes are held only while the upload is sent.

Paths resolve under the files root (localfiles.locate; the spec's folder unless
`--files-root` says otherwise): an absolute path outside it, a
`..` that climbs out of it, or a symlink that leads out fails the row before anything is
sent, and so does a missing file or one of a type the platform does not take.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio

from .accounts import Account
from .control import Control
from .endpoints import raise_for_answer
from .errors import RetryableError, RowError, TransportFatal
from .http import ConnectionDropped, Response, make_client, transport_error
from .localfiles import FileRefError, locate
from .retry import build_retrying
from .settings import Settings
from .spec import Request
from .store import Store

__all__ = [
    "AGENT_FILE_TYPES",
    "MAX_AGENT_FILE_BYTES",
    "AgentFiles",
    "LocalFileError",
    "glossary_ref",
    "is_local_ref",
    "local_file",
]

# What `files` with purpose agent takes (zai-openapi.json: pdf, doc, xlsx, ppt, txt, jpg,
# png; the newer Office forms too) and how large (100 MB).
AGENT_FILE_TYPES = (".pdf", ".doc", ".docx", ".xlsx", ".ppt", ".pptx", ".txt", ".jpg", ".jpeg",
                    ".png")  # fmt: skip
MAX_AGENT_FILE_BYTES = 100 * 1024 * 1024
_FIELD = "body.custom_variables.glossary"
_LIST_PAGES = 20


class LocalFileError(ValueError):
    """A local file a row names cannot be used; the message says why."""


def is_local_ref(value: str) -> bool:
    """Whether a glossary value names a local file rather than an uploaded file's id.

    Ids carry no path separator and no file type; a path does (`terms.txt`, `g/fr.xlsx`),
    and a `file:` URI always names a local file.
    """
    return value.startswith("file:") or "/" in value or value.lower().endswith(AGENT_FILE_TYPES)


def glossary_ref(body: dict[str, Any]) -> str | None:
    """The local path a translation row gives as its glossary, if it gives one."""
    variables = body.get("custom_variables")
    if not isinstance(variables, dict):
        return None
    value = variables.get("glossary")
    return value if isinstance(value, str) and is_local_ref(value) else None


def local_file(root: Path, ref: str) -> Path:
    """The file `ref` names under `root`, resolved; LocalFileError when it must not be read.

    The one place local files are opened from for agent rows (the files root's rules):
    relative paths and `file:` URIs, never outside `root` by an absolute path, `..`, or a
    symlink; a regular file of a type and size the platform takes.
    """
    try:
        raw, resolved = locate(ref, root)
    except FileRefError as exc:
        raise LocalFileError(str(exc)) from None
    if not resolved.is_file():
        raise LocalFileError(f"{raw} is not a regular file")
    if resolved.suffix.lower() not in AGENT_FILE_TYPES:
        raise LocalFileError(
            f"{raw}: an agent file must be one of {', '.join(t[1:] for t in AGENT_FILE_TYPES)}"
        )
    size = resolved.stat().st_size
    if size > MAX_AGENT_FILE_BYTES:
        raise LocalFileError(f"{raw} is {size} bytes, over the platform's 100 MB for agent files")
    return resolved


@dataclass(slots=True)
class _Upload:
    """One distinct content for one key: its id once known, or why it cannot be had."""

    lock: anyio.Lock
    file_id: str | None = None
    intent: bool = False  # an intent is committed: the upload may have arrived already
    failure: RowError | None = None


class AgentFiles:
    """Puts the file id of each translation row's local glossary into its body."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        store_lock: anyio.CapacityLimiter,
        control: Control,
    ) -> None:
        self.settings = settings
        self.root = settings.resolved_files_root
        self.store = store
        self.store_lock = store_lock
        self.control = control
        self._uploads: dict[tuple[str, str], _Upload] = {}
        for (sha, key_fp), row in store.agent_files().items():
            self._uploads[sha, key_fp] = _Upload(
                anyio.Lock(), row["file_id"], intent=row["file_id"] is None
            )
        # (resolved path, size, mtime_ns) -> sha256: a glossary shared by many rows is
        # hashed once, and an edited one again.
        self._hashes: dict[tuple[str, int, int], str] = {}

    async def resolve(self, req: Request, account: Account) -> Request:
        """The row with its glossary's file id in place of its path; RowError if it can't be."""
        ref = glossary_ref(req.body)
        if ref is None:
            return req
        try:
            path = local_file(self.root, ref)
            sha, size = await anyio.to_thread.run_sync(self._hash, path)
        except LocalFileError as exc:
            raise RowError(f"{_FIELD}: {exc}", code="invalid_file") from None
        except OSError as exc:
            raise RowError(f"{_FIELD}: cannot read {ref}: {exc}", code="invalid_file") from None
        fp = account.fingerprint
        upload = self._uploads.get((sha, fp))
        if upload is None:
            upload = self._uploads[sha, fp] = _Upload(anyio.Lock())
        if upload.file_id is None:
            async with upload.lock:  # rows naming the same bytes wait for one upload
                if upload.failure is not None:
                    raise upload.failure
                if upload.file_id is None:
                    try:
                        await self._obtain(upload, path, ref, sha, size, account)
                    except RowError as exc:
                        upload.failure = exc
                        raise
        variables = {**req.body["custom_variables"], "glossary": upload.file_id}
        return replace(req, body={**req.body, "custom_variables": variables})

    def _hash(self, path: Path) -> tuple[str, int]:
        st = path.stat()
        key = (str(path), st.st_size, st.st_mtime_ns)
        sha = self._hashes.get(key)
        if sha is None:
            h = hashlib.sha256()
            with path.open("rb") as f:
                while chunk := f.read(1 << 20):
                    h.update(chunk)
            sha = self._hashes[key] = h.hexdigest()
        return sha, st.st_size

    async def _commit(self, sha: str, fp: str, name: str, ref: str, size: int,
                      file_id: str | None) -> None:  # fmt: skip
        await anyio.to_thread.run_sync(
            self.store.record_agent_file, sha, fp, name, ref, size, file_id,
            limiter=self.store_lock,
        )  # fmt: skip

    async def _obtain(
        self, upload: _Upload, path: Path, ref: str, sha: str, size: int, account: Account
    ) -> None:
        """Find the upload an earlier attempt may have made, else upload; commit the id."""
        name = f"{path.stem[:60]}-{sha[:16]}{path.suffix.lower()}"
        async with make_client(
            self.settings.http_config,
            base_url=self.settings.base_url.rstrip("/") + "/",
            headers={"Authorization": f"Bearer {account.key.secret.reveal()}",
                     **dict(self.settings.provider_info.extra_headers)},
            timeout=self.settings.request_timeout,
        ) as http:  # fmt: skip
            retrying = build_retrying(self.settings.retry, sleep=self.control.pause)
            async for attempt in retrying:
                with attempt:
                    file_id = None
                    if upload.intent:
                        file_id = await self._find(account, name, size)
                    if file_id is None:
                        await self._commit(sha, account.fingerprint, name, ref, size, None)
                        upload.intent = True
                        file_id = await self._send(http, path, name)
        upload.file_id = file_id
        with anyio.CancelScope(shield=True):  # the id must not be lost
            await self._commit(sha, account.fingerprint, name, ref, size, file_id)

    async def _send(self, http: Any, path: Path, name: str) -> str:
        import httpx

        where = urlsplit(self.settings.base_url).netloc.rsplit("@", 1)[-1]
        try:
            # Streamed from the file: its bytes are never all in memory at once.
            with path.open("rb") as fh:
                r = await http.post("files", data={"purpose": "agent"}, files={"file": (name, fh)})
        except httpx.TransportError as exc:
            mapped = transport_error(exc, where)
            if isinstance(mapped, TransportFatal):
                raise mapped from None
            raise RetryableError(
                f"upload of {name}: {type(exc).__name__}", code="connection"
            ) from exc
        info = self.settings.provider_info
        answer = raise_for_answer(
            Response(r.status_code, list(r.headers.raw), r.content),
            balance_statuses=info.balance_statuses,
            error_shape=info.error_shape,
        )
        file_id = answer.get("id")
        if not isinstance(file_id, str) or not file_id:
            raise RowError(f"uploading {name}: the platform answered without a file id",
                           code="upload_failed")  # fmt: skip
        return file_id

    async def _find(self, account: Account, name: str, size: int) -> str | None:
        """The id of an agent file already uploaded under `name`, from `GET files`."""
        after = ""
        for _ in range(_LIST_PAGES):
            path = "/files?purpose=agent&limit=100" + (f"&after={after}" if after else "")
            try:
                resp = await account.transport.request("GET", path, None)
            except ConnectionDropped as exc:
                raise RetryableError(str(exc), code="connection") from exc
            info = self.settings.provider_info
            page = raise_for_answer(
                resp, balance_statuses=info.balance_statuses, error_shape=info.error_shape
            )
            items = page.get("data") or []
            for item in items:
                if (
                    isinstance(item, dict)
                    and item.get("filename") == name
                    and item.get("bytes") in (None, size)
                    and isinstance(item.get("id"), str)
                ):
                    return str(item["id"])
            if not page.get("has_more") or not items:
                return None
            after = str(page.get("last_id") or items[-1].get("id") or "")
        return None
