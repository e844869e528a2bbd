"""The network sources of the pinned release: GitHub's release asset, the Hugging Face Hub, the publisher's ``.pt``.

Imported only when a download is needed, so that a load from a folder or a cache runs none of it.
Each source returns verified bytes and where they came from, or raises a ``LookupError`` saying
why; ``tiniest.weights.sources`` tries them in turn and caches what they return (``keep``).
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Callable
from pathlib import Path

from tiniest.env import env_text
from tiniest.errors import CacheWarning, RateLimitError, TiniestWarning, UsageError, warn
from tiniest.storage import save_atomically
from tiniest.weights.fetch import fetch, max_download_bytes
from tiniest.weights.formats import sha256_hex
from tiniest.weights.releases import GITHUB, Release, describe_mismatch

__all__ = ["DOWNLOADS", "download", "download_url", "keep"]


def keep(path: Path, data: bytes) -> None:
    """Cache verified bytes; a cache that cannot be written costs a warning, never a load."""
    try:
        save_atomically(path, data)
    except OSError as error:
        warn(f"could not cache the weights at {path} ({error}); they are loaded from memory this time", CacheWarning)


def download_url(url: str, *, progress: bool) -> bytes:
    """The bytes of an http(s) URL the caller named for the weights, bounded by ``TINIEST_MAX_DOWNLOAD_MB``."""
    try:
        scheme = urllib.parse.urlsplit(url).scheme
    except ValueError:  # "http://[::1": not a URL at all
        scheme = ""
    if scheme not in ("http", "https"):
        raise UsageError(f"expected an http(s) URL for the weights, got {url!r}")
    return fetch(url, max_bytes=max_download_bytes(), progress=progress)


def _github_base_url() -> str:
    """``https://github.com``, or the mirror named by ``TINIEST_GITHUB_URL`` (an http(s) URL with a host)."""
    value = env_text("TINIEST_GITHUB_URL")
    if value is None:
        return GITHUB
    try:
        parts = urllib.parse.urlsplit(value)
        valid = parts.scheme in ("http", "https") and bool(parts.hostname) and parts.port != 0
    except ValueError:  # a port that is not a number
        valid = False
    if not valid or parts.query or parts.fragment:
        raise UsageError(f"TINIEST_GITHUB_URL: expected an http(s) URL such as {GITHUB}, got {value!r}")
    return value.rstrip("/")


def _github_fetch(published: str, max_bytes: int, progress: bool) -> tuple[bytes, str]:
    """GET a github.com URL from ``TINIEST_GITHUB_URL`` where it is set, with ``TINIEST_GITHUB_TOKEN`` over https
    only; GitHub's rate limit explained. The bytes, and the URL they came from."""
    url = _github_base_url() + published.removeprefix(GITHUB)
    token = env_text("TINIEST_GITHUB_TOKEN")
    headers = None
    if token is not None and urllib.parse.urlsplit(url).scheme == "https":
        headers = {"Authorization": f"Bearer {token}"}
    elif token is not None:
        warn(f"TINIEST_GITHUB_TOKEN is not sent to {url}: a token goes over https only", TiniestWarning)
    try:
        return fetch(url, max_bytes=max_bytes, progress=progress, headers=headers), url
    except RateLimitError as error:
        raise LookupError(
            f"GitHub's rate limit refused the download: {error}. To avoid it, set TINIEST_GITHUB_TOKEN to a GitHub "
            "token, let the huggingface source serve the file, or put the file in the weights/ folder."
        ) from None


def _verified(fetched: tuple[bytes, str], release: Release, sha256: str) -> tuple[bytes, str, bool]:
    data, url = fetched
    if sha256_hex(data) != sha256:
        expected = None if sha256 == release.sha256 else sha256  # the release file's size is said too
        raise LookupError(f"{url} served the wrong bytes: {describe_mismatch(data, release, expected)}")
    return data, url, True


def _from_github(release: Release, progress: bool) -> tuple[bytes, str, bool]:
    return _verified(_github_fetch(release.url, release.size, progress), release, release.sha256)


def _from_original(release: Release, progress: bool) -> tuple[bytes, str, bool]:
    return _verified(_github_fetch(release.source_url, release.source_size, progress), release, release.source_sha256)


def _from_huggingface(release: Release, progress: bool) -> tuple[bytes, str, bool]:
    from tiniest.weights.huggingface import download_from_hub

    data, location, in_its_cache = download_from_hub(release)
    return data, location, not in_its_cache  # a bad copy stays in the library's cache: keep the verified one


# The finders, by source name: (release, progress) -> (verified bytes, where they came from, whether torch.hub's
# cache should keep them). Each but "original" reads its own entry of the record (Release.where).
DOWNLOADS: dict[str, Callable[[Release, bool], tuple[bytes, str, bool]]] = {
    "github": _from_github,
    "huggingface": _from_huggingface,
    "original": _from_original,
}


def download(name: str, release: Release, progress: bool) -> tuple[bytes, str, bool]:
    """What the finder ``name`` returns; a ``LookupError`` for a record entry this version has no finder for."""
    finder = DOWNLOADS.get(name)
    if finder is None:
        raise LookupError(f"the release record names the source {name!r}, which this version of tiniest cannot use")
    return finder(release, progress)
