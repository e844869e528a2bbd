"""The Hugging Face Hub source: huggingface_hub's own client and cache, held to tiniest's limits.

Left alone, ``hf_hub_download`` answers a Hub that is down or unreachable by asking again five
times over about 23 s (with 60 s timeouts), which is long for one of several sources. So we
first ask for the file's metadata ourselves (one ``HEAD`` with ``TINIEST_TIMEOUT``, retried
under ``TINIEST_RETRIES`` unless the Hub stayed silent) and call ``hf_hub_download`` only once the Hub has answered. The
transfer then follows huggingface_hub's own limits: ``HF_HUB_DOWNLOAD_TIMEOUT`` seconds per
read (default 10) and up to five resumed attempts after a timeout or a cut connection, which
we do not multiply; we retry (``TINIEST_RETRIES``) only what it does not: a reset connection
and HTTP 5xx. It has no limit on the whole transfer: a slow but steady one completes.

The transfer is bounded by the pinned size: a file the Hub announces at another size is refused
before any byte of it is fetched, and a body that goes past it (a server that lies, or never ends)
is stopped as it does, by the progress bar ``hf_hub_download`` counts each chunk on before writing
it (:class:`_BoundedBar`). So nothing beyond the pinned size is written, and memory holds at most
one of huggingface_hub's chunks (10 MiB) on top of it.

Nothing unverified stays in the Hugging Face cache: bytes that fail the hash are removed, and
so are the temporary ``.incomplete`` files, lock file and empty folders of a failed download.
An entry already in the cache that fails the hash (planted, or damaged on disk) is removed and
reported as a bad cache entry, then fetched anew: the Hub is blamed only for bytes it just sent.
A cache that cannot be written (read-only, full) is replaced by a temporary one, deleted after.

The Hugging Face token (``HF_TOKEN``, ``hf auth login``) is sent only to an https endpoint: with
``HF_ENDPOINT`` set to plain http, huggingface_hub is told to send none.
"""

from __future__ import annotations

import logging
import re
import shutil
import sys
import tempfile
import urllib.parse
from pathlib import Path
from typing import Any

from tiniest.errors import CacheWarning, DownloadError, first_line, warn
from tiniest.files import read_regular
from tiniest.storage import CACHE_ERRNOS
from tiniest.weights._record import Release, describe_mismatch
from tiniest.weights.artifact import sha256_hex
from tiniest.weights.download import TRANSIENT_STATUS, default_timeout, with_retries

__all__ = ["check_cache_entry", "download_from_hub"]

logger = logging.getLogger(__name__)

# network errors of httpx / httpx2 (and of requests, in huggingface_hub < 1.0), by name: not to
# depend on which HTTP library huggingface_hub uses. A timeout is not among them: a Hub that stays
# silent for TINIEST_TIMEOUT is given up at once, as in tiniest.weights.download.
_NETWORK_ERRORS = frozenset({"NetworkError", "RemoteProtocolError", "ConnectionError", "ChunkedEncodingError"})
_TIMEOUTS = frozenset({"TimeoutException", "Timeout"})
# ...of which hf_hub_download's transfer retries none itself (it resumes after the others)
_UNRETRIED_ERRORS = frozenset({"ReadError", "WriteError", "CloseError"})
_UNRETRIED_STATUS = TRANSIENT_STATUS - {408, 429}
# what the Hub names a commit (a git sha1) and a file (its git sha1, or the sha256 of an LFS file): we
# build cache paths from them, so anything else (a path, "../..") from a hostile endpoint is refused
_COMMIT = re.compile(r"[0-9a-f]{40}")
_ETAG = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")


def download_from_hub(release: Release, progress: bool) -> tuple[bytes, str]:
    """The release bytes through ``hf_hub_download``, verified; raise LookupError or DownloadError."""
    try:
        from huggingface_hub import hf_hub_url
    except ImportError as error:
        raise LookupError(f"huggingface_hub cannot be imported ({error}; pip install huggingface_hub)") from None
    url = hf_hub_url(release.hf_repo_id, release.hf_filename, revision=release.hf_revision)
    timeout = default_timeout()
    if progress:
        sys.stderr.write(f'Downloading: "{url}"\n')
    etag, commit = with_retries(lambda: _probe(url, timeout, release))
    _remove_leftovers(release, etag, only_stale=True)
    _remove_bad_entries(release, etag, commit)
    try:
        path, temp_cache = with_retries(lambda: _download(release, progress, timeout))
    except DownloadError:
        _remove_leftovers(release, etag)
        raise
    try:
        data = read_regular(path, release.size)
    except OSError as error:  # (it was just written, by hf_hub_download: only a peer's meddling gets here)
        raise LookupError(f"cannot read what hf_hub_download wrote: {error}") from None
    finally:
        if temp_cache is not None:
            shutil.rmtree(temp_cache, ignore_errors=True)
    if sha256_hex(data) != release.sha256:
        if temp_cache is None:
            _forget_hf_file(path)
            _remove_leftovers(release, etag)
        raise LookupError(
            f"the Hub served the wrong bytes, removed them from the cache: {describe_mismatch(data, release)}"
        )
    return data, f"hf://{release.hf_repo_id}@{release.hf_revision}/{release.hf_filename}"


