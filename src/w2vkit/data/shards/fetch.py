"""Whole files from local paths or URLs, read sequentially, retried with backoff.

Local paths (and `file://`) are read directly; `http(s)://`, `s3://`, `gs://` and every other
protocol go through fsspec (`s3fs`, `gcsfs` are the optional extras `w2vkit[s3]`, `w2vkit[gcs]`;
credentials and endpoints come from their usual environment, e.g. `AWS_ENDPOINT_URL`). A shard
is read whole: its sha256 must match the index before any member is used, so that a corrupt or
replaced shard is refused instead of half trained on.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from pathlib import Path
from urllib.parse import urlparse

import fsspec

from w2vkit.config import UsageError

logger = logging.getLogger(__name__)

READ_BLOCK = 8 << 20  # bytes per sequential read


class ShardUnavailable(OSError):
    """A shard (or index) that could not be read after every retry."""


class ShardMismatch(UsageError):
    """A shard whose bytes do not hash to the index's sha256."""


def is_url(location: str) -> bool:
    return "://" in location


def local_path(location: str) -> Path | None:
    """The file a local path or `file://` URL names; None for a remote URL."""
    if not is_url(location):
        return Path(location)
    parsed = urlparse(location)
    return Path(parsed.path) if parsed.scheme == "file" else None


def fetch_bytes(
    location: str,
    *,
    retries: int = 4,
    retry_wait: float = 1.0,
    timeout: float = 60.0,
    sha256: str | None = None,
    num_bytes: int | None = None,
    cache_dir: str = "",
) -> bytes:
    """The bytes of `location`, tried `1 + retries` times, waiting retry_wait * 2**k between.

    A remote file is cached under `cache_dir` (by its sha256) when both are given, and read from
    there next time. Raises ShardUnavailable naming the location and the last error, and
    ShardMismatch when the size or sha256 differ from the index's (not retried: a read that
    ends early raises, so these bytes are what the server holds).
    """
    cached = Path(cache_dir) / f"{sha256}.tar" if cache_dir and sha256 else None
    if cached is not None and cached.is_file():
        data = cached.read_bytes()
        if hashlib.sha256(data).hexdigest() == sha256:
            return data
    _check_backend(location)
    for attempt in range(retries + 1):
        try:
            data = _read(location, timeout)
            break
        except Exception as err:  # noqa: BLE001 (OS, HTTP, cloud SDK errors: all mean "retry")
            if attempt == retries:
                raise ShardUnavailable(
                    f"{location}: unreachable after {retries + 1} tries ({type(err).__name__}: "
                    f"{err})"
                ) from err
            wait = retry_wait * 2**attempt
            logger.warning("%s: %s; retrying in %.1f s", location, err, wait)
            time.sleep(wait)
    if num_bytes is not None and len(data) != num_bytes:
        what = "truncated" if len(data) < num_bytes else "longer than indexed"
        raise ShardMismatch(
            f"{location}: {what} ({len(data)} of {num_bytes} bytes); rewrite it with "
            "`w2vkit shard` or restore it"
        )
    if sha256 is not None:
        digest = hashlib.sha256(data).hexdigest()
        if digest != sha256:
            raise ShardMismatch(
                f"{location}: sha256 {digest[:16]}... differs from the index's {sha256[:16]}...: "
                f"the shard changed or is damaged; rewrite it with `w2vkit shard`"
            )
    if cached is not None and local_path(location) is None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_name(f"{cached.name}.{os.getpid()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, cached)
    return data


EXTRAS = {"http": "http", "https": "http", "s3": "s3", "s3a": "s3", "gs": "gcs", "gcs": "gcs"}


def _check_backend(location: str) -> None:
    """A missing fsspec backend is a usage error, not a shard to retry."""
    if local_path(location) is not None:
        return
    scheme = urlparse(location).scheme
    try:
        fsspec.get_filesystem_class(scheme)
        if scheme in ("http", "https"):
            import aiohttp  # noqa: F401  (fsspec imports it only when it opens the URL)
    except (ImportError, ValueError) as err:
        extra = EXTRAS.get(scheme)
        hint = f"pip install 'w2vkit[{extra}]'" if extra else "install its fsspec backend"
        raise UsageError(f"{location}: cannot read {scheme}:// URLs ({err}); {hint}") from err


def _read(location: str, timeout: float) -> bytes:
    path = local_path(location)
    if path is not None:
        return path.read_bytes()
    options: dict = {}
    block_size = READ_BLOCK
    if urlparse(location).scheme in ("http", "https"):
        import aiohttp  # fsspec's HTTP backend runs on it

        options["client_kwargs"] = {"timeout": aiohttp.ClientTimeout(total=timeout)}
        block_size = 0  # one streamed GET: no range requests, which plain servers refuse
    chunks = []
    fs, path = fsspec.core.url_to_fs(location, **options)
    with fs.open(path, "rb", block_size=block_size) as f:
        while chunk := f.read(READ_BLOCK):
            chunks.append(chunk)
    return b"".join(chunks)
