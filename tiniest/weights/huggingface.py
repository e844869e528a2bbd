"""The Hugging Face Hub source, through huggingface_hub's public API only.

``hf_hub_download`` fetches into the library's own cache (``HF_HOME``, ``HF_HUB_CACHE``, tokens,
``HF_ENDPOINT`` and ``HF_HUB_OFFLINE`` as the library reads them); tiniest then checks the size and
sha256 of what it returned. A cached copy that fails them is fetched again with
``force_download=True``, the library's own way: tiniest never edits the library's cache folders.

The size announced by the Hub (``get_hf_file_metadata``) is checked before the download. What the
library cannot be asked through its public API: a bound on a body longer than announced while it
is being written, and an overall deadline (``HF_HUB_ETAG_TIMEOUT`` and ``HF_HUB_DOWNLOAD_TIMEOUT``
bound each wait, not the whole). docs/reliability.md says so.
"""

from __future__ import annotations

import re
import tempfile
import urllib.parse
from pathlib import Path
from typing import TYPE_CHECKING

from tiniest.errors import DownloadError
from tiniest.files import read_regular
from tiniest.weights.formats import sha256_hex

if TYPE_CHECKING:
    from tiniest.weights.releases import Release

__all__ = ["download_from_hub"]

_HEX = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")


def download_from_hub(release: Release) -> tuple[bytes, str, bool]:
    """The release's bytes from the Hub, verified; where they came from; whether the library's cache holds them.

    A cached copy that fails the hash is fetched again into a folder of tiniest's own
    (``local_dir``), not over it: ``force_download`` replaces a blob but keeps a snapshot link
    that points to another one (a server that once served other bytes under another etag).
    The caller then keeps the verified bytes in torch.hub's cache.
    """
    try:
        from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url
    except ImportError:
        raise LookupError("huggingface_hub cannot be imported (pip install huggingface_hub)") from None
    hub = release.where["huggingface"]  # its record entry
    repo_id, filename, revision = hub["repo_id"], hub["filename"], hub["revision"]
    url = hf_hub_url(repo_id, filename, revision=revision)
    token = False if urllib.parse.urlsplit(url).scheme == "http" else None  # a token goes over https only
    try:
        announced = get_hf_file_metadata(url, token=token)
        if announced.size is not None and announced.size != release.size:
            raise LookupError(
                f"{url} announces {announced.size:,} bytes; the pinned file has {release.size:,}: not fetched"
            )
        # huggingface_hub builds cache paths from these two answers: a server's "../.." must never become one
        if not _HEX.fullmatch(announced.commit_hash or "0" * 40) or not _HEX.fullmatch(announced.etag or "0" * 40):
            raise LookupError(
                f"{url} did not answer like the Hugging Face Hub: expected a hex commit and etag, "
                f"got {announced.commit_hash!r:.80} and {announced.etag!r:.80}; not fetched"
            )
        path = Path(hf_hub_download(repo_id, filename, revision=revision, token=token))
        data = read_regular(path, release.size)
        if sha256_hex(data) == release.sha256:
            return data, str(path), True
        problem = f"sha256 {sha256_hex(data)} ({len(data):,} bytes), expected {release.sha256}"
        with tempfile.TemporaryDirectory(prefix="tiniest-hub-") as folder:
            again = hf_hub_download(
                repo_id, filename, revision=revision, token=token, force_download=True, local_dir=folder
            )
            data = read_regular(again, release.size)
            if sha256_hex(data) == release.sha256:
                return data, url, False
        problem += f", then sha256 {sha256_hex(data)} fetched again"
    except (LookupError, DownloadError):
        raise
    except Exception as error:  # the library raises its own errors and its HTTP client's: none stops the chain
        raise LookupError(f"{type(error).__name__}: {' '.join(str(error).split())[:300]}") from None
    raise LookupError(f"{url} served the wrong bytes: {problem}")