def _token() -> bool | None:
    """``False`` (send no token) unless the endpoint is https; ``None``: huggingface_hub's own choice."""
    from huggingface_hub import constants

    return None if urllib.parse.urlsplit(constants.ENDPOINT).scheme == "https" else False


def _probe(url: str, timeout: float, release: Release) -> tuple[str, str]:
    """The file's etag and commit from one metadata request, or a :class:`DownloadError` that says if a retry may help.

    A file announced at another size than the pinned one is refused here, before it is fetched; so
    are an etag and a commit that are not hex digests, before any cache path is built from them.
    """
    from huggingface_hub import get_hf_file_metadata

    try:
        metadata = get_hf_file_metadata(url, timeout=timeout, token=_token())
    except Exception as error:  # huggingface_hub raises many types: report them all the same way
        if any(kind.__name__ in _TIMEOUTS for kind in type(error).__mro__):
            raise DownloadError(f"{url} sent nothing for {timeout:g} s (TINIEST_TIMEOUT)") from None
        raise _as_download_error(error, _NETWORK_ERRORS, TRANSIENT_STATUS) from None
    if metadata.commit_hash is None:
        raise DownloadError(
            f"{url} did not answer like the Hugging Face Hub (no X-Repo-Commit header): "
            "a proxy, captive portal or wrong HF_ENDPOINT?"
        )
    if not _COMMIT.fullmatch(metadata.commit_hash):
        raise DownloadError(f"{url} answered with commit {metadata.commit_hash!r}; expected a 40-digit hex commit")
    if metadata.etag is None or not _ETAG.fullmatch(metadata.etag):
        raise DownloadError(f"{url} answered with etag {metadata.etag!r}; expected a 40- or 64-digit hex etag")
    if metadata.size != release.size:
        announced = "no size" if metadata.size is None else f"{metadata.size} bytes"
        raise DownloadError(f"{url} announces {announced}; the pinned file has {release.size}: not fetched")
    return metadata.etag, metadata.commit_hash


def _as_download_error(error: Exception, transient_errors: frozenset[str], statuses: frozenset[int]) -> DownloadError:
    from huggingface_hub.errors import HfHubHTTPError

    if isinstance(error, HfHubHTTPError):
        status = error.response.status_code if error.response is not None else None
        return DownloadError(first_line(error), status=status, transient=status in statuses)
    transient = any(kind.__name__ in transient_errors for kind in type(error).__mro__)
    return DownloadError(first_line(error), transient=transient)


def _download(release: Release, progress: bool, timeout: float) -> tuple[Path, str | None]:
    """``hf_hub_download`` into the Hugging Face cache, or into a temporary one if that cannot be written.

    Any failure comes out as a :class:`DownloadError`, transient if it is one huggingface_hub did not retry.
    """
    try:
        return _hf_hub_download(release, progress, timeout, None), None
    except DownloadError:  # stopped by _BoundedBar
        raise
    except OSError as error:
        if error.errno not in CACHE_ERRNOS:  # (the Hub's HTTP errors have no errno)
            raise _as_download_error(error, _UNRETRIED_ERRORS, _UNRETRIED_STATUS) from None
        problem = error
    except Exception as error:
        raise _as_download_error(error, _UNRETRIED_ERRORS, _UNRETRIED_STATUS) from None
    temp_cache = tempfile.mkdtemp(prefix="tiniest-hf-")
    warn(
        f"cannot write the Hugging Face cache ({problem}); downloading through a temporary folder instead", CacheWarning
    )
    try:
        return _hf_hub_download(release, progress, timeout, temp_cache), temp_cache
    except Exception as error:
        shutil.rmtree(temp_cache, ignore_errors=True)
        if isinstance(error, DownloadError):
            raise
        raise _as_download_error(error, _UNRETRIED_ERRORS, _UNRETRIED_STATUS) from None
    except BaseException:
        shutil.rmtree(temp_cache, ignore_errors=True)
        raise


