"""Object storage: a spec read from, and results written to, a URL (s3://, gs://, abfs://).

The filesystem layer is pyarrow.fs, not fsspec/s3fs: pyarrow is already a dependency and its
S3, GCS and Azure filesystems are built into the wheel, so one layer serves the three
providers with no second HTTP stack. It takes each provider's usual credential chain
(environment, profile files, instance roles, and for S3 AWS_ENDPOINT_URL / AWS_DEFAULT_REGION
for S3-compatible stores, path-style addressing by default), reads in ranges (a streaming
input for JSONL, random-access ranged reads for Parquet's footer and row groups) and writes
S3 objects as multipart uploads. This module is imported only when a location is a URL, so a
local job's start-up does not pay for it.

Credentials never pass through here: pyarrow reads them from the chain itself, and an error
names the bucket and what to check, never a key.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import UsageError

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.fs as pafs

__all__ = [
    "StorageError",
    "bucket_of",
    "check_bucket",
    "is_url",
    "join_url",
    "normalize",
    "object_tag",
    "open_random",
    "open_stream",
    "tag_of",
    "upload",
]

# Path() folds "s3://b/k" into "s3:/b/k"; both spellings are taken, so a URL survives being
# carried in a Path-typed setting.
_URL = re.compile(r"^(s3|gs|gcs|abfs|abfss|az)://?(?=[^/])", re.IGNORECASE)
_READ_BUFFER = 1 << 20
_UPLOAD_ATTEMPTS = 4
_PART_BYTES = 8 << 20


class StorageError(UsageError):
    """A bucket that cannot be used (missing, refused credentials, unreachable): exit 2."""


def is_url(location: str | os.PathLike[str]) -> bool:
    return _URL.match(os.fspath(location)) is not None


def normalize(location: str | os.PathLike[str]) -> str:
    """The URL in its canonical spelling (scheme://bucket/key).

    A URL that carries credentials (pyarrow takes "s3://KEY:SECRET@bucket/..." and
    "?secret_key=...") is refused: the job records its URLs and messages print them, and
    credentials are neither recorded nor printed. The refusal shows only the bucket.
    """
    text = os.fspath(location)
    m = _URL.match(text)
    if m is None:
        raise ValueError(f"not an object-storage URL: {text}")
    scheme, rest = m.group(1).lower(), text[m.end() :]
    authority = rest.split("/", 1)[0]
    if "@" in authority or "?" in rest:
        bucket = authority.rsplit("@", 1)[-1].split("?", 1)[0]
        raise StorageError(
            f"{scheme}://{bucket}/...: the URL carries credentials or options; give the bare "
            "URL and set the credentials in the environment (AWS_ACCESS_KEY_ID / "
            "AWS_SECRET_ACCESS_KEY, AWS_PROFILE, GOOGLE_APPLICATION_CREDENTIALS, AZURE_*)"
        )
    return f"{scheme}://{rest}"


def bucket_of(url: str | os.PathLike[str]) -> str:
    """The bucket (or GCS bucket / Azure container) a URL names."""
    rest = normalize(url).split("://", 1)[1]
    return rest.split("/", 1)[0]


def join_url(prefix: str | os.PathLike[str], name: str) -> str:
    base = normalize(prefix)
    return f"{base.rstrip('/')}/{name}"


def _filesystem(url: str) -> tuple[pafs.FileSystem, str]:
    import pyarrow.fs as pafs

    try:
        fs, path = pafs.FileSystem.from_uri(url)
        return fs, str(path)
    except (OSError, ValueError) as exc:
        raise _storage_error(url, exc, "open") from exc


def _storage_error(url: str, exc: BaseException, doing: str) -> StorageError:
    bucket = bucket_of(url)
    text = str(exc)
    upper = text.upper()
    if "NO_SUCH_BUCKET" in upper or "NOSUCHBUCKET" in upper or "BUCKET DOES NOT EXIST" in upper:
        why = f"bucket {bucket!r} does not exist (or is in another account or endpoint)"
    elif any(
        s in upper
        for s in (
            "ACCESS_DENIED",
            "ACCESSDENIED",
            "INVALIDACCESSKEYID",
            "SIGNATUREDOESNOTMATCH",
            "FORBIDDEN",
            "403",
            "INVALID_ACCESS_KEY",
        )
    ):
        why = (
            f"access to bucket {bucket!r} was refused: check the credentials in the "
            "environment or profile (AWS_ACCESS_KEY_ID / AWS_PROFILE, GOOGLE_APPLICATION_"
            "CREDENTIALS, AZURE_*) and the bucket's policy"
        )
    elif isinstance(exc, FileNotFoundError) or "NOT FOUND" in upper or "NO_SUCH_KEY" in upper:
        why = f"{url} does not exist in bucket {bucket!r}"
    else:
        # pyarrow's messages carry the bucket and key and the provider's error, never secrets.
        why = f"bucket {bucket!r}: {text.strip().splitlines()[0] if text.strip() else exc!r}"
    return StorageError(f"cannot {doing} {url}: {why}")


def open_stream(location: str | os.PathLike[str]) -> pa.NativeFile:
    """A sequential, buffered reader of the object: ranged reads, never the whole object."""
    url = normalize(location)
    fs, path = _filesystem(url)
    try:
        return fs.open_input_stream(path, buffer_size=_READ_BUFFER)
    except OSError as exc:
        raise _storage_error(url, exc, "read") from exc


def open_random(location: str | os.PathLike[str]) -> pa.NativeFile:
    """A random-access reader (Parquet's footer, then its row groups), each read a ranged GET."""
    url = normalize(location)
    fs, path = _filesystem(url)
    try:
        return fs.open_input_file(path)
    except FileNotFoundError as exc:
        check_bucket(url)  # a missing bucket says so, not "no such key"
        raise _storage_error(url, exc, "read") from exc
    except OSError as exc:
        raise _storage_error(url, exc, "read") from exc


def object_tag(location: str | os.PathLike[str]) -> str | None:
    """The object's version as the store states it (size and ETag, one HEAD request), or
    None where the store gives no ETag.

    A spec's fingerprint is this instead of a hash of its bytes, so neither a first run nor
    a resume reads a million-row object once more only to hash it. An S3 ETag changes
    whenever the object's bytes do (it is their MD5, or one per multipart upload).
    """
    with open_random(location) as f:
        return tag_of(f)


def tag_of(opened: pa.NativeFile) -> str | None:
    """`object_tag` of an object already open (what open_random returned)."""
    etag = opened.metadata().get("ETag") or opened.metadata().get("etag")
    if not etag:
        return None
    return f"{opened.size()}:{etag.decode('ascii', 'replace').strip(chr(34))}"


def check_bucket(location: str | os.PathLike[str]) -> None:
    """Fail now, naming the bucket, if it is missing or the credentials are refused.

    Run before a job sends anything, so a results destination that cannot take the
    results stops the job at once instead of after the money is spent.
    """
    import pyarrow.fs as pafs

    url = normalize(location)
    fs, path = _filesystem(url)
    bucket = path.split("/", 1)[0]
    try:
        info = fs.get_file_info(bucket)
    except OSError as exc:
        raise _storage_error(url, exc, "use") from exc
    if info.type == pafs.FileType.NotFound:
        raise StorageError(
            f"cannot use {url}: bucket {bucket_of(url)!r} does not exist "
            "(or is in another account or endpoint)"
        )


def upload(local: Path, location: str | os.PathLike[str], attempts: int = _UPLOAD_ATTEMPTS) -> str:
    """Copy a local file to a URL (multipart on S3), retried; returns the URL written.

    A failed upload raises StorageError and leaves `local` as it is, so the caller can say
    how to push it again.
    """
    url = normalize(location)
    fs, path = _filesystem(url)
    last: BaseException | None = None
    for attempt in range(attempts):
        try:
            _copy(local, fs, path)
            return url
        except OSError as exc:
            last = exc
            if _permanent(exc):
                break
            time.sleep(min(8.0, 0.5 * 2**attempt))
    assert last is not None
    raise _storage_error(url, last, "upload to") from last


def _copy(local: Path, fs: pafs.FileSystem, path: str) -> None:
    """Stream `local` into the object, a part at a time.

    S3's writer uploads parts in the background, and nothing stops a fast local read from
    queueing the whole file in memory behind a slower network (pyarrow's copy_files of an
    82 MB results.parquet took 105 MB more). Waiting for the parts in flight after each
    chunk (flush) holds memory to about two parts, whatever the file's size.
    """
    # compression=None: the bytes as they are, whatever the name ("x.gz" is not gzipped again).
    with local.open("rb") as src, fs.open_output_stream(path, compression=None) as dst:
        while chunk := src.read(_PART_BYTES):
            dst.write(chunk)
            dst.flush()


def _permanent(exc: Any) -> bool:
    """A refusal or a missing bucket does not get better by trying again."""
    upper = str(exc).upper()
    return any(
        s in upper
        for s in ("NO_SUCH_BUCKET", "NOSUCHBUCKET", "ACCESS_DENIED", "ACCESSDENIED", "403")
    )
