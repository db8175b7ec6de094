"""Downloading data shards so that a truncated or corrupt file can never be mistaken for data.

Users of autoresearch asked for downloads that survive truncated shards. So: stream to a
temporary file in the same directory, check the byte count against Content-Length, check the
sha256 against the server's (Hugging Face serves the LFS sha256 as the ETag / X-Linked-Etag),
check the parquet footer magic, and only then rename atomically into place. Any failure retries
with exponential backoff; a file already in place with a recorded checksum is kept.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class DownloadError(Exception):
    """A shard that could not be fetched intact after all retries (one-line message)."""


def _expected_sha256(headers) -> str | None:
    for key in ("X-Linked-Etag", "ETag", "X-Checksum-Sha256"):
        value = (headers.get(key) or "").strip().strip('"').removeprefix("W/").strip('"').lower()
        if _SHA256.match(value):
            return value
    return None


def _fetch_once(url: str, dest: Path, timeout: float, on_bytes: Callable[[int], None] | None) -> str:
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.part")
    digest = hashlib.sha256()
    received = 0
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp, tmp.open("wb") as out:
            expected_len = resp.headers.get("Content-Length")
            expected_sha = _expected_sha256(resp.headers)
            while chunk := resp.read(1 << 20):
                out.write(chunk)
                digest.update(chunk)
                received += len(chunk)
                if on_bytes:
                    on_bytes(len(chunk))
        if expected_len is not None and received != int(expected_len):
            raise DownloadError(f"{url}: truncated ({received} of {expected_len} bytes)")
        sha = digest.hexdigest()
        if expected_sha and sha != expected_sha:
            raise DownloadError(f"{url}: checksum mismatch (got {sha[:12]}, server says {expected_sha[:12]})")
        if dest.suffix == ".parquet":
            with tmp.open("rb") as f:
                head = f.read(4)
                f.seek(-4, os.SEEK_END)
                tail = f.read(4)
            if head != b"PAR1" or tail != b"PAR1":
                raise DownloadError(f"{url}: not a complete parquet file")
        os.replace(tmp, dest)  # atomic: a reader sees the old state or the whole file
        return sha
    finally:
        tmp.unlink(missing_ok=True)


def download(
    url: str,
    dest: Path,
    *,
    retries: int = 5,
    backoff: float = 1.0,
    timeout: float = 60.0,
    on_bytes: Callable[[int], None] | None = None,
) -> str:
    """Download url to dest intact, or raise DownloadError. Returns the file's sha256.

    The checksum is recorded in `<dest>.sha256` so a rerun can trust the file without network.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    sidecar = dest.with_name(dest.name + ".sha256")
    if dest.exists() and sidecar.exists():
        return sidecar.read_text().strip()
    last: Exception | None = None
    attempts = 0
    for attempt in range(retries + 1):
        attempts += 1
        try:
            sha = _fetch_once(url, dest, timeout, on_bytes)
            sidecar.write_text(sha + "\n")
            return sha
        except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError, DownloadError) as e:
            # HTTPException: a malformed or cut-off response (IncompleteRead, BadStatusLine, ...);
            # ValueError: a garbled Content-Length. All of them are worth another try.
            last = e
            if isinstance(e, urllib.error.HTTPError) and 400 <= e.code < 500 and e.code not in (408, 429):
                break  # missing, forbidden, ...: retrying cannot help (timeouts and rate limits can)
            if attempt < retries:
                time.sleep(backoff * (2**attempt))
    reason = last.args[0] if isinstance(last, DownloadError) else f"{type(last).__name__}: {last}"
    plural = "attempt" if attempts == 1 else "attempts"
    raise DownloadError(f"could not download {url} after {attempts} {plural} ({reason})")