def _hf_hub_download(release: Release, progress: bool, timeout: float, cache_dir: str | None) -> Path:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    was_disabled = are_progress_bars_disabled()
    if not progress:
        disable_progress_bars()
    try:
        return Path(
            hf_hub_download(
                release.hf_repo_id,
                release.hf_filename,
                revision=release.hf_revision,
                cache_dir=cache_dir,
                etag_timeout=timeout,
                token=_token(),
                tqdm_class=_bounded_bar(release.size),
            )
        )
    finally:
        if not progress and not was_disabled:
            enable_progress_bars()


def _bounded_bar(limit: int) -> Any:
    """huggingface_hub's progress bar class, made to stop a transfer once it passes ``limit`` bytes.

    ``http_get`` counts every chunk on its bar before it writes the chunk, so raising there writes
    nothing past ``limit``; its temporary file is then removed by huggingface_hub itself.
    """
    from huggingface_hub.utils import tqdm

    class _BoundedBar(tqdm):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.received = int(kwargs.get("initial") or 0)

        def update(self, n: float | None = 1) -> bool | None:
            self.received += int(n or 0)
            if self.received > limit:
                raise DownloadError(f"the Hub sent more than the {limit} bytes of the pinned file; stopped there")
            return super().update(n)

    return _BoundedBar


def check_cache_entry(path: Path, release: Release) -> tuple[bytes | None, str]:
    """The release bytes if the Hugging Face cache entry ``path`` holds them; else ``None`` and what was wrong.

    A bad entry (other bytes, a larger file, not a regular file) is removed, so that the next
    download replaces it instead of being blamed for it.
    """
    try:
        data = read_regular(path, release.size)
        what = describe_mismatch(data, release)
    except FileNotFoundError:
        return None, f"{path} is gone (a dangling link of the Hugging Face cache)"
    except OSError as error:
        data, what = None, str(error)
    if data is not None and sha256_hex(data) == release.sha256:
        return data, ""
    try:
        _forget_hf_file(path)
    except OSError as error:
        problem = f"bad entry in the Hugging Face cache, {path} ({what}), could not be removed: {error}"
    else:
        problem = f"removed a bad entry of the Hugging Face cache, {path} ({what})"
    logger.warning("%s", problem)
    return None, problem


def _remove_bad_entries(release: Release, etag: str, commit: str) -> None:
    """Check what ``hf_hub_download`` would return without downloading: the snapshot entry and the blob."""
    storage, _ = _cache_folders(release)
    for entry in (storage / "snapshots" / commit / release.hf_filename, storage / "blobs" / etag):
        if entry.is_symlink() or entry.exists():
            check_cache_entry(entry, release)


def _forget_hf_file(path: Path) -> None:
    """Remove a snapshot entry and the blob it points to from the Hugging Face cache (a folder: left alone)."""
    blob = path.resolve()
    path.unlink(missing_ok=True)
    if blob != path and not blob.is_dir():
        blob.unlink(missing_ok=True)


def _cache_folders(release: Release) -> tuple[Path, Path]:
    """The repo's folder in the Hugging Face cache, and its folder of lock files."""
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    cache = Path(constants.HF_HUB_CACHE)
    folder = repo_folder_name(repo_id=release.hf_repo_id, repo_type="model")
    return cache / folder, cache / ".locks" / folder


def _remove_leftovers(release: Release, etag: str, *, only_stale: bool = False) -> None:
    """Delete the ``.incomplete`` files and lock of ``etag`` (and the repo folders if they hold no file).

    Taken under huggingface_hub's own lock for that file, so that a download running in another
    program is never disturbed: if the lock is busy, nothing is removed. With ``only_stale``
    (before a download: leftovers of a killed process) the folders and lock file are kept.
    """
    from filelock import FileLock, Timeout

    storage, locks = _cache_folders(release)
    lock_path = locks / f"{etag}.lock"
    if not lock_path.parent.is_dir() and not storage.is_dir():
        return
    lock: Any = FileLock(str(lock_path), timeout=0)
    try:
        lock.acquire()
    except (Timeout, OSError):
        return
    try:
        for stale in (storage / "blobs").glob(f"{etag}*.incomplete"):
            stale.unlink(missing_ok=True)
        if only_stale:
            return
        lock_path.unlink(missing_ok=True)
    finally:
        lock.release()
    _remove_if_no_files(storage)
    _remove_if_no_files(locks)


def _remove_if_no_files(folder: Path) -> None:
    """Remove ``folder`` if nothing but empty folders and ``refs`` pointers are left in it."""
    if not folder.is_dir():
        return
    if any(p.is_file() or p.is_symlink() for p in folder.rglob("*") if "refs" not in p.relative_to(folder).parts):
        return
    shutil.rmtree(folder, ignore_errors=True)
