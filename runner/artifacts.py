"""Artifact downloads: result files of async tasks, streamed into OUT/artifacts/.

File names come from `custom_id`, which is user input, so they are sanitized to one plain
path component (never absolute, never `..`) plus a short hash of the raw id that keeps
distinct ids distinct, and the resolved path is checked to sit directly in the artifacts
folder. A file is streamed with httpx (built from the job's HttpConfig: the same CA
bundle, proxies and timeouts as its API calls; redirects followed) into a hidden temp
name, hashed on the way, bounded by `max_artifact_bytes`, and renamed into place only
when whole: a killed download leaves no file that looks done (and the next run deletes the
leftovers). Each file gets a JSON sidecar with its provenance, including ``"ai_generated": true``.

The platform's result URLs are signed and expire; a 403/404/410 means "ask again", so the
caller passes `refresh`, which polls the task for fresh URLs (it never submits again). The
API key is never sent to a result URL: those may live on a third-party storage host.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import anyio
import orjson

from .agents import agent_video_urls, conversation_files
from .cost import Usage
from .errors import TransportFatal
from .http import HttpConfig, make_client, transport_error

if TYPE_CHECKING:  # imported where used: httpx (with its CLI's imports) is slow to load
    import httpx

__all__ = [
    "ARTIFACTS_DIR",
    "ArtifactTooLarge",
    "DownloadError",
    "Downloader",
    "Item",
    "Provenance",
    "UrlExpired",
    "artifact_name",
    "items_of",
    "listing",
    "media_usage",
    "safe_stem",
]

ARTIFACTS_DIR = "artifacts"
MAX_STEM = 100
EXPIRED_STATUSES = frozenset({403, 404, 410})
# Downloads that fail for other reasons (5xx, dropped connection) are retried this often,
# and expired URLs are refreshed this often, before the row is failed as 'download_failed'.
MAX_FAILURES = 5
MAX_REFRESHES = 4

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
_DOTS = re.compile(r"\.{2,}")
_EXTENSIONS = frozenset({"mp4", "mov", "webm", "gif", "jpg", "jpeg", "png", "webp", "pdf", "pptx"})
_DEFAULT_EXT = {"video": "mp4", "cover": "jpg", "image": "png", "deck": "pdf", "page": "png"}


class DownloadError(Exception):
    """One download did not produce a whole file; `retryable` says whether to try again."""

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


class UrlExpired(DownloadError):
    """403/404/410 from a result URL: poll the task for a fresh one."""


class ArtifactTooLarge(DownloadError):
    """The file is larger than `max_artifact_bytes`; retrying can't help."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retryable=False)


@dataclass(frozen=True, slots=True)
class Item:
    """One result file named in a poll body."""

    kind: str  # video | cover | image, or a slides export's deck | page
    index: int
    url: str


@dataclass(frozen=True, slots=True)
class Provenance:
    """What a sidecar says about where a file came from."""

    provider: str
    model: str
    endpoint: str
    task_id: str
    request_id: str
    custom_id: str


def items_of(body: Mapping[str, Any]) -> list[Item]:
    """The result files of a SUCCESS poll body (video_result / image_result), in order."""
    items: list[Item] = []
    videos = body.get("video_result")
    if isinstance(videos, list):
        for i, v in enumerate(videos):
            if not isinstance(v, dict):
                continue
            if isinstance(v.get("url"), str) and v["url"]:
                items.append(Item("video", i, v["url"]))
            if isinstance(v.get("cover_image_url"), str) and v["cover_image_url"]:
                items.append(Item("cover", i, v["cover_image_url"]))
    images = body.get("image_result")
    if isinstance(images, list):
        for i, im in enumerate(images):
            if isinstance(im, dict) and isinstance(im.get("url"), str) and im["url"]:
                items.append(Item("image", i, im["url"]))
    if "async_id" in body:  # an agent task's result: content items of its choices
        items.extend(Item("video", i, url) for i, url in enumerate(agent_video_urls(body)))
    elif "conversation_id" in body:  # a slides export: the deck (file_url) and page images
        counts: dict[str, int] = {}
        for kind, url in conversation_files(body):
            short = "deck" if kind == "file_url" else "page"
            items.append(Item(short, counts.get(short, 0), url))
            counts[short] = counts.get(short, 0) + 1
    return items


