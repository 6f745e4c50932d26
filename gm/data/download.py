"""Fetching raw dataset files: checksums, atomic writes, retries with back-off, mirrors.

A :class:`Remote` names one file and how to recognise it: the sha256 of the bytes as served
and, for ``.gz`` files, a hash of the gunzipped content.  The content hash is what survives
re-compression (Debian re-gzips Fashion-MNIST, so its .gz bytes differ from zalando's while
the IDX content is identical); files already on disk are therefore checked by content.

:func:`fetch_files` is what a dataset's ``fetch`` calls.  For each file it

1. keeps ``raw_dir/<name>`` if it is already there and verifies;
2. else copies it from a local directory (e.g. a Debian package's files) if that copy verifies;
3. else downloads it from the first URL that works, retrying transient failures with
   exponential back-off and resuming an interrupted transfer with an HTTP Range request.

Every write goes to a temporary file beside the target (:func:`gm.io.atomic_path`) that is
renamed only after verification, so a crash, a network error or a bad checksum never leaves a
half-written or unverified file.  ``GM_DATA_MIRROR=<base URL>`` (or ``mirror=``) replaces every
URL by ``<base URL>/<dataset>/<name>``, for offline copies and for the tests' local server.
"""
from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import shutil
import time
import urllib.error
import urllib.request
import warnings
from dataclasses import dataclass
from pathlib import Path

from gm.errors import DataError
from gm.io import atomic_path
from gm.progress import progress

MIRROR_ENV = "GM_DATA_MIRROR"
_CHUNK = 1 << 20
_USER_AGENT = "gm-bench (dataset fetcher; python-urllib)"


@dataclass(frozen=True)
class Remote:
    """One raw file of a dataset.

    name      file name in raw_dir and the last part of every URL;
    urls      canonical URL first, then mirrors serving the same bytes;
    sha256    hex sha256 of the bytes as served (None if unknown);
    content   ``"<algorithm>:<hex>"`` (sha256, md5, ...) of the gunzipped bytes of a .gz file
              (None if unknown, or if the file is not compressed);
    source    where the hashes were published, for the error message and the docs.
    """

    name: str
    urls: tuple[str, ...]
    sha256: str | None = None
    content: str | None = None
    source: str = ""