def media_usage(endpoint: str, body: Mapping[str, Any]) -> Usage | None:
    """What a SUCCESS poll of a media task bills (one unit per result); None if not media."""
    if endpoint == "agents":  # the only async agent makes videos
        return Usage(videos=len(agent_video_urls(body)))
    key = {"videos/generations": "video_result", "async/images/generations": "image_result"}
    if endpoint not in key:
        return None
    listed = body.get(key[endpoint])
    n = len(listed) if isinstance(listed, list) else 0
    return Usage(videos=n) if endpoint == "videos/generations" else Usage(images=n)


def listing(items: list[Item]) -> list[dict[str, Any]]:
    """The `artifacts` records of files that were not downloaded (--no-download)."""
    return [
        {"kind": i.kind, "url": i.url, "path": None, "bytes": None, "sha256": None} for i in items
    ]


def safe_stem(custom_id: str) -> str:
    """A file-name stem from any custom_id: one component of [A-Za-z0-9._-], never hidden.

    Sanitizing alone maps `a/b` and `a_b` to the same text, so 8 hex chars of the raw id's
    sha256 are appended; the stem is capped so the whole name stays well under 255 bytes.
    """
    cleaned = _DOTS.sub(".", _UNSAFE.sub("_", custom_id)).lstrip(".")[:MAX_STEM] or "row"
    digest = hashlib.sha256(custom_id.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return f"{cleaned}-{digest}"


def artifact_name(custom_id: str, item: Item) -> str:
    ext = urlsplit(item.url).path.rsplit(".", 1)[-1].lower()
    if ext not in _EXTENSIONS:
        ext = _DEFAULT_EXT.get(item.kind, "bin")
    suffix = item.kind if item.index == 0 else f"{item.kind}-{item.index}"
    return f"{safe_stem(custom_id)}.{suffix}.{ext}"


def _inside(root: Path, name: str) -> Path:
    """The resolved path of `name` in `root`; refuse anything that lands elsewhere."""
    base = root.resolve()
    path = (base / name).resolve()
    if path.parent != base or name in ("", ".", "..") or "/" in name or os.sep in name:
        raise ValueError(f"refusing artifact path outside {base}: {name!r}")
    return path


def _strip_query(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"


async def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    import aiofiles  # only async tasks download: a chat run never loads it

    tmp = path.with_name(f".{path.name}.part")
    async with aiofiles.open(tmp, "wb") as f:
        await f.write(orjson.dumps(dict(data), option=orjson.OPT_INDENT_2))
    os.replace(tmp, path)


class Downloader:
    """Streams result files into OUT/artifacts/, a bounded number at a time."""

    def __init__(
        self,
        out: Path,
        *,
        max_bytes: int,
        concurrency: int,
        timeout: float,
        sleep: Callable[[int], Awaitable[None]],
        config: HttpConfig | None = None,
    ) -> None:
        self.out = out
        self.root = out / ARTIFACTS_DIR
        self.max_bytes = max_bytes
        self.limiter = anyio.CapacityLimiter(max(1, concurrency))
        # `sleep(n)` waits before the n-th retry of a failed download (the caller's backoff,
        # which also notices a stopping job).
        self._sleep = sleep
        self._timeout = timeout
        self._concurrency = concurrency
        self._config = config or HttpConfig()
        self._client: httpx.AsyncClient | None = None

    @property
    def client(self) -> httpx.AsyncClient:
        # Built on first download: its TLS context costs milliseconds a chat-only job needn't pay.
        if self._client is None:
            self._client = make_client(
                self._config,
                timeout=self._timeout,
                follow_redirects=True,
                max_connections=max(1, self._concurrency),
            )
        return self._client

    def prepare(self) -> None:
        """Create the folder and remove temp files a killed run left behind."""
        self.root.mkdir(parents=True, exist_ok=True)
        for stale in self.root.glob(".*.part"):
            stale.unlink(missing_ok=True)

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()

    async def fetch(
        self,
        prov: Provenance,
        body: Mapping[str, Any],
        refresh: Callable[[], Awaitable[Mapping[str, Any]]],
    ) -> list[dict[str, Any]]:
        """Download every file the poll body names and return their `artifacts` records.

        Raises DownloadError when a file can't be had (after retries and fresh URLs).
        """
        done: dict[tuple[str, int], dict[str, Any]] = {}
        failures = refreshes = 0
        while True:
            items = items_of(body)
            try:
                for item in items:
                    if (item.kind, item.index) not in done:
                        done[item.kind, item.index] = await self._one(prov, item)
                return [done[i.kind, i.index] for i in items]
            except UrlExpired as exc:
                refreshes += 1
                if refreshes > MAX_REFRESHES:
                    raise DownloadError(
                        f"result URL still expired after {MAX_REFRESHES} fresh polls: {exc}"
                    ) from exc
                body = await refresh()
            except DownloadError as exc:
                failures += 1
                if not exc.retryable or failures >= MAX_FAILURES:
                    raise
                await self._sleep(failures)

    async def _one(self, prov: Provenance, item: Item) -> dict[str, Any]:
        name = artifact_name(prov.custom_id, item)
        dest = _inside(self.root, name)
        async with self.limiter:
            size, digest = await self._stream(item.url, dest)
        rel = f"{ARTIFACTS_DIR}/{name}"
        await _write_json(
            dest.with_name(name + ".json"),
            {
                "provider": prov.provider,
                "model": prov.model,
                "endpoint": prov.endpoint,
                "task_id": prov.task_id,
                "request_id": prov.request_id,
                "custom_id": prov.custom_id,
                "kind": item.kind,
                "index": item.index,
                "file": name,
                "created_at": datetime.now(UTC).isoformat(),
                "source_url": _strip_query(item.url),
                "sha256": digest,
                "bytes": size,
                "ai_generated": True,
            },
        )
        return {"kind": item.kind, "url": item.url, "path": rel, "bytes": size, "sha256": digest}

    async def _stream(self, url: str, dest: Path) -> tuple[int, str]:
        import aiofiles
        import httpx

        tmp = dest.with_name(f".{dest.name}.part")
        limit = self.max_bytes
        h = hashlib.sha256()
        size = 0
        try:
            async with self.client.stream("GET", url) as resp:
                status = resp.status_code
                where = _strip_query(url)
                if status in EXPIRED_STATUSES:
                    raise UrlExpired(f"HTTP {status} from {where}")
                if status != 200:
                    retryable = status >= 500 or status in (408, 429)
                    raise DownloadError(f"HTTP {status} from {where}", retryable=retryable)
                declared = resp.headers.get("content-length")
                if declared and declared.isdigit() and int(declared) > limit:
                    raise ArtifactTooLarge(f"{where} is {declared} bytes, over the {limit} cap")
                async with aiofiles.open(tmp, "wb") as f:
                    async for chunk in resp.aiter_bytes():
                        size += len(chunk)
                        if size > limit:
                            raise ArtifactTooLarge(f"{where} is over the {limit}-byte cap")
                        h.update(chunk)
                        await f.write(chunk)
            os.replace(tmp, dest)
        except httpx.TransportError as exc:
            mapped = transport_error(exc, urlsplit(url).netloc.rsplit("@", 1)[-1])
            if isinstance(mapped, TransportFatal):
                raise mapped from None  # an untrusted certificate stops the job
            raise DownloadError(f"{type(exc).__name__}: {exc}") from exc
        except httpx.HTTPError as exc:
            raise DownloadError(f"{type(exc).__name__}: {exc}") from exc
        finally:
            if tmp.exists():
                tmp.unlink(missing_ok=True)
        return size, h.hexdigest()