def file_digest(path: Path, algorithm: str = "sha256", *, gunzip: bool = False) -> str:
    """Hex digest of the bytes of ``path`` (of its decompressed content if ``gunzip``)."""
    h = hashlib.new(algorithm)
    with (gzip.open if gunzip else open)(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


class ChecksumError(DataError):
    """A file's bytes are not the ones a Remote describes (the message says how)."""


def _check(path: Path, remote: Remote, *, served: bool) -> None:
    """Raise ChecksumError unless ``path`` matches ``remote``.

    ``served``: the file holds the bytes as served, so its sha256 is checked too; otherwise
    (a copy from elsewhere) only the content hash, or the sha256 if there is no content hash.
    """
    if remote.content:
        algorithm, expected = remote.content.split(":", 1)
        try:
            actual = file_digest(path, algorithm, gunzip=True)
        except (OSError, EOFError) as err:           # gzip.BadGzipFile is an OSError
            raise ChecksumError(f"not a readable gzip file ({err})") from None
        if actual != expected.lower():
            raise ChecksumError(f"{algorithm} of the gunzipped content is {actual}, "
                            f"expected {expected}")
    if remote.sha256 and (served or not remote.content):
        actual = file_digest(path)
        if actual != remote.sha256.lower():
            raise ChecksumError(f"sha256 is {actual}, expected {remote.sha256}")


def verified(path: Path, remote: Remote) -> bool:
    """True if ``path`` exists and its content matches ``remote`` (files already on disk)."""
    if not path.is_file():
        return False
    try:
        _check(path, remote, served=False)
    except ChecksumError:
        return False
    return True


def mirror_urls(remote: Remote, dataset: str, mirror: str | None = None) -> tuple[str, ...]:
    """The URLs to try: ``remote.urls``, or only the mirror's if one is set (arg or env)."""
    mirror = mirror or os.environ.get(MIRROR_ENV)
    if mirror:
        return (f"{mirror.rstrip('/')}/{dataset}/{remote.name}",)
    return remote.urls


class _Transient(Exception):
    """A failure worth retrying (network error, 5xx, 429, truncated body)."""


def _transfer(url: str, dest: Path, timeout: float) -> None:
    """Download ``url`` into ``dest``, resuming from its current size with a Range request.

    A server that ignores the Range header (200 instead of 206) restarts the file.  Raises
    _Transient for retryable failures and urllib.error.HTTPError for final ones (e.g. 404).
    """
    have = dest.stat().st_size if dest.exists() else 0
    req = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    if have:
        req.add_header("Range", f"bytes={have}-")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            start = _resume_offset(resp, have)
            expected = resp.headers.get("Content-Length")
            chunks = progress(iter(lambda: resp.read(_CHUNK), b""),
                              desc=f"download {url.rsplit('/', 1)[-1]}",
                              total=-(-int(expected) // _CHUNK) if expected else None)
            got = 0
            with open(dest, "r+b" if start else "wb") as f:
                f.seek(start)
                f.truncate()
                for chunk in chunks:
                    f.write(chunk)
                    got += len(chunk)
            if expected is not None and got != int(expected):
                raise _Transient(f"connection closed after {got} of {expected} bytes")
    except urllib.error.HTTPError as err:
        if err.code == 416 and have:          # our partial file is stale: start again
            dest.unlink()
            raise _Transient("range not satisfiable; restarting") from None
        if err.code == 429 or err.code >= 500:
            raise _Transient(f"HTTP {err.code} {err.reason}") from None
        raise
    except (urllib.error.URLError, http.client.HTTPException, ConnectionError,
            TimeoutError) as err:
        raise _Transient(f"{type(err).__name__}: {getattr(err, 'reason', err)}") from None


def _resume_offset(resp, have: int) -> int:
    """Byte offset the response body starts at: ``have`` for a matching 206, else 0."""
    if resp.status == 206 and have:
        content_range = resp.headers.get("Content-Range", "")   # "bytes 100-199/200"
        if content_range.startswith(f"bytes {have}-"):
            return have
        raise _Transient(f"unexpected Content-Range {content_range!r}")
    return 0


def download(url: str, dest: Path, remote: Remote, *, retries: int = 4,
             backoff: float = 1.0, timeout: float = 60.0) -> None:
    """Download ``url`` to ``dest`` atomically and verify it against ``remote``.

    Transient failures are retried ``retries`` times after ``backoff * 2**attempt`` seconds,
    resuming the partial temporary file.  Raises ChecksumError on a checksum mismatch and
    DataError when the retries are used up or the server refuses (4xx); in every failing case
    the temporary file is removed and ``dest`` is untouched.
    """
    with atomic_path(dest) as tmp:
        tmp.unlink()                           # _transfer starts from an absent file
        for attempt in range(retries + 1):
            try:
                _transfer(url, tmp, timeout)
                break
            except _Transient as err:
                if attempt == retries:
                    raise DataError(f"downloading {url} failed after {retries + 1} attempts "
                                    f"({err})") from None
                time.sleep(backoff * 2 ** attempt)
            except urllib.error.HTTPError as err:
                raise DataError(f"downloading {url}: HTTP {err.code} {err.reason}") from None
        _check(tmp, remote, served=True)


def fetch_files(dataset: str, remotes: tuple[Remote, ...], raw_dir: Path, *,
                local_dirs: tuple[Path, ...] = (), mirror: str | None = None,
                retries: int = 4, backoff: float = 1.0, timeout: float = 60.0) -> list[Path]:
    """Make every ``remote`` present and verified in ``raw_dir``; returns their paths.

    Idempotent: verified files are kept.  See the module docstring for the order of sources.
    """
    raw_dir = Path(raw_dir)
    raw_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for remote in remotes:
        dest = raw_dir / remote.name
        if not _have(dest, remote):
            local = [Path(d) / remote.name for d in local_dirs]
            copy = next((p for p in local if verified(p, remote)), None)
            if copy is not None:
                with atomic_path(dest) as tmp:
                    shutil.copyfile(copy, tmp)
                    _check(tmp, remote, served=False)
            else:
                _download_any(dataset, remote, dest, mirror=mirror, retries=retries,
                              backoff=backoff, timeout=timeout)
        paths.append(dest)
    return paths


def _have(dest: Path, remote: Remote) -> bool:
    """An existing file is kept if it verifies (or if nothing is known to verify it by)."""
    if dest.is_file() and not (remote.sha256 or remote.content):
        return True
    return verified(dest, remote)


def _download_any(dataset: str, remote: Remote, dest: Path, *, mirror, **kw) -> None:
    """Try each URL in turn; a checksum mismatch or a failure moves on to the next one."""
    problems, mismatch = [], False
    for url in mirror_urls(remote, dataset, mirror):
        try:
            download(url, dest, remote, **kw)
        except ChecksumError as err:
            problems.append(f"{url}: {err}")
            mismatch = True
            continue
        except DataError as err:
            problems.append(str(err))
            continue
        if not (remote.sha256 or remote.content):
            warnings.warn(f"{dataset}/{remote.name}: no published checksum to verify it by; "
                          f"downloaded file has sha256 {file_digest(dest)} - record it in "
                          f"the dataset's Remote if you trust it", stacklevel=3)
        return
    fix = ("the server sent different bytes than the recorded checksum: a corrupt mirror, a "
           "proxy error page or a changed upstream file; check the URL in a browser, try "
           f"another mirror (set {MIRROR_ENV}=<base URL serving {dataset}/{remote.name}>), or "
           f"place a verified copy at {dest}" if mismatch else
           f"check the network, set {MIRROR_ENV}=<base URL serving {dataset}/{remote.name}>, "
           f"or place the file at {dest} yourself")
    where = f" (checksums from {remote.source})" if remote.source else ""
    raise DataError(f"{dataset}: could not fetch {remote.name}{where}:\n  "
                    + "\n  ".join(problems) + f"\nFix: {fix}. Nothing was written to {dest}.")
